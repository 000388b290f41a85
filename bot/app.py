"""Explicit wiring: settings → catalog → the features' registry → database → conversation engine →
channels, HTTP server and scheduler. `katilim run`, `katilim chat`, `katilim worker` and the tests
all build the application here, from the features and channels listed in bot/features.py."""
from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Awaitable, Callable, Protocol

from sqlalchemy.engine import Engine as DbEngine
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, NoSuchModuleError, OperationalError

from bot.catalog import Catalog, load_catalog
from bot.settings import Settings
from conversations.i18n import LANGUAGES, t_in
from conversations.messages import Inbound, Kind
from conversations.proactive import answer_by_number
from conversations.registry import Registry, RegistryError
from conversations.runtime import Engine, Handled
from conversations.step import EngineConfig
from handlers.delivery import Sender, send_replies
from storage.db import make_engine, transaction
from storage.migrate import upgrade

log = logging.getLogger("katilim")


class StartupError(Exception):
    """A channel cannot start (a refused token...): `katilim` prints the one-line reason and exits 2."""


class Channel(Protocol):
    name: str
    sender: Sender
    # True: a typed number right after a proactive message with choices answers that message
    # (conversations/proactive.py), for a channel whose choices are numbered lists, no buttons.
    numbers_answer_proactive: bool

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    def mount(self, http_app: Any) -> None: ...


@dataclass
class App:
    settings: Settings
    catalog: Catalog
    db: DbEngine
    engine: Engine
    worker_id: str
    channels: dict[str, Channel] = field(default_factory=dict)
    senders: dict[str, Sender] = field(default_factory=dict)
    # channel → async fetch(media) -> bytes: a channel's file as it arrives (size-capped), never stored
    # by the channel itself: App._fetch_media judges, cleans and stores it (storage.media.keep)
    media_fetchers: dict[str, Any] = field(default_factory=dict)
    flood: Any = None  # bot.flood.FloodGuard: FLOOD_MESSAGES per FLOOD_WINDOW per account
    features: tuple = ()          # bot.features.Feature: their jobs, HTTP routes (the routers are in the registry)
    channel_specs: tuple = ()     # bot.features.ChannelSpec: the channels this application may add

    def __post_init__(self) -> None:
        if self.flood is None:
            from bot.flood import FloodGuard

            self.flood = FloodGuard.from_settings(self.settings)

    @property
    def registry(self) -> Registry:
        return self.engine.config.registry

    def jobs(self) -> list:
        """The factories of the scheduler's jobs: every feature's, and those of the channels added."""
        return [factory for part in (*self.features, *self.channel_specs) for factory in part.jobs]

    async def accept(self, msg: Inbound) -> int:
        """Persist a message before answering its webhook; handle it with handle(msg, inbox_id)."""
        from storage import inbox

        def run() -> int:
            with transaction(self.db) as db:
                return inbox.persist(db, msg)

        return await asyncio.to_thread(run)

    async def handle(self, msg: Inbound, inbox_id: int | None = None) -> Handled:
        """Run a conversation step off the event loop, then send its replies directly.

        A flood from one account is throttled first (bot/flood.py: not processed, one notice).
        On a channel that declares `numbers_answer_proactive`, a typed number right after a
        proactive message with choices becomes the choice it picks (conversations/proactive.py).
        An attachment is downloaded only when the resident's state takes it (Engine.wants_attachment:
        a photo at a yes/no question or in the menu is never fetched), then judged, cleaned and
        stored in MEDIA_DIR (storage.media.keep), outside the database transaction; Media.ref
        becomes the stored path, or "" with Media.refused saying why, for the step to tell."""
        verdict = self.flood.admit(msg.channel, msg.address, msg.external_id)
        if verdict != "pass":
            from bot.flood import throttled

            return Handled(await throttled(self, msg, verdict, inbox_id))
        channel = self.channels.get(msg.channel)
        if msg.kind == Kind.TEXT and channel is not None and channel.numbers_answer_proactive:
            await asyncio.to_thread(self._answer_by_number, msg)
        if msg.media:
            await self._fetch_media(msg)
        handled = await asyncio.to_thread(self.engine.handle, msg, inbox_id)
        if handled.erased is not None:  # what this process holds about them in memory goes too
            for channel, address in handled.erased.addresses:
                self.flood.forget(channel, address)
        sender = self.senders.get(msg.channel)
        if handled.replies and sender is not None:
            await send_replies(self.db, sender, handled.replies, msg.address)
        return handled

    def _answer_by_number(self, msg: Inbound) -> None:
        with transaction(self.db) as db:
            answer_by_number(db, msg, self.registry.global_choices)

    async def _fetch_media(self, msg: Inbound) -> None:
        """The one way a resident's file reaches MEDIA_DIR, whatever the channel. Only the first
        attachment is fetched (a step uses no other); the rest are dropped unfetched."""
        from storage import media as media_store

        media = msg.media[0]
        msg.media = [media]
        if media.stored or media.refused:
            return  # the step is being run again (the database was busy): fetched already
        refused = ""
        # A database error here propagates: the channel runs the whole message again.
        wanted = await asyncio.to_thread(self.engine.wants_attachment, msg)
        try:
            if not wanted:
                refused = media_store.NOT_WANTED
            elif msg.channel not in self.media_fetchers:
                refused = media_store.UNAVAILABLE  # never a channel's own reference in place of a file
            else:
                data = await self.media_fetchers[msg.channel](media)
                stored = await asyncio.to_thread(media_store.keep, msg.kind, data, self.settings.media_dir,
                                                 media_store.Limits.from_settings(self.settings))
        except media_store.MediaRefused as exc:
            refused = exc.reason
            log.info("%s from %s not kept: %s", msg.kind, msg.channel, exc)
        except Exception as exc:  # noqa: BLE001  (gone, network, the channel's API): the step says so
            refused = media_store.UNAVAILABLE
            log.warning("%s from %s not downloaded: %s: %s", msg.kind, msg.channel, type(exc).__name__, exc)
        if refused:
            media.ref, media.size, media.refused = "", None, refused
        else:
            media.ref, media.size, media.content_type = str(stored.path), stored.size, stored.content_type
            media.stored = True

    def add_channel(self, channel: Channel) -> None:
        from bot.pacing import paced  # direct replies count toward the channel's shared pace

        self.channels[channel.name] = channel
        self.senders[channel.name] = paced(self, channel.sender)


