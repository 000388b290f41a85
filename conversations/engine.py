"""The conversation engine.

A step is a function from (state, inbound) to (new state, outbound messages), like goflow's
sessions. States are named strings ("report.describe"), so a stored state survives code edits.
`Engine.handle` runs one step inside one database transaction: the resident's session row is
locked, the step runs, the new state, every record the step wrote and the replies (as outbox
rows) commit together. A crash before the commit loses nothing that was acknowledged; a crash
after it leaves the replies in the outbox for the dispatcher.
"""
from __future__ import annotations

import logging
import re
import threading
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from functools import lru_cache
from types import SimpleNamespace
from typing import Any, Callable, Iterable, Protocol

from sqlalchemy import and_, bindparam, event
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import Connection, Engine as DbEngine
from sqlmodel import Session, select

from conversations.i18n import LANGUAGES, N_, Translator, format_when, translator
from conversations.messages import Choice, Inbound, Kind, Outbound
from conversations.text import clean_text, fold, match_options
from storage import attachments, outbox, repo
from storage import media as media_store
from storage.attachments import Erased
from storage.db import utcnow
from storage.fastsql import Prepared, detached, run_all
from storage.models import ChannelIdentity, ConversationSession, ProcessedInbound, Resident

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


class StateDef(Protocol):
    name: str
    accepts: frozenset[Kind]

    def enter(self, ctx: "Ctx") -> None: ...

    def handle(self, ctx: "Ctx", msg: Inbound) -> Transition: ...


@dataclass
class _FnState:
    name: str
    accepts: frozenset[Kind]
    enter_fn: Callable[["Ctx"], None]
    handle_fn: Callable[["Ctx", Inbound], Transition]
    needs_onboarding: bool = True
    staff_only: bool = False

    def enter(self, ctx: "Ctx") -> None:
        self.enter_fn(ctx)

    def handle(self, ctx: "Ctx", msg: Inbound) -> Transition:
        return self.handle_fn(ctx, msg)


STATES: dict[str, _FnState] = {}
TEXT_AND_CHOICE = frozenset({Kind.TEXT, Kind.CHOICE})


def state(name: str, *, accepts: Iterable[Kind] = TEXT_AND_CHOICE, needs_onboarding: bool = True,
          staff_only: bool = False):
    """Register a state: decorate the prompt function; attach the input handler with `.on_input`."""

    def deco(enter_fn):
        entry = _FnState(name, frozenset(accepts), enter_fn, lambda ctx, msg: Invalid("engine.choose"),
                         needs_onboarding, staff_only)
        if name in STATES:
            raise ValueError(f"state {name} registered twice")
        STATES[name] = entry

        def on_input(handle_fn):
            entry.handle_fn = handle_fn
            return handle_fn

        enter_fn.on_input = on_input
        return enter_fn

    return deco


# Global commands: every spelling (Turkish and English command names) maps to one action.
COMMAND_ALIASES = {
    "start": "start", "menu": "menu", "menü": "menu",
    "yardim": "help", "help": "help",
    "iptal": "cancel", "cancel": "cancel",
    "dil": "language", "language": "language",
    "verilerim": "mydata", "mydata": "mydata",
    "verilerimisil": "deletedata", "deletemydata": "deletedata",
}
# Command names shown per language in the Telegram menu (names must be Latin; texts come from catalogs).
COMMAND_MENU = {
    "tr": ["menu", "yardim", "iptal", "dil", "verilerim", "verilerimisil"],
    "en": ["menu", "help", "cancel", "language", "mydata", "deletemydata"],
    "ar": ["menu", "help", "cancel", "language", "mydata", "deletemydata"],
}
COMMANDS: dict[str, Callable[["Ctx", str], Transition]] = {}
# Typed words that act like a command in any state (from the catalogs, in every language).
WORD_COMMANDS = {N_("words.cancel"): "cancel", N_("words.menu"): "menu", N_("words.help"): "help"}
KIND_NAMES = {k: N_(f"kind.{k.value}") for k in Kind}
N_("kind.text"), N_("kind.command"), N_("kind.choice"), N_("kind.location"), N_("kind.photo"), N_("kind.voice")
N_("kind.document"), N_("kind.sticker"), N_("kind.contact"), N_("kind.other")


