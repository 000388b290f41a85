"""The core conversation: onboarding (language, privacy notice, consent per purpose), the main
menu, mahalle, language, privacy settings and the resident's data rights (see, export, delete)."""
from __future__ import annotations

import json
from pathlib import PurePath
from typing import TYPE_CHECKING, Any

from sqlmodel import Session

from conversations.i18n import LANGUAGES, N_, t_in
from conversations.messages import Attachment, Choice, Inbound, Kind
from conversations.registry import COMMAND_PREFIX, Router
from conversations.step import IDLE, Ctx, Go, Invalid, Stay, Transition, command_names, run_command
from conversations.text import match_mahalle, match_options
from storage import attachments, inbox, outbox
from storage.attachments import Erased, names_in, stored_name
from storage.audit import export_audit
from storage.models import CONSENT_PURPOSES
from storage.residents import export_core, identities_of

if TYPE_CHECKING:
    from conversations.step import EngineConfig

router = Router("core")

YES, NO = "yes", "no"
PURPOSE_KEYS = {"reports": N_("consent.purpose.reports"), "volunteering": N_("consent.purpose.volunteering"),
                "reminders": N_("consent.purpose.reminders"), "announcements": N_("consent.purpose.announcements")}
PURPOSE_WHY = {"reports": N_("consent.why.reports"), "volunteering": N_("consent.why.volunteering"),
               "reminders": N_("consent.why.reminders"), "announcements": N_("consent.why.announcements")}
# What a withdrawal stops, said when it happens. The routers declare what stops (on_withdrawal):
# reports (conversations/reports.py), volunteering (volunteer.py), reminders (reminders.py),
# announcements (broadcast.py); Ctx.record_consent runs them.
WITHDRAWN_KEYS = {"reports": N_("privacy.stops.reports"), "volunteering": N_("privacy.stops.volunteering"),
                  "reminders": N_("privacy.stops.reminders"), "announcements": N_("privacy.stops.announcements")}


def _menu(tr: str, other: str) -> dict[str, str]:
    """A command's name in the command menu and /yardim: Turkish, and the other languages' (Latin
    letters only: Telegram's menu takes no other)."""
    return {"tr": tr, "en": other, "ar": other}


def yes_no(ctx: Ctx) -> list[Choice]:
    return [Choice(YES, ctx.t("common.yes")), Choice(NO, ctx.t("common.no"))]


def require_consent(ctx: Ctx, purpose: str, next_state: str, data: dict[str, Any] | None = None) -> Transition:
    """Go on to next_state if the resident consented to purpose; otherwise ask, explaining why."""
    if ctx.consented(purpose):
        return Go(next_state, data)
    return Go("consent.ask", {"purpose": purpose, "next": next_state, "next_data": data or {}})


# ---------------------------------------------------------------- global commands
@router.command("start", "start")
def cmd_start(ctx: Ctx, text: str) -> Transition:
    payload = text.split(maxsplit=1)[1].strip() if text.startswith("/") and " " in text.strip() else ""
    if ctx.resident.onboarded_at is None:
        return Go("onboarding.language", {"payload": payload[:64]} if payload else {})
    if payload:
        return run_start_payload(ctx, payload)
    ctx.say(ctx.t("start.welcome_back", municipality=ctx.catalog.municipality.name.get(ctx.lang)))
    return Go(IDLE)


def run_start_payload(ctx: Ctx, payload: str) -> Transition:
    prefix, _, arg = payload.partition("_")
    handler = ctx.registry.start_payloads.get(prefix)
    if handler is None:
        ctx.say(ctx.t("start.unknown_link"))
        return Go(IDLE)
    return handler(ctx, arg)


@router.command("menu", "menu", "menü", menu=_menu("menu", "menu"), description=N_("command.menu"))
def cmd_menu(ctx: Ctx, text: str) -> Transition:
    return Go(IDLE)


@router.command("help", "yardim", "help", menu=_menu("yardim", "help"), description=N_("command.help"))
def cmd_help(ctx: Ctx, text: str) -> Transition:
    registry = ctx.registry
    lines = [ctx.t("help.intro", municipality=ctx.catalog.municipality.name.get(ctx.lang))]
    staff = set(registry.staff_menu.get(ctx.lang, ()))
    for name in command_names(ctx):
        if name in staff and name == registry.staff_menu[ctx.lang][0]:
            lines.append(ctx.t("help.staff"))   # a staff member's own commands, after everyone's
        key = registry.description(name)
        if key:
            lines.append(f"/{name} — {ctx.t(key)}")
    lines.append(ctx.t("help.footer"))
    ctx.say("\n".join(lines))
    if ctx.resident.onboarded_at is None:
        return Go("onboarding.language", keep=True)
    return Go(ctx.state, keep=True)


