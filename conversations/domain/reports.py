"""What staff, residents and API clients do to a report: file, change status, merge, reopen, rate,
follow. Each checks the actor, writes the change with its history and audit rows, and queues the
notifications (their words: conversations/notify.py) in the caller's transaction."""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Iterable

from sqlmodel import Session

from conversations import notify, worktime
from conversations.domain import authorise
from conversations.permissions import Actor
from storage import reports as rp
from storage.audit import audit
from storage.db import utcnow


def department_of(report: rp.Report) -> str:
    """The department a report belongs to ("" when none, or before the column exists)."""
    return getattr(report, "department", "") or ""


def routing(catalog, category: str, created: datetime) -> tuple[str, datetime | None]:
    """Where a new report of `category` goes and by when it should be answered: the catalog's
    department of the category ("" when none) and the end of its target response time
    (`sla_hours`, in the municipality's working hours unless `sla_calendar`; None without one)."""
    cat = catalog.category(category) if catalog is not None else None
    if cat is None:
        return "", None
    due = None
    if cat.sla_hours:
        municipality = catalog.municipality
        due = worktime.due_at(created, cat.sla_hours, municipality.working_hours, calendar_hours=cat.sla_calendar,
                              tz=municipality.timezone or "Europe/Istanbul")
    return cat.department, due


@dataclass(frozen=True)
class StatusChanged:
    report: rp.Report
    previous: str
    told: list[int]  # the residents notified (reporter and followers whose consent stands)


@dataclass(frozen=True)
class Merged:
    report: rp.Report
    target: rp.Report
    told: list[int]


def file(db: Session, actor: Actor, *, prefix: str, category: str, description: str,
         latitude: float | None = None, longitude: float | None = None, mahalle: str | None = None,
         address: str = "", media: Iterable[dict[str, Any]] = (), channel: str = "", catalog=None,
         now: datetime | None = None) -> rp.Report:
    """A new report (a resident's in the chat, an Open311 client's POST) with its first event,
    routed to its category's department with its due time (`routing`: without the catalog it is
    nobody's and has no target)."""
    authorise(db, actor, "report.submit", category)
    now = now or utcnow()
    department, due = routing(catalog, category, now)
    return rp.create_report(db, prefix=prefix, resident_id=actor.resident_id, category=category,
                            description=description, latitude=latitude, longitude=longitude, mahalle=mahalle,
                            address=address, media=media, channel=channel, actor=actor.who, catalog=catalog,
                            department=department, due_at=due, now=now)


def change_status(db: Session, actor: Actor, code: str, status: str, *, note: str = "", reason: str = "",
                  catalog=None, tz: str = "Europe/Istanbul", now: datetime | None = None) -> StatusChanged:
    """Move a report to `status` (with a note for the residents; `reason` when rejecting): its
    history, the audit row and, when the status moves, a notification to everyone following it."""
    report = rp.require(db, code)
    authorise(db, actor, "report.change", report.code, department=department_of(report),
              assignee_id=report.assignee_id)
    note = (note or "").strip()[:1000]
    told = rp.to_be_told(db, report, status)
    previous = report.status
    report = rp.set_status(db, report.code, status, actor.who, note, reason=reason, now=now)
    if previous != status:
        notify.report_changed(db, report, told, note=note, catalog=catalog, tz=tz)
    return StatusChanged(report, previous, told)


def merge(db: Session, actor: Actor, code: str, into_code: str, *, catalog=None, tz: str = "Europe/Istanbul",
          now: datetime | None = None) -> Merged:
    """Merge a duplicate into another report; its people follow the target and are told its code."""
    report, into = rp.require(db, code), rp.require(db, into_code)
    for changed in (report, into):  # both change: the target gains the duplicate's people
        authorise(db, actor, "report.change", changed.code, department=department_of(changed),
                  assignee_id=changed.assignee_id)
    told = rp.to_be_told(db, report)
    report = rp.merge(db, report.code, into_code, actor.who, now=now)
    target = rp.get_report(db, report.merged_into_id)
    notify.report_changed(db, report, told, catalog=catalog, into_code=target.code, tz=tz)
    return Merged(report, target, told)


def reopen(db: Session, actor: Actor, code: str, *, window: timedelta = rp.REOPEN_WINDOW,
           now: datetime | None = None) -> str:
    """"Not solved" under a resolved report: "reopened" (back in progress, the staff told),
    "too_late" or "not_resolved"."""
    authorise(db, actor, "report.reopen", code)
    result = rp.reopen(db, code, actor.resident_id, actor=actor.who, window=window, now=now)
    if result == "reopened":
        notify.report_reopened(db, rp.require(db, code))
    return result


def rate(db: Session, actor: Actor, code: str, rating: int, *, now: datetime | None = None) -> rp.Report:
    """A 1-5 rating of a resolved report (ReportError when it is not resolved any more)."""
    authorise(db, actor, "report.rate", code)
    return rp.rate(db, code, actor.resident_id, rating, now=now)


def support(db: Session, actor: Actor, report: rp.Report, text: str, photos: Iterable[dict[str, Any]], *,
            now: datetime | None = None) -> rp.ReportEvent:
    """What a follower wrote and sent, kept on the followed report for staff: a report_event of
    kind "supporter_comment" by the resident (so erasure empties it) and the photos (dicts: path,
    content_type, size), attached to the report and linked to that event (so erasure deletes them)."""
    authorise(db, actor, "report.support", report.code)
    now = now or utcnow()
    event = rp.ReportEvent(report_id=report.id, at=now, actor=actor.who, kind="supporter_comment", note=text)
    db.add(event)
    db.flush()
    photos = list(photos)
    for photo in photos:
        db.add(rp.ReportMedia(report_id=report.id, path=str(photo["path"])[:500],
                              content_type=(photo.get("content_type") or "image/jpeg")[:64], size=photo.get("size"),
                              kind="photo", created_at=now, event_id=event.id))
    audit(db, actor.who, "report.supporter_comment", report.code, photos=len(photos))
    return event


def follow(db: Session, actor: Actor, report: rp.Report | str, *, now: datetime | None = None) -> bool:
    """Follow (support) someone else's report; False when the resident reports or follows it already."""
    report = report if isinstance(report, rp.Report) else rp.require(db, report)
    authorise(db, actor, "report.follow", report.code)
    followed = rp.follow(db, report, actor.resident_id, now=now)
    if followed:
        audit(db, actor.who, "report.followed", report.code)
    return followed