def command(name: str, *aliases: str, menu: dict[str, str] | None = None):
    """Register a global command handler (name is the canonical action)."""

    def deco(fn):
        COMMANDS[name] = fn
        for alias in aliases:
            COMMAND_ALIASES[alias] = name
        for lang, alias in (menu or {}).items():
            COMMAND_MENU[lang].append(alias)
        return fn

    return deco


def word_command(catalog_key: str, action: str) -> None:
    WORD_COMMANDS[catalog_key] = action


# Main menu items: (order, key, label key, target state); features register theirs.
MENU_ITEMS: list[tuple[int, str, str, str]] = []


def menu_item(order: int, key: str, label_key: str, target: str) -> None:
    MENU_ITEMS.append((order, key, label_key, target))
    MENU_ITEMS.sort()


# Global choices: buttons on proactive messages (a notification's "was it solved?") must work
# whatever state the resident is in. A choice key "PREFIX:..." that the current state did not
# offer goes to GLOBAL_CHOICES[PREFIX](ctx, msg) -> Transition, checked before the stale-choice
# check; the handler validates the rest of the key itself (it may come from an old message).
# Prefixes are unique across features and never used by a state's own choices; a handler that
# replies without moving the resident returns Stay() and must not overwrite ctx.data["_choices"]
# (append to ctx.replies instead of ctx.say/ctx.ask with choices).
GLOBAL_CHOICES: dict[str, Callable[["Ctx", Inbound], Transition]] = {}


def global_choice(prefix: str):
    """Register the handler of proactive buttons whose keys start with "prefix:"."""

    def deco(fn):
        if prefix in GLOBAL_CHOICES:
            raise ValueError(f"global choice prefix {prefix} registered twice")
        GLOBAL_CHOICES[prefix] = fn
        return fn

    return deco


# Exporters and erasers for the resident's data rights; features register theirs.
EXPORTERS: list[Callable[[Session, int], dict[str, Any]]] = []
ERASERS: list[Callable[[Session, int], None]] = []
# Mergers: when two residents become one (conversations/linking.py), (db, gone_id, keep_id) for
# what the generic move of resident_id rows (storage/linking.py) cannot do alone.
MERGERS: list[Callable[[Session, int, int], None]] = []


# ---------------------------------------------------------------- context
@dataclass
class EngineConfig:
    catalog: Any
    timezone: str = "Europe/Istanbul"
    default_locale: str = "tr"
    session_expiry: timedelta = timedelta(hours=24)
    max_text_length: int = 2000
    notice_version: str = "2026-11"
    settings: Any = None


