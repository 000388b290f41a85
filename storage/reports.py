"""Problem reports (issue 4): tables and repository functions.

A report is a record the municipality keeps: when a resident erases their data the report stays,
with `resident_id` detached. Tracking codes are `{prefix}-{year}-{number:06d}` (BCA-2026-000123)
from a per-year counter row bumped with an atomic upsert in the creating transaction, so two
workers never hand out the same number (PostgreSQL row lock; SQLite's BEGIN IMMEDIATE).

Every status change writes a `ReportEvent` and an audit row; the notifications to the reporter and
the followers (their words) are conversations/notify.py's, written by conversations/domain/reports.py
in the same transaction. Storage holds no user-facing text: ReportError carries a catalog key.

Stable API (other features build on it): STATUSES, OPEN_STATUSES, Report, ReportMedia,
ReportFollower, ReportEvent, ReportCounter, next_code, create_report, get_report, get_by_code,
find_nearby_open, follow, is_following, followers_of, set_status, merge, reopen, rate,
list_for_resident, count_for_resident_since, list_reports, count_reports, media_of, history_of,
export_rows, export_resident, erase_resident, withdraw_consent, consenting, staff_recipients, ReportError.
"""
from __future__ import annotations

import logging
import math
import secrets
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Iterable, Optional

from sqlalchemy import Column, Index, Text, UniqueConstraint, bindparam, delete, func
from sqlmodel import Field, Session, SQLModel, select

from storage.attachments import Erased, stored_name
from storage.audit import audit
from storage.consents import current_consents_many
from storage.db import aware, utcnow
from storage.fastsql import Prepared
from storage.fold import fold
from storage.models import ChannelIdentity, Resident, Staff

log = logging.getLogger(__name__)

STATUSES = ("new", "seen", "in_progress", "resolved", "rejected", "merged")
OPEN_STATUSES = ("new", "seen", "in_progress")
CLOSED_STATUSES = ("resolved", "rejected", "merged")
MEDIA_KINDS = ("photo", "voice")
REOPEN_WINDOW = timedelta(days=14)
CONSENT_PURPOSE = "reports"


class ReportError(ValueError):
    """A repository call that cannot be done (unknown code, bad status...); `key` is a catalog key."""

    def __init__(self, key: str, **params: Any) -> None:
        super().__init__(key)
        self.key = key
        self.params = params


# ---------------------------------------------------------------- tables
class ReportCounter(SQLModel, table=True):
    """The last number handed out per tracking prefix and year."""

    __tablename__ = "report_counter"
    prefix: str = Field(max_length=8, primary_key=True)
    year: int = Field(primary_key=True)
    last: int = Field(default=0)


class Report(SQLModel, table=True):
    __tablename__ = "report"
    __table_args__ = (
        Index("ix_report_open_nearby", "category", "status", "created_at"),
        Index("ix_report_resident_created", "resident_id", "created_at"),
        # the console's list and map (issue 15): newest first per status, a department's queue,
        # a mahalle's reports
        Index("ix_report_status_created", "status", "created_at"),
        Index("ix_report_department_status", "department", "status", "created_at"),
        Index("ix_report_mahalle_created", "mahalle", "created_at"),
        Index("ix_report_created_id", "created_at", "id"),      # newest first (0018)
        Index("ix_report_updated_id", "updated_at", "id"),      # live updates' cursor (0018)
    )
    id: Optional[int] = Field(default=None, primary_key=True)
    code: str = Field(max_length=24, unique=True)
    resident_id: Optional[int] = Field(default=None, foreign_key="resident.id")
    category: str = Field(max_length=32, index=True)
    description: str = Field(default="", sa_column=Column(Text, nullable=False, default=""))
    latitude: Optional[float] = None
    longitude: Optional[float] = None
    mahalle: Optional[str] = Field(default=None, max_length=64, index=True)
    address: str = Field(default="", max_length=255)
    status: str = Field(default="new", max_length=16, index=True)
    reject_reason: str = Field(default="", max_length=500)
    merged_into_id: Optional[int] = Field(default=None, foreign_key="report.id")
    channel: str = Field(default="", max_length=16)
    created_at: datetime = Field(default_factory=utcnow)
    updated_at: datetime = Field(default_factory=utcnow)
    resolved_at: Optional[datetime] = None
    reopened_count: int = Field(default=0)
    rating: Optional[int] = None
    supporters: int = Field(default=0)
    # set when the reporter erased their data: description and street are gone (staff views show
    # the catalog's "report.erased" marker); category, status, dates, mahalle and pin stay
    erased_at: Optional[datetime] = None
    # triage (issue 15): the category's department at creation (staff may move it), the staff
    # member it is assigned to, the target response time (working hours of the catalog), the
    # first staff answer (status change or note) and the closing (resolved, rejected, merged)
    department: str = Field(default="", max_length=32, index=True)
    assignee_id: Optional[int] = Field(default=None, foreign_key="staff.id", index=True)
    due_at: Optional[datetime] = Field(default=None, index=True)
    first_response_at: Optional[datetime] = None
    closed_at: Optional[datetime] = None
    # the folded words a free-text search looks in (code, category names, mahalle, description):
    # conversations.text.fold of them, kept by create_report and refresh_search_text
    search_text: str = Field(default="", sa_column=Column(Text, nullable=False, default=""))


