"""Volunteer pools, calls for volunteers, events and reminders: the rules, shared by the
conversations (volunteer.py, events.py), the CLI (bot/cli_events.py, bot/cli_volunteer.py) and the
scheduler jobs (bot/participation_jobs.py). Every function works inside the caller's transaction;
messages to residents go through the outbox in that same transaction.

Places (a call's volunteers, an event's seats) are counters on the call / event row, taken with
one conditional UPDATE after the row is locked (storage/participation.py): two taps at once, one
place → exactly one wins, on SQLite and PostgreSQL.

Consent (KVKK):
* pools and calls for volunteers need "volunteering" (skills, availability and mahalle are kept
  to match volunteers with calls);
* an RSVP needs no extra consent: keeping the registration is what the resident asked for (the
  seat, the waiting list, news when the event changes); the legal basis is providing the
  requested service, as for any registration desk;
* reminders need "reminders": without it no reminder rows are written, and a reminder whose
  resident withdrew consent since is dropped at send time.
"""
from __future__ import annotations

import logging
import re
import secrets
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta, timezone
from functools import lru_cache
from typing import TYPE_CHECKING, Any, Callable, Iterable
from zoneinfo import ZoneInfo

from sqlalchemy import delete, update
from sqlmodel import Session, select

from conversations.i18n import N_, Translator, format_when, translator
from conversations.messages import Attachment, Choice, Outbound
from conversations.registry import Router
from storage import outbox, repo
from storage.db import one_of, utcnow
from storage.models import Resident
from storage.participation import (
    AVAILABILITY,
    EVENT_TYPES,
    CallResponse,
    Event,
    EventFeedback,
    PoolMembership,
    Reminder,
    Rsvp,
    VolunteerCall,
    claim_due_reminders,
    free_call_place,
    free_event_place,
    lock_call,
    lock_event,
    next_position,
    settle_reminders,
    take_call_place,
    take_event_place,
)

if TYPE_CHECKING:
    from conversations.step import EngineConfig

log = logging.getLogger(__name__)
# What events and volunteering share: the resident's data rights over both, and the reminders
# consent (reminders are for events and for calls alike).
router = Router("participation")

DEFAULT_OFFSETS = (timedelta(hours=24), timedelta(hours=2))
DEFAULT_GRACE = timedelta(minutes=30)
EVENING_FROM = time(17, 0)          # a call starting at 17:00 or later (local time) is an evening call
FEEDBACK_WINDOW = timedelta(days=2)  # feedback is asked only for events that ended this recently
CHECKIN_OPENS = timedelta(hours=2)   # the check-in link works from this long before the start...
CHECKIN_CLOSES = timedelta(hours=2)  # ...until this long after the end
# Global button prefixes (the routers' global choices): vc:<call>:<y|n|c|cy|t>,
# ev:<event>:<c|cy>, fb:<event>:<1-5>.
CALL_PREFIX, EVENT_PREFIX, FEEDBACK_PREFIX = "vc", "ev", "fb"

TYPE_KEYS = {"panel": N_("event.type.panel"), "konferans": N_("event.type.konferans"),
             "atolye": N_("event.type.atolye"), "odak_grup": N_("event.type.odak_grup"),
             "sosyo_kulturel": N_("event.type.sosyo_kulturel"), "other": N_("event.type.other")}
AVAILABILITY_KEYS = {"weekdays": N_("volunteer.avail.weekdays"), "weekends": N_("volunteer.avail.weekends"),
                     "evenings": N_("volunteer.avail.evenings")}
assert set(TYPE_KEYS) == set(EVENT_TYPES) and set(AVAILABILITY_KEYS) == set(AVAILABILITY)


class ParticipationError(ValueError):
    """An operation that cannot be done; `key` is a catalog key for the resident or staff."""

    def __init__(self, key: str, **params: Any) -> None:
        super().__init__(key)
        self.key = key
        self.params = params


# ---------------------------------------------------------------- settings and time
def offsets_of(settings: Any) -> list[timedelta]:
    if settings is None or not hasattr(settings, "reminder_offsets"):
        return list(DEFAULT_OFFSETS)
    return list(settings.reminder_offsets)


def grace_of(settings: Any) -> timedelta:
    return getattr(settings, "reminder_grace", None) or DEFAULT_GRACE


def aware(dt: datetime | None) -> datetime | None:
    return dt if dt is None or dt.tzinfo else dt.replace(tzinfo=timezone.utc)


_DIGITS = str.maketrans("٠١٢٣٤٥٦٧٨٩۰۱۲۳۴۵۶۷۸۹", "01234567890123456789")


