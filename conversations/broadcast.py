"""Staff broadcasts (issue 3), the conversation side, and the residents' announcement subscription.

Staff: /duyuru writes an announcement (Turkish text, optional English and Arabic texts, optional
photo), picks the audience (everyone, mahalles typed Turkish-aware, a language), sees the recipient
count and the message exactly as residents will see it in each language, then sends it now or at
a typed time ("25.11.2026 18:00", "yarın 09:00", "18:00"). /duyurular lists every announcement
(the CLI's and the staff console's too), newest first, with a cancel button on those still to go
out that this staff member may cancel. Every state is staff_only: the engine refuses (and
audits) a non-staff account. Nothing is written until the staff member confirms; the fan-out and
the summary are the scheduler's "broadcasts" job (conversations/domain/broadcasts.py, bot/broadcasts.py);
sending and cancelling are the domain operations the CLI calls too.

Residents: typing DUR / STOP / توقف (or /dur, /stop) turns announcements off; /abonelik toggles
them. Both record an "announcements" consent, and say that what they asked for (report updates,
reminders) still arrives.
"""
from __future__ import annotations

from datetime import datetime
from pathlib import Path

from sqlmodel import Session

from conversations import notify
from conversations.domain import broadcasts as domain
from conversations.i18n import LANGUAGES, N_, t_in
from conversations.messages import Choice, Inbound, Kind
from conversations.permissions import Refused
from conversations.registry import Router
from conversations.step import IDLE, Ctx, EngineConfig, Go, Invalid, Transition, media_refusal
from conversations.text import match_options, strip_mahalle, truncate
from conversations.when import WhenError, parse_when
from storage import broadcasts as bc
from storage import outbox
from storage.models import Broadcast
from storage.staff import staff_for

PURPOSE = bc.PURPOSE
STAFF = dict(needs_onboarding=False, staff_only=True)
TEXT_PROMPTS = {"tr": N_("broadcast.ask_text_tr"), "en": N_("broadcast.ask_text_en"),
                "ar": N_("broadcast.ask_text_ar")}
WHEN_ERRORS = {"format": N_("broadcast.when_format"), "invalid": N_("broadcast.when_invalid"),
               "past": N_("broadcast.when_past"), "far": N_("broadcast.when_far")}
STATUS_NAMES = {"draft": N_("broadcast.status_draft"), "scheduled": N_("broadcast.status_scheduled"),
                "sending": N_("broadcast.status_sending"), "done": N_("broadcast.status_done"),
                "cancelled": N_("broadcast.status_cancelled")}

router = Router("broadcasts")


def _actor(ctx: Ctx) -> str:
    return ctx.actor


def _is_admin(ctx: Ctx) -> bool:
    staff = staff_for(ctx.db, ctx.channel, ctx.identity.address)
    return staff is not None and staff.role == "admin"


LIST_LIMIT = 10  # announcements /duyurular shows (the staff console and `katilim broadcast list` show more)


def _n(ctx: Ctx, n: int) -> str:
    return notify.number(n, ctx.lang)


# ---------------------------------------------------------------- /duyuru: the texts
router.menu_item(100, "staff_broadcast", N_("menu.staff_broadcast"), "cmd:broadcast", staff=True)
router.menu_item(101, "staff_broadcasts", N_("menu.staff_broadcasts"), "cmd:broadcasts", staff=True)


@router.command("broadcast", "duyuru", "announce", menu={"tr": "duyuru", "en": "announce", "ar": "announce"},
                description=N_("command.staff_broadcast"), staff=True)
def cmd_broadcast(ctx: Ctx, text: str) -> Transition:
    return Go("broadcast.text", {"texts": {}, "audience": {}})


