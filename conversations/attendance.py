"""Events from the resident's side: the links that open an event or check one in at the venue,
the list of what is coming, registering (a place, else the waiting list), cancelling (the first
on the waiting list moves up, told with the calendar file), checking in at the door, and the
rating after the event (asked by the "feedback" job).

Registering needs no consent of its own (conversations/participation.py): the registration is
the service the resident asked for. Staff create, edit and cancel events in
conversations/domain/events.py."""
from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Iterable

from sqlalchemy import update
from sqlmodel import Session, select

from conversations import notify
from conversations.calendar_files import ics_attachment
from conversations.i18n import Translator
from conversations.messages import Choice, Outbound
from conversations.participation import EVENT_PREFIX, FEEDBACK_PREFIX
from conversations.reminders import drop_reminders, schedule_reminders
from conversations.when import span_text
from storage.db import aware
from storage.participation import (
    Event,
    EventFeedback,
    Rsvp,
    free_event_place,
    lock_event,
    next_position,
    take_event_place,
)

FEEDBACK_WINDOW = timedelta(days=2)  # feedback is asked only for events that ended this recently
CHECKIN_OPENS = timedelta(hours=2)   # the check-in link works from this long before the start...
CHECKIN_CLOSES = timedelta(hours=2)  # ...until this long after the end


def event_link(bot_username: str, event_id: int) -> str:
    return f"https://t.me/{bot_username}?start=ev_{event_id}"


def checkin_link(bot_username: str, token: str) -> str:
    return f"https://t.me/{bot_username}?start=ci_{token}"


def new_checkin_token() -> str:
    return secrets.token_hex(8)


def upcoming_events(db: Session, now: datetime) -> list[Event]:
    return list(db.exec(select(Event).where(Event.status == "active", Event.ends_at > now)
                        .order_by(Event.starts_at, Event.id)))


def rsvp_of(db: Session, event_id: int, resident_id: int) -> Rsvp | None:
    return db.exec(select(Rsvp).where(Rsvp.event_id == event_id, Rsvp.resident_id == resident_id)).first()


def free_places(event: Event) -> int | None:
    return None if event.capacity is None else max(0, event.capacity - event.going)


def registration_open(event: Event, now: datetime) -> bool:
    deadline = aware(event.registration_deadline) or aware(event.starts_at)
    return event.status == "active" and now < deadline


def register(db: Session, event_id: int, resident_id: int, *, now: datetime,
             offsets: Iterable[timedelta]) -> tuple[str, Rsvp | None]:
    """RSVP: "going" when a place was free (taken race-free), else "waitlist" with a position.
    Returns (outcome, rsvp): going, waitlist, already_going, already_waitlist, closed, gone."""
    event = lock_event(db, event_id)
    if event is None or event.status != "active":
        return "gone", None
    rsvp = rsvp_of(db, event_id, resident_id)
    if rsvp is not None and rsvp.status == "going":
        return "already_going", rsvp
    if rsvp is not None and rsvp.status == "waitlist":
        return "already_waitlist", rsvp
    if not registration_open(event, now):
        return "closed", rsvp
    rsvp = rsvp or Rsvp(event_id=event_id, resident_id=resident_id, created_at=now)
    rsvp.updated_at = now
    if take_event_place(db, event_id):
        rsvp.status, rsvp.position = "going", None
        db.add(rsvp)
        db.flush()
        schedule_reminders(db, resident_id, "event", event_id, event.starts_at, now, offsets)
        return "going", rsvp
    rsvp.status, rsvp.position = "waitlist", next_position(db, Rsvp, Rsvp.event_id, event_id, "waitlist")
    db.add(rsvp)
    db.flush()
    return "waitlist", rsvp


def cancel_registration(db: Session, event_id: int, resident_id: int, *, now: datetime,
                        offsets: Iterable[timedelta], tz: str, domain: str = "katilim") -> str:
    """Cancel an RSVP or leave the waiting list; a freed place goes to the first on the waiting list
    (promoted automatically and told). Returns cancelled, left_waitlist or nothing."""
    event = lock_event(db, event_id)
    rsvp = rsvp_of(db, event_id, resident_id) if event else None
    if event is None or rsvp is None or rsvp.status not in ("going", "waitlist"):
        return "nothing"
    was = rsvp.status
    rsvp.status, rsvp.position, rsvp.updated_at = "cancelled", None, now
    db.add(rsvp)
    if was == "waitlist":
        return "left_waitlist"
    free_event_place(db, event_id)
    drop_reminders(db, "event", event_id, resident_id)
    db.flush()
    promote_waitlist(db, event_id, now=now, offsets=offsets, tz=tz, domain=domain)
    return "cancelled"


