"""Volunteer pools: /gonullu shows the municipality's pools (with their Sustainable Development
Goals); a resident joins with skills (catalog tags and free text), availability (weekdays,
weekends, evenings) and mahalle, sees and leaves pools, and sees their duties. Staff post a call
for volunteers with /gonullucagri (or `katilim volunteers call`); matching volunteers get it with
accept / decline buttons that work whatever they are doing (global choices "vc:...").

Everything here needs the "volunteering" consent, asked just in time.
"""
from __future__ import annotations

from datetime import datetime

from sqlmodel import Session

from conversations.core import require_consent, yes_no
from conversations.domain import volunteering as call_ops
from conversations.i18n import N_
from conversations.messages import Choice, Inbound, Kind, Outbound
from conversations.participation import AVAILABILITY_KEYS, CALL_PREFIX, ParticipationError, read_count, read_time
from conversations.participation_data import withdraw_volunteering
from conversations.permissions import Refused
from conversations.pools import (
    calls_of,
    invitations_of,
    join_pool,
    leave_pool,
    membership,
    memberships_of,
    respond_to_call,
)
from conversations.registry import Router
from conversations.reminders import offsets_of
from conversations.step import IDLE, Ctx, EngineConfig, Go, Invalid, Stay, Transition
from conversations.text import match_mahalle, record_id, truncate
from conversations.when import example_time, span_text
from storage.participation import AVAILABILITY

router = Router("volunteering")
router.menu_item(35, "volunteer", N_("volunteer.menu"), "cmd:volunteer")
router.menu_item(104, "staff_volunteercall", N_("menu.staff_volunteercall"), "cmd:volunteercall", staff=True)


@router.on_withdrawal("volunteering")
def leave_everything(db: Session, resident_id: int, now: datetime, config: EngineConfig) -> None:
    """They leave every pool; their answers to calls not started yet go (a place goes to the reserves)."""
    withdraw_volunteering(db, resident_id, now=now, tz=config.timezone)


def _tz(ctx: Ctx) -> str:
    return ctx.config.timezone


def _offsets(ctx: Ctx):
    return offsets_of(ctx.config.settings)


def _sdg(ctx: Ctx, goals) -> str:
    return ctx.t("volunteer.sdg", goals=ctx.t.join(str(g) for g in goals)) if goals else ""


def _pool_name(ctx: Ctx, key: str) -> str:
    pool = ctx.catalog.pool(key)
    return pool.name.get(ctx.lang) if pool else key


def _skill_name(ctx: Ctx, key: str) -> str:
    return next((name.get(ctx.lang) for k, name in ctx.catalog.skills if k == key), key)


def _hood_name(ctx: Ctx, key: str | None) -> str:
    hood = ctx.catalog.neighbourhood(key) if key else None
    return hood.name if hood else ctx.t("common.none")


# ---------------------------------------------------------------- entry
@router.command("volunteer", "gonullu", "gönüllü", "volunteer",
                menu={"tr": "gonullu", "en": "volunteer", "ar": "volunteer"},
                description=N_("volunteer.command"))
def cmd_volunteer(ctx: Ctx, text: str) -> Transition:
    return require_consent(ctx, "volunteering", "volunteer.home")


@router.state("volunteer.home", choice_only=True)
def home(ctx: Ctx) -> None:
    joined = {m.pool for m in memberships_of(ctx.db, ctx.resident.id)}
    lines = [ctx.t("volunteer.home", municipality=ctx.catalog.municipality.name.get(ctx.lang))]
    choices = []
    for pool in ctx.catalog.pools:
        mark = "✓ " if pool.key in joined else ""
        lines.append(f"• {mark}{pool.name.get(ctx.lang)} — {_sdg(ctx, pool.sdg)}")
        choices.append(Choice(f"p:{pool.key}", mark + pool.name.get(ctx.lang)))
    if not ctx.catalog.pools:
        lines.append(ctx.t("volunteer.no_pools"))
    choices += [Choice("open", ctx.t("volunteer.open_calls")), Choice("mine", ctx.t("volunteer.my_calls")),
                Choice("menu", ctx.t("common.back"))]
    ctx.ask("\n".join(lines), choices)


