"""Volunteer pools, calls for volunteers, events, RSVPs, feedback and reminders (issue 5): tables.

The rules that use them live in conversations/ (attendance.py: places and the waiting list;
pools.py: volunteers and the reserve list; reminders.py; domain/events.py and
domain/volunteering.py: the staff operations); this module holds the tables and the few
statements that must be race-safe:

* a place is taken with one conditional UPDATE of a counter on the call or event row
  (``accepted < capacity`` / ``going < capacity``), after the row is locked (FOR UPDATE on
  PostgreSQL; SQLite's BEGIN IMMEDIATE already serialises writers). Two taps at once: one row
  updated, one not.
* due reminders are claimed with FOR UPDATE SKIP LOCKED on PostgreSQL and a conditional
  ``status = 'pending'`` UPDATE, in the transaction that writes their outbox rows.
"""
from __future__ import annotations

from datetime import datetime
from typing import Any, Optional

from sqlalchemy import JSON, Column, Index, Text, UniqueConstraint, func, update
from sqlmodel import Field, Session, SQLModel, select

from storage.db import is_postgres, one_of, utcnow

CALL_HELD = ("open", "closed")  # a call whose accepted volunteers still come (duties, reminders)
EVENT_TYPES = ("panel", "konferans", "atolye", "odak_grup", "sosyo_kulturel", "other")
AVAILABILITY = ("weekdays", "weekends", "evenings")


class PoolMembership(SQLModel, table=True):
    """A resident in a volunteer pool (a catalog pool key), with skills and availability."""

    __tablename__ = "pool_membership"
    __table_args__ = (UniqueConstraint("resident_id", "pool", name="uq_pool_membership_resident_pool"),)
    id: Optional[int] = Field(default=None, primary_key=True)
    resident_id: int = Field(foreign_key="resident.id", index=True)
    pool: str = Field(max_length=32, index=True)
    skills: str = Field(default="", sa_column=Column(Text, nullable=False, default=""))  # free text
    skill_tags: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))  # catalog keys
    weekdays: bool = Field(default=False)
    weekends: bool = Field(default=False)
    evenings: bool = Field(default=False)
    mahalle: Optional[str] = Field(default=None, max_length=64)
    joined_at: datetime = Field(default_factory=utcnow)


class VolunteerCall(SQLModel, table=True):
    """Staff ask one or more pools for volunteers: what, where, when, how many."""

    __tablename__ = "volunteer_call"
    id: Optional[int] = Field(default=None, primary_key=True)
    pools: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    what: str = Field(sa_column=Column(Text, nullable=False))
    place: str = Field(default="", max_length=255)
    starts_at: datetime = Field(index=True)
    ends_at: datetime
    capacity: int = Field(default=1)
    accepted: int = Field(default=0)  # places taken (the race-safe counter)
    invited: int = Field(default=0)  # volunteers the call was sent to
    # open; closed (no more answers: who accepted still comes, CALL_HELD); cancelled
    status: str = Field(default="open", max_length=16)
    created_by: str = Field(default="", max_length=64)
    created_at: datetime = Field(default_factory=utcnow)


class CallResponse(SQLModel, table=True):
    """One volunteer and one call: invited, accepted, declined, reserve (with position), cancelled."""

    __tablename__ = "call_response"
    __table_args__ = (UniqueConstraint("call_id", "resident_id", name="uq_call_response_call_resident"),)
    id: Optional[int] = Field(default=None, primary_key=True)
    call_id: int = Field(foreign_key="volunteer_call.id", index=True)
    resident_id: int = Field(foreign_key="resident.id", index=True)
    status: str = Field(default="invited", max_length=16)
    position: Optional[int] = None  # place on the reserve list
    responded_at: Optional[datetime] = None
    updated_at: datetime = Field(default_factory=utcnow)