def parse_local(text: str, tz: str, *, base: datetime | None = None) -> datetime:
    """A date and time typed in the municipality's time zone → aware UTC.

    "28.11.2026 14:00", "28/11/2026 14:00", "2026-11-28 14:00", "2026-11-28T14:00"; with `base`
    (the start of the same event) a bare "16:00" means that day. Raises ParticipationError."""
    zone = ZoneInfo(tz)
    numbers = re.findall(r"\d+", text.translate(_DIGITS))
    try:
        if len(numbers) == 2 and base is not None:
            day = base.astimezone(zone).date()
            clock = time(int(numbers[0]), int(numbers[1]))
        elif len(numbers) == 5 and len(numbers[0]) == 4:
            day = date(int(numbers[0]), int(numbers[1]), int(numbers[2]))
            clock = time(int(numbers[3]), int(numbers[4]))
        elif len(numbers) == 5 and len(numbers[2]) == 4:
            day = date(int(numbers[2]), int(numbers[1]), int(numbers[0]))
            clock = time(int(numbers[3]), int(numbers[4]))
        else:
            raise ValueError(text)
    except ValueError:
        raise ParticipationError(N_("event.bad_datetime")) from None
    return datetime.combine(day, clock, tzinfo=zone).astimezone(timezone.utc)


@lru_cache(maxsize=1024)  # a reminder scan or a broadcast formats the same event for many residents
def span_text(start: datetime, end: datetime, lang: str, tz: str) -> str:
    """'28 Kasım 2026 Cumartesi 14:00–16:00', or both dates in full when the end is another day."""
    zone = ZoneInfo(tz)
    if start.astimezone(zone).date() == end.astimezone(zone).date():
        return f"{format_when(start, lang, tz)}–{end.astimezone(zone):%H:%M}"
    return f"{format_when(start, lang, tz)} – {format_when(end, lang, tz)}"


# ---------------------------------------------------------------- links, calendar files
def event_link(bot_username: str, event_id: int) -> str:
    return f"https://t.me/{bot_username}?start=ev_{event_id}"


def checkin_link(bot_username: str, token: str) -> str:
    return f"https://t.me/{bot_username}?start=ci_{token}"


def ics_escape(text: str) -> str:
    """RFC 5545 TEXT: backslash, semicolon, comma escaped; newlines as \\n."""
    return (text.replace("\\", "\\\\").replace(";", "\\;").replace(",", "\\,")
            .replace("\r\n", "\\n").replace("\n", "\\n").replace("\r", "\\n"))


def _fold_line(line: str) -> list[str]:
    """Lines longer than 75 octets are folded (CRLF + space), never inside a UTF-8 character."""
    out, current = [], ""
    for char in line:
        limit = 75 if not out else 74
        if len((current + char).encode("utf-8")) > limit:
            out.append(current)
            current = char
        else:
            current += char
    out.append(current)
    return [out[0]] + [" " + part for part in out[1:]]


def _ics_time(dt: datetime) -> str:
    return aware(dt).astimezone(timezone.utc).strftime("%Y%m%dT%H%M%SZ")


def event_ics(event: Event, lang: str, *, domain: str = "katilim", now: datetime | None = None,
              cancelled: bool = False) -> str:
    """A calendar file with one VEVENT (UID stable per event, times in UTC, SEQUENCE bumped at each change)."""
    lines = ["BEGIN:VCALENDAR", "VERSION:2.0", "PRODID:-//Katilim//Katilim participation chatbot//TR",
             "CALSCALE:GREGORIAN", f"METHOD:{'CANCEL' if cancelled else 'PUBLISH'}", "BEGIN:VEVENT",
             f"UID:event-{event.id}@{domain}", f"DTSTAMP:{_ics_time(now or utcnow())}",
             f"DTSTART:{_ics_time(event.starts_at)}", f"DTEND:{_ics_time(event.ends_at)}",
             f"SEQUENCE:{event.sequence}", f"SUMMARY:{ics_escape(event.title_in(lang))}"]
    if event.place:
        lines.append(f"LOCATION:{ics_escape(event.place)}")
    if event.latitude is not None and event.longitude is not None:
        lines.append(f"GEO:{event.latitude:.6f};{event.longitude:.6f}")
    description = event.description_in(lang)
    if description:
        lines.append(f"DESCRIPTION:{ics_escape(description)}")
    lines += [f"STATUS:{'CANCELLED' if cancelled or event.status == 'cancelled' else 'CONFIRMED'}",
              "END:VEVENT", "END:VCALENDAR"]
    return "".join(part + "\r\n" for line in lines for part in _fold_line(line))


def ics_attachment(event: Event, lang: str, domain: str = "katilim") -> Attachment:
    return Attachment(f"etkinlik-{event.id}.ics", "text/calendar", event_ics(event, lang, domain=domain))