def promote_waitlist(db: Session, event_id: int, *, now: datetime, offsets: Iterable[timedelta], tz: str,
                     domain: str = "katilim") -> list[int]:
    """Fill free places from the waiting list, in order; each promoted resident is told (with the
    calendar file) and gets reminders. Call with the event row locked."""
    offsets = list(offsets)
    promoted: list[int] = []
    event = db.get(Event, event_id)
    db.refresh(event)
    if event.status != "active" or aware(event.starts_at) <= now:
        return promoted
    while True:
        first = db.exec(select(Rsvp).where(Rsvp.event_id == event_id, Rsvp.status == "waitlist")
                        .order_by(Rsvp.position, Rsvp.id).limit(1)).first()
        if first is None or not take_event_place(db, event_id):
            break
        first.status, first.position, first.updated_at = "going", None, now
        db.add(first)
        db.flush()
        db.refresh(event)
        schedule_reminders(db, first.resident_id, "event", event_id, event.starts_at, now, offsets)

        def build(t: Translator, lang: str, event=event) -> Outbound:
            return Outbound(t("event.promoted", title=event.title_in(lang),
                              when=span_text(event.starts_at, event.ends_at, lang, tz), place=event.place),
                            [Choice(f"{EVENT_PREFIX}:{event.id}:c", t("event.cancel_rsvp"))],
                            document=ics_attachment(event, lang, domain))

        notify.notify_resident(db, first.resident_id, build, tz=tz)
        promoted.append(first.resident_id)
    return promoted


def attendees(db: Session, event_id: int, statuses: Iterable[str] = ("going",)) -> list[Rsvp]:
    return list(db.exec(select(Rsvp).where(Rsvp.event_id == event_id, Rsvp.status.in_(list(statuses)))
                        .order_by(Rsvp.status, Rsvp.position, Rsvp.id)))


def check_in(db: Session, token: str, resident_id: int, *, now: datetime) -> tuple[str, Event | None]:
    """The venue's check-in link: attendance recorded (a walk-in without an RSVP is registered).
    Returns (outcome, event): done, already, invalid, not_now."""
    event = db.exec(select(Event).where(Event.checkin_token == token)).first() if token else None
    if event is None or event.status != "active":
        return "invalid", event
    if not (aware(event.starts_at) - CHECKIN_OPENS <= now <= aware(event.ends_at) + CHECKIN_CLOSES):
        return "not_now", event
    event = lock_event(db, event.id)
    rsvp = rsvp_of(db, event.id, resident_id)
    if rsvp is not None and rsvp.checked_in_at is not None:
        return "already", event
    if rsvp is None or rsvp.status != "going":
        # at the door: counted even when the event was full on paper
        if not take_event_place(db, event.id):
            db.exec(update(Event).where(Event.id == event.id).values(going=Event.going + 1)
                    .execution_options(synchronize_session=False))
        rsvp = rsvp or Rsvp(event_id=event.id, resident_id=resident_id, created_at=now)
        rsvp.status, rsvp.position = "going", None
    rsvp.checked_in_at, rsvp.updated_at = now, now
    db.add(rsvp)
    return "done", event


def request_feedback(db: Session, now: datetime, *, tz: str, window: timedelta = FEEDBACK_WINDOW) -> int:
    """The "feedback" job: once per event that ended (recently), ask everyone who came for a
    rating with 1-5 buttons. Claimed with a conditional UPDATE, so no event is asked twice."""
    asked = 0
    for event in db.exec(select(Event).where(Event.status == "active", Event.ends_at <= now,
                                             Event.ends_at > now - window,
                                             Event.feedback_requested_at.is_(None))
                         .order_by(Event.ends_at).limit(50)).all():
        claimed = db.exec(update(Event).where(Event.id == event.id, Event.feedback_requested_at.is_(None))
                          .values(feedback_requested_at=now).execution_options(synchronize_session=False))
        if not claimed.rowcount:
            continue

        def build(t: Translator, lang: str, event=event) -> Outbound:
            return Outbound(t("event.feedback.ask", title=event.title_in(lang)),
                            [Choice(f"{FEEDBACK_PREFIX}:{event.id}:{n}", str(n)) for n in range(1, 6)], columns=5)

        for rsvp in attendees(db, event.id):
            asked += notify.notify_resident(db, rsvp.resident_id, build, tz=tz)
    return asked


def record_rating(db: Session, event_id: int, resident_id: int, rating: int, now: datetime) -> str:
    """ok, not_attended, bad."""
    if not 1 <= rating <= 5:
        return "bad"
    rsvp = rsvp_of(db, event_id, resident_id)
    if rsvp is None or rsvp.status != "going":
        return "not_attended"
    row = db.exec(select(EventFeedback).where(EventFeedback.event_id == event_id,
                                              EventFeedback.resident_id == resident_id)).first()
    row = row or EventFeedback(event_id=event_id, resident_id=resident_id, rating=rating, created_at=now)
    row.rating = rating
    db.add(row)
    return "ok"


def record_comment(db: Session, event_id: int, resident_id: int, comment: str) -> bool:
    row = db.exec(select(EventFeedback).where(EventFeedback.event_id == event_id,
                                              EventFeedback.resident_id == resident_id)).first()
    if row is None:
        return False
    row.comment = comment.strip()[:2000]
    db.add(row)
    return True


@dataclass
class FeedbackSummary:
    count: int
    average: float | None
    histogram: dict[int, int]
    comments: list[str]


def feedback_summary(db: Session, event_id: int) -> FeedbackSummary:
    rows = list(db.exec(select(EventFeedback).where(EventFeedback.event_id == event_id).order_by(EventFeedback.id)))
    histogram = {n: sum(1 for r in rows if r.rating == n) for n in range(1, 6)}
    average = round(sum(r.rating for r in rows) / len(rows), 2) if rows else None
    return FeedbackSummary(len(rows), average, histogram, [r.comment for r in rows if r.comment])