@dataclass
class Ctx:
    config: EngineConfig
    resident: Resident
    identity: ChannelIdentity  # read only (a plain copy of the row): channel, address, resident_id
    state: str
    data: dict[str, Any]
    now: datetime
    conn: Connection | None = None  # the step's connection, inside the step's transaction
    session: Session | None = None  # the step's ORM session: opened by the first use of ctx.db
    replies: list[Outbound] = field(default_factory=list)
    erase: bool = False             # set by the data-deletion step; the runtime erases after the step
    _consents: dict[str, bool] | None = None

    def __post_init__(self) -> None:
        if self.conn is None:
            self.conn = self.session.connection()

    @property
    def db(self) -> Session:
        """The ORM session of this step, in the step's transaction. Opened when a state first uses
        it: the common steps (a prompt, a choice, a profile change) never pay for one."""
        if self.session is None:
            self.session = step_session(self.conn)
            self.session.add(self.resident)
        return self.session

    def update_resident(self, **values: Any) -> None:
        repo.update_resident(self.conn, self.resident, **values)

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
    def say(self, text: str, choices: list[Choice] | None = None, **kw) -> Outbound:
        out = Outbound(text=text, choices=list(choices or []), **kw)
        self.replies.append(out)
        if choices:
            self.data["_choices"] = [[c.key, c.label] for c in choices]
        return out

    def ask(self, text: str, choices: list[Choice] | None = None, **kw) -> Outbound:
        """A question: its choices are what numbers and typed words resolve to."""
        self.data["_choices"] = [[c.key, c.label] for c in (choices or [])]
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
            self._consents = repo.current_consents(self.conn, self.resident.id)
        return self._consents

    def consented(self, purpose: str) -> bool:
        return self.consents().get(purpose, False)

    def record_consent(self, purpose: str, granted: bool) -> None:
        """Record a grant or a withdrawal; withdrawing a consent given stops what it covered, giving
        it again restores what can come back on its own (conversations/consent.py)."""
        was = self.consented(purpose)
        repo.record_consent(self.db, self.resident.id, purpose, granted, self.config.notice_version,
                            self.channel)
        self.consents()[purpose] = granted
        if was != granted:
            from conversations import consent

            if not granted:
                consent.withdrawn(self.db, self.resident.id, purpose, now=self.now, tz=self.config.timezone)
            elif self.resident.onboarded_at is not None:  # given again (onboarding has nothing to restore)
                consent.granted(self.db, self.resident.id, purpose, now=self.now, settings=self.config.settings)

    # -- proactive messages to any resident, through the outbox, committed with this step
    def notify(self, resident_id: int, build: Callable[[Translator, str], Outbound], *, kind: str = "notification",
               priority: int = 3) -> int:
        return outbox.notify_resident(self.db, resident_id, build, kind=kind, priority=priority,
                                      tz=self.config.timezone)

    @property
    def is_staff(self) -> bool:
        return repo.is_chat_staff(self.db, self.channel, self.identity.address)

    @property
    def actor(self) -> str:
        """Who acts, for audit rows and records: "staff:ID" for a staff member, else the resident's
        pseudonym "resident:ID" (never a chat id or a phone number; erasure leaves it meaningless)."""
        staff = repo.staff_for(self.db, self.channel, self.identity.address)
        return f"staff:{staff.id}" if staff is not None else f"resident:{self.resident.id}"


@dataclass
class StepResult:
    state: str
    data: dict[str, Any]
    replies: list[Outbound]


# ---------------------------------------------------------------- the step
def resolve_choice(ctx: Ctx, msg: Inbound) -> Inbound:
    """A typed number or a typed option name becomes the choice it names."""
    choices = ctx.data.get("_choices") or []
    if msg.kind != Kind.TEXT or not choices:
        return msg
    text = msg.text.strip()
    if re.fullmatch(r"\d{1,3}", text):
        index = int(text) - 1
        if 0 <= index < len(choices):
            return _as_choice(msg, choices[index][0])
        return msg
    found = match_options(text, [(k, [label]) for k, label in choices])
    typed = fold(text)
    exact = [k for k, label in choices if fold(label) == typed]
    if exact:
        return _as_choice(msg, exact[0])
    if len(found) == 1 and len(typed) >= 3:
        return _as_choice(msg, found[0])
    return msg


def _as_choice(msg: Inbound, key: str) -> Inbound:
    return Inbound(**{**msg.__dict__, "kind": Kind.CHOICE, "choice": key})


def command_of(ctx: Ctx, msg: Inbound) -> str | None:
    """The canonical global action a message asks for, '?' for an unknown command, else None."""
    if msg.kind == Kind.COMMAND:
        # "/İPTAL" lower-cases to "i̇ptal" (i + combining dot): fall back to the Turkish-aware fold
        return COMMAND_ALIASES.get(msg.command.lower()) or COMMAND_ALIASES.get(fold(msg.command), "?")
    if msg.kind == Kind.TEXT and len(msg.text) <= 40:
        typed = fold(msg.text)
        for key, action in WORD_COMMANDS.items():
            if typed in _command_words(key):
                return action
    return None


@lru_cache(maxsize=128)
def _command_words(key: str) -> frozenset[str]:
    """The typed words of a word command in every language, folded (catalog: "iptal, vazgeç")."""
    return frozenset(fold(w) for lang in LANGUAGES for w in translator(lang)(key).split(",") if w.strip())


def refuse_staff(ctx: Ctx, what: str) -> None:
    """A staff-only state reached by someone who is not staff: refused politely and audited, with
    the resident's pseudonym as the actor."""
    repo.audit(ctx.db, f"resident:{ctx.resident.id}", "staff.refused", what)
    ctx.say(ctx.t("staff.refused"))