@home.on_input
def on_home(ctx: Ctx, msg: Inbound) -> Transition:
    if msg.choice == "menu":
        return Go(IDLE)
    if msg.choice == "mine":
        return Go("volunteer.mine")
    if msg.choice == "open":
        return Go("volunteer.open")
    return Go("volunteer.pool", {"pool": msg.choice[2:]})


@router.state("volunteer.open", choice_only=True)
def open_calls(ctx: Ctx) -> None:
    """The calls they were invited to and may still take: a call's message is never the only way."""
    def line(call) -> tuple[str, Choice]:
        when = span_text(call.starts_at, call.ends_at, ctx.lang, _tz(ctx))
        return (ctx.t("volunteer.open_line", what=call.what, when=when, place=call.place,
                      free=max(0, call.capacity - call.accepted), capacity=call.capacity),
                Choice(f"{CALL_PREFIX}:{call.id}:y", ctx.t("volunteer.open_take", what=truncate(call.what, 24))))

    _calls_page(ctx, [line(call) for call in invitations_of(ctx.db, ctx.resident.id, ctx.now)],
                N_("volunteer.open_empty"), N_("volunteer.open_title"))


def _calls_page(ctx: Ctx, rows: list[tuple[str, Choice]], empty: str, title: str) -> None:
    """A list of calls, a line and a button each, and back (or `empty` when there is none)."""
    if not rows:
        ctx.ask(ctx.t(empty), [Choice("back", ctx.t("common.back"))])
        return
    ctx.ask("\n".join([ctx.t(title), *(text for text, _ in rows)]),
            [choice for _, choice in rows] + [Choice("back", ctx.t("common.back"))])


@open_calls.on_input
def on_open_calls(ctx: Ctx, msg: Inbound) -> Transition:
    if msg.choice == "back":
        return Go("volunteer.home")
    call_button(ctx, msg)       # as the call's own "I'll come" button
    return Go("volunteer.mine")


@router.state("volunteer.pool", choice_only=True)
def pool_detail(ctx: Ctx) -> None:
    pool = ctx.catalog.pool(ctx.data.get("pool", ""))
    if pool is None:
        ctx.ask(ctx.t("volunteer.no_pools"), [Choice("back", ctx.t("common.back"))])
        return
    member = membership(ctx.db, ctx.resident.id, pool.key)
    lines = [ctx.t("volunteer.pool_detail", name=pool.name.get(ctx.lang), description=pool.description.get(ctx.lang),
                   sdg=_sdg(ctx, pool.sdg))]
    choices = []
    if member is not None:
        lines.append(ctx.t("volunteer.you_are_member", since=ctx.when(member.joined_at),
                           availability=_availability(ctx, member.weekdays, member.weekends, member.evenings)))
        choices += [Choice("join", ctx.t("volunteer.update")), Choice("leave", ctx.t("volunteer.leave"))]
    else:
        choices.append(Choice("join", ctx.t("volunteer.join")))
    choices.append(Choice("back", ctx.t("common.back")))
    ctx.ask("\n".join(lines), choices)


@pool_detail.on_input
def on_pool_detail(ctx: Ctx, msg: Inbound) -> Transition:
    if msg.choice == "back":
        return Go("volunteer.home")
    pool = ctx.data.get("pool", "")
    if msg.choice == "leave":
        return Go("volunteer.leave", {"pool": pool})
    member = membership(ctx.db, ctx.resident.id, pool)
    data = {"pool": pool, "tags": list(member.skill_tags) if member else [],
            "skills": member.skills if member else "",
            "avail": [a for a in AVAILABILITY if member and getattr(member, a)],
            "mahalle": (member.mahalle if member else None) or ctx.resident.mahalle}
    return Go("volunteer.skills" if ctx.catalog.skills else "volunteer.skills_text", data)


