"""Staff records as the chat sees them: who a channel address is, and whether they may use the
chat's staff screens."""
from __future__ import annotations

from sqlmodel import Session, select

from storage.models import Staff


def staff_for(db: Session, channel: str, address: str) -> Staff | None:
    """The active staff record of a channel address (any role), or None."""
    if channel == "telegram":
        where = Staff.telegram_id == address
    elif channel == "whatsapp":
        where = Staff.whatsapp == address.removeprefix("whatsapp:")
    elif channel == "console":
        where = Staff.console == address
    else:
        return None
    return db.exec(select(Staff).where(where, Staff.active)).first()


# Roles that may use the staff screens of the chat, which change things (a viewer only reads, in
# the staff console).
CHAT_STAFF_ROLES = ("admin", "staff")


def is_chat_staff(db: Session, channel: str, address: str) -> bool:
    staff = staff_for(db, channel, address)
    return staff is not None and staff.role in CHAT_STAFF_ROLES