def media_token() -> str:
    """The public name of a stored attachment (Open311 media_url): random, so ids cannot be guessed."""
    return secrets.token_urlsafe(16)


class ReportMedia(SQLModel, table=True):
    __tablename__ = "report_media"
    id: Optional[int] = Field(default=None, primary_key=True)
    report_id: int = Field(foreign_key="report.id", index=True)
    token: str = Field(default_factory=media_token, max_length=32, unique=True, index=True)
    path: str = Field(max_length=500)
    content_type: str = Field(default="", max_length=64)
    size: Optional[int] = None
    kind: str = Field(default="photo", max_length=8)  # photo, voice
    created_at: datetime = Field(default_factory=utcnow)
    # the console (revision 0019_report_page): a hidden photo is shown to staff only; a blurred one
    # is served as its blurred copy (a path in the media store) to viewers and publicly
    hidden: bool = Field(default=False)
    blurred_path: str = Field(default="", max_length=500)
    # the supporter's comment (report_event) a photo came with; None for the reporter's own
    event_id: Optional[int] = Field(default=None, foreign_key="report_event.id", index=True)


class ReportFollower(SQLModel, table=True):
    """A resident who follows (supports) someone else's report: notified like the reporter."""

    __tablename__ = "report_follower"
    __table_args__ = (UniqueConstraint("report_id", "resident_id", name="uq_report_follower"),)
    id: Optional[int] = Field(default=None, primary_key=True)
    report_id: int = Field(foreign_key="report.id", index=True)
    resident_id: int = Field(foreign_key="resident.id", index=True)
    created_at: datetime = Field(default_factory=utcnow)


class ReportEvent(SQLModel, table=True):
    """The history of a report: created, status changes, merges, reopenings, ratings."""

    __tablename__ = "report_event"
    id: Optional[int] = Field(default=None, primary_key=True)
    report_id: int = Field(foreign_key="report.id", index=True)
    at: datetime = Field(default_factory=utcnow)
    actor: str = Field(max_length=64)
    kind: str = Field(default="status", max_length=32)  # created, status, merged, reopened, rated, followed,
    # supporter_comment (what a follower wrote and sent, for staff)
    from_status: str = Field(default="", max_length=16)
    to_status: str = Field(default="", max_length=16)
    note: str = Field(default="", sa_column=Column(Text, nullable=False, default=""))
    # staff's own note (revision 0019_report_page): never sent, never shown to residents
    internal: bool = Field(default=False)


# ---------------------------------------------------------------- codes
def next_code(db: Session, prefix: str, year: int) -> str:
    """The next tracking code of the year; the counter row is bumped in this transaction
    (INSERT .. ON CONFLICT DO UPDATE .. RETURNING: the row lock orders concurrent creators)."""
    dialect = db.get_bind().dialect.name
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    else:
        from sqlalchemy.dialects.sqlite import insert
    table = ReportCounter.__table__
    stmt = insert(table).values(prefix=prefix, year=year, last=1)
    stmt = stmt.on_conflict_do_update(index_elements=[table.c.prefix, table.c.year],
                                      set_={"last": table.c.last + 1}).returning(table.c.last)
    number = db.execute(stmt).scalar_one()
    return f"{prefix}-{year}-{number:06d}"