def _text_state(lang: str, next_state: str, optional: bool):
    @router.state(f"broadcast.text_{lang}" if lang != "tr" else "broadcast.text",
           accepts={Kind.TEXT, Kind.CHOICE} if optional else {Kind.TEXT}, **STAFF)
    def prompt(ctx: Ctx) -> None:
        choices = [Choice("skip", ctx.t("broadcast.skip"))] if optional else []
        ctx.ask(ctx.t(TEXT_PROMPTS[lang]), choices)

    @prompt.on_input
    def on_text(ctx: Ctx, msg: Inbound) -> Transition:
        texts = dict(ctx.data.get("texts") or {})   # copies: the session's JSON must see the change
        if msg.kind == Kind.CHOICE:
            texts.pop(lang, None)
        else:
            texts[lang] = msg.text.strip()
        return Go(next_state, {"texts": texts}, keep=True)

    return prompt


_text_state("tr", "broadcast.text_en", optional=False)
_text_state("en", "broadcast.text_ar", optional=True)
_text_state("ar", "broadcast.photo", optional=True)


@router.state("broadcast.photo", accepts={Kind.PHOTO, Kind.CHOICE}, **STAFF)
def photo(ctx: Ctx) -> None:
    ctx.ask(ctx.t("broadcast.ask_photo"), [Choice("skip", ctx.t("broadcast.no_photo"))])


@photo.on_input
def on_photo(ctx: Ctx, msg: Inbound) -> Transition:
    if msg.kind == Kind.CHOICE:
        ctx.data.pop("photo", None)
        return Go("broadcast.audience", keep=True)
    refusal = media_refusal(msg, N_("broadcast.photo_failed"))
    if refusal is None and not Path(msg.media[0].ref).is_file():
        refusal = N_("broadcast.photo_failed")
    if refusal is not None:
        return Invalid(refusal)
    ctx.data["photo"] = str(Path(msg.media[0].ref).resolve())  # the dispatcher may run in another directory
    return Go("broadcast.audience", keep=True)


# ---------------------------------------------------------------- the audience
def audience_text(ctx: Ctx, audience: dict) -> str:
    parts = []
    if audience.get("mahalles"):
        names = [h.name for key in audience["mahalles"] if (h := ctx.catalog.neighbourhood(key))]
        parts.append(ctx.t("broadcast.audience_mahalles", names=ctx.t.join(names)))
    if audience.get("language"):
        parts.append(ctx.t("broadcast.audience_language", language=t_in(audience["language"], "language.name")))
    return "; ".join(parts) or ctx.t("broadcast.audience_all")


@router.state("broadcast.audience", accepts={Kind.CHOICE}, **STAFF)
def audience(ctx: Ctx) -> None:
    current = ctx.data.get("audience") or {}
    choices = [Choice("all", ctx.t("broadcast.to_everyone")), Choice("mahalles", ctx.t("broadcast.by_mahalle")),
               Choice("language", ctx.t("broadcast.by_language"))]
    if current:
        choices.insert(0, Choice("go", ctx.t("broadcast.continue")))
    ctx.ask(ctx.t("broadcast.ask_audience", current=audience_text(ctx, current)), choices)


@audience.on_input
def on_audience(ctx: Ctx, msg: Inbound) -> Transition:
    ctx.data.pop("previewed", None)
    if msg.choice == "all":
        return Go("broadcast.preview", {"audience": {}}, keep=True)
    if msg.choice == "go":
        return Go("broadcast.preview", keep=True)
    if msg.choice == "mahalles":
        ctx.data.pop("candidates", None)
        return Go("broadcast.mahalles", keep=True)
    return Go("broadcast.language", keep=True)


@router.state("broadcast.mahalles", accepts={Kind.TEXT, Kind.CHOICE}, **STAFF)
def mahalles(ctx: Ctx) -> None:
    chosen = ctx.data.get("audience", {}).get("mahalles") or []
    names = [h.name for key in chosen if (h := ctx.catalog.neighbourhood(key))]
    candidates = ctx.data.get("candidates") or []
    items = [Choice(f"m:{key}", h.name) for key in candidates if (h := ctx.catalog.neighbourhood(key))]
    extra = []
    if chosen:
        extra += [Choice("done", ctx.t("broadcast.mahalles_done")), Choice("clear", ctx.t("broadcast.mahalles_clear"))]
    extra.append(Choice("back", ctx.t("common.back")))
    text = ctx.t("broadcast.ask_mahalles", chosen=ctx.t.join(names) or ctx.t("common.none"))
    if items:
        text += "\n" + ctx.t("broadcast.mahalles_candidates")
    ctx.ask(text, ctx.paged(items, ctx.data.get("_page", 0), extra), columns=2)