def enter(ctx: Ctx, name: str) -> str:
    target = STATES.get(name)
    if target is None:
        log.warning("unknown state %r, back to the menu", name)
        name, target = IDLE, STATES[IDLE]
    if target.staff_only and not ctx.is_staff:
        # a command or menu item leading to a staff screen: refused before its prompt shows anything
        refuse_staff(ctx, name)
        ctx.data = {}
        name, target = IDLE, STATES[IDLE]
    ctx.state = name
    ctx.data.pop("_choices", None)
    target.enter(ctx)
    return name


def apply(ctx: Ctx, result: Transition, current: _FnState) -> None:
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


def step(ctx: Ctx, msg: Inbound) -> StepResult:
    """One conversation step: (state, inbound) → (new state, outbound).

    A bug in a state never leaves the resident without an answer: the step is logged, the
    resident gets an apology in their language and is taken back to the menu."""
    saved = dict(ctx.data)
    try:
        return _step(ctx, msg)
    except Exception:  # noqa: BLE001
        log.exception("step failed in state %s for resident:%s (%s)", ctx.state, ctx.resident.id, ctx.channel)
        ctx.replies.clear()
        ctx.data = {k: v for k, v in saved.items() if not k.startswith("_")}
        ctx.say(ctx.t("engine.error"))
        ctx.data = {}
        enter(ctx, IDLE)
        return StepResult(ctx.state, ctx.data, ctx.replies)


def _step(ctx: Ctx, msg: Inbound) -> StepResult:
    current = STATES.get(ctx.state)
    if current is None:
        ctx.say(ctx.t("engine.state_gone"))
        ctx.data = {}
        enter(ctx, IDLE)
        return StepResult(ctx.state, ctx.data, ctx.replies)
    if msg.kind == Kind.TEXT:
        msg.text = clean_text(msg.text)
        if not msg.text:
            apply(ctx, Invalid("engine.empty"), current)
            return StepResult(ctx.state, ctx.data, ctx.replies)
        if len(msg.text) > ctx.config.max_text_length:
            ctx.say(ctx.t("engine.too_long", limit=ctx.config.max_text_length))
            current.enter(ctx)
            return StepResult(ctx.state, ctx.data, ctx.replies)
    action = command_of(ctx, msg)
    if action is not None:
        if action == "?":
            ctx.say(ctx.t("engine.unknown_command", command="/" + msg.command[:32]))
            current.enter(ctx)
        else:
            apply(ctx, COMMANDS[action](ctx, msg.text), current)
        return StepResult(ctx.state, ctx.data, ctx.replies)
    if not _onboarded_for(current, ctx.resident.onboarded_at):
        apply(ctx, COMMANDS["start"](ctx, ""), current)
        return StepResult(ctx.state, ctx.data, ctx.replies)
    msg = resolve_choice(ctx, msg)
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
        handler = GLOBAL_CHOICES.get(msg.choice.split(":", 1)[0]) if msg.choice not in known else None
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
    apply(ctx, current.handle(ctx, msg), current)
    return StepResult(ctx.state, ctx.data, ctx.replies)


def _onboarded_for(current: _FnState, onboarded_at: datetime | None) -> bool:
    """The resident may use this state (one that needs onboarding sends them to /start first)."""
    return onboarded_at is not None or not current.needs_onboarding


def _expired(state: str, updated_at: datetime | None, now: datetime, expiry: timedelta) -> bool:
    """The conversation stopped longer ago than SESSION_EXPIRY: the next message finds the menu."""
    return state != IDLE and updated_at is not None and now - _aware(updated_at) > expiry


def takes_attachment(state: str, kind: Kind, *, onboarded_at: datetime | None, expired: bool,
                     is_staff: Callable[[], bool]) -> bool:
    """Whether a message of this kind (a photo, a voice note, a file: never a command, a choice or
    text) would reach the input handler of the resident's state, through the gates `_step` applies
    before `current.handle`: a state that exists and has not expired, onboarding, staff, accepts."""
    current = STATES.get(state)
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


