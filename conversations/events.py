"""Events: /etkinlikler lists what is coming (panels, conferences, workshops, focus groups,
socio-cultural events); a resident registers (or joins the waiting list), gets a calendar file,
cancels; deep links open an event (`/start ev_12`) or check the resident in at the venue
(`/start ci_<token>`); after the event a one-tap rating. Staff add events with /etkinlikekle and
edit or cancel them from the event's page (or with `katilim events`).

Registering needs no consent of its own (see conversations/participation.py): the registration is
the service the resident asked for. Reminders need the "reminders" consent, asked just in time
from the event page.

The rules are elsewhere: a resident's registration in conversations/attendance.py, the staff's
create / edit / cancel in conversations/domain/events.py (the CLI calls the same functions).
"""
from __future__ import annotations

from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

from babel.dates import format_datetime
from sqlmodel import select

from conversations import attendance, calendar_files, reminders
from conversations.core import require_consent, yes_no
from conversations.domain import events as event_ops
from conversations.i18n import N_
from conversations.messages import Choice, Inbound, Kind, Outbound
from conversations.participation import (
    EVENT_PREFIX,
    FEEDBACK_PREFIX,
    TYPE_KEYS,
    ParticipationError,
    read_count,
    read_time,
)
from conversations.permissions import Actor, Refused
from conversations.registry import Router
from conversations.step import IDLE, Ctx, Go, Invalid, Stay, Transition
from conversations.text import record_id, truncate
from conversations.when import example_time, span_text
from storage.db import aware
from storage.participation import EVENT_TYPES, Event, Rsvp

router = Router("events")
router.menu_item(30, "events", N_("event.menu"), "event.list")
router.menu_item(103, "staff_addevent", N_("menu.staff_addevent"), "cmd:addevent", staff=True)
LANG_FIELDS = [("title", "tr"), ("title", "en"), ("title", "ar"),
               ("description", "tr"), ("description", "en"), ("description", "ar")]
FIELD_PROMPTS = {("title", "tr"): N_("event.add.title_tr"), ("title", "en"): N_("event.add.title_en"),
                 ("title", "ar"): N_("event.add.title_ar"), ("description", "tr"): N_("event.add.desc_tr"),
                 ("description", "en"): N_("event.add.desc_en"), ("description", "ar"): N_("event.add.desc_ar")}


# ---------------------------------------------------------------- helpers
def _tz(ctx: Ctx) -> str:
    return ctx.config.timezone


def _offsets(ctx: Ctx):
    return reminders.offsets_of(ctx.config.settings)


def _domain(ctx: Ctx) -> str:
    return f"katilim.{ctx.catalog.municipality.tracking_prefix.lower()}"


def _actor(ctx: Ctx) -> Actor:
    return ctx.acting_as


def _short_when(ctx: Ctx, dt: datetime) -> str:
    return format_datetime(aware(dt), "d MMM HH:mm", tzinfo=ZoneInfo(_tz(ctx)), locale=ctx.lang)


def _event(ctx: Ctx) -> Event | None:
    event_id = ctx.data.get("event_id")
    return ctx.db.get(Event, int(event_id)) if event_id else None


