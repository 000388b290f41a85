"""The audit log: who (pseudonymous: "resident:ID", "staff:ID", "cli:USER", "open311:KEY") did
what to what, written in the transaction of the change."""
from __future__ import annotations

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
