"""Staff operations on events, one function each, called by the chat (/etkinlikekle, an event's
edit menu: conversations/events.py) and the CLI (`katilim events`: bot/cli_events.py) alike. Each
takes the Actor, checks "event.manage" (a refusal is audited, then raised as Refused), writes the
change, its audit row and the attendees' outbox notices in the caller's transaction, and returns
what happened. A rule that cannot be met raises ParticipationError with a catalog key."""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Iterable

from sqlmodel import Session

from conversations import notify
from conversations.attendance import attendees, new_checkin_token, promote_waitlist
from conversations.calendar_files import ics_attachment
from conversations.domain import authorise
from conversations.i18n import N_, Translator
from conversations.messages import Choice, Outbound
from conversations.participation import EVENT_PREFIX, Ended, ParticipationError
from conversations.permissions import Actor
from conversations.reminders import drop_reminders, schedule_reminders
from conversations.when import span_text
from storage.audit import audit
from storage.db import aware, utcnow
from storage.participation import EVENT_TYPES, Event, lock_event

ACTION = "event.manage"


def validate_event(*, title: dict[str, str], type: str, starts_at: datetime, ends_at: datetime,
                   capacity: int | None, deadline: datetime | None) -> None:
    if not (title.get("tr") or "").strip():
        raise ParticipationError(N_("event.title_needed"))
    if type not in EVENT_TYPES:
        raise ParticipationError(N_("event.bad_type"))
    if aware(ends_at) <= aware(starts_at):
        raise ParticipationError(N_("event.end_before_start"))
    if capacity is not None and capacity < 1:
        raise ParticipationError(N_("event.bad_number"))
    if deadline is not None and aware(deadline) > aware(ends_at):
        raise ParticipationError(N_("event.deadline_after_end"))


def create_event(db: Session, actor: Actor, *, title: dict[str, str], description: dict[str, str] | None = None,
                 type: str = "other", starts_at: datetime, ends_at: datetime, place: str = "",
                 latitude: float | None = None, longitude: float | None = None, capacity: int | None = None,
                 registration_deadline: datetime | None = None, now: datetime | None = None) -> Event:
    """A new event (it starts in the future); returns it, with its id and check-in token."""
    authorise(db, actor, ACTION, "event:new")
    now = now or utcnow()
    title = {k: v.strip() for k, v in title.items() if v and v.strip()}
    description = {k: v.strip() for k, v in (description or {}).items() if v and v.strip()}
    validate_event(title=title, type=type, starts_at=starts_at, ends_at=ends_at, capacity=capacity,
                   deadline=registration_deadline)
    if aware(starts_at) <= now:
        raise ParticipationError(N_("event.in_past"))
    event = Event(title=title, description=description, type=type, starts_at=starts_at, ends_at=ends_at,
                  place=place.strip()[:255], latitude=latitude, longitude=longitude, capacity=capacity,
                  registration_deadline=registration_deadline, checkin_token=new_checkin_token(),
                  created_by=actor.who[:64], created_at=now, updated_at=now)
    db.add(event)
    db.flush()
    audit(db, actor.who, "event.created", f"event:{event.id}")
    return event


@dataclass
class EventChange:
    title: dict[str, str] | None = None
    description: dict[str, str] | None = None
    type: str | None = None
    starts_at: datetime | None = None
    ends_at: datetime | None = None
    place: str | None = None
    latitude: float | None = None
    longitude: float | None = None
    clear_pin: bool = False
    capacity: int | None = None
    clear_capacity: bool = False
    registration_deadline: datetime | None = None
    clear_deadline: bool = False


@dataclass
class Edited:
    """What an edit did: the event as it is now, the residents told, whether it moved in time or place."""

    event: Event
    told: int
    moved: bool
    relocated: bool