def _dt(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value else None


def _read_time(ctx: Ctx, text: str, *, base: datetime | None = None) -> datetime:
    return read_time(text, _tz(ctx), now=ctx.now, base=base)


def _example(ctx: Ctx) -> str:
    return example_time(ctx.now, ctx.lang, _tz(ctx))


def bot_username(ctx: Ctx) -> str:
    return getattr(ctx.config.settings, "telegram_bot_username", "") or ""


# ---------------------------------------------------------------- commands and deep links
@router.command("events", "etkinlikler", "events", menu={"tr": "etkinlikler", "en": "events", "ar": "events"},
                description=N_("event.command"))
def cmd_events(ctx: Ctx, text: str) -> Transition:
    return Go("event.list")


@router.command("addevent", "etkinlikekle", "addevent", menu={"tr": "etkinlikekle", "en": "addevent", "ar": "addevent"},
                description=N_("event.add.command"), staff=True)
def cmd_add_event(ctx: Ctx, text: str) -> Transition:
    # a staff-only state: the engine refuses anyone else and audits the attempt
    return Go("event.add_text", {"i": 0, "title": {}, "description": {}})


@router.start_payload("ev")
def open_event_link(ctx: Ctx, arg: str) -> Transition:
    event_id = record_id(arg)
    if event_id is None or ctx.db.get(Event, event_id) is None:
        ctx.say(ctx.t("event.not_found"))
        return Go(IDLE)
    return Go("event.detail", {"event_id": event_id})


@router.start_payload("ci")
def checkin_link(ctx: Ctx, arg: str) -> Transition:
    outcome, event = attendance.check_in(ctx.db, arg.strip()[:32], ctx.resident.id, now=ctx.now)
    title = event.title_in(ctx.lang) if event else ""
    keys = {"done": N_("event.checkin.done"), "already": N_("event.checkin.already"),
            "invalid": N_("event.checkin.invalid"), "not_now": N_("event.checkin.not_now")}
    ctx.say(ctx.t(keys[outcome], title=title))
    return Go(IDLE)


# ---------------------------------------------------------------- the list
@router.state("event.list", choice_only=True)
def event_list(ctx: Ctx) -> None:
    events = attendance.upcoming_events(ctx.db, ctx.now)
    if not events:
        ctx.ask(ctx.t("event.list.empty"), [Choice("menu", ctx.t("common.back"))])
        return
    # the events one is registered for are marked (✓ going, ⏳ on the waiting list)
    marks = {r.event_id: "✓ " if r.status == "going" else "⏳ " for r in ctx.db.exec(
        select(Rsvp).where(Rsvp.resident_id == ctx.resident.id, Rsvp.event_id.in_([e.id for e in events]),
                           Rsvp.status.in_(("going", "waitlist"))))}
    items = [Choice(f"e:{e.id}", marks.get(e.id, "") + f"{truncate(e.title_in(ctx.lang), 24)} · "
                    f"{_short_when(ctx, e.starts_at)}") for e in events]
    page = ctx.data.get("_page", 0)
    choices = ctx.paged(items, page, [Choice("menu", ctx.t("common.back"))])
    page = ctx.data["_page"]
    shown = events[page * 8:(page + 1) * 8]
    lines = [ctx.t("event.list.title")]
    for e in shown:
        lines.append(f"• {marks.get(e.id, '')}{e.title_in(ctx.lang)} — {ctx.when(e.starts_at)}")
    if marks:
        lines.append(ctx.t("event.list.marks"))
    ctx.ask("\n".join(lines), choices)


@event_list.on_input
def on_event_list(ctx: Ctx, msg: Inbound) -> Transition:
    if msg.choice == "menu":
        return Go(IDLE)
    return Go("event.detail", {"event_id": int(msg.choice[2:]), "back_page": ctx.data.get("_page", 0)})


# ---------------------------------------------------------------- one event
def detail_text(ctx: Ctx, event: Event, rsvp) -> str:
    lines = [ctx.t("event.detail", title=event.title_in(ctx.lang),
                   type=ctx.t(TYPE_KEYS.get(event.type, "event.type.other")),
                   when=span_text(event.starts_at, event.ends_at, ctx.lang, _tz(ctx)), place=event.place or "-")]
    description = event.description_in(ctx.lang)
    if description:
        lines += ["", description]
    lines.append("")
    if event.status == "cancelled":
        lines.append(ctx.t("event.is_cancelled"))
    elif aware(event.ends_at) <= ctx.now:
        lines.append(ctx.t("event.is_over"))
    else:
        free = attendance.free_places(event)
        if free is None:
            lines.append(ctx.t("event.places_unlimited"))
        elif free > 0:
            lines.append(ctx.t("event.places_free", free=free, capacity=event.capacity))
        else:
            lines.append(ctx.t("event.places_full"))
        if event.registration_deadline is not None:
            lines.append(ctx.t("event.deadline", when=ctx.when(event.registration_deadline)))
    lines.append(status_line(ctx, event, rsvp))
    return "\n".join(line for line in lines if line is not None).strip()


def status_line(ctx: Ctx, event: Event, rsvp) -> str:
    if rsvp is None or rsvp.status == "cancelled":
        ahead = aware(event.ends_at) > ctx.now
        if event.status == "active" and not attendance.registration_open(event, ctx.now) and ahead:
            return ctx.t("event.registration_closed")
        return ""
    if rsvp.checked_in_at is not None:
        return ctx.t("event.status.checked_in")
    if rsvp.status == "going":
        remind = "" if ctx.consented("reminders") else "\n" + ctx.t("event.reminders_off_hint")
        return ctx.t("event.status.going") + remind
    return ctx.t("event.status.waitlist", position=rsvp.position)


def detail_choices(ctx: Ctx, event: Event, rsvp) -> list[Choice]:
    choices = []
    status = rsvp.status if rsvp is not None else None
    if event.status == "active" and aware(event.ends_at) > ctx.now:
        if status == "going":
            choices.append(Choice("ics", ctx.t("event.calendar")))
            if not ctx.consented("reminders"):
                choices.append(Choice("remind", ctx.t("event.remind_me")))
            choices.append(Choice("cancel", ctx.t("event.cancel_rsvp")))
        elif status == "waitlist":
            choices.append(Choice("cancel", ctx.t("event.leave_waitlist")))
        elif attendance.registration_open(event, ctx.now):
            full = attendance.free_places(event) == 0
            choices.append(Choice("rsvp", ctx.t(N_("event.join_waitlist") if full else N_("event.rsvp"))))
        if ctx.is_staff:
            choices.append(Choice("edit", ctx.t("event.edit_button")))
    choices.append(Choice("list", ctx.t("event.back_to_list")))
    return choices


@router.state("event.detail", choice_only=True)
def event_detail(ctx: Ctx) -> None:
    event = _event(ctx)
    if event is None:
        ctx.say(ctx.t("event.not_found"))
        ctx.ask(ctx.t("event.what_next"), [Choice("list", ctx.t("event.back_to_list"))])
        return
    rsvp = attendance.rsvp_of(ctx.db, event.id, ctx.resident.id)
    choices = detail_choices(ctx, event, rsvp)
    if ctx.data.get("compact"):
        ctx.ask(status_line(ctx, event, rsvp) or ctx.t("event.what_next"), choices)
        return
    venue: dict[str, Any] = {}
    if event.latitude is not None and event.longitude is not None and event.status == "active":
        venue = dict(latitude=event.latitude, longitude=event.longitude,
                     venue_title=event.place or event.title_in(ctx.lang))
    ctx.ask(detail_text(ctx, event, rsvp), choices, **venue)


@event_detail.on_input
def on_event_detail(ctx: Ctx, msg: Inbound) -> Transition:
    event = _event(ctx)
    if msg.choice == "list" or event is None:
        return Go("event.list", {"_page": ctx.data.get("back_page", 0)})
    back = {"event_id": event.id, "compact": True, "back_page": ctx.data.get("back_page", 0)}
    if msg.choice == "rsvp":
        outcome, rsvp = attendance.register(ctx.db, event.id, ctx.resident.id, now=ctx.now, offsets=_offsets(ctx))
        ctx.db.refresh(event)
        title = event.title_in(ctx.lang)
        if outcome == "going":
            when = span_text(event.starts_at, event.ends_at, ctx.lang, _tz(ctx))
            ctx.say(ctx.t("event.registered", title=title, when=when),
                    document=calendar_files.ics_attachment(event, ctx.lang, _domain(ctx)))
        elif outcome in ("waitlist", "already_waitlist"):
            key = N_("event.waitlisted") if outcome == "waitlist" else N_("event.already_waitlisted")
            ctx.say(ctx.t(key, title=title, position=rsvp.position))
        elif outcome == "already_going":
            ctx.say(ctx.t("event.already_registered", title=title))
        elif outcome == "closed":
            ctx.say(ctx.t("event.registration_closed"))
        else:
            ctx.say(ctx.t("event.not_found"))
        return Go("event.detail", back)
    if msg.choice == "ics":
        ctx.say(ctx.t("event.ics_caption", title=event.title_in(ctx.lang)),
                document=calendar_files.ics_attachment(event, ctx.lang, _domain(ctx)))
        return Go("event.detail", back)
    if msg.choice == "remind":
        if ctx.consented("reminders"):  # an old page's button (else giving the consent plans them)
            reminders.enable_reminders_for(ctx.db, ctx.resident.id, ctx.now, _offsets(ctx))
        return require_consent(ctx, "reminders", "event.reminders_on", back)
    if msg.choice == "cancel":
        return Go("event.cancel_confirm", back)
    if msg.choice == "edit":
        return Go("event.edit", {"event_id": event.id})
    return Invalid("engine.choose")


@router.state("event.reminders_on", choice_only=True)
def reminders_on(ctx: Ctx) -> None:
    """The event's page after "remind me", saying first that reminders are on (planned when the
    "reminders" consent was given: the participation router's on_grant). Its buttons are the page's."""
    ctx.say(ctx.t("event.reminders_enabled"))
    event_detail(ctx)


reminders_on.on_input(on_event_detail)


@router.state("event.cancel_confirm", choice_only=True)
def cancel_confirm(ctx: Ctx) -> None:
    event = _event(ctx)
    rsvp = attendance.rsvp_of(ctx.db, event.id, ctx.resident.id) if event else None
    key = N_("event.leave_waitlist_question") if rsvp and rsvp.status == "waitlist" else N_("event.cancel_question")
    ctx.ask(ctx.t(key, title=event.title_in(ctx.lang) if event else ""), yes_no(ctx))


@cancel_confirm.on_input
def on_cancel_confirm(ctx: Ctx, msg: Inbound) -> Transition:
    if msg.choice == "yes" and ctx.data.get("event_id"):
        result = attendance.cancel_registration(ctx.db, int(ctx.data["event_id"]), ctx.resident.id, now=ctx.now,
                                       offsets=_offsets(ctx), tz=_tz(ctx), domain=_domain(ctx))
        keys = {"cancelled": N_("event.rsvp_cancelled"), "left_waitlist": N_("event.waitlist_left"),
                "nothing": N_("event.nothing_to_cancel")}
        ctx.say(ctx.t(keys[result]))
    return Go("event.detail", {**ctx.data, "compact": True})


# ---------------------------------------------------------------- buttons on notifications
@router.global_choice(EVENT_PREFIX)
def event_button(ctx: Ctx, msg: Inbound) -> Transition:
    """ev:<event>:c asks, ev:<event>:cy cancels the registration (from a reminder or a notice)."""
    parts = msg.choice.split(":")
    event_id = record_id(parts[1]) if len(parts) == 3 else None
    if event_id is None:
        ctx.replies.append(Outbound(ctx.t("engine.stale_choice")))
        return Stay()
    action = parts[2]
    event = ctx.db.get(Event, event_id)
    if event is None:
        ctx.replies.append(Outbound(ctx.t("event.not_found")))
        return Stay()
    if action == "c":
        rsvp = attendance.rsvp_of(ctx.db, event_id, ctx.resident.id)
        if rsvp is None or rsvp.status not in ("going", "waitlist"):
            ctx.replies.append(Outbound(ctx.t("event.nothing_to_cancel")))
            return Stay()
        key = N_("event.leave_waitlist_question") if rsvp.status == "waitlist" else N_("event.cancel_question")
        ctx.replies.append(Outbound(ctx.t(key, title=event.title_in(ctx.lang)),
                                    [Choice(f"{EVENT_PREFIX}:{event_id}:cy", ctx.t("event.cancel_yes"))]))
        return Stay()
    if action == "cy":
        result = attendance.cancel_registration(ctx.db, event_id, ctx.resident.id, now=ctx.now, offsets=_offsets(ctx),
                                       tz=_tz(ctx), domain=_domain(ctx))
        keys = {"cancelled": N_("event.rsvp_cancelled"), "left_waitlist": N_("event.waitlist_left"),
                "nothing": N_("event.nothing_to_cancel")}
        ctx.replies.append(Outbound(ctx.t(keys[result])))
        return Stay()
    ctx.replies.append(Outbound(ctx.t("engine.stale_choice")))
    return Stay()


@router.global_choice(FEEDBACK_PREFIX)
def feedback_button(ctx: Ctx, msg: Inbound) -> Transition:
    """fb:<event>:<1-5>: the rating is saved at once; then an optional comment."""
    parts = msg.choice.split(":")
    event_id, rating = (record_id(parts[1]), record_id(parts[2])) if len(parts) == 3 else (None, None)
    if event_id is None or rating is None:
        ctx.replies.append(Outbound(ctx.t("engine.stale_choice")))
        return Stay()
    result = attendance.record_rating(ctx.db, event_id, ctx.resident.id, rating, ctx.now)
    if result != "ok":
        ctx.replies.append(Outbound(ctx.t(N_("event.feedback.not_attended") if result == "not_attended"
                                          else N_("engine.stale_choice"))))
        return Stay()
    resume = {k: v for k, v in ctx.data.items() if k != "_choices"}
    return Go("event.feedback_comment", {"event_id": event_id, "rating": rating, "resume_state": ctx.state,
                                         "resume_data": resume})


@router.state("event.feedback_comment")
def feedback_comment(ctx: Ctx) -> None:
    ctx.ask(ctx.t("event.feedback.comment_ask", rating=ctx.data.get("rating", "")),
            [Choice("skip", ctx.t("event.feedback.skip"))])


@feedback_comment.on_input
def on_feedback_comment(ctx: Ctx, msg: Inbound) -> Transition:
    if msg.kind == Kind.TEXT and str(ctx.data.get("event_id", "")).isdigit():
        attendance.record_comment(ctx.db, int(ctx.data["event_id"]), ctx.resident.id, msg.text)
    ctx.say(ctx.t("event.feedback.thanks"))
    state_name = ctx.data.get("resume_state") or IDLE
    if state_name in ("event.feedback_comment",):
        state_name = IDLE
    return Go(state_name, ctx.data.get("resume_data") or {})


# ---------------------------------------------------------------- staff: a new event
@router.state("event.add_text", staff_only=True)
def add_text(ctx: Ctx) -> None:
    field, lang = LANG_FIELDS[ctx.data.get("i", 0)]
    choices = [] if (field, lang) == ("title", "tr") else [Choice("skip", ctx.t("event.add.skip"))]
    ctx.ask(ctx.t(FIELD_PROMPTS[(field, lang)]), choices)


@add_text.on_input
def on_add_text(ctx: Ctx, msg: Inbound) -> Transition:
    i = ctx.data.get("i", 0)
    field, lang = LANG_FIELDS[i]
    if msg.kind == Kind.TEXT:
        limit = 200 if field == "title" else 2000
        ctx.data.setdefault(field, {})[lang] = msg.text.strip()[:limit]
    elif (field, lang) == ("title", "tr"):
        return Invalid("event.title_needed")
    if i + 1 < len(LANG_FIELDS):
        return Go("event.add_text", {"i": i + 1}, keep=True)
    return Go("event.add_type", keep=True)


@router.state("event.add_type", staff_only=True, choice_only=True)
def add_type(ctx: Ctx) -> None:
    ctx.ask(ctx.t("event.add.type"), [Choice(f"t:{k}", ctx.t(TYPE_KEYS[k])) for k in EVENT_TYPES], columns=2)


@add_type.on_input
def on_add_type(ctx: Ctx, msg: Inbound) -> Transition:
    return Go("event.add_start", {"type": msg.choice[2:]}, keep=True)


def _time_state(name: str, prompt_key: str, next_state: str, data_key: str, *, base_key: str | None = None,
                optional: bool = False):
    @router.state(name, staff_only=True)
    def prompt(ctx: Ctx) -> None:
        ctx.ask(ctx.t(prompt_key, example=_example(ctx)), [Choice("skip", ctx.t("event.add.skip"))] if optional else [])

    @prompt.on_input
    def on_time(ctx: Ctx, msg: Inbound) -> Transition:
        if msg.kind == Kind.CHOICE and optional:
            return Go(next_state, {data_key: None}, keep=True)
        if msg.kind != Kind.TEXT:
            return Invalid("event.bad_datetime")
        base = _dt(ctx.data.get(base_key)) if base_key else None
        try:
            when = _read_time(ctx, msg.text, base=base)
        except ParticipationError as exc:
            return Invalid(exc.key)
        if base is not None and data_key == "ends_at" and when <= base:
            return Invalid("event.end_before_start")
        if data_key == "deadline" and ctx.data.get("ends_at") and when > _dt(ctx.data["ends_at"]):
            return Invalid("event.deadline_after_end")
        return Go(next_state, {data_key: when.isoformat()}, keep=True)

    return prompt


_time_state("event.add_start", N_("event.add.start"), "event.add_end", "starts_at")
_time_state("event.add_end", N_("event.add.end"), "event.add_place", "ends_at", base_key="starts_at")
_time_state("event.add_deadline", N_("event.add.deadline"), "event.add_confirm", "deadline", base_key="starts_at",
            optional=True)  # "12:00": that day, as the CLI reads --deadline


@router.state("event.add_place", staff_only=True)
def add_place(ctx: Ctx) -> None:
    ctx.ask(ctx.t("event.add.place"))


@add_place.on_input
def on_add_place(ctx: Ctx, msg: Inbound) -> Transition:
    if msg.kind != Kind.TEXT:
        return Invalid("event.add.place")
    return Go("event.add_pin", {"place": msg.text.strip()[:255]}, keep=True)


@router.state("event.add_pin", accepts={Kind.LOCATION, Kind.CHOICE}, staff_only=True)
def add_pin(ctx: Ctx) -> None:
    ctx.ask(ctx.t("event.add.pin"), [Choice("skip", ctx.t("event.add.skip"))])


@add_pin.on_input
def on_add_pin(ctx: Ctx, msg: Inbound) -> Transition:
    pin = [msg.latitude, msg.longitude] if msg.kind == Kind.LOCATION else None
    return Go(ctx.data.get("pin_next", "event.add_capacity"), {"pin": pin}, keep=True)


@router.state("event.add_capacity", staff_only=True, number_answer=True)
def add_capacity(ctx: Ctx) -> None:
    ctx.ask(ctx.t("event.add.capacity"), [Choice("skip", ctx.t("event.add.no_limit"))])


@add_capacity.on_input
def on_add_capacity(ctx: Ctx, msg: Inbound) -> Transition:
    if msg.kind == Kind.CHOICE:
        return Go("event.add_deadline", {"capacity": None}, keep=True)
    number = read_count(msg.text)
    if number is None:
        return Invalid("event.bad_number")
    return Go("event.add_deadline", {"capacity": number}, keep=True)


REQUIRED = ("title", "type", "starts_at", "ends_at")


def summary(ctx: Ctx, data: dict[str, Any]) -> str:
    none = ctx.t("common.none")
    start, end = _dt(data.get("starts_at")), _dt(data.get("ends_at"))
    pin = data.get("pin")
    return ctx.t("event.add.summary", title=" / ".join(v for v in (data.get("title") or {}).values() if v) or none,
                 type=ctx.t(TYPE_KEYS.get(data.get("type"), "event.type.other")),
                 when=span_text(start, end, ctx.lang, _tz(ctx)) if start and end else none,
                 place=data.get("place") or none,
                 pin=f"{pin[0]:.5f}, {pin[1]:.5f}" if pin else none,
                 capacity=data.get("capacity") or ctx.t("event.add.no_limit"),
                 deadline=ctx.when(_dt(data["deadline"])) if data.get("deadline") else none)


@router.state("event.add_confirm", staff_only=True, choice_only=True)
def add_confirm(ctx: Ctx) -> None:
    ctx.ask(ctx.t("event.add.confirm", summary=summary(ctx, ctx.data)),
            [Choice("save", ctx.t("event.add.save")), Choice("drop", ctx.t("event.add.discard"))])


@add_confirm.on_input
def on_add_confirm(ctx: Ctx, msg: Inbound) -> Transition:
    if msg.choice != "save":
        ctx.say(ctx.t("cancel.done"))
        return Go(IDLE)
    d = ctx.data
    if not all(d.get(k) for k in REQUIRED):  # incomplete (never through the normal path): start again
        return Go("event.add_text", {"i": 0, "title": {}, "description": {}})
    pin = d.get("pin") or [None, None]
    try:
        event = event_ops.create_event(ctx.db, _actor(ctx), title=d["title"], description=d.get("description") or {},
                                       type=d["type"], starts_at=_dt(d["starts_at"]), ends_at=_dt(d["ends_at"]),
                                       place=d.get("place", ""), latitude=pin[0], longitude=pin[1],
                                       capacity=d.get("capacity"), registration_deadline=_dt(d.get("deadline")),
                                       now=ctx.now)
    except Refused:  # staff screens admit admin and staff (repo.CHAT_STAFF_ROLES): should the rules ever differ
        ctx.say(ctx.t("staff.refused"))
        return Go(IDLE)
    except ParticipationError as exc:
        ctx.say(ctx.t(exc.key))
        return Go(IDLE)
    username = bot_username(ctx)
    link = attendance.event_link(username, event.id) if username else f"/start ev_{event.id}"
    ctx.say(ctx.t("event.add.saved", id=event.id, link=link))
    return Go("event.detail", {"event_id": event.id})


# ---------------------------------------------------------------- staff: edit or cancel
@router.state("event.edit", staff_only=True, choice_only=True)
def edit_menu(ctx: Ctx) -> None:
    event = _event(ctx)
    ctx.ask(ctx.t("event.edit.menu", title=event.title_in(ctx.lang) if event else ""),
            [Choice("time", ctx.t("event.edit.time")), Choice("place", ctx.t("event.edit.place")),
             Choice("capacity", ctx.t("event.edit.capacity")), Choice("cancel_event", ctx.t("event.edit.cancel_event")),
             Choice("back", ctx.t("common.back"))])


@edit_menu.on_input
def on_edit_menu(ctx: Ctx, msg: Inbound) -> Transition:
    target = {"time": "event.edit_start", "place": "event.edit_place", "capacity": "event.edit_capacity",
              "cancel_event": "event.edit_cancel"}.get(msg.choice)
    if target is None:
        return Go("event.detail", {"event_id": ctx.data.get("event_id")})
    return Go(target, {"event_id": ctx.data.get("event_id")})


def apply_change(ctx: Ctx, change: event_ops.EventChange) -> Transition:
    if not str(ctx.data.get("event_id", "")).isdigit():
        ctx.say(ctx.t("event.not_found"))
        return Go(IDLE)
    try:
        edited = event_ops.update_event(ctx.db, _actor(ctx), int(ctx.data["event_id"]), change, now=ctx.now,
                                        offsets=_offsets(ctx), tz=_tz(ctx), domain=_domain(ctx))
    except Refused:
        ctx.say(ctx.t("staff.refused"))
        return Go(IDLE)
    except ParticipationError as exc:
        ctx.say(ctx.t(exc.key))
        return Go("event.edit", {"event_id": ctx.data.get("event_id")})
    ctx.say(ctx.t.n("event.edit.saved", edited.told, told=edited.told))
    return Go("event.detail", {"event_id": edited.event.id})


@router.state("event.edit_start", staff_only=True)
def edit_start(ctx: Ctx) -> None:
    event = _event(ctx)
    ctx.ask(ctx.t("event.edit.start", current=ctx.when(event.starts_at) if event else "", example=_example(ctx)))


@edit_start.on_input
def on_edit_start(ctx: Ctx, msg: Inbound) -> Transition:
    if msg.kind != Kind.TEXT:
        return Invalid("event.bad_datetime")
    try:
        when = _read_time(ctx, msg.text)
    except ParticipationError as exc:
        return Invalid(exc.key)
    return Go("event.edit_end", {"starts_at": when.isoformat()}, keep=True)


@router.state("event.edit_end", staff_only=True)
def edit_end(ctx: Ctx) -> None:
    ctx.ask(ctx.t("event.edit.end"), [Choice("same", ctx.t("event.edit.same_length"))])


@edit_end.on_input
def on_edit_end(ctx: Ctx, msg: Inbound) -> Transition:
    start = _dt(ctx.data.get("starts_at"))
    if start is None:
        return Go("event.edit_start", keep=True)
    if msg.kind == Kind.CHOICE:
        return apply_change(ctx, event_ops.EventChange(starts_at=start))
    try:
        end = _read_time(ctx, msg.text, base=start)
    except ParticipationError as exc:
        return Invalid(exc.key)
    if end <= start:
        return Invalid("event.end_before_start")
    return apply_change(ctx, event_ops.EventChange(starts_at=start, ends_at=end))


@router.state("event.edit_place", staff_only=True)
def edit_place(ctx: Ctx) -> None:
    ctx.ask(ctx.t("event.add.place"))


@edit_place.on_input
def on_edit_place(ctx: Ctx, msg: Inbound) -> Transition:
    if msg.kind != Kind.TEXT:
        return Invalid("event.add.place")
    return Go("event.edit_pin", {"place": msg.text.strip()[:255]}, keep=True)


@router.state("event.edit_pin", accepts={Kind.LOCATION, Kind.CHOICE}, staff_only=True)
def edit_pin(ctx: Ctx) -> None:
    ctx.ask(ctx.t("event.add.pin"), [Choice("skip", ctx.t("event.edit.keep_pin")),
                                     Choice("remove", ctx.t("event.edit.remove_pin"))])


@edit_pin.on_input
def on_edit_pin(ctx: Ctx, msg: Inbound) -> Transition:
    change = event_ops.EventChange(place=ctx.data.get("place"))
    if msg.kind == Kind.LOCATION:
        change.latitude, change.longitude = msg.latitude, msg.longitude
    elif msg.choice == "remove":
        change.clear_pin = True
    return apply_change(ctx, change)


@router.state("event.edit_capacity", staff_only=True, number_answer=True)
def edit_capacity(ctx: Ctx) -> None:
    ctx.ask(ctx.t("event.add.capacity"), [Choice("none", ctx.t("event.add.no_limit"))])


@edit_capacity.on_input
def on_edit_capacity(ctx: Ctx, msg: Inbound) -> Transition:
    if msg.kind == Kind.CHOICE:
        return apply_change(ctx, event_ops.EventChange(clear_capacity=True))
    number = read_count(msg.text)
    if number is None:
        return Invalid("event.bad_number")
    return apply_change(ctx, event_ops.EventChange(capacity=number))


@router.state("event.edit_cancel", staff_only=True, choice_only=True)
def edit_cancel(ctx: Ctx) -> None:
    event = _event(ctx)
    ctx.ask(ctx.t("event.edit.cancel_question", title=event.title_in(ctx.lang) if event else ""), yes_no(ctx))


@edit_cancel.on_input
def on_edit_cancel(ctx: Ctx, msg: Inbound) -> Transition:
    if msg.choice != "yes":
        return Go("event.edit", {"event_id": ctx.data.get("event_id")})
    if not str(ctx.data.get("event_id", "")).isdigit():
        ctx.say(ctx.t("event.not_found"))
        return Go(IDLE)
    try:
        cancelled = event_ops.cancel_event(ctx.db, _actor(ctx), int(ctx.data["event_id"]), now=ctx.now, tz=_tz(ctx),
                                           domain=_domain(ctx))
    except Refused:  # staff screens admit admin and staff (repo.CHAT_STAFF_ROLES): should the rules ever differ
        ctx.say(ctx.t("staff.refused"))
        return Go(IDLE)
    except ParticipationError as exc:
        ctx.say(ctx.t(exc.key))
        return Go(IDLE)
    ctx.say(ctx.t.n("event.edit.cancelled", cancelled.told, told=cancelled.told))
    return Go(IDLE)
