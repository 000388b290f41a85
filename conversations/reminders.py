"""Reminders before an event one registered for and a volunteer duty one accepted (with the
"reminders" consent): planned at the configured offsets before the start (REMINDER_OFFSETS,
default 24 h and 2 h), moved when the start moves, dropped when the place is given back, and sent
by the "reminders" job (bot/participation_jobs.py) through the outbox. The consent's hooks live
here too: withdrawn, every pending reminder is dropped; given again, they are planned again."""
from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Callable, Iterable

from sqlalchemy import update
from sqlmodel import Session, select

from conversations import notify
from conversations.i18n import Translator
from conversations.messages import Choice, Outbound
from conversations.participation import CALL_PREFIX, EVENT_PREFIX
from conversations.registry import Router
from conversations.when import span_text
from storage.consents import current_consents, current_consents_many
from storage.db import aware, one_of
from storage.participation import (
    CALL_HELD,
    CallResponse,
    Event,
    Reminder,
    Rsvp,
    VolunteerCall,
    claim_due_reminders,
    settle_reminders,
)

if TYPE_CHECKING:
    from conversations.step import EngineConfig

log = logging.getLogger(__name__)
# The "reminders" consent's hooks (reminders are for events and for calls alike).
router = Router("reminders")

DEFAULT_OFFSETS = (timedelta(hours=24), timedelta(hours=2))
DEFAULT_GRACE = timedelta(minutes=30)


def offsets_of(settings: Any) -> list[timedelta]:
    if settings is None or not hasattr(settings, "reminder_offsets"):
        return list(DEFAULT_OFFSETS)
    return list(settings.reminder_offsets)


def grace_of(settings: Any) -> timedelta:
    return getattr(settings, "reminder_grace", None) or DEFAULT_GRACE


def schedule_reminders(db: Session, resident_id: int, kind: str, subject_id: int, starts_at: datetime,
                       now: datetime, offsets: Iterable[timedelta]) -> int:
    """One pending reminder per offset still ahead (with the resident's "reminders" consent).

    Existing rows follow a new start time: pending ones move; one already sent is armed again only
    when its new time is still ahead (the event moved, the resident must hear the new time)."""
    if not current_consents(db, resident_id).get("reminders"):
        return 0
    made = 0
    starts_at = aware(starts_at)
    for offset in offsets:
        due = starts_at - offset
        seconds = int(offset.total_seconds())
        row = db.exec(select(Reminder).where(Reminder.resident_id == resident_id, Reminder.subject_kind == kind,
                                             Reminder.subject_id == subject_id,
                                             Reminder.offset_seconds == seconds)).first()
        if due <= now:
            if row is not None and row.status == "pending":
                row.status, row.note = "dropped", "passed"
                db.add(row)
            continue
        if row is None:
            row = Reminder(resident_id=resident_id, subject_kind=kind, subject_id=subject_id,
                           offset_seconds=seconds, due_at=due, created_at=now)
        row.due_at, row.status, row.sent_at, row.note = due, "pending", None, ""
        db.add(row)
        made += 1
    return made


def drop_reminders(db: Session, kind: str, subject_id: int, resident_id: int | None = None,
                   note: str = "cancelled") -> int:
    query = update(Reminder).where(Reminder.subject_kind == kind, Reminder.subject_id == subject_id,
                                   Reminder.status == "pending")
    if resident_id is not None:
        query = query.where(Reminder.resident_id == resident_id)
    return db.exec(query.values(status="dropped", note=note).execution_options(synchronize_session=False)).rowcount or 0


def enable_reminders_for(db: Session, resident_id: int, now: datetime, offsets: Iterable[timedelta]) -> int:
    """After a resident turns reminders on: reminders for everything they are registered for."""
    offsets = list(offsets)
    made = 0
    for _rsvp, event in db.exec(select(Rsvp, Event).join(Event, Event.id == Rsvp.event_id).where(
            Rsvp.resident_id == resident_id, Rsvp.status == "going", Event.status == "active",
            Event.starts_at > now)):
        made += schedule_reminders(db, resident_id, "event", event.id, event.starts_at, now, offsets)
    for _response, call in db.exec(select(CallResponse, VolunteerCall).join(
            VolunteerCall, VolunteerCall.id == CallResponse.call_id).where(
            CallResponse.resident_id == resident_id, CallResponse.status == "accepted",
            VolunteerCall.status.in_(CALL_HELD), VolunteerCall.starts_at > now)):
        made += schedule_reminders(db, resident_id, "call", call.id, call.starts_at, now, offsets)
    return made


def has_pending_reminders(db: Session, resident_id: int, kind: str, subject_id: int) -> bool:
    return db.exec(select(Reminder.id).where(Reminder.resident_id == resident_id, Reminder.subject_kind == kind,
                                             Reminder.subject_id == subject_id, Reminder.status == "pending")
                   ).first() is not None


@dataclass
class ScanResult:
    sent: int = 0
    dropped: int = 0