# ---------------------------------------------------------------- reminders
def schedule_reminders(db: Session, resident_id: int, kind: str, subject_id: int, starts_at: datetime,
                       now: datetime, offsets: Iterable[timedelta]) -> int:
    """One pending reminder per offset still ahead (with the resident's "reminders" consent).

    Existing rows follow a new start time: pending ones move; one already sent is armed again only
    when its new time is still ahead (the event moved, the resident must hear the new time)."""
    if not repo.current_consents(db, resident_id).get("reminders"):
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
    for rsvp, event in db.exec(select(Rsvp, Event).join(Event, Event.id == Rsvp.event_id).where(
            Rsvp.resident_id == resident_id, Rsvp.status == "going", Event.status == "active",
            Event.starts_at > now)):
        made += schedule_reminders(db, resident_id, "event", event.id, event.starts_at, now, offsets)
    for response, call in db.exec(select(CallResponse, VolunteerCall).join(
            VolunteerCall, VolunteerCall.id == CallResponse.call_id).where(
            CallResponse.resident_id == resident_id, CallResponse.status == "accepted",
            VolunteerCall.status == "open", VolunteerCall.starts_at > now)):
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
    consents = repo.current_consents_many(db, {r.resident_id for r in due})
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
    reached = outbox.notify_residents(db, [(by_id[rid].resident_id, build) for rid, build in builds.items()],
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
        self.events = {e.id: e for e in db.exec(select(Event).where(one_of(db, Event.id, event_ids)))} if event_ids else {}
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
    if call is None or call.status != "open" or subjects.responses.get(
            (reminder.subject_id, reminder.resident_id)) != "accepted":
        return "not_going", None
    if aware(call.starts_at) <= now:
        return "started", None

    def build_call(t: Translator, lang: str) -> Outbound:
        return Outbound(t("reminder.call", what=call.what, when=span_text(call.starts_at, call.ends_at, lang, tz),
                          place=call.place),
                        [Choice(f"{CALL_PREFIX}:{call.id}:c", t("volunteer.call.cancel_button"))])

    return None, build_call


# ---------------------------------------------------------------- volunteer pools
def memberships_of(db: Session, resident_id: int) -> list[PoolMembership]:
    return list(db.exec(select(PoolMembership).where(PoolMembership.resident_id == resident_id)
                        .order_by(PoolMembership.joined_at)))


def membership(db: Session, resident_id: int, pool: str) -> PoolMembership | None:
    return db.exec(select(PoolMembership).where(PoolMembership.resident_id == resident_id,
                                                PoolMembership.pool == pool)).first()


def join_pool(db: Session, resident_id: int, pool: str, *, skills: str = "", skill_tags: Iterable[str] = (),
              weekdays: bool = False, weekends: bool = False, evenings: bool = False,
              mahalle: str | None = None, now: datetime | None = None) -> PoolMembership:
    """Join a pool, or update the membership (skills, availability, mahalle)."""
    row = membership(db, resident_id, pool) or PoolMembership(resident_id=resident_id, pool=pool,
                                                              joined_at=now or utcnow())
    row.skills, row.skill_tags = skills.strip()[:1000], sorted(set(skill_tags))
    row.weekdays, row.weekends, row.evenings, row.mahalle = weekdays, weekends, evenings, mahalle
    db.add(row)
    db.flush()
    return row


def leave_pool(db: Session, resident_id: int, pool: str) -> bool:
    return (db.exec(delete(PoolMembership).where(PoolMembership.resident_id == resident_id,
                                                 PoolMembership.pool == pool)).rowcount or 0) > 0


def call_slots(starts_at: datetime, tz: str) -> set[str]:
    """When a call is, as availability words: weekdays or weekends, and evenings from 17:00 local."""
    local = aware(starts_at).astimezone(ZoneInfo(tz))
    slots = {"weekends" if local.weekday() >= 5 else "weekdays"}
    if local.time() >= EVENING_FROM:
        slots.add("evenings")
    return slots


def available_for(member: PoolMembership, slots: set[str]) -> bool:
    """A daytime call needs the day type (weekdays / weekends); an evening call needs evenings
    (on a weekend, weekends counts too)."""
    if "evenings" in slots:
        return member.evenings or ("weekends" in slots and member.weekends)
    return ("weekends" in slots and member.weekends) or ("weekdays" in slots and member.weekdays)


def matching_volunteers(db: Session, call: VolunteerCall, tz: str) -> list[int]:
    """Residents in any of the call's pools, available then, with "volunteering" consent."""
    slots = call_slots(call.starts_at, tz)
    found: list[int] = []
    for member in db.exec(select(PoolMembership).where(PoolMembership.pool.in_(list(call.pools)))
                          .order_by(PoolMembership.joined_at, PoolMembership.id)):
        if member.resident_id in found or not available_for(member, slots):
            continue
        if not repo.current_consents(db, member.resident_id).get("volunteering"):
            continue
        found.append(member.resident_id)
    return found


def _pool_names(catalog: Any, pools: Iterable[str], lang: str) -> str:
    names = []
    for key in pools:
        pool = catalog.pool(key) if catalog is not None else None
        names.append(pool.name.get(lang) if pool else key)
    return translator(lang).join(names)


def create_call(db: Session, *, pools: list[str], what: str, place: str, starts_at: datetime, ends_at: datetime,
                capacity: int, created_by: str, catalog: Any, tz: str, now: datetime | None = None) -> VolunteerCall:
    """Save a call and send it (outbox) to every matching volunteer, with accept / decline buttons."""
    now = now or utcnow()
    if not pools or any(catalog is not None and catalog.pool(p) is None for p in pools):
        raise ParticipationError(N_("volunteer.call_new.bad_pool"))
    if aware(ends_at) <= aware(starts_at):
        raise ParticipationError(N_("event.end_before_start"))
    if aware(starts_at) <= now:
        raise ParticipationError(N_("event.in_past"))
    if capacity < 1:
        raise ParticipationError(N_("event.bad_number"))
    call = VolunteerCall(pools=list(pools), what=what.strip()[:2000], place=place.strip()[:255], starts_at=starts_at,
                         ends_at=ends_at, capacity=capacity, created_by=created_by[:64], created_at=now)
    db.add(call)
    db.flush()
    invited = 0
    for resident_id in matching_volunteers(db, call, tz):
        db.add(CallResponse(call_id=call.id, resident_id=resident_id, status="invited", updated_at=now))
        invited += outbox.notify_resident(db, resident_id, _invite_builder(call, catalog, tz), tz=tz)
    call.invited = invited
    db.add(call)
    repo.audit(db, created_by, "volunteer.call_created", f"call:{call.id}", pools=list(pools), invited=invited)
    return call


def _invite_builder(call: VolunteerCall, catalog: Any, tz: str):
    def build(t: Translator, lang: str) -> Outbound:
        return Outbound(t("volunteer.call.invite", pools=_pool_names(catalog, call.pools, lang), what=call.what,
                          place=call.place, when=span_text(call.starts_at, call.ends_at, lang, tz),
                          capacity=call.capacity),
                        [Choice(f"{CALL_PREFIX}:{call.id}:y", t("volunteer.call.accept")),
                         Choice(f"{CALL_PREFIX}:{call.id}:n", t("volunteer.call.decline"))], columns=2)
    return build


@dataclass
class Outcome:
    """What an operation did, for the resident: a catalog key, its parameters, buttons."""

    key: str
    params: dict[str, Any]
    choices: list[tuple[str, str]] | None = None   # (choice key, label catalog key)
    attachment: bool = False                      # attach the event's calendar file

    def outbound(self, t: Translator, extra: dict[str, Any] | None = None) -> Outbound:
        return Outbound(t(self.key, **{**self.params, **(extra or {})}),
                        [Choice(k, t(label)) for k, label in (self.choices or [])])


def _call_params(call: VolunteerCall, lang: str, tz: str) -> dict[str, Any]:
    return {"what": call.what, "place": call.place, "when": span_text(call.starts_at, call.ends_at, lang, tz),
            "capacity": call.capacity}


def respond_to_call(db: Session, call_id: int, resident_id: int, action: str, *, lang: str, tz: str,
                    now: datetime, offsets: Iterable[timedelta]) -> Outcome:
    """A volunteer's tap on a call: y accept, n decline, c cancel (asks), cy cancel (confirmed), t take
    a place offered to the reserve. Race-safe: the call row is locked, the place taken with a
    conditional UPDATE."""
    call = lock_call(db, call_id)
    response = db.exec(select(CallResponse).where(CallResponse.call_id == call_id,
                                                  CallResponse.resident_id == resident_id)).first() if call else None
    if call is None or response is None:
        return Outcome(N_("volunteer.call.unknown"), {})
    params = _call_params(call, lang, tz)
    if call.status != "open" or aware(call.starts_at) <= now:
        return Outcome(N_("volunteer.call.closed"), params)
    cancel = [(f"{CALL_PREFIX}:{call.id}:c", N_("volunteer.call.cancel_button"))]
    if action in ("y", "t") and not repo.current_consents(db, resident_id).get("volunteering"):
        return Outcome(N_("volunteer.call.needs_consent"), params)  # an old call's button, consent withdrawn
    if action in ("y", "t"):
        if response.status == "accepted":
            return Outcome(N_("volunteer.call.already_accepted"), params, cancel)
        if action == "t" and response.status != "reserve":
            return Outcome(N_("volunteer.call.unknown"), {})
        if take_call_place(db, call.id):
            response.status, response.position = "accepted", None
            response.responded_at = response.responded_at or now
            response.updated_at = now
            db.add(response)
            schedule_reminders(db, resident_id, "call", call.id, call.starts_at, now, offsets)
            key = N_("volunteer.call.place_yours") if action == "t" else N_("volunteer.call.accepted")
            return Outcome(key, params, cancel)
        if response.status == "reserve":
            out_key = N_("volunteer.call.taken_by_other") if action == "t" else N_("volunteer.call.already_reserve")
            return Outcome(out_key, {**params, "position": response.position})
        response.position = next_position(db, CallResponse, CallResponse.call_id, call.id, "reserve")
        response.status, response.responded_at, response.updated_at = "reserve", now, now
        db.add(response)
        return Outcome(N_("volunteer.call.full_reserve"), {**params, "position": response.position},
                       [(f"{CALL_PREFIX}:{call.id}:c", N_("volunteer.call.leave_reserve"))])
    if action == "n":
        if response.status == "accepted":
            return Outcome(N_("volunteer.call.cancel_question"), params,
                           [(f"{CALL_PREFIX}:{call.id}:cy", N_("volunteer.call.cancel_yes"))])
        response.status, response.position, response.responded_at, response.updated_at = "declined", None, now, now
        db.add(response)
        return Outcome(N_("volunteer.call.declined"), params)
    if action == "c":
        if response.status not in ("accepted", "reserve"):
            return Outcome(N_("volunteer.call.nothing_to_cancel"), params)
        return Outcome(N_("volunteer.call.cancel_question"), params,
                       [(f"{CALL_PREFIX}:{call.id}:cy", N_("volunteer.call.cancel_yes"))])
    if action == "cy":
        return cancel_call_place(db, call, response, now=now, tz=tz, params=params)
    return Outcome(N_("volunteer.call.unknown"), {})


def cancel_call_place(db: Session, call: VolunteerCall, response: CallResponse, *, now: datetime, tz: str,
                      params: dict[str, Any]) -> Outcome:
    """A volunteer gives their place (or reserve spot) back; a freed place is offered to the
    reserve list at once, first tap wins (`respond_to_call(..., "t")`)."""
    was = response.status
    if was not in ("accepted", "reserve"):
        return Outcome(N_("volunteer.call.nothing_to_cancel"), params)
    response.status, response.position, response.updated_at = "cancelled", None, now
    db.add(response)
    if was == "reserve":
        return Outcome(N_("volunteer.call.reserve_left"), params)
    free_call_place(db, call.id)
    drop_reminders(db, "call", call.id, response.resident_id)
    offer_reserve(db, call, tz=tz)
    return Outcome(N_("volunteer.call.cancelled_by_you"), params)


def offer_reserve(db: Session, call: VolunteerCall, *, tz: str) -> int:
    """Tell everyone on the reserve list that a place is free (the first to tap gets it)."""
    told = 0
    for response in db.exec(select(CallResponse).where(CallResponse.call_id == call.id,
                                                       CallResponse.status == "reserve")
                            .order_by(CallResponse.position)):
        def build(t: Translator, lang: str) -> Outbound:
            return Outbound(t("volunteer.call.place_open", **_call_params(call, lang, tz)),
                            [Choice(f"{CALL_PREFIX}:{call.id}:t", t("volunteer.call.take"))])

        told += outbox.notify_resident(db, response.resident_id, build, tz=tz)
    return told


def cancel_call(db: Session, call_id: int, actor: str, *, tz: str) -> int:
    """Staff cancel a call: every accepted and reserve volunteer is told; reminders dropped."""
    call = lock_call(db, call_id)
    if call is None:
        raise ParticipationError(N_("volunteer.call.unknown"))
    if call.status == "cancelled":
        return 0
    call.status = "cancelled"
    db.add(call)
    told = 0
    for response in db.exec(select(CallResponse).where(CallResponse.call_id == call.id,
                                                       CallResponse.status.in_(("accepted", "reserve")))):
        def build(t: Translator, lang: str) -> Outbound:
            return Outbound(t("volunteer.call.cancelled_notice", **_call_params(call, lang, tz)))

        told += outbox.notify_resident(db, response.resident_id, build, tz=tz)
    drop_reminders(db, "call", call.id, note="call_cancelled")
    repo.audit(db, actor, "volunteer.call_cancelled", f"call:{call.id}", told=told)
    return told


def calls_of(db: Session, resident_id: int, now: datetime) -> list[tuple[CallResponse, VolunteerCall]]:
    """A volunteer's upcoming duties and reserve spots."""
    return list(db.exec(select(CallResponse, VolunteerCall).join(VolunteerCall, VolunteerCall.id == CallResponse.call_id)
                        .where(CallResponse.resident_id == resident_id,
                               CallResponse.status.in_(("accepted", "reserve")),
                               VolunteerCall.status == "open", VolunteerCall.ends_at > now)
                        .order_by(VolunteerCall.starts_at)))


def invitations_of(db: Session, resident_id: int, now: datetime) -> list[VolunteerCall]:
    """The open calls a volunteer was invited to and has not taken (or declined) yet, not started."""
    return list(db.exec(select(VolunteerCall).join(CallResponse, VolunteerCall.id == CallResponse.call_id)
                        .where(CallResponse.resident_id == resident_id,
                               CallResponse.status.in_(("invited", "declined")),
                               VolunteerCall.status == "open", VolunteerCall.starts_at > now)
                        .order_by(VolunteerCall.starts_at)))


# ---------------------------------------------------------------- events
def new_checkin_token() -> str:
    return secrets.token_hex(8)


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


def create_event(db: Session, *, title: dict[str, str], description: dict[str, str] | None = None,
                 type: str = "other", starts_at: datetime, ends_at: datetime, place: str = "",
                 latitude: float | None = None, longitude: float | None = None, capacity: int | None = None,
                 registration_deadline: datetime | None = None, created_by: str = "",
                 now: datetime | None = None) -> Event:
    now = now or utcnow()
    title = {k: v.strip() for k, v in title.items() if v and v.strip()}
    description = {k: v.strip() for k, v in (description or {}).items() if v and v.strip()}
    validate_event(title=title, type=type, starts_at=starts_at, ends_at=ends_at, capacity=capacity,
                   deadline=registration_deadline)
    event = Event(title=title, description=description, type=type, starts_at=starts_at, ends_at=ends_at,
                  place=place.strip()[:255], latitude=latitude, longitude=longitude, capacity=capacity,
                  registration_deadline=registration_deadline, checkin_token=new_checkin_token(),
                  created_by=created_by[:64], created_at=now, updated_at=now)
    db.add(event)
    db.flush()
    repo.audit(db, created_by or "system", "event.created", f"event:{event.id}")
    return event


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

        outbox.notify_resident(db, first.resident_id, build, tz=tz)
        promoted.append(first.resident_id)
    return promoted


def attendees(db: Session, event_id: int, statuses: Iterable[str] = ("going",)) -> list[Rsvp]:
    return list(db.exec(select(Rsvp).where(Rsvp.event_id == event_id, Rsvp.status.in_(list(statuses)))
                        .order_by(Rsvp.status, Rsvp.position, Rsvp.id)))


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


def update_event(db: Session, event_id: int, change: EventChange, *, actor: str, now: datetime,
                 offsets: Iterable[timedelta], tz: str, domain: str = "katilim") -> tuple[Event, int]:
    """Edit an event. A new time or place is told to everyone registered or waiting (in their
    language, with a new calendar file for those going); reminders follow the new time; a larger
    capacity promotes from the waiting list. Returns (event, residents told)."""
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
            told += outbox.notify_resident(db, rsvp.resident_id,
                                           _change_builder(event, rsvp.status == "going", tz, domain), tz=tz)
            if moved and rsvp.status == "going":
                schedule_reminders(db, rsvp.resident_id, "event", event.id, event.starts_at, now, offsets)
    promote_waitlist(db, event.id, now=now, offsets=offsets, tz=tz, domain=domain)
    repo.audit(db, actor, "event.edited", f"event:{event.id}", moved=moved, relocated=relocated, told=told)
    return event, told


def _change_builder(event: Event, going: bool, tz: str, domain: str):
    def build(t: Translator, lang: str) -> Outbound:
        out = Outbound(t("event.changed", title=event.title_in(lang),
                         when=span_text(event.starts_at, event.ends_at, lang, tz), place=event.place),
                       [Choice(f"{EVENT_PREFIX}:{event.id}:c",
                               t(N_("event.cancel_rsvp") if going else N_("event.leave_waitlist")))])
        if going:
            out.document = ics_attachment(event, lang, domain)
        return out
    return build


def cancel_event(db: Session, event_id: int, *, actor: str, now: datetime, tz: str,
                 domain: str = "katilim") -> int:
    """Cancel an event: everyone registered or waiting is told; reminders dropped."""
    event = lock_event(db, event_id)
    if event is None:
        raise ParticipationError(N_("event.not_found"))
    if event.status == "cancelled":
        return 0
    event.status, event.updated_at = "cancelled", now
    event.sequence += 1
    db.add(event)
    told = 0
    for rsvp in attendees(db, event.id, ("going", "waitlist")):
        def build(t: Translator, lang: str) -> Outbound:
            return Outbound(t("event.cancelled_notice", title=event.title_in(lang),
                              when=span_text(event.starts_at, event.ends_at, lang, tz)))

        told += outbox.notify_resident(db, rsvp.resident_id, build, tz=tz)
    drop_reminders(db, "event", event.id, note="event_cancelled")
    repo.audit(db, actor, "event.cancelled", f"event:{event.id}", told=told)
    return told


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
                                             Event.feedback_requested_at == None)  # noqa: E711
                         .order_by(Event.ends_at).limit(50)).all():
        claimed = db.exec(update(Event).where(Event.id == event.id, Event.feedback_requested_at == None)  # noqa: E711
                          .values(feedback_requested_at=now).execution_options(synchronize_session=False))
        if not claimed.rowcount:
            continue

        def build(t: Translator, lang: str, event=event) -> Outbound:
            return Outbound(t("event.feedback.ask", title=event.title_in(lang)),
                            [Choice(f"{FEEDBACK_PREFIX}:{event.id}:{n}", str(n)) for n in range(1, 6)], columns=5)

        for rsvp in attendees(db, event.id):
            asked += outbox.notify_resident(db, rsvp.resident_id, build, tz=tz)
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


