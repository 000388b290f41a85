"""Residents and their channel identities: created on first contact, changed by a step, exported
and erased for data rights (KVKK)."""
from __future__ import annotations

from typing import Any

from sqlalchemy import bindparam, update
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm.attributes import set_committed_value
from sqlmodel import Session, select

from storage.db import aware, utcnow
from storage.fastsql import Prepared, connection_of
from storage.models import ChannelIdentity, ConsentRecord, ConversationSession, Resident


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
    return aware(dt).isoformat() if dt else None
