"""One resident, two channels: /bagla (link) joins a resident's Telegram and WhatsApp conversations.

On Telegram (or any channel but WhatsApp) the resident shares their own phone contact (the
adapter only passes a contact that is the sender's own); when a WhatsApp conversation with that
number exists, the two residents become one: identities, consents and every feature's rows move
to the resident writing now (storage/linking.py; routers add mergers for anything more). On
WhatsApp the number is already known, so /bagla explains the Telegram side and shows a one-time
10-digit code (10 minutes) that can be typed on Telegram's /bagla instead of sharing the contact.
Wrong codes are limited per resident (MAX_WRONG_CODES an hour) and, as a wrong code cannot be
told apart from a guess at someone else's, against a global budget (storage.linking.LinkGuard):
past it, linking by code pauses for everyone and every live code is voided.
Staff then see one person, reached on the channel they used last.
"""
from __future__ import annotations

import logging
import math
from datetime import timedelta

from sqlmodel import Session, func, select

from conversations.i18n import N_
from conversations.messages import Inbound, Kind
from conversations.registry import Router
from conversations.step import IDLE, Ctx, EngineConfig, Go, Invalid, Transition
from storage import linking
from storage.audit import audit
from storage.models import AuditLog, ChannelIdentity
from storage.residents import identities_of

log = logging.getLogger(__name__)

WHATSAPP = "whatsapp"
MAX_WRONG_CODES = 5          # per resident and hour; every resident's wrong codes also count globally

router = Router("linking")
router.menu_item(70, "link", N_("link.menu"), "cmd:link")
router.exporter(linking.export_codes)


@router.eraser
def erase_codes(db: Session, resident_id: int, config: EngineConfig) -> None:
    linking.erase_codes(db, resident_id)


def merge(db: Session, keep_id: int, gone_id: int, config: EngineConfig, actor: str = ""):
    """Make one resident of two (storage.linking.merge_residents), every router's merger first."""

    def bound(merger):
        return lambda db, gone, keep: merger(db, gone, keep, config)

    return linking.merge_residents(db, keep_id, gone_id, mergers=[bound(m) for m in config.registry.mergers],
                                   actor=actor)


@router.command("link", "bagla", "bağla", "link", menu={"tr": "bagla", "en": "link", "ar": "link"},
                description=N_("link.command"))
def cmd_link(ctx: Ctx, text: str) -> Transition:
    """/bagla (and the menu's button): on WhatsApp, the code to type on Telegram; on the other
    channels, the question (link.start); without WhatsApp configured, that linking is unavailable."""
    if not _available(ctx):
        ctx.say(ctx.t("link.unavailable"))
        return _after(ctx)
    if ctx.channel == WHATSAPP:
        show_code(ctx)
        return _after(ctx)
    return Go("link.start")


def _available(ctx: Ctx) -> bool:
    settings = ctx.config.settings
    return settings is None or bool(getattr(settings, "whatsapp_enabled", False))


def _after(ctx: Ctx) -> Transition:
    return Go(IDLE) if ctx.resident.onboarded_at is not None else Go("onboarding.language")


