"""Volunteer pools from the volunteer's side: joining (skills, availability, mahalle) and
leaving, being matched to a call (pool, availability, the "volunteering" consent), answering it
(accept, decline, the reserve list, a freed place offered to the reserve: first tap wins) and
one's upcoming duties. Staff post and cancel calls in conversations/domain/volunteering.py."""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, time, timedelta
from typing import Any, Iterable
from zoneinfo import ZoneInfo

from sqlalchemy import and_, delete, or_
from sqlmodel import Session, select

from conversations import notify
from conversations.i18n import N_, Translator, translator
from conversations.messages import Choice, Outbound
from conversations.participation import CALL_PREFIX
from conversations.reminders import drop_reminders, schedule_reminders
from conversations.when import span_text
from storage.consents import current_consents
from storage.db import aware, utcnow
from storage.participation import (
    CALL_HELD,
    CallResponse,
    PoolMembership,
    VolunteerCall,
    free_call_place,
    lock_call,
    next_position,
    take_call_place,
)

EVENING_FROM = time(17, 0)          # a call starting at 17:00 or later (local time) is an evening call


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
        if not current_consents(db, member.resident_id).get("volunteering"):
            continue
        found.append(member.resident_id)
    return found


def pool_names(catalog: Any, pools: Iterable[str], lang: str) -> str:
    names = []
    for key in pools:
        pool = catalog.pool(key) if catalog is not None else None
        names.append(pool.name.get(lang) if pool else key)
    return translator(lang).join(names)


def invite_builder(call: VolunteerCall, catalog: Any, tz: str):
    def build(t: Translator, lang: str) -> Outbound:
        return Outbound(t("volunteer.call.invite", pools=pool_names(catalog, call.pools, lang), what=call.what,
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


def call_params(call: VolunteerCall, lang: str, tz: str) -> dict[str, Any]:
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
    params = call_params(call, lang, tz)
    if call.status not in CALL_HELD or aware(call.starts_at) <= now:
        return Outcome(N_("volunteer.call.closed"), params)
    if call.status == "closed" and action not in ("c", "cy"):  # closed: one may only give a place back
        return Outcome(N_("volunteer.call.closed"), params)
    cancel = [(f"{CALL_PREFIX}:{call.id}:c", N_("volunteer.call.cancel_button"))]
    if action in ("y", "t") and not current_consents(db, resident_id).get("volunteering"):
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
    if call.status != "open":  # closed: nobody else is asked
        return Outcome(N_("volunteer.call.cancelled_by_you_closed"), params)
    offer_reserve(db, call, tz=tz)
    return Outcome(N_("volunteer.call.cancelled_by_you"), params)


def offer_reserve(db: Session, call: VolunteerCall, *, tz: str) -> int:
    """Tell everyone on the reserve list that a place is free (the first to tap gets it)."""
    told = 0
    for response in db.exec(select(CallResponse).where(CallResponse.call_id == call.id,
                                                       CallResponse.status == "reserve")
                            .order_by(CallResponse.position)):
        def build(t: Translator, lang: str) -> Outbound:
            return Outbound(t("volunteer.call.place_open", **call_params(call, lang, tz)),
                            [Choice(f"{CALL_PREFIX}:{call.id}:t", t("volunteer.call.take"))])

        told += notify.notify_resident(db, response.resident_id, build, tz=tz)
    return told


def calls_of(db: Session, resident_id: int, now: datetime) -> list[tuple[CallResponse, VolunteerCall]]:
    """A volunteer's upcoming duties (of open and closed calls) and reserve spots (of open calls)."""
    duty = and_(CallResponse.status == "accepted", VolunteerCall.status.in_(CALL_HELD))
    reserve = and_(CallResponse.status == "reserve", VolunteerCall.status == "open")
    return list(db.exec(select(CallResponse, VolunteerCall)
                        .join(VolunteerCall, VolunteerCall.id == CallResponse.call_id)
                        .where(CallResponse.resident_id == resident_id, or_(duty, reserve),
                               VolunteerCall.ends_at > now)
                        .order_by(VolunteerCall.starts_at)))


def invitations_of(db: Session, resident_id: int, now: datetime) -> list[VolunteerCall]:
    """The open calls a volunteer was invited to and has not taken (or declined) yet, not started."""
    return list(db.exec(select(VolunteerCall).join(CallResponse, VolunteerCall.id == CallResponse.call_id)
                        .where(CallResponse.resident_id == resident_id,
                               CallResponse.status.in_(("invited", "declined")),
                               VolunteerCall.status == "open", VolunteerCall.starts_at > now)
                        .order_by(VolunteerCall.starts_at)))