@mahalles.on_input
def on_mahalles(ctx: Ctx, msg: Inbound) -> Transition:
    aud = dict(ctx.data.get("audience") or {})
    chosen: list[str] = list(aud.get("mahalles") or [])
    ctx.data["_page"] = 0
    if msg.kind == Kind.CHOICE:
        if msg.choice in ("done", "back"):
            if chosen:
                aud["mahalles"] = chosen
            else:
                aud.pop("mahalles", None)
            return Go("broadcast.audience", {"audience": aud}, keep=True)
        if msg.choice == "clear":
            chosen = []
        elif msg.choice.startswith("m:") and msg.choice[2:] not in chosen:
            chosen.append(msg.choice[2:])
        aud["mahalles"] = chosen
        return Go("broadcast.mahalles", {"audience": aud, "candidates": []}, keep=True)
    options = [(n.key, [n.name]) for n in ctx.catalog.neighbourhoods]
    parts = [p.strip() for p in msg.text.replace(";", ",").replace("،", ",").split(",") if p.strip()]
    missing, candidates = [], []
    for part in parts:
        found = match_options(strip_mahalle(part), options)
        if len(found) == 1:
            if found[0] not in chosen:
                chosen.append(found[0])
        elif found:
            candidates += [k for k in found if k not in chosen and k not in candidates]
        else:
            missing.append(part)
    if missing:
        ctx.say(ctx.t("broadcast.mahalle_unknown", names=ctx.t.join(truncate(m, 40) for m in missing)))
    aud["mahalles"] = chosen
    return Go("broadcast.mahalles", {"audience": aud, "candidates": candidates}, keep=True)


@router.state("broadcast.language", accepts={Kind.CHOICE}, **STAFF)
def language(ctx: Ctx) -> None:
    choices = [Choice(f"lang:{lang}", t_in(lang, "language.name")) for lang in LANGUAGES]
    choices.append(Choice("any", ctx.t("broadcast.any_language")))
    ctx.ask(ctx.t("broadcast.ask_language"), choices)


@language.on_input
def on_language(ctx: Ctx, msg: Inbound) -> Transition:
    aud = dict(ctx.data.get("audience") or {})
    if msg.choice == "any":
        aud.pop("language", None)
    else:
        aud["language"] = msg.choice.removeprefix("lang:")
    return Go("broadcast.audience", {"audience": aud}, keep=True)


# ---------------------------------------------------------------- preview and send
@router.state("broadcast.preview", accepts={Kind.CHOICE}, **STAFF)
def preview(ctx: Ctx) -> None:
    texts, photo_path = ctx.data.get("texts") or {}, ctx.data.get("photo", "")
    aud = ctx.data.get("audience") or {}
    counts = bc.count_by_language(ctx.db, aud)
    total = sum(counts.values())
    if not ctx.data.get("previewed") and texts.get("tr"):
        for lang in LANGUAGES:
            if lang != "tr" and not texts.get(lang) and not counts[lang]:
                continue
            own = N_("broadcast.preview_own") if texts.get(lang) else N_("broadcast.preview_fallback")
            ctx.say(ctx.t(own, language=t_in(lang, "language.name"), count=_n(ctx, counts[lang])))
            ctx.replies.append(notify.render_broadcast(texts, photo_path, lang))
        ctx.data["previewed"] = True
    choices = [Choice("now", ctx.t("broadcast.send_now")), Choice("later", ctx.t("broadcast.send_later"))] \
        if total else []
    choices += [Choice("audience", ctx.t("broadcast.change_audience")), Choice("discard", ctx.t("broadcast.discard"))]
    key = N_("broadcast.ask_send") if total else N_("broadcast.no_recipients")
    ctx.ask(ctx.t(key, count=_n(ctx, total), audience=audience_text(ctx, aud)), choices)