def _availability(ctx: Ctx, weekdays: bool, weekends: bool, evenings: bool) -> str:
    chosen = [a for a, on in zip(AVAILABILITY, (weekdays, weekends, evenings), strict=True) if on]
    return ctx.t.join(ctx.t(AVAILABILITY_KEYS[a]) for a in chosen) or ctx.t("common.none")


# ---------------------------------------------------------------- joining
@router.state("volunteer.skills")
def skills(ctx: Ctx) -> None:
    chosen = set(ctx.data.get("tags", []))
    choices = [Choice(f"s:{key}", ("✅ " if key in chosen else "⬜ ") + name.get(ctx.lang))
               for key, name in ctx.catalog.skills]
    choices.append(Choice("done", ctx.t("volunteer.done")))
    ctx.ask(ctx.t("volunteer.skills_prompt", pool=_pool_name(ctx, ctx.data.get("pool", ""))), choices, columns=2)


@skills.on_input
def on_skills(ctx: Ctx, msg: Inbound) -> Transition:
    if msg.kind != Kind.CHOICE:
        return Invalid("volunteer.tap_to_select")
    if msg.choice == "done":
        return Go("volunteer.skills_text", keep=True)
    tags = set(ctx.data.get("tags", []))
    tags ^= {msg.choice[2:]}
    return Go("volunteer.skills", {"tags": sorted(tags)}, keep=True)


@router.state("volunteer.skills_text")
def skills_text(ctx: Ctx) -> None:
    current = ctx.data.get("skills") or ""
    choices = [Choice("skip", ctx.t(N_("volunteer.keep") if current else N_("volunteer.skip")))]
    text = ctx.t("volunteer.skills_text_prompt")
    if current:
        text += "\n" + ctx.t("volunteer.current", value=current)
    ctx.ask(text, choices)


@skills_text.on_input
def on_skills_text(ctx: Ctx, msg: Inbound) -> Transition:
    if msg.kind == Kind.TEXT:
        ctx.data["skills"] = msg.text.strip()[:1000]
    return Go("volunteer.availability", keep=True)


@router.state("volunteer.availability")
def availability(ctx: Ctx) -> None:
    chosen = set(ctx.data.get("avail", []))
    choices = [Choice(f"a:{a}", ("✅ " if a in chosen else "⬜ ") + ctx.t(AVAILABILITY_KEYS[a])) for a in AVAILABILITY]
    choices.append(Choice("done", ctx.t("volunteer.done")))
    ctx.ask(ctx.t("volunteer.availability_prompt"), choices)


@availability.on_input
def on_availability(ctx: Ctx, msg: Inbound) -> Transition:
    if msg.kind != Kind.CHOICE:
        return Invalid("volunteer.tap_to_select")
    if msg.choice == "done":
        if not ctx.data.get("avail"):
            return Invalid("volunteer.availability_needed")
        return Go("volunteer.mahalle", keep=True)
    avail = set(ctx.data.get("avail", []))
    avail ^= {msg.choice[2:]}
    return Go("volunteer.availability", {"avail": [a for a in AVAILABILITY if a in avail]}, keep=True)


@router.state("volunteer.mahalle")
def mahalle(ctx: Ctx) -> None:
    current = ctx.data.get("mahalle")
    candidates = ctx.data.get("candidates")
    hoods = [n for n in ctx.catalog.neighbourhoods if not candidates or n.key in candidates]
    extra = []
    if current and not candidates:
        extra.append(Choice("keep", ctx.t("volunteer.mahalle_keep", mahalle=_hood_name(ctx, current))))
    extra.append(Choice("skip", ctx.t("volunteer.skip")))
    text = (ctx.t("volunteer.mahalle_current", mahalle=_hood_name(ctx, current)) if current
            else ctx.t("volunteer.mahalle_prompt"))
    items = [Choice(f"m:{n.key}", n.name) for n in hoods]
    ctx.ask(text, extra + ctx.paged(items, ctx.data.get("_page", 0)), columns=2)