def send_due_reminders(db: Session, now: datetime, *, grace: timedelta = DEFAULT_GRACE,
                       tz: str = "Europe/Istanbul", limit: int = 200) -> ScanResult:
    """The "reminders" job: due pending reminders become outbox rows in this transaction.

    Claimed race-free (storage.participation.claim_due_reminders: FOR UPDATE SKIP LOCKED on
    PostgreSQL, BEGIN IMMEDIATE on SQLite) and settled with a conditional status update, so a
    reminder is never sent twice, and pending rows survive a restart. One whose time passed more
    than `grace` ago (the bot was down) is dropped and logged, as is one whose subject is gone
    (cancelled, started, the resident cancelled, consent withdrawn). The whole batch costs a fixed
    number of queries (consents, subjects, registrations, recipients, outbox rows, settlement),
    whatever its size."""
    result = ScanResult()
    due = claim_due_reminders(db, now, limit)
    if not due:
        return result
    consents = current_consents_many(db, {r.resident_id for r in due})
    subjects = _ReminderSubjects(db, due)
    builds: dict[int, Callable[[Translator, str], Outbound]] = {}
    dropped: dict[int, str] = {}
    for reminder in due:
        reason, build = _reminder_message(reminder, now, grace, tz, consents, subjects)
        if reason is None:
            builds[reminder.id] = build
        else:
            dropped[reminder.id] = reason
    by_id = {r.id: r for r in due}
    reached = notify.notify_residents(db, [(by_id[rid].resident_id, build) for rid, build in builds.items()],
                                      kind="reminder", tz=tz)
    sent = [rid for rid in builds if by_id[rid].resident_id in reached]
    for rid in builds:
        if by_id[rid].resident_id not in reached:
            dropped[rid] = "unreachable"
    settle_reminders(db, sent, "sent", now)
    for reason in set(dropped.values()):
        settle_reminders(db, [rid for rid, why in dropped.items() if why == reason], "dropped", now, reason)
    for rid, reason in dropped.items():
        r = by_id[rid]
        log.info("reminder %s (%s %s, resident %s, due %s) dropped: %s", rid, r.subject_kind, r.subject_id,
                 r.resident_id, aware(r.due_at).isoformat(), reason)
    result.sent, result.dropped = len(sent), len(dropped)
    return result


class _ReminderSubjects:
    """The events and calls of a batch of reminders with their registrations, in four queries."""

    def __init__(self, db: Session, due: list[Reminder]) -> None:
        event_ids = {r.subject_id for r in due if r.subject_kind == "event"}
        call_ids = {r.subject_id for r in due if r.subject_kind != "event"}
        self.events = ({e.id: e for e in db.exec(select(Event).where(one_of(db, Event.id, event_ids)))}
                       if event_ids else {})
        residents = {r.resident_id for r in due}
        # both IN lists: the (event_id, resident_id) unique index is probed for each pair
        # statuses as columns: ORM objects of a hundred rows cost more than the query
        self.rsvps = {(e, r): status for e, r, status in db.exec(
            select(Rsvp.event_id, Rsvp.resident_id, Rsvp.status)
            .where(one_of(db, Rsvp.event_id, event_ids), one_of(db, Rsvp.resident_id, residents)))
        } if event_ids else {}
        self.calls = {c.id: c for c in db.exec(
            select(VolunteerCall).where(one_of(db, VolunteerCall.id, call_ids)))} if call_ids else {}
        self.responses = {(c, r): status for c, r, status in db.exec(
            select(CallResponse.call_id, CallResponse.resident_id, CallResponse.status)
            .where(one_of(db, CallResponse.call_id, call_ids), one_of(db, CallResponse.resident_id, residents)))
        } if call_ids else {}


def _reminder_message(reminder: Reminder, now: datetime, grace: timedelta, tz: str,
                      consents: dict[int, dict[str, bool]], subjects: _ReminderSubjects):
    if now - aware(reminder.due_at) > grace:
        return "missed", None
    if not consents.get(reminder.resident_id, {}).get("reminders"):
        return "no_consent", None
    if reminder.subject_kind == "event":
        event = subjects.events.get(reminder.subject_id)
        if event is None or event.status != "active" or subjects.rsvps.get(
                (reminder.subject_id, reminder.resident_id)) != "going":
            return "not_going", None
        if aware(event.starts_at) <= now:
            return "started", None

        def build(t: Translator, lang: str) -> Outbound:
            return Outbound(t("reminder.event", title=event.title_in(lang),
                              when=span_text(event.starts_at, event.ends_at, lang, tz), place=event.place),
                            [Choice(f"{EVENT_PREFIX}:{event.id}:c", t("event.cancel_rsvp"))])

        return None, build
    call = subjects.calls.get(reminder.subject_id)
    if call is None or call.status not in CALL_HELD or subjects.responses.get(
            (reminder.subject_id, reminder.resident_id)) != "accepted":
        return "not_going", None
    if aware(call.starts_at) <= now:
        return "started", None

    def build_call(t: Translator, lang: str) -> Outbound:
        return Outbound(t("reminder.call", what=call.what, when=span_text(call.starts_at, call.ends_at, lang, tz),
                          place=call.place),
                        [Choice(f"{CALL_PREFIX}:{call.id}:c", t("volunteer.call.cancel_button"))])

    return None, build_call


def withdraw_reminders(db: Session, resident_id: int) -> int:
    """The "reminders" consent withdrawn: every pending reminder of theirs is dropped now (the send
    time check would drop it too); granted again, `enable_reminders_for` plans them again."""
    return db.exec(update(Reminder).where(Reminder.resident_id == resident_id, Reminder.status == "pending")
                   .values(status="dropped", note="no_consent").execution_options(synchronize_session=False)
                   ).rowcount or 0


@router.on_withdrawal("reminders")
def drop_reminders_of(db: Session, resident_id: int, now: datetime, config: "EngineConfig") -> None:
    withdraw_reminders(db, resident_id)


@router.on_grant("reminders")
def reminders_again(db: Session, resident_id: int, now: datetime, config: "EngineConfig") -> None:
    """Given again after onboarding: reminders for what they are registered for come back."""
    enable_reminders_for(db, resident_id, now, offsets_of(config.settings))
