"""The domain operations: one function per action on a report or a broadcast, called alike by the
chat flows, the CLI, Open311 and the staff console.

Each takes an `Actor` (conversations/permissions.py), checks it may act (a refusal is audited, in
the caller's transaction, then raised as `Refused`: catch it inside the transaction to keep the
audit row), writes the change, its audit row and its outbox rows (conversations/notify.py) in the
caller's transaction, and returns what happened. A front end only asks and shows.
"""
from __future__ import annotations

from sqlmodel import Session

from conversations.permissions import Actor, Refused, can
from storage.audit import audit


def authorise(db: Session, actor: Actor, action: str, target: str, **scope) -> None:
    """Raise Refused (after an audit row naming who, what and their role) unless `actor` may do `action`."""
    if not can(actor, action, **scope):
        audit(db, actor.who, "refused", target, attempted=action, role=actor.role)
        raise Refused(action)
