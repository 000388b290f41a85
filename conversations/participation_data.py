"""The resident's data rights over events and volunteering (KVKK): the export of /verilerim,
the erasure of /verilerimisil, the merge of two residents who turn out to be one
(conversations/linking.py) and the withdrawal of the "volunteering" consent."""
from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import delete, update
from sqlmodel import Session, select

from conversations.attendance import promote_waitlist, rsvp_of
from conversations.pools import cancel_call_place, memberships_of
from conversations.registry import Router
from conversations.reminders import drop_reminders, offsets_of
from storage.db import aware, utcnow
from storage.participation import (
    CALL_HELD,
    CallResponse,
    Event,
    EventFeedback,
    PoolMembership,
    Reminder,
    Rsvp,
    VolunteerCall,
    free_call_place,
    free_event_place,
    lock_call,
    lock_event,
)

if TYPE_CHECKING:
    from conversations.step import EngineConfig

router = Router("participation")


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
        if response.status == "accepted" and call.status in CALL_HELD:
            lock_call(db, call.id)
            cancel_call_place(db, call, response, now=now, tz=tz, params={})
        drop_reminders(db, "call", call.id, resident_id, note="no_consent")
        db.delete(response)
    db.flush()