# ---------------------------------------------------------------- the transactional runtime
@dataclass
class Handled:
    replies: list[tuple[int, Outbound]]   # (outbox id, message) claimed by this worker for direct sending
    duplicate: bool = False
    resident_id: int | None = None
    erased: Erased | None = None          # the step erased the resident: what is left to do after the commit


class Engine:
    def __init__(self, db: DbEngine, config: EngineConfig, worker_id: str = "main") -> None:
        self.db = db
        self.config = config
        self.worker_id = worker_id
        # Each thread that runs steps keeps one connection between steps (a pool checkout and
        # return cost more than a step's own statements on SQLite); Engine.dispose releases them.
        self._held: dict[int, Connection] = {}
        self._held_lock = threading.Lock()
        event.listen(db, "engine_disposed", lambda _db: self.release())

    def handle(self, msg: Inbound, inbox_id: int | None = None) -> Handled:
        """Run one step for one inbound message, in one transaction (which also removes the
        message from the inbox when it was queued there)."""
        conn = self._connection()
        try:
            with conn.begin():  # commits at the end of the block, rolls back on an error
                if inbox_id is not None:
                    from storage import inbox

                    inbox.done(conn, inbox_id)
                handled = self._handle(conn, msg)
        except BaseException:
            self._drop(conn)  # the next step starts on a fresh connection (a restarted database)
            raise
        if handled.erased is not None:  # committed: their files go now (a crash here: housekeeping's sweep)
            attachments.remove(handled.erased.files, getattr(self.config.settings, "media_dir", None))
        return handled

    def wants_attachment(self, msg: Inbound) -> bool:
        """Whether the step for this message would use its attachment (App.handle downloads only
        then): one read of the resident's state by channel and address (the identity's unique
        index, the session's primary key), outside the step's transaction and taking no lock."""
        rows = self._read(_STATE_OF, {"channel": msg.channel, "address": msg.address})
        if not rows:
            return False  # a first message: onboarding comes first
        state, updated_at, onboarded_at = rows[0]
        state = state or IDLE  # no session row yet: the menu

        def is_staff() -> bool:
            with Session(self.db) as db:
                return repo.is_chat_staff(db, msg.channel, msg.address)

        return takes_attachment(state, msg.kind, onboarded_at=onboarded_at, is_staff=is_staff,
                                expired=_expired(state, updated_at, utcnow(), self.config.session_expiry))

    def _read(self, stmt: Prepared, params: dict[str, Any]) -> list[tuple]:
        """Rows of a read on this thread's connection, in a transaction of its own (on SQLite none:
        a plain SELECT in autocommit, so no BEGIN IMMEDIATE takes the write lock for it)."""
        conn = self._connection()
        try:
            if conn.dialect.name == "sqlite":
                return stmt.execute(conn, params)[0]
            with conn.begin():
                return stmt.execute(conn, params)[0]
        except BaseException:
            self._drop(conn)
            raise

    def _connection(self) -> Connection:
        key = threading.get_ident()
        conn = self._held.get(key)
        if conn is None or conn.closed or conn.invalidated:
            conn = self.db.connect()
            with self._held_lock:
                self._held[key] = conn
        return conn

    def _drop(self, conn: Connection) -> None:
        with self._held_lock:
            if self._held.get(threading.get_ident()) is conn:
                del self._held[threading.get_ident()]
        try:
            conn.close()
        except Exception:  # noqa: BLE001  (already broken: the pool discards it)
            log.debug("closing a failed step's connection", exc_info=True)

    def release(self) -> None:
        """Return every held connection to the pool (at shutdown, and when the database engine
        is disposed)."""
        with self._held_lock:
            held, self._held = list(self._held.values()), {}
        for conn in held:
            try:
                conn.close()
            except Exception:  # noqa: BLE001
                log.debug("releasing a held connection", exc_info=True)

    def _handle(self, conn: Connection, msg: Inbound) -> Handled:
        now = utcnow()
        where = {"channel": msg.channel, "address": msg.address}
        if msg.external_id:  # recorded and loaded in one round trip (PostgreSQL)
            seen = {"channel": msg.channel, "external_id": msg.external_id[:64], "at": now}
            (fresh, _), loaded = run_all(conn, [(_INSERT_PROCESSED, seen), (_LOAD_LOCKED, where)])
            if not fresh:  # a re-delivered update or webhook: seen before
                return Handled([], duplicate=True)
        else:
            loaded = _LOAD_LOCKED.execute(conn, where)
        identity, resident, session = _load_locked(conn, where, loaded[0])
        opened = None
        if identity is None:
            opened = step_session(conn)
            identity, resident = repo.identity_for(opened, msg.channel, msg.address, msg.language_hint,
                                                   msg.display_name, self.config.default_locale)
        stored = session is not None
        if not stored:
            session = _Stored(IDLE, {}, None)
        ctx = Ctx(config=self.config, resident=resident, identity=identity, state=session.state,
                  data=session.data or {}, now=now, conn=conn, session=opened)  # data: freshly decoded, the step's own
        try:
            return self._finish(ctx, msg, session, stored)
        finally:
            if ctx.session is not None:
                ctx.session.close()  # the transaction stays open: handle() commits it

    def _finish(self, ctx: Ctx, msg: Inbound, session: "_Stored", stored: bool) -> Handled:
        now, conn, identity, resident = ctx.now, ctx.conn, ctx.identity, ctx.resident
        expired = _expired(session.state, session.updated_at, now, self.config.session_expiry)
        if expired:
            ctx.say(ctx.t("engine.expired"))
            ctx.data = {}
            enter(ctx, IDLE)
            if msg.kind != Kind.COMMAND:
                result = StepResult(ctx.state, ctx.data, ctx.replies)
            else:
                result = step(ctx, msg)
        else:
            result = step(ctx, msg)
        stored_media = [m.ref for m in msg.media if m.ref]
        if stored_media and not ctx.erase:  # who sent which stored file (erasure finds a draft's photos)
            attachments.record_uploads(ctx.db, resident.id, stored_media, now)
        _flush(ctx)  # what the step changed through the ORM goes first (foreign keys)
        # Claimed under a name of their own: a dispatcher stopping in this process releases its own
        # claims, never replies that are being sent right now (they are confirmed, or their lease runs out).
        claimed_by = f"{self.worker_id}/direct"
        if ctx.erase:
            from conversations.core import erase_resident

            erased = erase_resident(ctx.db, resident.id, actor=f"resident:{resident.id}")
            _flush(ctx)
            # Nothing else of theirs stays queued or archived in the outbox; the goodbye goes out,
            # telling the channel which files it wrote for them to forget, and loses its address
            # once sent (storage.outbox.mark_sent).
            for out in result.replies:
                out.forget = list(erased.documents)
            rows = outbox.enqueue_replies(conn, identity, result.replies, claimed_by=claimed_by, now=now)
            return Handled(rows, resident_id=resident.id, erased=erased)
        # The replies, the session and (when due) the last inbound time: one round trip (PostgreSQL).
        writes = outbox.reply_statements(identity, result.replies, claimed_by=claimed_by, now=now)
        values = {"rid": resident.id, "state": result.state, "data": result.data, "now": now}
        writes.append((_SAVE_SESSION if stored else _NEW_SESSION, values))
        # The last inbound time matters to the minute (WhatsApp's 24-hour window): skip the write
        # when it is fresh, so a busy conversation costs one UPDATE fewer per message.
        last = identity.last_inbound_at
        if last is None or now - _aware(last) > timedelta(seconds=60) or identity.unreachable:
            writes.append((_SEEN, {"iid": identity.id, "now": now}))
        done = run_all(conn, writes)
        if stored and not done[len(result.replies)][1]:  # the session row went away meanwhile
            _NEW_SESSION.execute(conn, values)
        rows = outbox.reply_ids(done, result.replies)
        return Handled(rows, resident_id=resident.id)