class Event(SQLModel, table=True):
    """A panel, conference, workshop, focus group or socio-cultural event."""

    __tablename__ = "event"
    id: Optional[int] = Field(default=None, primary_key=True)
    title: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))  # per language
    description: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    type: str = Field(default="other", max_length=16)
    starts_at: datetime = Field(index=True)
    ends_at: datetime
    place: str = Field(default="", max_length=255)
    latitude: Optional[float] = None
    longitude: Optional[float] = None
    capacity: Optional[int] = None  # None: no limit
    going: int = Field(default=0)  # places taken (the race-safe counter)
    registration_deadline: Optional[datetime] = None
    status: str = Field(default="active", max_length=16, index=True)  # active, cancelled
    checkin_token: str = Field(max_length=32, unique=True)
    sequence: int = Field(default=0)  # bumped at each change of time or place (the .ics SEQUENCE)
    anonymous_checkins: int = Field(default=0)  # check-ins of residents who erased their data since
    feedback_requested_at: Optional[datetime] = None
    created_by: str = Field(default="", max_length=64)
    created_at: datetime = Field(default_factory=utcnow)
    updated_at: datetime = Field(default_factory=utcnow)

    def title_in(self, lang: str) -> str:
        return self.title.get(lang) or self.title.get("tr") or next(iter(self.title.values()), "")

    def description_in(self, lang: str) -> str:
        return self.description.get(lang) or self.description.get("tr") or ""


class Rsvp(SQLModel, table=True):
    """A resident's registration: going, waitlist (with position) or cancelled; attendance."""

    __tablename__ = "rsvp"
    __table_args__ = (UniqueConstraint("event_id", "resident_id", name="uq_rsvp_event_resident"),
                      Index("ix_rsvp_event_status", "event_id", "status", "position"))
    id: Optional[int] = Field(default=None, primary_key=True)
    event_id: int = Field(foreign_key="event.id")
    resident_id: int = Field(foreign_key="resident.id", index=True)
    status: str = Field(default="going", max_length=16)
    position: Optional[int] = None
    checked_in_at: Optional[datetime] = None
    created_at: datetime = Field(default_factory=utcnow)
    updated_at: datetime = Field(default_factory=utcnow)


class EventFeedback(SQLModel, table=True):
    """A rating 1-5 and an optional comment after an event; kept without the resident on erasure."""

    __tablename__ = "event_feedback"
    __table_args__ = (UniqueConstraint("event_id", "resident_id", name="uq_event_feedback_event_resident"),)
    id: Optional[int] = Field(default=None, primary_key=True)
    event_id: int = Field(foreign_key="event.id", index=True)
    resident_id: Optional[int] = Field(default=None, foreign_key="resident.id", index=True)
    rating: int
    comment: str = Field(default="", sa_column=Column(Text, nullable=False, default=""))
    created_at: datetime = Field(default_factory=utcnow)


class Reminder(SQLModel, table=True):
    """One reminder to one resident about an event or a volunteer call, due at a time.

    A periodic scan turns due rows into outbox messages (never one scheduler job per reminder)."""

    __tablename__ = "reminder"
    __table_args__ = (UniqueConstraint("resident_id", "subject_kind", "subject_id", "offset_seconds",
                                       name="uq_reminder_subject_offset"),
                      Index("ix_reminder_subject", "subject_kind", "subject_id"),
                      Index("ix_reminder_status_due", "status", "due_at"))
    id: Optional[int] = Field(default=None, primary_key=True)
    resident_id: int = Field(foreign_key="resident.id", index=True)
    subject_kind: str = Field(max_length=8)  # event, call
    subject_id: int
    offset_seconds: int
    due_at: datetime = Field(index=True)
    status: str = Field(default="pending", max_length=16)  # pending, sent, dropped
    sent_at: Optional[datetime] = None
    note: str = Field(default="", max_length=64)  # why a reminder was dropped
    created_at: datetime = Field(default_factory=utcnow)