# ---------------------------------------------------------------- data rights
@router.exporter
def export_resident(db: Session, resident_id: int) -> dict[str, Any]:
    def iso(dt):
        return dt.isoformat() if dt else None

    return {
        "volunteer_pools": [{"pool": m.pool, "skills": m.skills, "skill_tags": m.skill_tags,
                             "weekdays": m.weekdays, "weekends": m.weekends, "evenings": m.evenings,
                             "mahalle": m.mahalle, "joined_at": iso(m.joined_at)}
                            for m in memberships_of(db, resident_id)],
        "volunteer_calls": [{"call": r.call_id, "status": r.status, "position": r.position,
                             "responded_at": iso(r.responded_at)}
                            for r in db.exec(select(CallResponse).where(CallResponse.resident_id == resident_id))],
        "event_registrations": [{"event": r.event_id, "status": r.status, "position": r.position,
                                 "registered_at": iso(r.created_at), "checked_in_at": iso(r.checked_in_at)}
                                for r in db.exec(select(Rsvp).where(Rsvp.resident_id == resident_id))],
        "event_feedback": [{"event": f.event_id, "rating": f.rating, "comment": f.comment, "at": iso(f.created_at)}
                           for f in db.exec(select(EventFeedback).where(EventFeedback.resident_id == resident_id))],
        "reminders": [{"about": f"{r.subject_kind}:{r.subject_id}", "due_at": iso(r.due_at), "status": r.status}
                      for r in db.exec(select(Reminder).where(Reminder.resident_id == resident_id))],
    }


