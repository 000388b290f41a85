"""Repositories: small functions over a Session, used inside one transaction."""
from __future__ import annotations

from typing import Any

from sqlalchemy import bindparam, update
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm.attributes import set_committed_value
from sqlmodel import Session, select

from storage.db import one_of, utcnow
from storage.fastsql import Prepared, connection_of
from storage.models import (
    CONSENT_PURPOSES,
    AuditLog,
    ChannelIdentity,
    ConsentRecord,
    ConversationSession,
    Resident,
    Staff,
)


def identity_for(db: Session, channel: str, address: str, language_hint: str = "", display_name: str = "",
                 default_locale: str = "tr") -> tuple[ChannelIdentity, Resident]:
    """The identity and resident for a channel address, created on first contact."""
    identity = db.exec(select(ChannelIdentity).where(ChannelIdentity.channel == channel,
                                                     ChannelIdentity.address == address)).first()
    if identity is not None:
        resident = db.get(Resident, identity.resident_id)
        return identity, resident
    hint = (language_hint or "").split("-")[0].lower()
    try:
        # A savepoint: two first messages from one new address at once (two workers) both try to
        # create the identity; the loser rolls back to here and takes the winner's.
        with db.begin_nested():
            resident = Resident(locale=hint if hint in ("tr", "en", "ar") else default_locale,
                                display_name=(display_name or "")[:128])
            db.add(resident)
            db.flush()
            identity = ChannelIdentity(resident_id=resident.id, channel=channel, address=address)
            db.add(identity)
            db.flush()
    except IntegrityError:
        identity = db.exec(select(ChannelIdentity).where(ChannelIdentity.channel == channel,
                                                         ChannelIdentity.address == address)
                           .execution_options(populate_existing=True)).one()
        resident = db.get(Resident, identity.resident_id)
    return identity, resident


def identities_of(db: Session, resident_id: int) -> list[ChannelIdentity]:
    return list(db.exec(select(ChannelIdentity).where(ChannelIdentity.resident_id == resident_id)))


def update_resident(db: Session | Connection, resident: Resident, **values: Any) -> None:
    """Change columns of a resident: one UPDATE now, and the object shows the new values without
    the unit of work's flush (a conversation step changes the profile often; `db` may be the
    step's connection, with no ORM session open)."""
    stmt, params = resident_update(resident.id, values)
    stmt.execute(connection_of(db), params)
    for key, value in values.items():
        set_committed_value(resident, key, value)


def resident_update(resident_id: int, values: dict[str, Any]) -> tuple[Prepared, dict[str, Any]]:
    """The UPDATE that writes these columns of a resident, with its parameters (to run with others
    in one round trip: storage.fastsql.run_all)."""
    keys = tuple(sorted(values))
    stmt = _RESIDENT_UPDATES.get(keys)
    if stmt is None:
        stmt = _RESIDENT_UPDATES[keys] = Prepared(update(Resident).where(Resident.id == bindparam("rid"))
                                                  .values({k: bindparam(k) for k in keys}))
    return stmt, {"rid": resident_id, **values}


_RESIDENT_UPDATES: dict[tuple[str, ...], Prepared] = {}


def current_consents(db: Session | Connection, resident_id: int) -> dict[str, bool]:
    state = {p: False for p in CONSENT_PURPOSES}
    rows, _ = _CONSENTS_OF.execute(connection_of(db), {"rid": resident_id})
    for purpose, granted in rows:  # the latest record wins
        state[purpose] = bool(granted)
    return state


_CONSENTS_OF = Prepared(select(ConsentRecord.purpose, ConsentRecord.granted)
                        .where(ConsentRecord.resident_id == bindparam("rid")).order_by(ConsentRecord.id))


def current_consents_many(db: Session, resident_ids) -> dict[int, dict[str, bool]]:
    """current_consents for many residents in one query."""
    ids = list(resident_ids)
    state = {rid: {p: False for p in CONSENT_PURPOSES} for rid in ids}
    if ids:
        for resident_id, purpose, granted in db.execute(
                select(ConsentRecord.resident_id, ConsentRecord.purpose, ConsentRecord.granted)
                .where(one_of(db, ConsentRecord.resident_id, ids)).order_by(ConsentRecord.id)):
            state[resident_id][purpose] = granted
    return state