@preview.on_input
def on_preview(ctx: Ctx, msg: Inbound) -> Transition:
    if msg.choice == "discard":
        ctx.say(ctx.t("broadcast.discarded"))
        return Go(IDLE)
    if msg.choice == "audience":
        return Go("broadcast.audience", keep=True)
    if not (ctx.data.get("texts") or {}).get("tr"):   # entered without a text (an old session)
        return Go("broadcast.text", {"texts": {}, "audience": ctx.data.get("audience") or {}})
    if msg.choice == "later":
        return Go("broadcast.when", keep=True)
    b = _create(ctx, None)
    if b is None:
        return Go(IDLE)
    ctx.say(ctx.t("broadcast.started", id=b.id, count=_n(ctx, bc.count_recipients(ctx.db, b.audience))))
    return Go(IDLE)


def _create(ctx: Ctx, at) -> Broadcast | None:
    try:
        return domain.send(ctx.db, ctx.acting_as, texts=ctx.data.get("texts") or {},
                           audience=ctx.data.get("audience") or {},
                           notify_address=f"{ctx.channel}:{ctx.identity.address}",
                           photo_path=ctx.data.get("photo", ""), scheduled_at=at, now=ctx.now)
    except Refused:
        ctx.say(ctx.t("staff.refused"))
        return None


@router.state("broadcast.when", accepts={Kind.TEXT, Kind.CHOICE}, **STAFF)
def when(ctx: Ctx) -> None:
    ctx.ask(ctx.t("broadcast.ask_when"), [Choice("back", ctx.t("common.back"))])


@when.on_input
def on_when(ctx: Ctx, msg: Inbound) -> Transition:
    if msg.kind == Kind.CHOICE:
        return Go("broadcast.preview", keep=True)
    try:
        at = parse_when(msg.text, ctx.now, ctx.config.timezone)
    except WhenError as exc:
        return Invalid(WHEN_ERRORS[exc.code])
    if not (ctx.data.get("texts") or {}).get("tr"):
        return Go("broadcast.text", {"texts": {}, "audience": ctx.data.get("audience") or {}})
    b = _create(ctx, at)
    if b is None:
        return Go(IDLE)
    ctx.say(ctx.t("broadcast.scheduled", id=b.id, when=ctx.when(at),
                  count=_n(ctx, bc.count_recipients(ctx.db, b.audience))))
    return Go(IDLE)


# ---------------------------------------------------------------- /duyurular: list and cancel
@router.command("broadcasts", "duyurular", "broadcasts", menu={"tr": "duyurular", "en": "broadcasts", "ar": "broadcasts"},
                description=N_("command.staff_broadcasts"), staff=True)
def cmd_broadcasts(ctx: Ctx, text: str) -> Transition:
    return Go("broadcast.list")


@router.state("broadcast.list", accepts={Kind.CHOICE}, **STAFF)
def broadcast_list(ctx: Ctx) -> None:
    """Every announcement, newest first (the CLI's and the console's too), with a cancel button
    for those still to go out that this staff member may cancel (their own; an admin, any)."""
    rows = bc.recent(ctx.db, LIST_LIMIT)
    if not rows:
        ctx.ask(ctx.t("broadcast.none_yet"), [Choice("new", ctx.t("broadcast.new")),
                                             Choice("back", ctx.t("common.back"))])
        return
    lines = [ctx.t("broadcast.list_all_title")]
    choices = []
    admin, actor = _is_admin(ctx), _actor(ctx)
    for b in rows:
        p = bc.progress(ctx.db, b)
        when_text = ctx.when(b.scheduled_at) if b.scheduled_at else "—"
        lines.append(ctx.t("broadcast.list_line", id=b.id, status=ctx.t(STATUS_NAMES[b.status]), when=when_text,
                           sent=_n(ctx, p.sent), total=_n(ctx, p.total), text=truncate(b.texts.get("tr", ""), 60)))
        if b.status in bc.ACTIVE and (admin or b.created_by == actor):
            choices.append(Choice(f"c:{b.id}", ctx.t("broadcast.cancel_button", id=b.id)))
    choices.append(Choice("new", ctx.t("broadcast.new")))
    choices.append(Choice("back", ctx.t("common.back")))
    ctx.ask("\n".join(lines), choices)


