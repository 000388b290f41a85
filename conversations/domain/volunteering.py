"""Staff operations on calls for volunteers (post, close, cancel), one function each, called by the
chat (/gonullucagri: conversations/volunteer.py) and the CLI (`katilim volunteers`:
bot/cli_volunteer.py) alike. Each takes the Actor, checks "volunteer.manage" (a refusal is audited, then raised as
Refused), writes the change, its audit row and the volunteers' outbox notices in the caller's
transaction, and returns what happened."""
from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlmodel import Session, select

from conversations import notify
from conversations.domain import authorise
from conversations.i18n import N_, Translator
from conversations.messages import Outbound
from conversations.participation import Ended, ParticipationError
from conversations.permissions import Actor
from conversations.pools import call_params, invite_builder, matching_volunteers
from conversations.reminders import drop_reminders
from storage.audit import audit
from storage.db import aware, utcnow
from storage.participation import CallResponse, VolunteerCall, lock_call

ACTION = "volunteer.manage"
MAX_VOLUNTEERS = 10_000


def create_call(db: Session, actor: Actor, *, pools: list[str], what: str, place: str, starts_at: datetime,
                ends_at: datetime, capacity: int, catalog: Any, tz: str, now: datetime | None = None) -> VolunteerCall:
    """Save a call and send it (outbox) to every matching volunteer, with accept / decline buttons;
    the call returned says how many were invited."""
    authorise(db, actor, ACTION, "call:new")
    now = now or utcnow()
    if not pools or any(catalog is not None and catalog.pool(p) is None for p in pools):
        raise ParticipationError(N_("volunteer.call_new.bad_pool"))
    if aware(ends_at) <= aware(starts_at):
        raise ParticipationError(N_("event.end_before_start"))
    if aware(starts_at) <= now:
        raise ParticipationError(N_("event.in_past"))
    if not 1 <= capacity <= MAX_VOLUNTEERS:
        raise ParticipationError(N_("event.bad_number"))
    call = VolunteerCall(pools=list(pools), what=what.strip()[:2000], place=place.strip()[:255], starts_at=starts_at,
                         ends_at=ends_at, capacity=capacity, created_by=actor.who[:64], created_at=now)
    db.add(call)
    db.flush()
    invited = 0
    for resident_id in matching_volunteers(db, call, tz):
        db.add(CallResponse(call_id=call.id, resident_id=resident_id, status="invited", updated_at=now))
        invited += notify.notify_resident(db, resident_id, invite_builder(call, catalog, tz), tz=tz)
    call.invited = invited
    db.add(call)
    audit(db, actor.who, "volunteer.call_created", f"call:{call.id}", pools=list(pools), invited=invited)
    return call


def close_call(db: Session, actor: Actor, call_id: int, *, tz: str) -> Ended:
    """Staff close a call (enough volunteers found): it takes no more answers; who accepted keeps
    the duty, its reminders and may still give the place back; the invited who did not answer and
    the reserve list are told, thanked. `already` when it was not open."""
    return _end_call(db, actor, call_id, tz=tz, status="closed", from_statuses=("open",),
                     told=("invited", "reserve"), notice=N_("volunteer.call.closed_notice"))


def cancel_call(db: Session, actor: Actor, call_id: int, *, tz: str) -> Ended:
    """Staff cancel a call (open or closed): every accepted and reserve volunteer is told; reminders dropped."""
    return _end_call(db, actor, call_id, tz=tz, status="cancelled", from_statuses=("open", "closed"),
                     told=("accepted", "reserve"), notice=N_("volunteer.call.cancelled_notice"))


def _end_call(db: Session, actor: Actor, call_id: int, *, tz: str, status: str, from_statuses: tuple[str, ...],
              told: tuple[str, ...], notice: str) -> Ended:
    authorise(db, actor, ACTION, f"call:{call_id}")
    call = lock_call(db, call_id)
    if call is None:
        raise ParticipationError(N_("volunteer.call.unknown"))
    if call.status not in from_statuses:
        return Ended(call.id, 0, already=True)
    call.status = status
    db.add(call)
    count = 0
    for response in db.exec(select(CallResponse).where(CallResponse.call_id == call.id,
                                                       CallResponse.status.in_(told))):
        def build(t: Translator, lang: str) -> Outbound:
            return Outbound(t(notice, **call_params(call, lang, tz)))

        count += notify.notify_resident(db, response.resident_id, build, tz=tz)
    if status == "cancelled":
        drop_reminders(db, "call", call.id, note="call_cancelled")
    audit(db, actor.who, f"volunteer.call_{status}", f"call:{call.id}", told=count)
    return Ended(call.id, count)