def update_event(db: Session, actor: Actor, event_id: int, change: EventChange, *, now: datetime,
                 offsets: Iterable[timedelta], tz: str, domain: str = "katilim") -> Edited:
    """Edit an event. A new time or place is told to everyone registered or waiting (in their
    language, with a new calendar file for those going); reminders follow the new time; a larger
    capacity promotes from the waiting list."""
    authorise(db, actor, ACTION, f"event:{event_id}")
    offsets = list(offsets)
    event = lock_event(db, event_id)
    if event is None:
        raise ParticipationError(N_("event.not_found"))
    if event.status != "active":
        raise ParticipationError(N_("event.is_cancelled"))
    old_start, old_end, old_place = aware(event.starts_at), aware(event.ends_at), event.place
    old_pin = (event.latitude, event.longitude)
    if change.title is not None:
        event.title = {**event.title, **{k: v.strip() for k, v in change.title.items() if v and v.strip()}}
    if change.description is not None:
        event.description = {**event.description, **{k: v.strip() for k, v in change.description.items()}}
        event.description = {k: v for k, v in event.description.items() if v}
    if change.type is not None:
        event.type = change.type
    if change.starts_at is not None:
        event.starts_at = change.starts_at
    if change.ends_at is not None:
        event.ends_at = change.ends_at
    elif change.starts_at is not None:  # moved without a new end: the same length
        event.ends_at = change.starts_at + (old_end - old_start)
    if change.place is not None:
        event.place = change.place.strip()[:255]
    if change.clear_pin:
        event.latitude = event.longitude = None
    elif change.latitude is not None and change.longitude is not None:
        event.latitude, event.longitude = change.latitude, change.longitude
    if change.clear_capacity:
        event.capacity = None
    elif change.capacity is not None:
        event.capacity = change.capacity
    if change.clear_deadline:
        event.registration_deadline = None
    elif change.registration_deadline is not None:
        event.registration_deadline = change.registration_deadline
    try:
        validate_event(title=event.title, type=event.type, starts_at=event.starts_at, ends_at=event.ends_at,
                       capacity=event.capacity, deadline=event.registration_deadline)
    except ParticipationError:
        db.refresh(event)  # nothing of the refused change stays in the session (the step still commits)
        raise
    moved = aware(event.starts_at) != old_start or aware(event.ends_at) != old_end
    relocated = event.place != old_place or (event.latitude, event.longitude) != old_pin
    if moved or relocated:
        event.sequence += 1
    if moved and aware(event.ends_at) > now:
        event.feedback_requested_at = None
    event.updated_at = now
    db.add(event)
    db.flush()
    told = 0
    if moved or relocated:
        for rsvp in attendees(db, event.id, ("going", "waitlist")):
            told += notify.notify_resident(db, rsvp.resident_id,
                                           change_notice(event, rsvp.status == "going", tz, domain), tz=tz)
            if moved and rsvp.status == "going":
                schedule_reminders(db, rsvp.resident_id, "event", event.id, event.starts_at, now, offsets)
    promote_waitlist(db, event.id, now=now, offsets=offsets, tz=tz, domain=domain)
    audit(db, actor.who, "event.edited", f"event:{event.id}", moved=moved, relocated=relocated, told=told)
    return Edited(event, told, moved, relocated)


def change_notice(event: Event, going: bool, tz: str, domain: str):
    def build(t: Translator, lang: str) -> Outbound:
        out = Outbound(t("event.changed", title=event.title_in(lang),
                         when=span_text(event.starts_at, event.ends_at, lang, tz), place=event.place),
                       [Choice(f"{EVENT_PREFIX}:{event.id}:c",
                               t(N_("event.cancel_rsvp") if going else N_("event.leave_waitlist")))])
        if going:
            out.document = ics_attachment(event, lang, domain)
        return out
    return build


def cancel_event(db: Session, actor: Actor, event_id: int, *, now: datetime, tz: str,
                 domain: str = "katilim") -> Ended:
    """Cancel an event: everyone registered or waiting is told; reminders dropped."""
    authorise(db, actor, ACTION, f"event:{event_id}")
    event = lock_event(db, event_id)
    if event is None:
        raise ParticipationError(N_("event.not_found"))
    if event.status == "cancelled":
        return Ended(event.id, 0, already=True)
    event.status, event.updated_at = "cancelled", now
    event.sequence += 1
    db.add(event)
    told = 0
    for rsvp in attendees(db, event.id, ("going", "waitlist")):
        def build(t: Translator, lang: str) -> Outbound:
            return Outbound(t("event.cancelled_notice", title=event.title_in(lang),
                              when=span_text(event.starts_at, event.ends_at, lang, tz)))

        told += notify.notify_resident(db, rsvp.resident_id, build, tz=tz)
    drop_reminders(db, "event", event.id, note="event_cancelled")
    audit(db, actor.who, "event.cancelled", f"event:{event.id}", told=told)
    return Ended(event.id, told)
