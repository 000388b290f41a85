"""Staff records as the chat sees them: who a channel address is, and whether they may use the
chat's staff screens."""
from __future__ import annotations

from sqlmodel import Session, select

from storage.models import Staff


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