@router.command("cancel", "iptal", "cancel", menu=_menu("iptal", "cancel"), description=N_("command.cancel"))
def cmd_cancel(ctx: Ctx, text: str) -> Transition:
    current = ctx.registry.states.get(ctx.state)
    if ctx.resident.onboarded_at is None and not (current is not None and current.staff_only):
        # onboarding goes on where it was (a consent question is asked again, not the language)
        ctx.say(ctx.t("cancel.onboarding"))
        return Go(ctx.state if ctx.state.startswith("onboarding.") else "onboarding.language", keep=True)
    ctx.say(ctx.t("cancel.nothing") if ctx.state == IDLE else ctx.t("cancel.done"))
    return Go(IDLE)


@router.command("language", "dil", "language", menu=_menu("dil", "language"),
                description=N_("command.language"))
def cmd_language(ctx: Ctx, text: str) -> Transition:
    if ctx.resident.onboarded_at is None:
        return Go("onboarding.language", keep=True)
    return Go("language.pick")


@router.command("mydata", "verilerim", "mydata", menu=_menu("verilerim", "mydata"), description=N_("command.mydata"))
def cmd_mydata(ctx: Ctx, text: str) -> Transition:
    send_export(ctx)
    return Go(IDLE) if ctx.resident.onboarded_at else Go("onboarding.language", keep=True)


@router.command("deletedata", "verilerimisil", "deletemydata", menu=_menu("verilerimisil", "deletemydata"),
                description=N_("command.deletedata"))
def cmd_deletedata(ctx: Ctx, text: str) -> Transition:
    return Go("data.delete_confirm")


# Typed words that act like a command in any state ("iptal", "menü", "yardım", in every language).
router.word_command(N_("words.cancel"), "cancel")
router.word_command(N_("words.menu"), "menu")
router.word_command(N_("words.help"), "help")


# ---------------------------------------------------------------- onboarding
def _language_choices(ctx: Ctx) -> list[Choice]:
    current = ctx.resident.locale
    return [Choice(f"lang:{lang}", ("✓ " if lang == current else "") + t_in(lang, "language.name"))
            for lang in LANGUAGES]


@router.state("onboarding.language", needs_onboarding=False)
def onboarding_language(ctx: Ctx) -> None:
    order = [ctx.lang] + [lang for lang in LANGUAGES if lang != ctx.lang]
    text = "\n".join(t_in(lang, "onboarding.choose_language") for lang in order)
    ctx.ask(text, _language_choices(ctx))


def typed_language(text: str) -> str | None:
    """The language a typed name means, in any of our languages ("ingilizce", "English", "arapça",
    "العربية", "en"): each catalog's words.language lists what names its language; None if unsure."""
    found = match_options(text, [(f"lang:{lang}", [t_in(lang, "language.name"), lang,
                                                   *(w.strip() for w in t_in(lang, "words.language").split(","))])
                                 for lang in LANGUAGES])
    return found[0] if len(found) == 1 else None


@onboarding_language.on_input
def on_onboarding_language(ctx: Ctx, msg: Inbound) -> Transition:
    if msg.kind == Kind.TEXT:
        msg.choice = typed_language(msg.text)
        if msg.choice is None:
            return Invalid("engine.choose")
    ctx.update_resident(locale=msg.choice.removeprefix("lang:"))
    return Go("onboarding.notice", keep=True)


@router.state("onboarding.notice", needs_onboarding=False, choice_only=True)
def onboarding_notice(ctx: Ctx) -> None:
    m = ctx.catalog.municipality
    purposes = "\n".join(f"• {ctx.t(PURPOSE_KEYS[p])}" for p in CONSENT_PURPOSES)
    ctx.ask(ctx.t("notice.summary", municipality=m.name.get(ctx.lang), purposes=purposes,
                  url=m.privacy_notice_url, version=ctx.config.notice_version),
            [Choice("all", ctx.t("notice.accept_all")), Choice("choose", ctx.t("notice.choose")),
             Choice("none", ctx.t("notice.refuse"))])


