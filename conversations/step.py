"""The conversation step: (state, inbound) → (new state, outbound), like goflow's sessions.

States are named strings ("report.describe"), so a stored state survives code edits; the routers
that declare them are merged into the registry the step reads from `ctx.config.registry`
(conversations/registry.py). `step(ctx, msg)` applies the engine's rules (commands and typed
command words, onboarding, staff-only states, stale and global choices, the kinds a state
accepts) and runs the state's handler; `enter` shows a state's prompt. The transaction, the row
locks and the savepoint around a step are the runtime's (conversations/runtime.py).
"""
from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import lru_cache
from typing import TYPE_CHECKING, Any, Callable

from sqlalchemy.engine import Connection
from sqlmodel import Session

from conversations import notify
from conversations.i18n import LANGUAGES, N_, Translator, format_when, translator
from conversations.messages import Choice, Inbound, Kind, Outbound
from conversations.permissions import Actor
from conversations.text import clean_text, closest, fold, key_for, match_options
from storage import media as media_store
from storage.audit import audit
from storage.consents import current_consents, record_consent
from storage.db import aware
from storage.models import ChannelIdentity, Resident
from storage.panel import departments_of
from storage.residents import update_resident
from storage.staff import chat_staff_on, is_chat_staff, staff_for

if TYPE_CHECKING:
    from conversations.registry import Registry, State
    from conversations.runtime import StepWrites

log = logging.getLogger(__name__)

IDLE = "menu"
PAGE_SIZE = 8


# ---------------------------------------------------------------- transitions
@dataclass
class Go:
    """Move to another state (its prompt is sent). `data` replaces what was collected unless keep."""

    state: str
    data: dict[str, Any] | None = None
    keep: bool = False
    prompt: bool = True


@dataclass
class Stay:
    """Stay in the current state; the handler already replied."""


@dataclass
class Invalid:
    """The input is not usable here: say why, ask again; what was collected is kept."""

    reason: str


Transition = Go | Stay | Invalid

KIND_NAMES = {k: N_(f"kind.{k.value}") for k in Kind}
N_("kind.text"), N_("kind.command"), N_("kind.choice"), N_("kind.location"), N_("kind.photo"), N_("kind.voice")
N_("kind.document"), N_("kind.sticker"), N_("kind.contact"), N_("kind.other")


class UnknownState(LookupError):
    """A state entered by a name no router declares (with EngineConfig.strict_targets)."""


# ---------------------------------------------------------------- context
@dataclass
class EngineConfig:
    catalog: Any
    registry: "Registry"
    timezone: str = "Europe/Istanbul"
    default_locale: str = "tr"
    session_expiry: timedelta = timedelta(hours=24)
    max_text_length: int = 2000
    notice_version: str = "2026-11"
    settings: Any = None
    # A state entered by an unknown name from ctx.data (the literal ones are checked by
    # Registry.build): False, a logged error and the menu; True (the tests), an error.
    strict_targets: bool = False


def step_session(conn: Connection) -> Session:
    """An ORM session inside the transaction `conn` is in: it neither begins nor commits it (the
    step does), and an error that rolls the session back rolls the step back."""
    return Session(bind=conn, expire_on_commit=False, join_transaction_mode="rollback_only")