def show_code(ctx: Ctx) -> None:
    """WhatsApp knows the number already: a one-time code to type on Telegram's /bagla."""
    others = [i for i in identities_of(ctx.db, ctx.resident.id) if i.channel != WHATSAPP]
    if others:
        ctx.say(ctx.t("link.already"))
    if not _say_if_paused(ctx):
        code = linking.new_code(ctx.db, ctx.resident.id, ctx.channel, ctx.now)
        ctx.say(ctx.t("link.whatsapp_code", code=linking.shown(code.code),
                      minutes=int(linking.CODE_TTL.total_seconds() // 60)))


@router.state("link.start", accepts={Kind.TEXT, Kind.CONTACT}, needs_onboarding=False)
def link_start(ctx: Ctx) -> None:
    if ctx.channel == "telegram":
        ctx.ask(ctx.t("link.ask_contact"), request_contact=ctx.t("link.share_button"))
    else:
        ctx.ask(ctx.t("link.ask_code"))


def _guard_settings(ctx: Ctx) -> tuple[int, timedelta, timedelta]:
    """LINK_CODE_FAILURES, LINK_CODE_WINDOW, LINK_CODE_PAUSE (the defaults without settings)."""
    settings = ctx.config.settings
    return (getattr(settings, "link_code_failures", linking.FAILURE_BUDGET),
            getattr(settings, "link_code_window", linking.FAILURE_WINDOW),
            getattr(settings, "link_code_pause", linking.PAUSE))


def _say_if_paused(ctx: Ctx) -> bool:
    """While linking by code is paused (too many wrong codes, from anyone), say so and how long."""
    left = linking.paused_for(ctx.db, ctx.now, pause=_guard_settings(ctx)[2])
    if left <= 0:
        return False
    minutes = max(1, math.ceil(left / 60))
    ctx.say(ctx.t.n("link.paused", minutes, minutes=minutes), remove_keyboard=True)
    return True


@link_start.on_input
def on_link_start(ctx: Ctx, msg: Inbound) -> Transition:
    if msg.kind == Kind.CONTACT:
        phone = linking.normalize_phone(msg.phone)
        if not phone:
            return Invalid("link.not_own")
        identity = ctx.db.exec(select(ChannelIdentity).where(
            ChannelIdentity.channel == WHATSAPP, ChannelIdentity.address == f"whatsapp:{phone}")).first()
        if identity is None:
            ctx.say(ctx.t("link.no_match", phone=phone), remove_keyboard=True)
            return _after(ctx)
        return _link(ctx, identity.resident_id, phone)
    typed = linking.parse_code(msg.text)
    if typed is None:
        return Invalid("link.expecting")
    if _say_if_paused(ctx):
        return _after(ctx)
    actor = f"resident:{ctx.resident.id}"  # pseudonymous: never the chat id or the number
    wrong = ctx.db.exec(select(func.count()).select_from(AuditLog).where(
        AuditLog.actor == actor, AuditLog.action == "link.code_wrong",
        AuditLog.at > ctx.now - timedelta(hours=1))).one()
    if wrong >= MAX_WRONG_CODES:
        ctx.say(ctx.t("link.too_many"), remove_keyboard=True)
        return _after(ctx)
    code = linking.take_code(ctx.db, typed, ctx.now)
    if code is None:
        audit(ctx.db, actor, "link.code_wrong", actor)
        budget, window, pause = _guard_settings(ctx)
        if linking.record_wrong_code(ctx.db, actor, ctx.now, budget=budget, window=window, pause=pause):
            _say_if_paused(ctx)
            return _after(ctx)
        return Invalid("link.code_invalid")
    phone = ""
    for identity in identities_of(ctx.db, code.resident_id):
        if identity.channel == WHATSAPP:
            phone = linking.normalize_phone(identity.address)
    return _link(ctx, code.resident_id, phone)


def _link(ctx: Ctx, other_id: int, phone: str) -> Transition:
    if other_id == ctx.resident.id:
        ctx.say(ctx.t("link.already"), remove_keyboard=True)
        return _after(ctx)
    try:
        with ctx.db.begin_nested():
            resident = merge(ctx.db, ctx.resident.id, other_id, ctx.config, actor=f"resident:{ctx.resident.id}")
            if phone:
                resident.phone = phone
                ctx.db.add(resident)
                ctx.db.flush()
    except Exception:
        log.exception("resident %s could not be merged into %s", other_id, ctx.resident.id)
        ctx.say(ctx.t("link.failed"), remove_keyboard=True)
        return _after(ctx)
    ctx._consents = None
    ctx.say(ctx.t("link.done"), remove_keyboard=True)
    return _after(ctx)