@onboarding_notice.on_input
def on_onboarding_notice(ctx: Ctx, msg: Inbound) -> Transition:
    if msg.choice == "choose":
        return Go("onboarding.purpose", {"i": 0, "payload": ctx.data.get("payload", "")})
    granted = msg.choice == "all"
    for purpose in CONSENT_PURPOSES:
        ctx.record_consent(purpose, granted)
    return finish_onboarding(ctx)


@router.state("onboarding.purpose", needs_onboarding=False, choice_only=True)
def onboarding_purpose(ctx: Ctx) -> None:
    purpose = CONSENT_PURPOSES[ctx.data.get("i", 0)]
    ctx.ask(ctx.t("consent.question", purpose=ctx.t(PURPOSE_KEYS[purpose]), why=ctx.t(PURPOSE_WHY[purpose])),
            yes_no(ctx))


@onboarding_purpose.on_input
def on_onboarding_purpose(ctx: Ctx, msg: Inbound) -> Transition:
    i = ctx.data.get("i", 0)
    ctx.record_consent(CONSENT_PURPOSES[i], msg.choice == YES)
    if i + 1 < len(CONSENT_PURPOSES):
        return Go("onboarding.purpose", {"i": i + 1}, keep=True)
    return finish_onboarding(ctx)


def finish_onboarding(ctx: Ctx) -> Transition:
    ctx.update_resident(onboarded_at=ctx.now)
    payload = ctx.data.get("payload", "")
    granted = [p for p, ok in ctx.consents().items() if ok]
    if granted:
        ctx.say(ctx.t("onboarding.thanks", purposes=ctx.t.join(ctx.t(PURPOSE_KEYS[p]) for p in granted)))
        return Go("mahalle.pick", {"onboarding": True, "payload": payload})
    ctx.say(ctx.t("onboarding.no_consent"))
    return run_start_payload(ctx, payload) if payload else Go(IDLE)


# ---------------------------------------------------------------- consent asked just in time
@router.state("consent.ask", choice_only=True)
def consent_ask(ctx: Ctx) -> None:
    purpose = ctx.data.get("purpose", "reports")
    ctx.ask(ctx.t("consent.needed", purpose=ctx.t(PURPOSE_KEYS[purpose]), why=ctx.t(PURPOSE_WHY[purpose]),
                  url=ctx.catalog.municipality.privacy_notice_url), yes_no(ctx))


@consent_ask.on_input
def on_consent_ask(ctx: Ctx, msg: Inbound) -> Transition:
    if msg.choice != YES:
        ctx.say(ctx.t("consent.declined"))
        return Go(IDLE)
    ctx.record_consent(ctx.data.get("purpose", "reports"), True)  # the purpose the prompt showed
    ctx.say(ctx.t("consent.thanks"))
    return Go(ctx.data.get("next", IDLE), ctx.data.get("next_data") or {})


# ---------------------------------------------------------------- menu
router.menu_item(60, "mahalle", N_("menu.mahalle"), "mahalle.pick")
router.menu_item(80, "privacy", N_("menu.privacy"), "privacy")
router.menu_item(85, "language", N_("menu.language"), "language.pick")
router.menu_item(90, "help", N_("menu.help"), "cmd:help")


@router.state(IDLE)
def menu(ctx: Ctx) -> None:
    items = [item for item in ctx.registry.menu_items if not item.staff or ctx.shows_staff]
    ctx.ask(ctx.t("menu.title"), [Choice(item.key, ctx.t(item.label)) for item in items], columns=2)


@menu.on_input
def on_menu(ctx: Ctx, msg: Inbound) -> Transition:
    if msg.kind != Kind.CHOICE:
        for meaning in ctx.registry.idle_texts if msg.kind == Kind.TEXT else ():
            found = meaning(ctx, msg)
            if found is not None:
                return found
        return Invalid("menu.choose")
    target = ctx.registry.menu_item(msg.choice).target
    if target.startswith(COMMAND_PREFIX):
        return run_command(ctx, target[len(COMMAND_PREFIX):])
    return Go(target)


# ---------------------------------------------------------------- language
@router.state("language.pick", accepts={Kind.TEXT, Kind.CHOICE})
def language_pick(ctx: Ctx) -> None:
    ctx.ask(ctx.t("language.prompt"), _language_choices(ctx))