def reader_locale(environ: dict[str, str] | None = None) -> str:
    """The language of the person at this terminal, for what `katilim` itself prints before any
    resident has chosen one (no channel configured, the chat's greeting): the system locale
    (LC_ALL, LC_MESSAGES, LANG) when it is one of ours, else English, the README's."""
    environ = os.environ if environ is None else environ
    for name in ("LC_ALL", "LC_MESSAGES", "LANG"):
        value = environ.get(name, "")
        if value:
            lang = value.split(".")[0].split("_")[0].lower()
            return lang if lang in LANGUAGES else "en"
    return "en"


def make_worker_id(role: str = "run") -> str:
    return f"{socket.gethostname()[:40]}:{os.getpid()}:{role}"


def open_db(settings: Settings, *, migrate: bool = True) -> DbEngine:
    """The database as the settings describe it, with every migration applied. A database that
    cannot be reached or opened stops start-up with one line naming DATABASE_URL (its password
    masked) and the reason: StartupError."""
    try:
        db = make_engine(settings.database_url, sqlite_synchronous=settings.sqlite_synchronous)
        with db.connect():
            pass
        if migrate:
            upgrade(db)
    except (OperationalError, ArgumentError, NoSuchModuleError) as exc:
        raise StartupError(database_problem(settings.database_url, exc)) from None
    return db