@mahalle.on_input
def on_mahalle(ctx: Ctx, msg: Inbound) -> Transition:
    if msg.kind == Kind.CHOICE:
        if msg.choice == "keep":
            return Go("volunteer.confirm", {"candidates": None}, keep=True)
        if msg.choice == "skip":
            return Go("volunteer.confirm", {"mahalle": None, "candidates": None}, keep=True)
        return Go("volunteer.confirm", {"mahalle": msg.choice[2:], "candidates": None}, keep=True)
    found = match_mahalle(msg.text, ctx.catalog.neighbourhoods)
    if len(found) == 1:
        return Go("volunteer.confirm", {"mahalle": found[0], "candidates": None}, keep=True)
    if not found:
        ctx.data.pop("candidates", None)
        return Invalid("mahalle.not_found")
    return Go("volunteer.mahalle", {"candidates": found, "_page": 0}, keep=True)


@router.state("volunteer.confirm", choice_only=True)
def confirm(ctx: Ctx) -> None:
    d = ctx.data
    skill_names = [_skill_name(ctx, k) for k in d.get("tags", [])] + ([d["skills"]] if d.get("skills") else [])
    ctx.ask(ctx.t("volunteer.confirm", pool=_pool_name(ctx, d.get("pool", "")),
                  skills=ctx.t.join(skill_names) or ctx.t("common.none"),
                  availability=_availability(ctx, *(a in d.get("avail", []) for a in AVAILABILITY)),
                  mahalle=_hood_name(ctx, d.get("mahalle"))),
            [Choice("save", ctx.t("volunteer.save")), Choice("drop", ctx.t("volunteer.discard"))])


@confirm.on_input
def on_confirm(ctx: Ctx, msg: Inbound) -> Transition:
    if msg.choice != "save":
        ctx.say(ctx.t("cancel.done"))
        return Go("volunteer.home")
    d = ctx.data
    if ctx.catalog.pool(d.get("pool", "")) is None:
        return Go("volunteer.home")
    valid_tags = {k for k, _ in ctx.catalog.skills}
    avail = d.get("avail", [])
    join_pool(ctx.db, ctx.resident.id, d["pool"], skills=d.get("skills", ""),
                skill_tags=[t for t in d.get("tags", []) if t in valid_tags], weekdays="weekdays" in avail,
                weekends="weekends" in avail, evenings="evenings" in avail, mahalle=d.get("mahalle"), now=ctx.now)
    ctx.say(ctx.t("volunteer.joined", pool=_pool_name(ctx, d["pool"])))
    return Go("volunteer.home")


@router.state("volunteer.leave", choice_only=True)
def leave(ctx: Ctx) -> None:
    ctx.ask(ctx.t("volunteer.leave_question", pool=_pool_name(ctx, ctx.data.get("pool", ""))), yes_no(ctx))


@leave.on_input
def on_leave(ctx: Ctx, msg: Inbound) -> Transition:
    if msg.choice == "yes" and leave_pool(ctx.db, ctx.resident.id, ctx.data.get("pool", "")):
        ctx.say(ctx.t("volunteer.left", pool=_pool_name(ctx, ctx.data.get("pool", ""))))
    return Go("volunteer.home")


# ---------------------------------------------------------------- my duties
@router.state("volunteer.mine", choice_only=True)
def mine(ctx: Ctx) -> None:
    def line(response, call) -> tuple[str, Choice]:
        when = span_text(call.starts_at, call.ends_at, ctx.lang, _tz(ctx))
        status = (ctx.t("volunteer.status.accepted") if response.status == "accepted"
                  else ctx.t("volunteer.status.reserve", position=response.position))
        return (f"• {call.what} — {when}, {call.place} ({status})",
                Choice(f"c:{call.id}", ctx.t("volunteer.cancel_duty", what=truncate(call.what, 24))))

    _calls_page(ctx, [line(response, call) for response, call in calls_of(ctx.db, ctx.resident.id, ctx.now)],
                N_("volunteer.mine_empty"), N_("volunteer.mine_title"))