def record_consent(db: Session, resident_id: int, purpose: str, granted: bool, notice_version: str,
                   channel: str = "") -> None:
    if purpose not in CONSENT_PURPOSES:
        raise ValueError(f"unknown consent purpose {purpose}")
    db.add(ConsentRecord(resident_id=resident_id, purpose=purpose, granted=granted,
                         notice_version=notice_version, channel=channel, recorded_at=utcnow()))


def audit(db: Session, actor: str, action: str, target: str = "", **details: Any) -> None:
    db.add(AuditLog(actor=actor, action=action, target=str(target)[:128], details=details, at=utcnow()))


def _staff_address(channel: str, address: str):
    if channel == "telegram":
        return Staff.telegram_id == address
    if channel == "whatsapp":
        return Staff.whatsapp == address.removeprefix("whatsapp:")
    if channel == "console":
        return Staff.console == address
    return None


def staff_for(db: Session, channel: str, address: str) -> Staff | None:
    """The active staff record of a channel address (any role), or None."""
    where = _staff_address(channel, address)
    if where is None:
        return None
    return db.exec(select(Staff).where(where, Staff.active)).first()


def chat_staff_on(conn, channel: str, address: str) -> bool:
    """`is_chat_staff` read on a plain connection (a menu shown to everyone: no ORM session)."""
    where = _staff_address(channel, address)
    if where is None:
        return False
    return conn.execute(select(Staff.id).where(where, Staff.active, Staff.role.in_(CHAT_STAFF_ROLES))
                        .limit(1)).first() is not None


# Roles that may use the staff screens of the chat, which change things (a viewer only reads, in
# the staff console).
CHAT_STAFF_ROLES = ("admin", "staff")


def is_chat_staff(db: Session, channel: str, address: str) -> bool:
    staff = staff_for(db, channel, address)
    return staff is not None and staff.role in CHAT_STAFF_ROLES


def export_core(db: Session, resident_id: int) -> dict[str, Any]:
    resident = db.get(Resident, resident_id)
    session = db.get(ConversationSession, resident_id)
    consents = db.exec(select(ConsentRecord).where(ConsentRecord.resident_id == resident_id)
                       .order_by(ConsentRecord.id)).all()
    return {
        "resident": {
            "id": resident.id, "language": resident.locale, "mahalle": resident.mahalle,
            "name": resident.display_name, "phone": resident.phone,
            "created_at": _iso(resident.created_at), "onboarded_at": _iso(resident.onboarded_at),
        },
        "channels": [{"channel": i.channel, "address": i.address, "unreachable": i.unreachable,
                      "last_message_at": _iso(i.last_inbound_at)} for i in identities_of(db, resident_id)],
        "consents": [{"purpose": c.purpose, "granted": c.granted, "notice_version": c.notice_version,
                      "channel": c.channel, "at": _iso(c.recorded_at)} for c in consents],
        "conversation": {"state": session.state if session else None,
                         "data": {k: v for k, v in (session.data or {}).items() if not k.startswith("_")}
                         if session else {}},
    }


def export_audit(db: Session, resident_id: int) -> dict[str, Any]:
    """For the resident's data export: the audit rows about them (as actor or target)."""
    who = f"resident:{resident_id}"
    rows = db.exec(select(AuditLog).where((AuditLog.actor == who) | (AuditLog.target == who)).order_by(AuditLog.id))
    return {"audit": [{"at": _iso(a.at), "actor": a.actor, "action": a.action, "target": a.target,
                       "details": a.details} for a in rows]}


def erase_core(db: Session, resident_id: int) -> None:
    """Delete personal data; keep the anonymised resident row (consent history points at it)."""
    resident = db.get(Resident, resident_id)
    for identity in identities_of(db, resident_id):
        db.delete(identity)
    session = db.get(ConversationSession, resident_id)
    if session is not None:
        db.delete(session)
    resident.display_name = ""
    resident.phone = None
    resident.mahalle = None
    resident.anonymised_at = utcnow()
    db.add(resident)


def _iso(dt) -> str | None:
    if not dt:
        return None
    from datetime import timezone

    return (dt if dt.tzinfo else dt.replace(tzinfo=timezone.utc)).isoformat()