def step_session(conn: Connection) -> Session:
    """An ORM session inside the transaction `conn` is in: it neither begins nor commits it (the
    step does), and an error that rolls the session back rolls the step back."""
    return Session(bind=conn, expire_on_commit=False, join_transaction_mode="rollback_only")


def _flush(ctx: Ctx) -> None:
    """Write what the step changed through the ORM; a session rolled back by an error the step
    caught must not let the step's own writes commit on their own."""
    db = ctx.session
    if db is None:
        return
    if not db.is_active or not ctx.conn.in_transaction():
        raise RuntimeError("the step's transaction was rolled back by an error")
    if db.new or db.dirty or db.deleted:
        db.flush()


@dataclass
class _Stored:
    """A conversation session as stored (read with plain columns and written with one UPDATE:
    the ORM's change tracking would cost more than the rest of the step)."""
    state: str
    data: dict[str, Any]
    updated_at: datetime | None


def _aware(dt: datetime) -> datetime:
    return dt if dt.tzinfo else dt.replace(tzinfo=timezone.utc)


# Statements built once (building them per message costs more than running them on SQLite).
_P = ProcessedInbound.__table__
_INSERT_PROCESSED = Prepared({
    name: fn(_P).values(channel=bindparam("channel"), external_id=bindparam("external_id"), at=bindparam("at"))
    .on_conflict_do_nothing().returning(_P.c.at)
    for name, fn in (("postgresql", pg_insert), ("sqlite", sqlite_insert))
})
_S = ConversationSession.__table__
_I = ChannelIdentity.__table__
_R = Resident.__table__
_I_KEYS, _R_KEYS = tuple(_I.c.keys()), tuple(_R.c.keys())
_BY_ADDRESS = and_(_I.c.channel == bindparam("channel"), _I.c.address == bindparam("address"))
_LOAD_LOCKED = Prepared(select(_I, _R, _S.c.state, _S.c.data, _S.c.updated_at)
                        .join(_R, _R.c.id == _I.c.resident_id).join(_S, _S.c.resident_id == _R.c.id)
                        .where(_BY_ADDRESS).with_for_update(of=[_R, _S]))