@language_pick.on_input
def on_language_pick(ctx: Ctx, msg: Inbound) -> Transition:
    if msg.kind == Kind.TEXT:
        msg.choice = typed_language(msg.text)
        if msg.choice is None:
            return Invalid("engine.choose")
    ctx.update_resident(locale=msg.choice.removeprefix("lang:"))
    ctx.say(ctx.t("language.changed"))
    return Go(IDLE)


# ---------------------------------------------------------------- mahalle
@router.state("mahalle.pick", accepts={Kind.TEXT, Kind.CHOICE})
def mahalle_pick(ctx: Ctx) -> None:
    if not ctx.data.get("onboarding") and not any(ctx.consents().values()):
        ctx.data["blocked"] = True
        ctx.ask(ctx.t("mahalle.needs_consent"), [Choice("privacy", ctx.t("menu.privacy")),
                                                  Choice("skip", ctx.t("common.back"))])
        return
    candidates = ctx.data.get("candidates")
    hoods = [n for n in ctx.catalog.neighbourhoods if not candidates or n.key in candidates]
    items = [Choice(f"m:{n.key}", n.name) for n in hoods]
    skip = N_("mahalle.skip") if ctx.data.get("onboarding") else N_("common.back")
    extra = [Choice("skip", ctx.t(skip))]
    text = ctx.t("mahalle.did_you_mean") if candidates else ctx.t("mahalle.prompt")
    if ctx.resident.mahalle and not candidates:
        current = ctx.catalog.neighbourhood(ctx.resident.mahalle)
        if current:
            text = ctx.t("mahalle.current", mahalle=current.name) + "\n" + text
    ctx.ask(text, ctx.paged(items, ctx.data.get("_page", 0), extra), columns=2)


@mahalle_pick.on_input
def on_mahalle_pick(ctx: Ctx, msg: Inbound) -> Transition:
    if ctx.data.get("blocked"):
        if msg.kind == Kind.CHOICE and msg.choice == "privacy":
            return Go("privacy")
        return Go(IDLE)
    if msg.kind == Kind.CHOICE:
        if msg.choice == "skip":
            return _after_mahalle(ctx)
        return _set_mahalle(ctx, msg.choice.removeprefix("m:"))
    found = match_mahalle(msg.text, ctx.catalog.neighbourhoods)
    if len(found) == 1:
        return _set_mahalle(ctx, found[0])
    if not found:  # the whole list again: "not found" is never followed by "we found several"
        ctx.data.pop("candidates", None)
        return Invalid("mahalle.not_found")
    ctx.data["candidates"] = found
    ctx.data["_page"] = 0
    return Go("mahalle.pick", keep=True)


def _set_mahalle(ctx: Ctx, key: str) -> Transition:
    hood = ctx.catalog.neighbourhood(key)
    if hood is None:
        return Invalid("mahalle.not_found")
    ctx.update_resident(mahalle=hood.key)
    ctx.say(ctx.t("mahalle.saved", mahalle=hood.name))
    return _after_mahalle(ctx)


def _after_mahalle(ctx: Ctx) -> Transition:
    payload = ctx.data.get("payload", "")
    if payload:
        return run_start_payload(ctx, payload)
    return Go(IDLE)


# ---------------------------------------------------------------- privacy settings and data rights
@router.state("privacy", choice_only=True)
def privacy(ctx: Ctx) -> None:
    consents = ctx.consents()
    lines = [ctx.t("privacy.title")]
    choices = []
    for purpose in CONSENT_PURPOSES:
        on = consents.get(purpose, False)
        mark = "✅" if on else "⬜"
        lines.append(f"{mark} {ctx.t(PURPOSE_KEYS[purpose])}")
        label = N_("privacy.turn_off") if on else N_("privacy.turn_on")
        choices.append(Choice(f"p:{purpose}", ctx.t(label, purpose=ctx.t(PURPOSE_KEYS[purpose]))))
    lines.append(ctx.t("privacy.footer", url=ctx.catalog.municipality.privacy_notice_url))
    choices += [Choice("export", ctx.t("privacy.export")), Choice("delete", ctx.t("privacy.delete")),
                Choice("back", ctx.t("common.back"))]
    ctx.ask("\n".join(lines), choices)