@router.eraser
def erase_resident(db: Session, resident_id: int, config: "EngineConfig") -> None:
    """Memberships, responses, RSVPs and reminders are deleted. A place the resident held in an
    upcoming event or call is freed (the waiting list moves up, with reminders at the configured
    offsets); past attendance stays only as a count (Event.anonymous_checkins); ratings stay
    without the resident and without the comment."""
    now = utcnow()
    freed: list[int] = []
    db.exec(delete(Reminder).where(Reminder.resident_id == resident_id))
    db.exec(delete(PoolMembership).where(PoolMembership.resident_id == resident_id))
    for response in db.exec(select(CallResponse).where(CallResponse.resident_id == resident_id)).all():
        call = db.get(VolunteerCall, response.call_id)
        if response.status == "accepted" and call is not None and aware(call.starts_at) > now:
            free_call_place(db, call.id)
        db.delete(response)
    for rsvp in db.exec(select(Rsvp).where(Rsvp.resident_id == resident_id)).all():
        event = db.get(Event, rsvp.event_id)
        if rsvp.checked_in_at is not None and event is not None:
            db.exec(update(Event).where(Event.id == event.id).values(anonymous_checkins=Event.anonymous_checkins + 1)
                    .execution_options(synchronize_session=False))
        upcoming = event is not None and aware(event.starts_at) > now
        if rsvp.status == "going" and upcoming:
            free_event_place(db, event.id)
            freed.append(event.id)
        db.delete(rsvp)
    db.exec(update(EventFeedback).where(EventFeedback.resident_id == resident_id)
            .values(resident_id=None, comment="").execution_options(synchronize_session=False))
    db.flush()
    for event_id in freed:
        lock_event(db, event_id)
        promote_waitlist(db, event_id, now=now, offsets=offsets_of(config.settings), tz=config.timezone)