_LOAD_NEW = Prepared(select(_I, _R).join(_R, _R.c.id == _I.c.resident_id).where(_BY_ADDRESS).with_for_update(of=_R))
_STATE_OF = Prepared(select(_S.c.state, _S.c.updated_at, _R.c.onboarded_at)
                     .select_from(_I.join(_R, _R.c.id == _I.c.resident_id).outerjoin(_S, _S.c.resident_id == _R.c.id))
                     .where(_BY_ADDRESS))
_SEEN = Prepared(_I.update().where(_I.c.id == bindparam("iid"))
                 .values(last_inbound_at=bindparam("now"), unreachable=False, unreachable_reason=""))
_LOAD_SESSION = Prepared(select(_S.c.state, _S.c.data, _S.c.updated_at)
                         .where(_S.c.resident_id == bindparam("rid")).with_for_update())
_SAVE_SESSION = Prepared(_S.update().where(_S.c.resident_id == bindparam("rid"))
                         .values(state=bindparam("state"), data=bindparam("data"), updated_at=bindparam("now"),
                                 version=_S.c.version + 1))
_NEW_SESSION = Prepared(_S.insert().values(resident_id=bindparam("rid"), state=bindparam("state"),
                                           data=bindparam("data"), updated_at=bindparam("now"), version=1))


def _load_locked(conn, where: dict[str, str], rows: list[tuple]):
    """Identity, resident and session from one query (`rows`: _LOAD_LOCKED's), the resident and session rows locked until
    commit (PostgreSQL: FOR UPDATE OF both, so one resident's steps run one at a time across
    workers, and a step that waited for the lock reads the session as the previous step left it;
    SQLite's BEGIN IMMEDIATE already serialises writers). A resident without a session yet (their
    first message) takes a second query. The resident becomes an ORM object, detached until a
    state opens the step's ORM session (storage.fastsql.detached); the identity and the session
    stay plain."""
    stored = None
    if rows:
        row = rows[0]
        stored = _Stored(*row[len(_I_KEYS) + len(_R_KEYS):])
    else:
        rows, _ = _LOAD_NEW.execute(conn, where)
        if not rows:
            return None, None, None
        row = rows[0]
    identity = SimpleNamespace(**dict(zip(_I_KEYS, row)))  # read only: the step writes it with _SEEN
    resident = detached(Resident, zip(_R_KEYS, row[len(_I_KEYS):]))
    if stored is None:
        found, _ = _LOAD_SESSION.execute(conn, {"rid": resident.id})
        stored = _Stored(*found[0]) if found else None
    return identity, resident, stored