@mine.on_input
def on_mine(ctx: Ctx, msg: Inbound) -> Transition:
    if msg.choice == "back":
        return Go("volunteer.home")
    outcome = respond_to_call(ctx.db, int(msg.choice[2:]), ctx.resident.id, "c", lang=ctx.lang, tz=_tz(ctx),
                                now=ctx.now, offsets=_offsets(ctx))
    ctx.replies.append(outcome.outbound(ctx.t))
    return Stay()


# ---------------------------------------------------------------- the buttons of a call
@router.global_choice(CALL_PREFIX)
def call_button(ctx: Ctx, msg: Inbound) -> Transition:
    """vc:<call>:y accept · n decline · c cancel (asks) · cy cancel · t take a freed place."""
    parts = msg.choice.split(":")
    call_id = record_id(parts[1]) if len(parts) == 3 else None
    if call_id is None:
        ctx.replies.append(Outbound(ctx.t("engine.stale_choice")))
        return Stay()
    outcome = respond_to_call(ctx.db, call_id, ctx.resident.id, parts[2], lang=ctx.lang, tz=_tz(ctx),
                                now=ctx.now, offsets=_offsets(ctx))
    ctx.replies.append(outcome.outbound(ctx.t))
    return Stay()


# ---------------------------------------------------------------- staff: a call for volunteers
@router.command("volunteercall", "gonullucagri", "volunteercall", description=N_("volunteer.call_new.command"),
                menu={"tr": "gonullucagri", "en": "volunteercall", "ar": "volunteercall"}, staff=True)
def cmd_volunteer_call(ctx: Ctx, text: str) -> Transition:
    # a staff-only state: the engine refuses anyone else and audits the attempt
    return Go("volunteer.call_pools", {"pools": []})


@router.state("volunteer.call_pools", staff_only=True)
def call_pools(ctx: Ctx) -> None:
    chosen = set(ctx.data.get("pools", []))
    choices = [Choice(f"p:{p.key}", ("✅ " if p.key in chosen else "⬜ ") + p.name.get(ctx.lang))
               for p in ctx.catalog.pools]
    choices.append(Choice("done", ctx.t("volunteer.done")))
    ctx.ask(ctx.t("volunteer.call_new.pools"), choices, columns=2)


@call_pools.on_input
def on_call_pools(ctx: Ctx, msg: Inbound) -> Transition:
    if msg.kind != Kind.CHOICE:
        return Invalid("volunteer.tap_to_select")
    if msg.choice == "done":
        if not ctx.data.get("pools"):
            return Invalid("volunteer.call_new.pick_pool")
        return Go("volunteer.call_what", keep=True)
    pools = set(ctx.data.get("pools", []))
    pools ^= {msg.choice[2:]}
    return Go("volunteer.call_pools", {"pools": [p.key for p in ctx.catalog.pools if p.key in pools]}, keep=True)


def _text_state(name: str, prompt_key: str, next_state: str, data_key: str, limit: int):
    @router.state(name, staff_only=True)
    def prompt(ctx: Ctx) -> None:
        ctx.ask(ctx.t(prompt_key))

    @prompt.on_input
    def on_text(ctx: Ctx, msg: Inbound) -> Transition:
        if msg.kind != Kind.TEXT:
            return Invalid(prompt_key)
        return Go(next_state, {data_key: msg.text.strip()[:limit]}, keep=True)

    return prompt


_text_state("volunteer.call_what", N_("volunteer.call_new.what"), "volunteer.call_where", "what", 2000)
_text_state("volunteer.call_where", N_("volunteer.call_new.where"), "volunteer.call_start", "place", 255)


@router.state("volunteer.call_start", staff_only=True)
def call_start(ctx: Ctx) -> None:
    ctx.ask(ctx.t("volunteer.call_new.start", example=example_time(ctx.now, ctx.lang, _tz(ctx))))