RSVP_RANK = {"going": 3, "waitlist": 2, "cancelled": 1}
RESPONSE_RANK = {"accepted": 5, "reserve": 4, "invited": 3, "declined": 2, "cancelled": 1}


@router.merger
def merge_residents(db: Session, gone_id: int, keep_id: int, config: "EngineConfig") -> None:
    """Two residents become one (conversations/linking.py): where both registered for the same
    event or answered the same call, the stronger answer stays on the kept resident and a place
    held twice is given back (the generic move then drops the rows that would collide)."""
    freed: list[int] = []
    for gone in db.exec(select(Rsvp).where(Rsvp.resident_id == gone_id)).all():
        kept = rsvp_of(db, gone.event_id, keep_id)
        if kept is None:
            continue
        lock_event(db, gone.event_id)
        if gone.status == "going" and kept.status == "going":
            free_event_place(db, gone.event_id)
            freed.append(gone.event_id)
        elif RSVP_RANK.get(gone.status, 0) > RSVP_RANK.get(kept.status, 0):
            kept.status, kept.position = gone.status, gone.position
        kept.checked_in_at = kept.checked_in_at or gone.checked_in_at
        db.add(kept)
        db.delete(gone)
    for gone in db.exec(select(CallResponse).where(CallResponse.resident_id == gone_id)).all():
        kept = db.exec(select(CallResponse).where(CallResponse.call_id == gone.call_id,
                                                  CallResponse.resident_id == keep_id)).first()
        if kept is None:
            continue
        lock_call(db, gone.call_id)
        if gone.status == "accepted" and kept.status == "accepted":
            free_call_place(db, gone.call_id)
        elif RESPONSE_RANK.get(gone.status, 0) > RESPONSE_RANK.get(kept.status, 0):
            kept.status, kept.position = gone.status, gone.position
        db.add(kept)
        db.delete(gone)
    db.flush()
    for event_id in freed:
        promote_waitlist(db, event_id, now=utcnow(), offsets=offsets_of(config.settings), tz=config.timezone)