@privacy.on_input
def on_privacy(ctx: Ctx, msg: Inbound) -> Transition:
    if msg.choice.startswith("p:"):
        purpose = msg.choice[2:]
        granted = not ctx.consented(purpose)
        ctx.record_consent(purpose, granted)
        said = N_("privacy.granted") if granted else N_("privacy.withdrawn")
        ctx.say(ctx.t(said, purpose=ctx.t(PURPOSE_KEYS[purpose])))
        if not granted:  # exactly what stopped (the routers' on_withdrawal did it)
            ctx.say(ctx.t(WITHDRAWN_KEYS[purpose]))
        return Go("privacy")
    if msg.choice == "export":
        send_export(ctx)
        return Stay()
    if msg.choice == "delete":
        return Go("data.delete_confirm")
    return Go(IDLE)


def collect_export(ctx: Ctx) -> dict[str, Any]:
    data = export_core(ctx.db, ctx.resident.id)
    for exporter in ctx.registry.exporters:
        data.update(exporter(ctx.db, ctx.resident.id))
    data["exported_at"] = ctx.now.isoformat()
    data["municipality"] = ctx.catalog.municipality.name.get(ctx.lang)
    media_dir = getattr(ctx.config.settings, "media_dir", None)
    return _without_paths(data, str(media_dir) if media_dir else "")


PATH_KEYS = frozenset({"path", "photo_path", "ref"})


def _without_paths(value: Any, media_dir: str, key: str = "") -> Any:
    """The export names stored files by their name, never by a path on the server."""
    if isinstance(value, dict):
        return {k: _without_paths(v, media_dir, k) for k, v in value.items()}
    if isinstance(value, list):
        return [_without_paths(v, media_dir, key) for v in value]
    if isinstance(value, str) and value and (key in PATH_KEYS or (media_dir and media_dir in value)):
        return stored_name(value) or PurePath(value).name
    return value


def send_export(ctx: Ctx) -> None:
    data = collect_export(ctx)
    resident = data["resident"]
    consents = ctx.consents()
    given = [ctx.t(PURPOSE_KEYS[p]) for p, ok in consents.items() if ok] or [ctx.t("common.none")]
    hood = ctx.catalog.neighbourhood(resident["mahalle"]) if resident["mahalle"] else None
    summary = ctx.t("data.summary", language=ctx.t("language.name"),
                    mahalle=hood.name if hood else ctx.t("common.none"),
                    channels=ctx.t.join(c["channel"] for c in data["channels"]) or ctx.t("common.none"),
                    consents=ctx.t.join(given),
                    since=ctx.when(ctx.resident.created_at))
    ctx.say(summary, document=Attachment("katilim-verilerim.json", "application/json",
                                         json.dumps(data, ensure_ascii=False, indent=2, default=str)))


# the notice offers /verilerimisil during onboarding
@router.state("data.delete_confirm", needs_onboarding=False, choice_only=True)
def delete_confirm(ctx: Ctx) -> None:
    ctx.ask(ctx.t("data.delete_question"), [Choice(YES, ctx.t("data.delete_yes")), Choice(NO, ctx.t("common.no"))])


@delete_confirm.on_input
def on_delete_confirm(ctx: Ctx, msg: Inbound) -> Transition:
    if msg.choice != YES:
        ctx.say(ctx.t("data.delete_kept"))
        return Go(IDLE)
    ctx.say(ctx.t("data.deleted"))
    ctx.erase = True
    return Go(IDLE, prompt=False)


def export_messages(db: Session, resident_id: int) -> dict[str, Any]:
    """The messages still on record: those to them (sent ones are kept for OUTBOX_RETENTION) and
    those from them accepted by a webhook and not handled yet."""
    addresses = {(i.channel, i.address) for i in identities_of(db, resident_id)}
    waiting = [{"at": row.received_at.isoformat() if row.received_at else None, "channel": row.channel,
                "kind": (row.payload or {}).get("kind"), "text": (row.payload or {}).get("text", ""),
                "attachments": sorted(names_in(row.payload.get("media") or []))}
               for row in inbox.waiting_from(db, addresses)]
    return {"messages": {"sent_to_you": outbox.messages_to(db, resident_id), "waiting_from_you": waiting}}


router.exporter(export_audit)
router.exporter(export_messages)
router.exporter(attachments.export_resident)


@router.eraser
def erase_uploads(db: Session, resident_id: int, config: "EngineConfig") -> Erased:
    """Which stored files they sent (a draft's photos left at /iptal too): deleted after the commit."""
    return attachments.erase_uploads(db, resident_id)