# ---------------------------------------------------------------- routing and search words
def search_words(report: Report, catalog=None) -> str:
    """The folded text a free-text search matches (storage.fold.fold): the code, the
    category's key and names in every language, the mahalle's key and name, the description."""
    words = [report.code, report.category]
    cat = catalog.category(report.category) if catalog is not None else None
    if cat is not None:
        words += cat.name.all_forms()
    if report.mahalle:
        words.append(report.mahalle)
        hood = catalog.neighbourhood(report.mahalle) if catalog is not None else None
        if hood is not None:
            words.append(hood.name)
    words.append(report.description or "")
    seen: list[str] = []
    for word in (fold(w) for w in words if w):
        if word and word not in seen:
            seen.append(word)
    return " ".join(seen)


def refresh_search_text(report: Report, catalog=None) -> None:
    """Recompute the search words after an edit (category, mahalle, description, erasure)."""
    report.search_text = search_words(report, catalog)


def search_condition(text: str):
    """The SQL conditions of a free-text search, one per word (all must hold, in any order):
    each folded word occurs in the search text, so a tracking code, a part of it ("000123"),
    a category or mahalle name in any language or words of the description match."""
    folded = fold(text or "")
    conditions = []
    for word in folded.split()[:8]:
        escaped = word.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        conditions.append(Report.search_text.like(f"%{escaped}%", escape="\\"))
    return conditions


def mark_responded(report: Report, actor: str, now: datetime) -> None:
    """The first answer of a staff member (status change or note) starts the response time."""
    if report.first_response_at is None and actor.startswith(("staff:", "cli:")):
        report.first_response_at = now


# ---------------------------------------------------------------- create and read
def create_report(db: Session, *, prefix: str, resident_id: int | None, category: str, description: str,
                  latitude: float | None = None, longitude: float | None = None, mahalle: str | None = None,
                  address: str = "", media: Iterable[dict[str, Any]] = (), channel: str = "",
                  actor: str = "", catalog=None, department: str = "", due_at: datetime | None = None,
                  now: datetime | None = None) -> Report:
    """A new report with its attachments (dicts: path, content_type, size, kind) and its first
    event, in `department` with its due time (conversations/domain/reports.py `file` routes it by
    its category); the catalog gives the search words their names."""
    now = now or utcnow()
    report = Report(code=next_code(db, prefix, now.year), resident_id=resident_id, category=category,
                    description=description, latitude=latitude, longitude=longitude, mahalle=mahalle,
                    address=(address or "")[:255], status="new", channel=channel, created_at=now, updated_at=now,
                    department=department or "", due_at=due_at)
    refresh_search_text(report, catalog)
    db.add(report)
    db.flush()
    for item in media:
        kind = item.get("kind", "photo")
        if kind not in MEDIA_KINDS:
            raise ValueError(f"unknown media kind {kind}")
        db.add(ReportMedia(report_id=report.id, path=str(item["path"])[:500],
                           content_type=(item.get("content_type") or "")[:64], size=item.get("size"),
                           kind=kind, created_at=now))
    actor = actor or (f"resident:{resident_id}" if resident_id else "system")
    db.add(ReportEvent(report_id=report.id, at=now, actor=actor[:64], kind="created", to_status="new"))
    audit(db, actor, "report.created", report.code, category=category)
    db.flush()
    return report


def get_report(db: Session, report_id: int) -> Report | None:
    return db.get(Report, report_id)


def get_by_code(db: Session, code: str) -> Report | None:
    code = (code or "").strip().upper()
    if not code:
        return None
    return db.exec(select(Report).where(Report.code == code)).first()


def require(db: Session, code: str) -> Report:
    """The report with this tracking code, or ReportError("report.error.unknown_code")."""
    report = get_by_code(db, code)
    if report is None:
        raise ReportError(("report.error.unknown_code"), code=code)
    return report


def media_of(db: Session, report_id: int, kind: str | None = None) -> list[ReportMedia]:
    query = select(ReportMedia).where(ReportMedia.report_id == report_id)
    if kind:
        query = query.where(ReportMedia.kind == kind)
    return list(db.exec(query.order_by(ReportMedia.id)))