# ---------------------------------------------------------------- race-safe statements
def lock_event(db: Session, event_id: int) -> Event | None:
    """The event row, locked until commit (PostgreSQL; SQLite's BEGIN IMMEDIATE holds the write lock)."""
    row = db.exec(select(Event).where(Event.id == event_id).with_for_update()
                  .execution_options(populate_existing=True)).first()
    return row


def lock_call(db: Session, call_id: int) -> VolunteerCall | None:
    return db.exec(select(VolunteerCall).where(VolunteerCall.id == call_id).with_for_update()
                   .execution_options(populate_existing=True)).first()


def take_event_place(db: Session, event_id: int) -> bool:
    """Take one place if one is free: one conditional UPDATE; True when this transaction got it."""
    result = db.exec(update(Event).where(Event.id == event_id, Event.status == "active",
                                         Event.capacity.is_(None) | (Event.going < Event.capacity))
                     .values(going=Event.going + 1).execution_options(synchronize_session=False))
    return (result.rowcount or 0) == 1


def free_event_place(db: Session, event_id: int) -> None:
    db.exec(update(Event).where(Event.id == event_id, Event.going > 0).values(going=Event.going - 1)
            .execution_options(synchronize_session=False))


def take_call_place(db: Session, call_id: int) -> bool:
    result = db.exec(update(VolunteerCall).where(VolunteerCall.id == call_id, VolunteerCall.status == "open",
                                                 VolunteerCall.accepted < VolunteerCall.capacity)
                     .values(accepted=VolunteerCall.accepted + 1).execution_options(synchronize_session=False))
    return (result.rowcount or 0) == 1


def free_call_place(db: Session, call_id: int) -> None:
    db.exec(update(VolunteerCall).where(VolunteerCall.id == call_id, VolunteerCall.accepted > 0)
            .values(accepted=VolunteerCall.accepted - 1).execution_options(synchronize_session=False))


def next_position(db: Session, model, parent_column, parent_id: int, status: str) -> int:
    """The next place on a waiting or reserve list (call after locking the parent row)."""
    top = db.exec(select(func.max(model.position)).where(parent_column == parent_id, model.status == status)).one()
    return int(top or 0) + 1


def claim_due_reminders(db: Session, now: datetime, limit: int = 200) -> list[Reminder]:
    """Due pending reminders, claimed for this transaction: FOR UPDATE SKIP LOCKED on PostgreSQL
    (several workers never take the same row), SQLite's BEGIN IMMEDIATE elsewhere. The caller marks
    each one sent or dropped with `settle_reminder` before committing."""
    query = (select(Reminder).where(Reminder.status == "pending", Reminder.due_at <= now)
             .order_by(Reminder.due_at, Reminder.id).limit(limit))
    if is_postgres(db):
        query = query.with_for_update(skip_locked=True)
    return list(db.exec(query.execution_options(populate_existing=True)))


def settle_reminders(db: Session, reminder_ids: list[int], status: str, now: datetime, note: str = "") -> int:
    """pending → sent or dropped for a batch claimed by this transaction (its rows are locked:
    FOR UPDATE on PostgreSQL, BEGIN IMMEDIATE on SQLite, so no status guard is needed; one would
    also lead SQLite's planner to the status index, scanning every pending reminder)."""
    if not reminder_ids:
        return 0
    values: dict[str, Any] = {"status": status, "note": note[:64]}
    if status == "sent":
        values["sent_at"] = now
    result = db.exec(update(Reminder).where(one_of(db, Reminder.id, reminder_ids))
                     .values(**values).execution_options(synchronize_session=False))
    return result.rowcount or 0


def settle_reminder(db: Session, reminder_id: int, status: str, now: datetime, note: str = "") -> bool:
    """pending → sent or dropped; False when another transaction settled it first."""
    values: dict[str, Any] = {"status": status, "note": note[:64]}
    if status == "sent":
        values["sent_at"] = now
    result = db.exec(update(Reminder).where(Reminder.id == reminder_id, Reminder.status == "pending")
                     .values(**values).execution_options(synchronize_session=False))
    return (result.rowcount or 0) == 1
