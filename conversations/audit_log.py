"""The audit log as the admins read it (issue 15): filtered, paged, newest first, exported as CSV.

Reading needs `audit.read` (admins; a refusal is audited). Actors are shown by their pseudonym
("resident:ID", "cli:USER", "open311:KEY"), a staff member's with their name next to it; the log
holds no phone number or chat id (storage/audit.py), and neither does what is shown. An export is
itself audited (`audit.export`, with its filters and row count) in the transaction that reads it.

The actor filter takes a pseudonym ("staff:3", "cli:ayse"), or a staff member's name (matched
Turkish-aware: "ayse" finds Ayşe); the target filter a prefix ("report:", "apikey:2"); the
dates are the municipality's calendar days, both included."""
from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta, timezone
from zoneinfo import ZoneInfo

from sqlmodel import Session, func, select

from conversations.domain import authorise
from conversations.permissions import Actor
from conversations.text import fold
from storage.audit import audit, audit_actions, select_audit
from storage.models import AuditLog, Staff

PAGE_SIZE = 50
EXPORT_LIMIT = 100_000
CSV_COLUMNS = ("id", "at_utc", "actor", "actor_name", "action", "target", "details")


@dataclass(frozen=True)
class AuditFilter:
    actor: str = ""
    action: str = ""
    target: str = ""
    since: date | None = None   # the first day shown
    until: date | None = None   # the last day shown

    def as_dict(self) -> dict[str, str]:
        return {k: v for k, v in (("actor", self.actor), ("action", self.action), ("target", self.target),
                                  ("from", self.since.isoformat() if self.since else ""),
                                  ("to", self.until.isoformat() if self.until else "")) if v}


@dataclass
class AuditPage:
    rows: list[AuditLog]
    total: int
    page: int
    pages: int
    names: dict[str, str]        # "staff:3" → "Ayşe Yılmaz"
    actions: list[str]


def _bound(day: date | None, tz: ZoneInfo, *, end: bool) -> datetime | None:
    if day is None:
        return None
    local = datetime.combine(day + timedelta(days=1) if end else day, time(0), tzinfo=tz)
    return local.astimezone(timezone.utc)


def _query(db: Session, f: AuditFilter, tz: ZoneInfo):
    actors = None
    wanted = f.actor.strip()
    if wanted:
        actors = [wanted]
        if ":" not in wanted:  # a staff member's name
            key = fold(wanted)
            actors += [f"staff:{s.id}" for s in db.exec(select(Staff)) if key and key in fold(s.name or "")]
    return select_audit(actors=actors, action=f.action.strip(), target=f.target.strip(),
                        since=_bound(f.since, tz, end=False), until=_bound(f.until, tz, end=True))


def staff_names(db: Session) -> dict[str, str]:
    return {f"staff:{s.id}": s.name for s in db.exec(select(Staff)) if s.name}


def read(db: Session, actor: Actor, f: AuditFilter, *, page: int = 1, tz: str = "Europe/Istanbul") -> AuditPage:
    authorise(db, actor, "audit.read", "audit")
    query = _query(db, f, ZoneInfo(tz))
    total = db.exec(select(func.count()).select_from(query.order_by(None).subquery())).one()
    pages = max(1, -(-total // PAGE_SIZE))
    page = min(max(1, page), pages)
    rows = list(db.exec(query.offset((page - 1) * PAGE_SIZE).limit(PAGE_SIZE)))
    return AuditPage(rows, total, page, pages, staff_names(db), audit_actions(db))


def details_text(details: dict) -> str:
    """A row's details as "key=value; key=value" (lists joined with commas)."""
    def one(value) -> str:
        return ",".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)
    return "; ".join(f"{k}={one(v)}" for k, v in sorted((details or {}).items()))


def export_csv(db: Session, actor: Actor, f: AuditFilter, *, tz: str = "Europe/Istanbul") -> tuple[str, int]:
    """The filtered set as CSV (UTC times, ISO 8601) and its row count; audited as audit.export."""
    authorise(db, actor, "audit.read", "audit")
    rows = list(db.exec(_query(db, f, ZoneInfo(tz)).limit(EXPORT_LIMIT)))
    names = staff_names(db)
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(CSV_COLUMNS)
    for row in rows:
        at = row.at if row.at.tzinfo else row.at.replace(tzinfo=timezone.utc)
        writer.writerow([row.id, at.astimezone(timezone.utc).isoformat(timespec="seconds"), row.actor,
                         names.get(row.actor, ""), row.action, row.target, details_text(row.details)])
    audit(db, actor.who, "audit.export", "audit", count=len(rows), **{"filter": f.as_dict()})
    return out.getvalue(), len(rows)