def history_of(db: Session, report_id: int, *, internal: bool = True) -> list[ReportEvent]:
    """A report's events, oldest first; `internal=False` leaves out staff's own notes (a resident's view)."""
    query = select(ReportEvent).where(ReportEvent.report_id == report_id)
    if not internal:
        query = query.where(ReportEvent.internal.is_(False))
    return list(db.exec(query.order_by(ReportEvent.id)))


def shown_photo(media: ReportMedia) -> str:
    """The file to show of a photo outside staff's own views (viewers, Open311, a resident offered
    the report as a similar one): "" when hidden, else its blurred copy when it has one."""
    if media.hidden:
        return ""
    return media.blurred_path or media.path


def haversine_m(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    r = 6_371_000.0
    p1, p2 = math.radians(lat1), math.radians(lat2)
    dp, dl = p2 - p1, math.radians(lon2 - lon1)
    a = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 2 * r * math.asin(min(1.0, math.sqrt(a)))


def find_nearby_open(db: Session, category: str, lat: float | None, lon: float | None, mahalle: str | None,
                     within_m: float = 100, days: int = 30, *, now: datetime | None = None,
                     exclude_resident: int | None = None, limit: int = 3) -> list[Report]:
    """Open reports of a category from the last `days` days: within `within_m` metres of the pin
    (a bounding box in SQL, then haversine), or in the same mahalle when there is no pin. Nearest first."""
    now = now or utcnow()
    query = select(Report).where(Report.category == category, Report.status.in_(OPEN_STATUSES),
                                 Report.created_at >= now - timedelta(days=days))
    if exclude_resident is not None:
        query = query.where((Report.resident_id.is_(None)) | (Report.resident_id != exclude_resident))
    if lat is not None and lon is not None:
        dlat = within_m / 111_320.0
        dlon = within_m / (111_320.0 * max(0.01, math.cos(math.radians(lat))))
        query = query.where(Report.latitude.between(lat - dlat, lat + dlat),
                            Report.longitude.between(lon - dlon, lon + dlon))
        found = [(haversine_m(lat, lon, r.latitude, r.longitude), r) for r in db.exec(query)]
        found = sorted(((d, r) for d, r in found if d <= within_m), key=lambda x: (x[0], x[1].id))
        return [r for _, r in found[:limit]]
    if not mahalle:
        return []
    query = query.where(Report.mahalle == mahalle).order_by(Report.supporters.desc(), Report.created_at.desc())
    return list(db.exec(query.limit(limit)))


def list_for_resident(db: Session, resident_id: int, limit: int | None = None, offset: int = 0) -> list[Report]:
    """The resident's own reports, newest first."""
    query = (select(Report).where(Report.resident_id == resident_id)
             .order_by(Report.created_at.desc(), Report.id.desc()).offset(offset))
    if limit is not None:
        query = query.limit(limit)
    return list(db.exec(query))


def followed_by(db: Session, resident_id: int) -> list[Report]:
    return list(db.exec(select(Report).join(ReportFollower, ReportFollower.report_id == Report.id)
                        .where(ReportFollower.resident_id == resident_id)
                        .order_by(Report.created_at.desc(), Report.id.desc())))


def count_for_resident_since(db: Session, resident_id: int, since: datetime) -> int:
    return db.exec(select(func.count()).select_from(Report)
                   .where(Report.resident_id == resident_id, Report.created_at >= since)).one()


def overdue_condition(now: datetime) -> list:
    """Open and past its due time (the console's list and dashboard, the chat's filter, the daily
    summary: one meaning of "overdue")."""
    return [Report.status.in_(OPEN_STATUSES), Report.due_at.is_not(None), Report.due_at < now]


def _filtered(query, status: str | None, category: str | None, mahalle: str | None, since: datetime | None,
              statuses: Iterable[str] | None = None, overdue_at: datetime | None = None):
    if overdue_at is not None:
        query = query.where(*overdue_condition(overdue_at))
    if status:
        query = query.where(Report.status == status)
    if statuses:
        query = query.where(Report.status.in_(list(statuses)))
    if category:
        query = query.where(Report.category == category)
    if mahalle:
        query = query.where(Report.mahalle == mahalle)
    if since is not None:
        query = query.where(Report.created_at >= since)
    return query


def list_reports(db: Session, *, status: str | None = None, category: str | None = None,
                 mahalle: str | None = None, since: datetime | None = None, limit: int | None = None,
                 offset: int = 0, newest_first: bool = True, statuses: Iterable[str] | None = None,
                 overdue_at: datetime | None = None) -> list[Report]:
    """Reports filtered (`overdue_at`: only those open and past their due time at that instant)."""
    order = (Report.created_at.desc(), Report.id.desc()) if newest_first else (Report.created_at, Report.id)
    query = _filtered(select(Report), status, category, mahalle, since, statuses,
                      overdue_at).order_by(*order).offset(offset)
    if limit is not None:
        query = query.limit(limit)
    return list(db.exec(query))


def count_reports(db: Session, *, status: str | None = None, category: str | None = None,
                  mahalle: str | None = None, since: datetime | None = None,
                  statuses: Iterable[str] | None = None, overdue_at: datetime | None = None) -> int:
    return db.exec(_filtered(select(func.count()).select_from(Report), status, category, mahalle, since,
                             statuses, overdue_at)).one()


# ---------------------------------------------------------------- followers
def is_following(db: Session, report_id: int, resident_id: int) -> bool:
    return db.exec(select(ReportFollower).where(ReportFollower.report_id == report_id,
                                                ReportFollower.resident_id == resident_id)).first() is not None


def follow(db: Session, code_or_report: str | Report, resident_id: int, *, now: datetime | None = None) -> bool:
    """Follow (support) a report: notified of its changes, counted as a supporter.
    False when the resident is its reporter or already follows it."""
    report = code_or_report if isinstance(code_or_report, Report) else require(db, code_or_report)
    if report.resident_id == resident_id or is_following(db, report.id, resident_id):
        return False
    now = now or utcnow()
    db.add(ReportFollower(report_id=report.id, resident_id=resident_id, created_at=now))
    report.supporters += 1
    report.updated_at = now
    db.add(report)
    db.add(ReportEvent(report_id=report.id, at=now, actor=f"resident:{resident_id}", kind="followed"))
    db.flush()
    return True


def followers_of(db: Session, report_id: int) -> list[int]:
    return list(db.exec(select(ReportFollower.resident_id).where(ReportFollower.report_id == report_id)
                        .order_by(ReportFollower.id)))


def audience_of(db: Session, report: Report) -> list[int]:
    """Everyone told about a report's changes: its reporter and its followers."""
    people = [report.resident_id] if report.resident_id else []
    return people + [r for r in followers_of(db, report.id) if r not in people]


# ---------------------------------------------------------------- who is told
def consenting(db: Session, people: list[int]) -> list[int]:
    """Those of these residents whose "reports" consent stands: only they are told of a report's
    changes (a withdrawn consent stops the news, README "Privacy")."""
    consents = current_consents_many(db, people)
    return [rid for rid in people if consents.get(rid, {}).get(CONSENT_PURPOSE)]


def to_be_told(db: Session, report: Report | None, status: str | None = None) -> list[int]:
    """Who hears of this report's next change (before it is made): its reporter and followers
    whose consent stands; nobody when `status` is the report's status already (set_status tells
    only of a move). A merge moves the same people to the target."""
    if report is None or (status is not None and report.status == status):
        return []
    return consenting(db, audience_of(db, report))


def set_status(db: Session, code: str, status: str, actor: str, note: str = "", *, reason: str = "",
               now: datetime | None = None) -> Report:
    """Change a report's status: history and audit log, in the caller's transaction (the
    notifications: conversations/domain/reports.py change_status)."""
    if status not in STATUSES or status == "merged":
        raise ReportError(("report.error.bad_status"), status=status)
    report = require(db, code)
    if report.status == "merged":
        raise ReportError(("report.error.merged"), code=report.code)
    previous = report.status
    now = now or utcnow()
    note = (note or "").strip()[:1000]
    if status == "rejected":
        report.reject_reason = (reason or note)[:500]
    report.status = status
    report.updated_at = now
    if status == "resolved":
        report.resolved_at = now
    mark_responded(report, actor, now)
    report.closed_at = (report.closed_at or now) if status in CLOSED_STATUSES else None
    db.add(report)
    event_note = (note or report.reject_reason) if status == "rejected" else note
    db.add(ReportEvent(report_id=report.id, at=now, actor=actor[:64], kind="status", from_status=previous,
                       to_status=status, note=event_note))
    audit(db, actor, "report.status", report.code, from_status=previous, to_status=status, note=note)
    db.flush()
    return report


def merge(db: Session, code: str, into_code: str, actor: str, *, now: datetime | None = None) -> Report:
    """Merge a duplicate into another report: its reporter and followers whose consent stands follow
    the target (and count as its supporters). Telling them is conversations/domain/reports.py's."""
    report, target = require(db, code), require(db, into_code)
    if report.id == target.id:
        raise ReportError(("report.error.merge_self"), code=report.code)
    while target.status == "merged" and target.merged_into_id:
        target = db.get(Report, target.merged_into_id)
    if target.id == report.id or report.status == "merged":
        raise ReportError(("report.error.merged"), code=report.code)
    now = now or utcnow()
    previous = report.status
    people = consenting(db, audience_of(db, report))
    report.status = "merged"
    report.merged_into_id = target.id
    report.updated_at = now
    report.closed_at = now
    mark_responded(report, actor, now)
    db.add(report)
    for resident_id in people:
        follow(db, target, resident_id, now=now)
    db.add(ReportEvent(report_id=report.id, at=now, actor=actor[:64], kind="merged", from_status=previous,
                       to_status="merged", note=target.code))
    db.add(ReportEvent(report_id=target.id, at=now, actor=actor[:64], kind="merged", note=report.code))
    audit(db, actor, "report.merged", report.code, into=target.code)
    db.flush()
    return report


def reopen(db: Session, code: str, resident_id: int | None, *, actor: str = "", note: str = "",
           window: timedelta = REOPEN_WINDOW, now: datetime | None = None) -> str:
    """A resident says a resolved report is not solved: "reopened" (back to in progress),
    "too_late" (more than `window` after resolution) or "not_resolved" (nothing to reopen)."""
    report = require(db, code)
    now = now or utcnow()
    if report.status != "resolved":
        return "not_resolved"
    resolved_at = aware(report.resolved_at or report.updated_at)
    if now - resolved_at > window:
        return "too_late"
    actor = actor or (f"resident:{resident_id}" if resident_id else "system")
    report.status = "in_progress"
    report.reopened_count += 1
    report.resolved_at = None
    report.closed_at = None
    report.updated_at = now
    db.add(report)
    db.add(ReportEvent(report_id=report.id, at=now, actor=actor[:64], kind="reopened", from_status="resolved",
                       to_status="in_progress", note=note[:1000]))
    audit(db, actor, "report.reopened", report.code, count=report.reopened_count)
    db.flush()
    return "reopened"


def rate(db: Session, code: str, resident_id: int | None, rating: int, *, now: datetime | None = None) -> Report:
    """A 1-5 rating of how a resolved report was handled (ReportError for any other status). The
    reporter's rating is the report's; a follower's is kept in the history."""
    if not 1 <= int(rating) <= 5:
        raise ReportError(("report.error.bad_rating"))
    report = require(db, code)
    if report.status != "resolved":  # a button from an old message, after a reopening
        raise ReportError(("report.error.rate_not_resolved"), code=report.code)
    now = now or utcnow()
    if resident_id is not None and report.resident_id == resident_id:
        report.rating = int(rating)
        report.updated_at = now
        db.add(report)
    db.add(ReportEvent(report_id=report.id, at=now, actor=f"resident:{resident_id}" if resident_id else "system",
                       kind="rated", note=str(int(rating))))
    db.flush()
    return report


def staff_recipients(db: Session, channel: str) -> list[tuple[str, Resident | None]]:
    """Every staff member's address on `channel` (telegram, whatsapp, console), with the resident
    record they also use the bot as, if any (whose language they read)."""
    column = {"telegram": Staff.telegram_id, "whatsapp": Staff.whatsapp, "console": Staff.console}[channel]
    found = []
    for address in db.exec(select(column).where(column.is_not(None)).order_by(Staff.id)):
        identity = db.exec(select(ChannelIdentity).where(ChannelIdentity.channel == channel,
                                                         ChannelIdentity.address == address)).first()
        found.append((address, db.get(Resident, identity.resident_id) if identity else None))
    return found


# ---------------------------------------------------------------- export and erase
EXPORT_FIELDS = ("code", "category", "status", "mahalle", "latitude", "longitude", "created_at", "updated_at",
                 "supporters", "rating")


def export_rows(db: Session, *, since: datetime | None = None, status: str | None = None,
                category: str | None = None, mahalle: str | None = None) -> list[dict[str, Any]]:
    """Open-data rows, oldest first: never the resident's identity, nor the free-text description."""
    return [{"code": r.code, "category": r.category, "status": r.status, "mahalle": r.mahalle,
             "latitude": r.latitude, "longitude": r.longitude, "created_at": _iso(r.created_at),
             "updated_at": _iso(r.updated_at), "supporters": r.supporters, "rating": r.rating}
            for r in list_reports(db, status=status, category=category, mahalle=mahalle, since=since,
                                  newest_first=False)]


def report_dict(db: Session, report: Report, *, with_history: bool = True) -> dict[str, Any]:
    data = {"code": report.code, "category": report.category, "description": report.description,
            "status": report.status, "latitude": report.latitude, "longitude": report.longitude,
            "mahalle": report.mahalle, "address": report.address, "reject_reason": report.reject_reason,
            "created_at": _iso(report.created_at), "updated_at": _iso(report.updated_at),
            "resolved_at": _iso(report.resolved_at), "rating": report.rating, "supporters": report.supporters,
            "media": [{"kind": m.kind, "name": stored_name(m.path) or Path(m.path).name,
                       "content_type": m.content_type, "size": m.size} for m in media_of(db, report.id)],
            "erased_at": _iso(report.erased_at)}
    if report.merged_into_id:
        target = db.get(Report, report.merged_into_id)
        data["merged_into"] = target.code if target else None
    if with_history:
        data["history"] = [{"at": _iso(e.at), "kind": e.kind, "from": e.from_status, "to": e.to_status,
                            "note": e.note} for e in history_of(db, report.id) if not e.internal]
    return data


def export_resident(db: Session, resident_id: int) -> dict[str, Any]:
    """For the resident's data export: their reports and the reports they follow."""
    return {"reports": [report_dict(db, r) for r in list_for_resident(db, resident_id)],
            "followed_reports": [{"code": r.code, "status": r.status} for r in followed_by(db, resident_id)]}


def erase_resident(db: Session, resident_id: int) -> Erased:
    """The resident's reports stay for the municipality's records, anonymised: no longer linked
    to them, their words (description, street) gone (`erased_at` set: staff see a marker), their
    photos and voice notes deleted (the files too, unless another report holds the same file);
    category, status, dates, mahalle and pin stay. The notes they wrote in a report's history go,
    and so do their follows (the supporters count stays: an anonymous number)."""
    now = utcnow()
    erased = Erased()
    for report in list_for_resident(db, resident_id):
        erased.words |= {report.description, report.address} - {""}
        for media in media_of(db, report.id):
            erased.files |= {media.path, media.blurred_path} - {""}
            db.delete(media)
        report.resident_id = None
        report.description = ""
        report.address = ""
        report.erased_at = now
        refresh_search_text(report)   # their words leave the search too
        db.add(report)
    for event in db.exec(select(ReportEvent).where(ReportEvent.actor == f"resident:{resident_id}",
                                                   ReportEvent.kind != "rated", ReportEvent.note != "")):
        erased.words.add(event.note)
        event.note = ""
        db.add(event)
    db.exec(delete(ReportFollower).where(ReportFollower.resident_id == resident_id))
    db.flush()
    return erased


def withdraw_consent(db: Session, resident_id: int) -> None:
    """The "reports" consent withdrawn: no more news of any report (their own are not notified,
    see `consenting`), and they follow no other report (the supporters count stays)."""
    db.exec(delete(ReportFollower).where(ReportFollower.resident_id == resident_id))


def _iso(dt: datetime | None) -> str | None:
    return aware(dt).isoformat() if dt else None


_ASKED_SINCE = Prepared(select(ReportEvent.id).join(Report, Report.id == ReportEvent.report_id)
                        .where(Report.resident_id == bindparam("rid"), ReportEvent.kind == "question",
                               ReportEvent.at >= bindparam("since")).limit(1))


def asked_since(conn, resident_id: int, since: datetime) -> bool:
    """Whether staff asked this resident (a reporter) a question since `since`: a prepared read on
    the step's connection, so free text at the menu costs no ORM query when nobody asked."""
    rows, _ = _ASKED_SINCE.execute(conn, {"rid": resident_id, "since": since})
    return bool(rows)