def masked_url(url: str) -> str:
    """A database URL fit to print: the password replaced by ***."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return url.split("@", 1)[-1] if "@" in url else url


def database_problem(url: str, exc: Exception) -> str:
    """One line: DATABASE_URL (masked), then what the driver said (without the password)."""
    reason = " ".join(str(getattr(exc, "orig", None) or exc).split())
    try:
        parsed = make_url(url)
    except ArgumentError:
        parsed = None
    if parsed is not None and parsed.password:
        reason = reason.replace(str(parsed.password), "***")
    if parsed is not None and parsed.get_backend_name() == "sqlite" and parsed.database not in (None, "", ":memory:"):
        folder = Path(parsed.database).expanduser().resolve().parent
        if not folder.is_dir():
            reason = f"{reason} (the directory {folder} does not exist)"
    return f"DATABASE_URL={masked_url(url)}: cannot open the database: {reason}"


def build_app(settings: Settings, *, features: tuple | None = None, channels: tuple | None = None,
              strict_targets: bool = False, role: str = "run", migrate: bool = True) -> App:
    """The application of these features and channels (default: bot/features.py's FEATURES and
    CHANNELS). Routers that do not fit together (a duplicate, a misspelt state) stop start-up
    with one line: StartupError. `strict_targets`: a state entered by an unknown name from a
    conversation's data is an error instead of the menu (the tests)."""
    from bot import features as wiring  # it lists the CLI's modules, which import this one

    features = wiring.FEATURES if features is None else features
    channels = wiring.CHANNELS if channels is None else channels
    try:
        registry = wiring.build_registry(features)
    except RegistryError as exc:
        raise StartupError(f"the features do not fit together: {exc}") from None
    catalog = load_catalog(settings.katilim_catalog)
    db = open_db(settings, migrate=migrate)
    worker_id = make_worker_id(role)
    config = EngineConfig(catalog=catalog, registry=registry,
                          timezone=catalog.municipality.timezone or settings.timezone,
                          default_locale=settings.default_locale, session_expiry=settings.session_expiry,
                          max_text_length=settings.max_text_length, notice_version=settings.privacy_notice_version,
                          settings=settings, strict_targets=strict_targets)
    try:
        settings.media_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StartupError(f"MEDIA_DIR={settings.media_dir}: cannot be created: {exc.strerror}") from None
    return App(settings=settings, catalog=catalog, db=db, engine=Engine(db, config, worker_id), worker_id=worker_id,
               features=tuple(features), channel_specs=tuple(channels))


def add_configured_channels(app: App) -> None:
    """Every channel whose settings are present (bot/features.py's CHANNELS, in order)."""
    for spec in app.channel_specs:
        spec.add(app)


async def run_forever(app: App, *, http: bool = True, scheduler: bool = True, channels: bool = True,
                      until: Callable[[], Awaitable[Any]] | None = None) -> None:
    """`katilim run`: channels, the HTTP server and the scheduler, until SIGINT/SIGTERM, or until
    `until()` returns (`make run`: the terminal chat, run beside them in the same process)."""
    from bot.http import serve_http
    from bot.scheduler import start_scheduler

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(sig, stop.set)
        except (NotImplementedError, RuntimeError):
            pass
    started: list[Channel] = []
    server = sched = None
    try:
        if channels:
            for channel in app.channels.values():
                await channel.start()
                started.append(channel)
                log.info("channel %s started", channel.name)
        if http:
            try:
                server = await serve_http(app)
            except (OSError, RuntimeError, StartupError) as exc:
                if until is None:
                    raise
                # the port is taken: the terminal chat still runs, without the staff console
                print(t_in(reader_locale(), "console.http_off", host=app.settings.http_host,
                           port=app.settings.http_port, reason=str(exc)), file=sys.stderr)
        if scheduler:
            sched = start_scheduler(app)
        log.info("katilim running (worker %s)", app.worker_id)
        stopped = asyncio.create_task(stop.wait())
        waits = {stopped} | ({asyncio.create_task(until())} if until is not None else set())
        done, pending = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        for task in done:
            task.result()
    finally:
        log.info("stopping")
        if sched is not None:
            from bot.scheduler import stop_jobs

            await stop_jobs(app, sched)  # the scans under way finish first (a cancelled one logs an error)
        for channel in reversed(started):
            try:
                await channel.stop()
            except Exception:
                log.exception("channel %s did not stop cleanly", channel.name)
        if server is not None:
            server.should_exit = True
            await server.wait_closed() if hasattr(server, "wait_closed") else None
        app.db.dispose()
        log.info("stopped")