@call_start.on_input
def on_call_start(ctx: Ctx, msg: Inbound) -> Transition:
    if msg.kind != Kind.TEXT:
        return Invalid("event.bad_datetime")
    try:
        when = read_time(msg.text, _tz(ctx), now=ctx.now)
    except ParticipationError as exc:
        return Invalid(exc.key)
    return Go("volunteer.call_end", {"starts_at": when.isoformat()}, keep=True)


@router.state("volunteer.call_end", staff_only=True)
def call_end(ctx: Ctx) -> None:
    ctx.ask(ctx.t("volunteer.call_new.end"))


@call_end.on_input
def on_call_end(ctx: Ctx, msg: Inbound) -> Transition:
    if msg.kind != Kind.TEXT:
        return Invalid("event.bad_datetime")
    if not ctx.data.get("starts_at"):
        return Go("volunteer.call_start", keep=True)
    start = datetime.fromisoformat(ctx.data["starts_at"])
    try:
        end = read_time(msg.text, _tz(ctx), now=ctx.now, base=start)
    except ParticipationError as exc:
        return Invalid(exc.key)
    if end <= start:
        return Invalid("event.end_before_start")
    return Go("volunteer.call_count", {"ends_at": end.isoformat()}, keep=True)


@router.state("volunteer.call_count", staff_only=True, number_answer=True)
def call_count(ctx: Ctx) -> None:
    ctx.ask(ctx.t("volunteer.call_new.count"))


@call_count.on_input
def on_call_count(ctx: Ctx, msg: Inbound) -> Transition:
    number = read_count(msg.text, limit=call_ops.MAX_VOLUNTEERS) if msg.kind == Kind.TEXT else None
    if number is None:
        return Invalid("event.bad_number")
    return Go("volunteer.call_confirm", {"capacity": number}, keep=True)


@router.state("volunteer.call_confirm", staff_only=True, choice_only=True)
def call_confirm(ctx: Ctx) -> None:
    d = ctx.data
    none = ctx.t("common.none")
    start, end = d.get("starts_at"), d.get("ends_at")
    when = (span_text(datetime.fromisoformat(start), datetime.fromisoformat(end), ctx.lang, _tz(ctx))
            if start and end else none)
    pools = ctx.t.join(_pool_name(ctx, p) for p in d.get("pools", [])) or none
    ctx.ask(ctx.t("volunteer.call_new.confirm", pools=pools,
                  what=d.get("what") or none, place=d.get("place") or none, when=when,
                  capacity=d.get("capacity") or none),
            [Choice("send", ctx.t("volunteer.call_new.send")), Choice("drop", ctx.t("volunteer.discard"))])


@call_confirm.on_input
def on_call_confirm(ctx: Ctx, msg: Inbound) -> Transition:
    if msg.choice != "send":
        ctx.say(ctx.t("cancel.done"))
        return Go(IDLE)
    d = ctx.data
    if not all(d.get(k) for k in ("pools", "what", "place", "starts_at", "ends_at", "capacity")):
        return Go("volunteer.call_pools", {"pools": []})  # incomplete (never through the normal path)
    try:
        call = call_ops.create_call(ctx.db, ctx.acting_as,
                                    pools=d["pools"], what=d["what"], place=d["place"],
                                    starts_at=datetime.fromisoformat(d["starts_at"]),
                                    ends_at=datetime.fromisoformat(d["ends_at"]), capacity=d["capacity"],
                                    catalog=ctx.catalog, tz=_tz(ctx), now=ctx.now)
    except Refused:  # staff screens admit admin and staff (repo.CHAT_STAFF_ROLES): should the rules ever differ
        ctx.say(ctx.t("staff.refused"))
        return Go(IDLE)
    except ParticipationError as exc:
        ctx.say(ctx.t(exc.key))
        return Go(IDLE)
    ctx.say(ctx.t.n("volunteer.call_new.sent", call.invited, id=call.id, invited=call.invited))
    return Go(IDLE)