def withdraw_volunteering(db: Session, resident_id: int, *, now: datetime, tz: str) -> None:
    """The "volunteering" consent withdrawn: they leave every pool (skills, availability and mahalle
    deleted); their answers to calls not started yet go (a place they held is freed and offered to
    the reserve list, its reminders dropped). Answers to calls already held stay as the record of
    what they did, until /verilerimisil."""
    db.exec(delete(PoolMembership).where(PoolMembership.resident_id == resident_id))
    for response, call in db.exec(select(CallResponse, VolunteerCall).join(
            VolunteerCall, VolunteerCall.id == CallResponse.call_id).where(
            CallResponse.resident_id == resident_id, VolunteerCall.starts_at > now)).all():
        if response.status == "accepted" and call.status == "open":
            lock_call(db, call.id)
            cancel_call_place(db, call, response, now=now, tz=tz, params={})
        drop_reminders(db, "call", call.id, resident_id, note="no_consent")
        db.delete(response)
    db.flush()


@router.on_withdrawal("reminders")
def drop_reminders_of(db: Session, resident_id: int, now: datetime, config: "EngineConfig") -> None:
    withdraw_reminders(db, resident_id)


@router.on_grant("reminders")
def reminders_again(db: Session, resident_id: int, now: datetime, config: "EngineConfig") -> None:
    """Given again after onboarding: reminders for what they are registered for come back."""
    enable_reminders_for(db, resident_id, now, offsets_of(config.settings))


