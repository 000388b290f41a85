"""The audit log: who (pseudonymous: "resident:ID", "staff:ID", "cli:USER", "open311:KEY") did
what to what, written in the transaction of the change."""
from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlmodel import Session, select

from storage.db import aware, utcnow
from storage.models import AuditLog


def audit(db: Session, actor: str, action: str, target: str = "", **details: Any) -> None:
    db.add(AuditLog(actor=actor, action=action, target=str(target)[:128], details=details, at=utcnow()))


def export_audit(db: Session, resident_id: int) -> dict[str, Any]:
    """For the resident's data export: the audit rows about them (as actor or target)."""
    who = f"resident:{resident_id}"
    rows = db.exec(select(AuditLog).where((AuditLog.actor == who) | (AuditLog.target == who)).order_by(AuditLog.id))
    return {"audit": [{"at": _iso(a.at), "actor": a.actor, "action": a.action, "target": a.target,
                       "details": a.details} for a in rows]}


def _iso(dt) -> str | None:
    return aware(dt).isoformat() if dt else None


def select_audit(*, actors: list[str] | None = None, action: str = "", target: str = "",
                 since: datetime | None = None, until: datetime | None = None):
    """The audit rows matching every filter given, newest first: actors (one of these), action
    (exactly), target (starting with it), at in [since, until)."""
    query = select(AuditLog)
    if actors is not None:
        query = query.where(AuditLog.actor.in_(actors))
    if action:
        query = query.where(AuditLog.action == action)
    if target:
        escaped = target.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        query = query.where(AuditLog.target.like(escaped + "%", escape="\\"))
    if since is not None:
        query = query.where(AuditLog.at >= since)
    if until is not None:
        query = query.where(AuditLog.at < until)
    return query.order_by(AuditLog.at.desc(), AuditLog.id.desc())


def audit_actions(db: Session) -> list[str]:
    """Every action the log holds (for a filter's choices)."""
    return sorted(db.exec(select(AuditLog.action).distinct()).all())