@broadcast_list.on_input
def on_broadcast_list(ctx: Ctx, msg: Inbound) -> Transition:
    if msg.choice == "new":
        return Go("broadcast.text", {"texts": {}, "audience": {}})
    if msg.choice.startswith("c:"):
        return Go("broadcast.cancel", {"id": int(msg.choice[2:])})
    return Go(IDLE)


@router.state("broadcast.cancel", accepts={Kind.CHOICE}, **STAFF)
def cancel_confirm(ctx: Ctx) -> None:
    ctx.ask(ctx.t("broadcast.cancel_question", id=ctx.data.get("id")),
            [Choice("yes", ctx.t("broadcast.cancel_yes")), Choice("no", ctx.t("common.no"))])


@cancel_confirm.on_input
def on_cancel_confirm(ctx: Ctx, msg: Inbound) -> Transition:
    if msg.choice != "yes":
        return Go("broadcast.list")
    broadcast_id = int(ctx.data.get("id") or 0)
    if ctx.db.get(Broadcast, broadcast_id) is None:
        return Invalid("engine.stale_choice")
    try:
        done = domain.cancel(ctx.db, ctx.acting_as, broadcast_id, tz=ctx.config.timezone, now=ctx.now)
    except Refused:  # someone else's broadcast, and not an admin (audited)
        return Invalid("engine.stale_choice")
    if done is None:
        ctx.say(ctx.t("broadcast.cancel_too_late", id=broadcast_id))
    else:
        ctx.say(ctx.t("broadcast.cancelled", id=broadcast_id, withdrawn=_n(ctx, done.withdrawn),
                      sent=_n(ctx, done.already)))
    return Go("broadcast.list")


# ---------------------------------------------------------------- residents: DUR / STOP, /abonelik
router.word_command(N_("words.stop"), "unsubscribe")


@router.on_withdrawal(PURPOSE)
def cancel_queued_announcements(db: Session, resident_id: int, now: datetime, config: EngineConfig) -> None:
    """Broadcasts already queued for them are cancelled; later ones skip them (storage/outbox.py)."""
    outbox.withdraw_announcements(db, resident_id)


@router.command("unsubscribe", "dur", "stop")
def cmd_unsubscribe(ctx: Ctx, text: str) -> Transition:
    if ctx.resident.onboarded_at is None:
        ctx.say(ctx.t("subscription.status_off"))
        return Go("onboarding.language", keep=True)
    changed = ctx.consented(PURPOSE)
    if changed:
        ctx.record_consent(PURPOSE, False)
    if ctx.state not in (IDLE, "subscription"):
        # in the middle of something (a report's draft): announcements off, the draft kept, the
        # question they were at asked again
        ctx.say(ctx.t(N_("subscription.off_midway") if changed else N_("subscription.status_off")))
        return Go(ctx.state, keep=True)
    return Go("subscription", {"changed": changed})


@router.command("subscription", "abonelik", "subscription",
                menu={"tr": "abonelik", "en": "subscription", "ar": "subscription"},
                description=N_("subscription.command"))
def cmd_subscription(ctx: Ctx, text: str) -> Transition:
    """Where announcements stand, with one button to change that: nothing changes unasked."""
    if ctx.resident.onboarded_at is None:
        return Go("onboarding.language", keep=True)
    return Go("subscription")


@router.state("subscription", accepts={Kind.CHOICE})
def subscription(ctx: Ctx) -> None:
    on = ctx.consented(PURPOSE)
    if ctx.data.get("changed"):
        key = N_("subscription.on") if on else N_("subscription.off")
    else:
        key = N_("subscription.status_on") if on else N_("subscription.status_off")
    toggle = N_("subscription.turn_off") if on else N_("subscription.turn_on")
    ctx.ask(ctx.t(key), [Choice("toggle", ctx.t(toggle)), Choice("back", ctx.t("common.back"))])


@subscription.on_input
def on_subscription(ctx: Ctx, msg: Inbound) -> Transition:
    if msg.choice == "toggle":
        ctx.record_consent(PURPOSE, not ctx.consented(PURPOSE))
        return Go("subscription", {"changed": True})
    return Go(IDLE)