def withdraw_reminders(db: Session, resident_id: int) -> int:
    """The "reminders" consent withdrawn: every pending reminder of theirs is dropped now (the send
    time check would drop it too); granted again, `enable_reminders_for` plans them again."""
    return db.exec(update(Reminder).where(Reminder.resident_id == resident_id, Reminder.status == "pending")
                   .values(status="dropped", note="no_consent").execution_options(synchronize_session=False)
                   ).rowcount or 0


# ---------------------------------------------------------------- broadcast audiences
def pool_audience(db: Session, pools: Iterable[str]) -> list[int]:
    """Residents in any of these volunteer pools, with "volunteering" consent."""
    ids: list[int] = []
    for resident_id in db.exec(select(PoolMembership.resident_id).where(PoolMembership.pool.in_(list(pools)))
                               .order_by(PoolMembership.resident_id)):
        if resident_id not in ids and repo.current_consents(db, resident_id).get("volunteering"):
            ids.append(resident_id)
    return ids


def call_audience(db: Session, call_id: int, statuses: Iterable[str] = ("accepted",)) -> list[int]:
    return list(db.exec(select(CallResponse.resident_id).where(CallResponse.call_id == call_id,
                                                               CallResponse.status.in_(list(statuses)))))


def event_audience(db: Session, event_id: int, status: str = "going") -> list[int]:
    return list(db.exec(select(Rsvp.resident_id).where(Rsvp.event_id == event_id, Rsvp.status == status)))


def resident_ids(db: Session, ids: Iterable[int]) -> list[int]:
    """Only residents who still exist and are not anonymised."""
    ids = list(ids)
    if not ids:
        return []
    return list(db.exec(select(Resident.id).where(Resident.id.in_(ids), Resident.anonymised_at == None)))  # noqa: E711


BuildFn = Callable[[Translator, str], Outbound]


# ---------------------------------------------------------------- broadcast audience filters
def _register_audiences() -> None:
    """Staff broadcasts (storage/broadcasts.py) can target volunteer pools, a call's volunteers,
    an event's attendees or its waiting list: {"pools": ["environment"]}, {"volunteer_call": 3},
    {"event_attendees": 12}, {"event_waitlist": 12}."""
    try:
        from storage.broadcasts import AUDIENCE_FILTERS, R, BroadcastError, audience_filter
    except ImportError:  # pragma: no cover - broadcasts not installed
        return
    from sqlalchemy import exists

    members, responses, rsvps = PoolMembership.__table__, CallResponse.__table__, Rsvp.__table__

    def _ids(value, name):
        if isinstance(value, bool) or not isinstance(value, int):
            raise BroadcastError(f"{name} must be a number")
        return value

    if "pools" not in AUDIENCE_FILTERS:
        @audience_filter("pools")
        def _pools(keys):
            if not keys:
                return None
            if isinstance(keys, str) or not all(isinstance(k, str) for k in keys):
                raise BroadcastError("pools must be a list of pool keys")
            return exists().where(members.c.resident_id == R.c.id, members.c.pool.in_(list(keys)))

    if "volunteer_call" not in AUDIENCE_FILTERS:
        @audience_filter("volunteer_call")
        def _call(call_id):
            return exists().where(responses.c.resident_id == R.c.id,
                                  responses.c.call_id == _ids(call_id, "volunteer_call"),
                                  responses.c.status == "accepted")

    if "event_attendees" not in AUDIENCE_FILTERS:
        @audience_filter("event_attendees")
        def _attendees(event_id):
            return exists().where(rsvps.c.resident_id == R.c.id, rsvps.c.event_id == _ids(event_id, "event_attendees"),
                                  rsvps.c.status == "going")

    if "event_waitlist" not in AUDIENCE_FILTERS:
        @audience_filter("event_waitlist")
        def _waitlist(event_id):
            return exists().where(rsvps.c.resident_id == R.c.id, rsvps.c.event_id == _ids(event_id, "event_waitlist"),
                                  rsvps.c.status == "waitlist")


_register_audiences()