class Ctx:
    """What a state works with during one step: the resident, their conversation (`state`,
    `data`: what the flow collected, persisted), the replies, and the database.

    Every write a state makes goes through `ctx.db` (the ORM session), `ctx.conn` (the step's
    connection, for prepared statements) or `ctx.update_resident`; in a step run by the runtime,
    the first of these begins the step's savepoint (profile changes wait for the end of the step
    instead), so that a step that fails commits nothing of its own. Reads on the common path
    (`ctx.consents()`) take none."""

    def __init__(self, config: EngineConfig, resident: Resident, identity: ChannelIdentity, state: str,
                 data: dict[str, Any], now: datetime, *, conn: Connection | None = None,
                 session: Session | None = None, writes: "StepWrites | None" = None) -> None:
        self.config = config
        self.resident = resident
        self.identity = identity  # read only (a plain copy of the row): channel, address, resident_id
        self.state = state
        self.data = data
        self.now = now
        self.session = session    # the step's ORM session: opened by the first use of ctx.db
        self.replies: list[Outbound] = []
        self.erase = False        # set by the data-deletion step; the runtime erases after the step
        self._conn = conn if conn is not None else session.connection()
        self._writes = writes     # the runtime's; None: whoever built this context owns the transaction
        self._consents: dict[str, bool] | None = None
        self._shows_staff: bool | None = None

    @property
    def registry(self) -> "Registry":
        return self.config.registry

    # -- the database
    def _writing(self) -> None:
        if self._writes is not None:
            self._writes.begin()

    @property
    def db(self) -> Session:
        """The ORM session of this step, in the step's transaction. Opened when a state first uses
        it: the common steps (a prompt, a choice, a profile change) never pay for one."""
        if self.session is None:
            self._writing()
            self.session = step_session(self._conn)
            self.session.add(self.resident)
        return self.session

    @property
    def conn(self) -> Connection:
        """The step's connection, for prepared statements (storage.fastsql.Prepared) that write."""
        self._writing()
        return self._conn

    @property
    def reader(self) -> Connection:
        """The step's connection, for prepared statements that only read (no savepoint begun)."""
        return self._conn

    def update_resident(self, **values: Any) -> None:
        if self._writes is not None:
            self._writes.update_resident(self.resident, values)
        else:
            update_resident(self._conn, self.resident, **values)

    # -- language
    @property
    def lang(self) -> str:
        return self.resident.locale if self.resident.locale in LANGUAGES else self.config.default_locale

    @property
    def t(self) -> Translator:
        return translator(self.lang)

    @property
    def catalog(self):
        return self.config.catalog

    @property
    def channel(self) -> str:
        return self.identity.channel

    def when(self, dt: datetime) -> str:
        return format_when(dt, self.lang, self.config.timezone)

    # -- replies
    def _reply_keyboard(self, kw: dict[str, Any]) -> None:
        """A question with a one-tap location button (a reply keyboard on Telegram) is remembered;
        the next message that asks for none takes the button away (`remove_keyboard`)."""
        if kw.get("request_location"):
            self.data["_reply_keyboard"] = True
        elif self.data.pop("_reply_keyboard", False):
            kw.setdefault("remove_keyboard", True)

    def say(self, text: str, choices: list[Choice] | None = None, **kw) -> Outbound:
        self._reply_keyboard(kw)
        out = Outbound(text=text, choices=list(choices or []), **kw)
        self.replies.append(out)
        if choices:
            self.data["_choices"] = [[c.key, c.label] for c in choices]
        return out

    def ask(self, text: str, choices: list[Choice] | None = None, **kw) -> Outbound:
        """A question: its choices are what numbers and typed words resolve to."""
        self.data["_choices"] = [[c.key, c.label] for c in (choices or [])]
        self._reply_keyboard(kw)
        out = Outbound(text=text, choices=list(choices or []), **kw)
        self.replies.append(out)
        return out

    def paged(self, items: list[Choice], page: int, extra: list[Choice] | None = None) -> list[Choice]:
        """A page of choices with previous/next buttons."""
        pages = max(1, (len(items) + PAGE_SIZE - 1) // PAGE_SIZE)
        page = max(0, min(page, pages - 1))
        self.data["_page"] = page
        shown = items[page * PAGE_SIZE:(page + 1) * PAGE_SIZE]
        nav = []
        if page > 0:
            nav.append(Choice("page:prev", self.t("engine.page_prev")))
        if page < pages - 1:
            nav.append(Choice("page:next", self.t("engine.page_next", page=page + 2, pages=pages)))
        return shown + nav + list(extra or [])

    # -- consent
    def consents(self) -> dict[str, bool]:
        if self._consents is None:
            self._consents = current_consents(self._conn, self.resident.id)
        return self._consents

    def consented(self, purpose: str) -> bool:
        return self.consents().get(purpose, False)

    def record_consent(self, purpose: str, granted: bool) -> None:
        """Record a grant or a withdrawal; withdrawing a consent given stops what it covered, giving
        it again restores what can come back on its own (the routers' on_withdrawal / on_grant)."""
        was = self.consented(purpose)
        record_consent(self.db, self.resident.id, purpose, granted, self.config.notice_version,
                            self.channel)
        self.consents()[purpose] = granted
        if was == granted:
            return
        if not granted:
            hooks = self.registry.withdrawals.get(purpose, ())
        elif self.resident.onboarded_at is not None:  # given again (onboarding has nothing to restore)
            hooks = self.registry.grants.get(purpose, ())
        else:
            hooks = ()
        for hook in hooks:
            hook(self.db, self.resident.id, self.now, self.config)

    # -- proactive messages to any resident, through the outbox, committed with this step
    def notify(self, resident_id: int, build: Callable[[Translator, str], Outbound], *, kind: str = "notification",
               priority: int = 3) -> int:
        return notify.notify_resident(self.db, resident_id, build, kind=kind, priority=priority,
                                      tz=self.config.timezone)

    @property
    def shows_staff(self) -> bool:
        """Whether this is a staff member who uses the chat's staff screens (their commands in
        /yardim and the menu), read on the step's connection: no ORM session for a menu."""
        if self._shows_staff is None:
            self._shows_staff = chat_staff_on(self._conn, self.channel, self.identity.address)
        return self._shows_staff

    @property
    def is_staff(self) -> bool:
        return is_chat_staff(self.db, self.channel, self.identity.address)

    @property
    def acting_as(self) -> Actor:
        """Who acts, for the domain operations (conversations/domain/): the staff member behind
        this chat with their role and departments, else the resident."""
        staff = staff_for(self.db, self.channel, self.identity.address)
        if staff is None:
            return Actor.resident(self.resident.id)
        return Actor.of_staff(staff, departments_of(self.db, staff.id))

    @property
    def actor(self) -> str:
        """Who acts, for audit rows and records: "staff:ID" for a staff member, else the resident's
        pseudonym "resident:ID" (never a chat id or a phone number; erasure leaves it meaningless)."""
        staff = staff_for(self.db, self.channel, self.identity.address)
        return f"staff:{staff.id}" if staff is not None else f"resident:{self.resident.id}"


@dataclass
class StepResult:
    state: str
    data: dict[str, Any]
    replies: list[Outbound]


# ---------------------------------------------------------------- the step
def resolve_choice(ctx: Ctx, msg: Inbound, *, numbers_are_answers: bool = False, by_key: bool = False) -> Inbound:
    """A typed number or a typed option name becomes the choice it names (a typed number stays
    text where the state asks for a number); with `by_key` (a staff screen) a typed catalog key
    too, Turkish-aware ("atölye" picks "t:atolye")."""
    choices = ctx.data.get("_choices") or []
    if msg.kind != Kind.TEXT or not choices:
        return msg
    text = msg.text.strip()
    if re.fullmatch(r"\d{1,3}", text):
        if numbers_are_answers:
            return msg
        index = int(text) - 1
        if 0 <= index < len(choices):
            return _as_choice(msg, choices[index][0])
        return msg
    found = match_options(text, [(k, [label]) for k, label in choices])
    typed = fold(text)
    exact = [k for k, label in choices if fold(label) == typed]
    if exact:
        return _as_choice(msg, exact[0])
    if by_key:
        keyed = {k.rsplit(":", 1)[-1]: k for k, _ in choices}
        key = key_for(text, keyed)
        if key is not None:
            return _as_choice(msg, keyed[key])
    if len(found) == 1 and len(typed) >= 3:
        return _as_choice(msg, found[0])
    return msg


def _as_choice(msg: Inbound, key: str) -> Inbound:
    return Inbound(**{**msg.__dict__, "kind": Kind.CHOICE, "choice": key})


def command_of(ctx: Ctx, msg: Inbound) -> str | None:
    """The canonical global action a message asks for, '?' for an unknown command, else None."""
    spellings = ctx.registry.spellings
    if msg.kind == Kind.COMMAND:
        # "/İPTAL" lower-cases to "i̇ptal" (i + combining dot): fall back to the Turkish-aware fold
        return spellings.get(msg.command.lower()) or spellings.get(fold(msg.command), "?")
    if msg.kind == Kind.TEXT and len(msg.text) <= 40:
        typed = fold(msg.text)
        for key, action in ctx.registry.word_commands.items():
            if typed in typed_words(key):
                return action
    return None


def command_names(ctx: Ctx) -> list[str]:
    """The commands as /yardim names them in the resident's language (a staff member's too)."""
    registry = ctx.registry
    names = list(registry.command_menu.get(ctx.lang, registry.command_menu["en"]))
    if registry.staff_menu.get(ctx.lang) and ctx.shows_staff:
        names += registry.staff_menu[ctx.lang]
    return names


def did_you_mean(ctx: Ctx, typed: str) -> str | None:
    """The command a mistyped one was probably meant to be ("/yardm" → "yardim"), among the
    spellings of the resident's language (Turkish-aware: "/İPTL" → "iptal"), or None."""
    shown = command_names(ctx)
    canonical = {ctx.registry.canonical(name) for name in shown}
    spellings = [s for s, name in ctx.registry.spellings.items() if name in canonical]
    near = closest(typed, shown) or closest(typed, spellings)
    if near is None:
        return None
    name = ctx.registry.canonical(near)
    return next((s for s in shown if ctx.registry.canonical(s) == name), near)


def run_command(ctx: Ctx, name: str, text: str = "") -> Transition:
    """A command's function, as if the resident had typed it (a menu item "cmd:NAME")."""
    return ctx.registry.commands[name].fn(ctx, text)


@lru_cache(maxsize=128)
def typed_words(key: str) -> frozenset[str]:
    """The typed words a catalog key lists, in every language, folded (catalog: "iptal, vazgeç");
    a word command's, or the yes/no words answering a proactive question."""
    return frozenset(fold(w) for lang in LANGUAGES for w in translator(lang)(key).split(",") if w.strip())


def refuse_staff(ctx: Ctx, what: str) -> None:
    """A staff-only state reached by someone who is not staff: refused politely and audited, with
    the resident's pseudonym as the actor."""
    audit(ctx.db, f"resident:{ctx.resident.id}", "staff.refused", what)
    ctx.say(ctx.t("staff.refused"))


def enter(ctx: Ctx, name: str) -> str:
    states = ctx.registry.states
    target = states.get(name)
    if target is None:
        if ctx.config.strict_targets:
            raise UnknownState(f"no router declares the state {name!r} (entered from {ctx.state!r})")
        log.error("unknown state %r entered from %r, back to the menu", name, ctx.state)
        name, target = IDLE, states[IDLE]
    if target.staff_only and not ctx.is_staff:
        # a command or menu item leading to a staff screen: refused before its prompt shows anything
        refuse_staff(ctx, name)
        ctx.data = {}
        name, target = IDLE, states[IDLE]
    ctx.state = name
    ctx.data.pop("_choices", None)
    target.enter(ctx)
    return name


def apply(ctx: Ctx, result: Transition, current: "State") -> None:
    if isinstance(result, Go):
        if not result.keep:
            ctx.data = dict(result.data or {})
        elif result.data:
            ctx.data.update(result.data)
        if result.prompt:
            enter(ctx, result.state)
        else:
            ctx.state = result.state
    elif isinstance(result, Invalid):
        ctx.say(ctx.t(result.reason))
        current.enter(ctx)


def back_to_menu(ctx: Ctx, key: str) -> StepResult:
    """Say `key`, forget what was collected and show the menu."""
    ctx.say(ctx.t(key))
    ctx.data = {}
    enter(ctx, IDLE)
    return StepResult(ctx.state, ctx.data, ctx.replies)


def step(ctx: Ctx, msg: Inbound) -> StepResult:
    """One conversation step: (state, inbound) → (new state, outbound). An exception in a state
    propagates: the runtime rolls the step back and apologises (conversations/runtime.py)."""
    registry = ctx.registry
    current = registry.states.get(ctx.state)
    if current is None:
        return back_to_menu(ctx, N_("engine.state_gone"))
    if msg.kind == Kind.TEXT:
        msg.text = clean_text(msg.text)
        if not msg.text:
            apply(ctx, Invalid("engine.empty"), current)
            return StepResult(ctx.state, ctx.data, ctx.replies)
        if len(msg.text) > ctx.config.max_text_length and not current.long_text:
            ctx.say(ctx.t("engine.too_long", limit=ctx.config.max_text_length))
            current.enter(ctx)
            return StepResult(ctx.state, ctx.data, ctx.replies)
    action = command_of(ctx, msg)
    if action is not None:
        if action == "?":
            near = did_you_mean(ctx, msg.command)
            typed = "/" + msg.command[:32]
            if near:
                ctx.say(ctx.t("engine.did_you_mean", command=typed, near="/" + near))
            else:
                ctx.say(ctx.t("engine.unknown_command", command=typed))
            current.enter(ctx)
        else:
            apply(ctx, run_command(ctx, action, msg.text), current)
        return StepResult(ctx.state, ctx.data, ctx.replies)
    if not _onboarded_for(current, ctx.resident.onboarded_at):
        apply(ctx, run_command(ctx, "start"), current)
        return StepResult(ctx.state, ctx.data, ctx.replies)
    msg = resolve_choice(ctx, msg, numbers_are_answers=current.number_answer, by_key=current.staff_only)
    if current.staff_only and not ctx.is_staff:
        refuse_staff(ctx, ctx.state)
        ctx.data = {}
        enter(ctx, IDLE)
        return StepResult(ctx.state, ctx.data, ctx.replies)
    if msg.kind == Kind.CHOICE:
        if msg.choice in ("page:next", "page:prev") and "_page" in ctx.data:
            ctx.data["_page"] = ctx.data["_page"] + (1 if msg.choice == "page:next" else -1)
            current.enter(ctx)
            return StepResult(ctx.state, ctx.data, ctx.replies)
        known = {k for k, _ in ctx.data.get("_choices") or []}
        handler = registry.global_choices.get(msg.choice.split(":", 1)[0]) if msg.choice not in known else None
        if handler is not None:
            apply(ctx, handler(ctx, msg), current)
            return StepResult(ctx.state, ctx.data, ctx.replies)
        if msg.choice not in known:
            apply(ctx, Invalid("engine.stale_choice"), current)
            return StepResult(ctx.state, ctx.data, ctx.replies)
    if msg.kind not in current.accepts:
        ctx.say(ctx.t("engine.wrong_kind", what=ctx.t(KIND_NAMES[msg.kind])))
        current.enter(ctx)
        return StepResult(ctx.state, ctx.data, ctx.replies)
    if current.choice_only and msg.kind != Kind.CHOICE:
        apply(ctx, Invalid("engine.choose"), current)
        return StepResult(ctx.state, ctx.data, ctx.replies)
    apply(ctx, current.handle(ctx, msg), current)
    return StepResult(ctx.state, ctx.data, ctx.replies)


def _onboarded_for(current: "State", onboarded_at: datetime | None) -> bool:
    """The resident may use this state (one that needs onboarding sends them to /start first).
    A staff screen needs no onboarding: a staff member who never went through it works all the
    same (whoever else reaches one is refused by the staff check)."""
    return onboarded_at is not None or not current.needs_onboarding or current.staff_only


def expired(state: str, updated_at: datetime | None, now: datetime, expiry: timedelta) -> bool:
    """The conversation stopped longer ago than SESSION_EXPIRY: the next message finds the menu."""
    return state != IDLE and updated_at is not None and now - aware(updated_at) > expiry


def takes_attachment(registry: "Registry", state: str, kind: Kind, *, onboarded_at: datetime | None, expired: bool,
                     is_staff: Callable[[], bool]) -> bool:
    """Whether a message of this kind (a photo, a voice note, a file: never a command, a choice or
    text) would reach the input handler of the resident's state, through the gates `step` applies
    before `current.handle`: a state that exists and has not expired, onboarding, staff, accepts."""
    current = registry.states.get(state)
    if current is None or expired or kind not in current.accepts:
        return False
    if not _onboarded_for(current, onboarded_at):
        return False
    return not current.staff_only or is_staff()


# Why an attachment was not kept (storage/media.py's reasons) → what the resident is told. The other
# reasons (too large, unavailable) get the state's own "could not receive it" message.
MEDIA_REFUSALS = {
    media_store.NOT_A_PHOTO: N_("media.not_a_photo"),
    media_store.TOO_MANY_PIXELS: N_("media.too_many_pixels"),
    media_store.NOT_AUDIO: N_("media.not_audio"),
    media_store.UNREADABLE: N_("media.unreadable"),
}


def media_refusal(msg: Inbound, failed_key: str) -> str | None:
    """None when the message's first attachment is stored in MEDIA_DIR; otherwise the message key
    that says why not (`failed_key` when it just could not be received)."""
    media = msg.media[0] if msg.media else None
    if media is not None and media.ref and not media.refused:
        return None
    return MEDIA_REFUSALS.get(media.refused if media is not None else "", failed_key)
