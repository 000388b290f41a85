"""Staff records as the chat sees them: who a channel address is, and whether they may use the
chat's staff screens."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

from sqlalchemy import bindparam, or_
from sqlmodel import Session, select

from storage.db import aware
from storage.fastsql import Prepared
from storage.models import ChannelIdentity, Resident, Staff


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
    """`is_chat_staff` read on a plain connection with a prepared statement (every menu asks it:
    no ORM session, no statement built)."""
    prepared = _CHAT_STAFF.get(channel)
    if prepared is None:
        return False
    rows, _ = prepared.execute(conn, {"address": address.removeprefix("whatsapp:")})
    return bool(rows)


# Roles that may use the staff screens of the chat, which change things (a viewer only reads, in
# the staff console).
CHAT_STAFF_ROLES = ("admin", "staff")
_CHAT_STAFF = {channel: Prepared(select(Staff.id).where(column == bindparam("address"), Staff.active,
                                                         or_(*(Staff.role == role for role in CHAT_STAFF_ROLES)))
                                                         .limit(1))
               for channel, column in (("telegram", Staff.telegram_id), ("whatsapp", Staff.whatsapp),
                                       ("console", Staff.console))}


def is_chat_staff(db: Session, channel: str, address: str) -> bool:
    staff = staff_for(db, channel, address)
    return staff is not None and staff.role in CHAT_STAFF_ROLES


# ---------------------------------------------------------------- where the bot reaches staff
@dataclass(frozen=True)
class ChatAddress:
    """Where the bot writes to a staff member on its own initiative (the overdue summary)."""

    channel: str
    address: str
    resident_id: int | None    # the resident record they also use the bot as, if any
    locale: str                # that record's language, else their console language


def addresses_of(staff: Staff) -> list[tuple[str, str]]:
    """A staff record's chat addresses (channel, address as the channel writes it), in the order
    preferred when none was used yet: Telegram, WhatsApp, the terminal."""
    found = []
    if staff.telegram_id:
        found.append(("telegram", staff.telegram_id))
    if staff.whatsapp:
        found.append(("whatsapp", "whatsapp:" + staff.whatsapp.removeprefix("whatsapp:")))
    if staff.console:
        found.append(("console", staff.console))
    return found


def chat_addresses(db: Session, members: Iterable[Staff]) -> dict[int, ChatAddress]:
    """staff id → ChatAddress, for those with a chat address: of their addresses the one they
    wrote from last (and can still be reached on), else the first of addresses_of not known to be
    unreachable. Three queries, whatever the number of staff."""
    members = [m for m in members if addresses_of(m)]
    wanted = {pair for m in members for pair in addresses_of(m)}
    if not wanted:
        return {}
    identities = {(i.channel, i.address): i for i in db.exec(select(ChannelIdentity).where(
        ChannelIdentity.address.in_(sorted({address for _, address in wanted})))) if (i.channel, i.address) in wanted}
    resident_ids = {i.resident_id for i in identities.values()}
    locales = dict(db.exec(select(Resident.id, Resident.locale).where(Resident.id.in_(sorted(resident_ids)))).all()) \
        if resident_ids else {}
    found = {}
    for member in members:
        usable = [(pair, identities.get(pair)) for pair in addresses_of(member)]
        usable = [(pair, ident) for pair, ident in usable if ident is None or not ident.unreachable]
        if not usable:
            continue
        used = [(pair, ident) for pair, ident in usable if ident is not None and ident.last_inbound_at is not None]
        (channel, address), ident = max(used, key=lambda u: aware(u[1].last_inbound_at)) if used else usable[0]
        resident_id = ident.resident_id if ident is not None else None
        found[member.id] = ChatAddress(channel, address, resident_id,
                                       locales.get(resident_id) or member.panel_locale or "tr")
    return found


def chat_staff(db: Session) -> list[Staff]:
    """The active staff records of the roles that work in the chat (CHAT_STAFF_ROLES) with a chat
    address (Telegram, WhatsApp or the terminal), by id."""
    return list(db.exec(select(Staff).where(Staff.active, Staff.role.in_(CHAT_STAFF_ROLES),
                                            Staff.telegram_id.is_not(None) | Staff.whatsapp.is_not(None)
                                            | Staff.console.is_not(None)).order_by(Staff.id)))
