"""The outbox dispatcher: every proactive message (notifications, reminders, broadcasts, and
conversation replies whose direct send failed) leaves through here, paced under the platform's
limit, and survives a crash without loss.

How it works
- One loop per channel that has a sender in this process (rows of other channels are never
  touched). It claims due rows (`storage.outbox.claim`: leases, FOR UPDATE SKIP LOCKED on
  PostgreSQL) and, in the same short transaction, reserves one send slot per row from the
  channel's shared pace: GCRA on `ChannelRate` (`storage.outbox.reserve_slots`, one atomic
  UPDATE ... RETURNING: start = max(tat, now), tat = start + k/rate). Slot i goes out at
  start + i/rate, so any number of workers together stay under the limit. Telegram is paced at
  29.25/s for its 30/s and WhatsApp at 97.5% of TWILIO_MESSAGES_PER_SECOND (2.5% headroom: a
  server counting 30 per sliding second sees no 429); the terminal is unlimited.
- A send more than a quarter interval late for its slot (LATE_TOLERANCE: a busy machine) goes back
  to pending for a fresh slot. Sends still bunch: a send can reach the socket tens of ms after its
  start (PTB, the connection pool, a busy event loop), and a batch's slots are mapped to this
  process's clock when the reservation returns, up to tens of ms late under load. So a guard
  (`StartWindow`, shared with the direct replies) keeps the times of this process's last `limit`
  requests: one waits until the request `limit` before it went at least START_SPAN (1.0205 s)
  ago. It is taken on the wire, right before the request's body goes out, when the sender's HTTP
  client supports it (`send_paced`, bot.delivery.send_gate: the Telegram channel's Bot; each part
  of a message in several parts takes its place), else just before `send`. The pace spaces
  `limit` slots 1.0256 s apart, so the guard holds back only bunched requests, by a few ms, and
  never lowers the rate. It is per process: several workers rely on the shared pace.
- Per-chat pacing (TELEGRAM_PER_CHAT_PER_SECOND with a burst of TELEGRAM_PER_CHAT_BURST) is a token
  bucket per chat in this process: a row whose chat is out of tokens goes back to pending until
  one is free, without counting as an attempt. Several workers do not share it (a chat rarely has
  rows in two workers at once; if Telegram does answer 429, the rule below applies).
- A sliding window of at most OUTBOX_BATCH_SIZE rows per channel is claimed and not yet confirmed:
  those are the only messages a crash can send twice. Outcomes are written in small groups
  (a few per transaction) as sends finish; a restarted or other dispatcher takes over expired leases.
- Errors (bot.delivery.SendError kinds): "retry_after" pauses the channel for every worker
  (ChannelRate.paused_until) and puts the row back without counting it; "transient" retries with
  exponential backoff and jitter up to OUTBOX_BACKOFF_CAP, failed after OUTBOX_MAX_ATTEMPTS (the
  chat's later rows wait for the retry: a resident never reads a chat's messages out of order);
  "permanent" fails the row; "blocked" marks the resident's identity unreachable and cancels its
  other waiting rows (nothing more goes to it until the resident writes again); "window" marks
  the row unsendable.
- Conversation replies go out directly (bot.delivery.send_replies) through `PacedSender`, which
  reserves one slot of the same GCRA before each reply (one UPDATE; no wait while the channel is
  idle, at most one batch's worth while a broadcast runs) and shares the per-chat buckets; a 429
  on the direct path pauses the channel for the dispatcher too.
- The clock can move (an administrator or NTP steps it): waits in this process are measured on
  the monotonic clock (slots are mapped to it when reserved, the guard and the chat buckets use
  it), and what is stored on the wall clock is clamped when read: a pace (tat) further ahead than
  `Pacing.horizon` (half a lease plus one batch: no slot further ahead is ever used) is reset to
  now, a pause never lasts longer than the retry_after it was asked for (MAX_PAUSE, an hour, at
  most), a pending row created after now (queued before the step) is due now, and the scheduler brings
  back jobs planned further ahead than their interval (bot/scheduler.py). So a step back of an
  hour holds no reply back (it used to hold them an hour and leave the pace 19 minutes ahead).
- Workers record themselves in WorkerHeartbeat and beat every few seconds. SQLite allows one
  dispatcher: a second one (another `katilim run` or `katilim worker` on the same file while the
  first one's heartbeat is fresh) says so and does not dispatch; the only dispatcher starting on
  SQLite gives back the 'sending' rows of dead workers at once instead of waiting for leases.

Runs inside `katilim run` as the scheduler job "outbox" and alone in `katilim worker` (bot/cli_worker.py).
"""
from __future__ import annotations

import asyncio
import collections
import logging
import os
import random
import socket
import threading
import time
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from sqlalchemy.engine import Engine as DbEngine

from bot.delivery import SendError, Sender, send_gate
from bot.idle import IdleMap
from bot.scheduler import Job
from conversations.messages import Outbound
from storage import outbox
from storage.db import is_sqlite, transaction, utcnow

log = logging.getLogger(__name__)

HEARTBEAT_INTERVAL = 3.0                  # seconds between two heartbeats
HEARTBEAT_STALE = timedelta(seconds=15)   # a worker whose heartbeat is older is considered gone
BACKOFF_BASE = 1.0                        # first retry after a transient error: 0.5-1 s, then doubling
SETTLE_AFTER = 0.2                        # a finished send waits at most this long to be recorded
STOP_GRACE = 10.0                         # a stopping dispatcher waits this long for sends on the wire
LATE_TOLERANCE = 0.25                     # a send more than this share of the interval past its slot waits for a new one
SQLITE_SINGLE = ("SQLite allows a single outbox dispatcher and another one is running ({others}); this "
                 "process will not dispatch. Use PostgreSQL (DATABASE_URL=postgresql+psycopg://...) to run "
                 "several dispatchers (katilim run / katilim worker).")


class DispatcherRefused(RuntimeError):
    """Another dispatcher is live on the same SQLite database."""


# ---------------------------------------------------------------- limits and pacing
PACE_SHARE = 0.975  # of the platform's limit: 30/s → 29.25/s, 10/s → 9.75/s
# The guard (StartWindow): this process's request n goes no sooner than this after request
# n - limit. The pace spaces them 1/PACE_SHARE = 1.0256 s apart, so only bunched requests wait (a
# few ms) and the rate stays the pace's.
START_SPAN = 1.0 + 0.8 * (1 / PACE_SHARE - 1)  # 1.0205 s


def paced_rate(limit: float) -> float:
    """A little under the platform's limit, so no sliding second ever holds more than the limit:
    `limit` consecutive slots span 1/PACE_SHARE = 1.0256 s. Sends leave at most a quarter interval
    after their slot (LATE_TOLERANCE) and, in one process, `limit` requests never go on the wire
    within START_SPAN (the StartWindow guard), which leaves some 20 ms for the way from our socket
    to the platform's clock."""
    return limit * PACE_SHARE


@dataclass
class ChannelLimits:
    rate: float | None = None            # messages per second for the whole channel, all workers together
    per_chat_rate: float | None = None   # per chat, in this process
    per_chat_burst: int = 1
    per_second: int = 0                  # the platform's own count per sliding second (0: none)


def _platform_limits(limit: float, **per_chat) -> ChannelLimits:
    return ChannelLimits(paced_rate(limit), per_second=int(limit), **per_chat)


def channel_limits(settings, channel: str) -> ChannelLimits:
    if channel == "telegram":
        return _platform_limits(settings.telegram_messages_per_second,
                                per_chat_rate=settings.telegram_per_chat_per_second,
                                per_chat_burst=settings.telegram_per_chat_burst)
    if channel == "whatsapp":
        return _platform_limits(settings.twilio_messages_per_second)
    return ChannelLimits()  # console and anything local: unlimited


class StartWindow:
    """The times of this process's last `count` sends (requests) on a channel: one goes no sooner
    than `span` seconds after the one `count` before it. Slots keep the pace; this guard takes care
    of sends that went late (a busy event loop, a slot mapped late from the database's clock) and
    so bunched with the next ones, which a platform counting per sliding second answers with a
    429. Thread-safe; the wait is asyncio."""

    def __init__(self, count: int, span: float = START_SPAN) -> None:
        self.count = count
        self.span = span
        self._starts: collections.deque[float] = collections.deque(maxlen=count)
        self._lock = threading.Lock()

    async def turn(self) -> float:
        """Wait for a free place in the window and take it; returns the seconds waited."""
        began = time.monotonic()
        while True:
            with self._lock:
                now = time.monotonic()
                free_at = self._starts[0] + self.span if len(self._starts) == self.count else now
                if free_at <= now:
                    self._starts.append(now)
                    return now - began
            await asyncio.sleep(free_at - now)


async def send_paced(sender: Sender, starts: StartWindow | None, address: str, out: Outbound, kind: str) -> str:
    """`sender.send` with a place in the guard: taken by each request just before it goes on the
    wire when the sender's HTTP client can wait there (`gates_on_wire`: it awaits
    bot.delivery.send_gate), else now. The wire is what the platform counts: between the call and
    the socket, PTB, the connection pool and a busy event loop can take tens of ms."""
    if starts is None:
        return await sender.send(address, out, kind=kind)
    if not getattr(sender, "gates_on_wire", False):
        await starts.turn()
        return await sender.send(address, out, kind=kind)
    token = send_gate.set(starts.turn)
    try:
        return await sender.send(address, out, kind=kind)
    finally:
        send_gate.reset(token)


class ChatBuckets:
    """A token bucket per chat (thread-safe: the claim runs in a worker thread). A bucket unused
    for 2 × burst / rate seconds (the longest a refill from -burst to full takes) is dropped: it
    would be full again, so only the chats active lately are in memory (bot/idle.IdleMap)."""

    MAX_CHATS = 50_000

    def __init__(self, rate: float, burst: int) -> None:
        self.rate = rate
        self.burst = float(max(1, burst))
        self._buckets: IdleMap[str, tuple[float, float]] = IdleMap(2 * self.burst / rate, _bucket_last,
                                                                    self.MAX_CHATS)
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._buckets)

    def take(self, address: str, *, force: bool = False) -> float:
        """Take a token: 0.0 when taken, else the seconds until one is free (nothing taken).
        `force` takes one even when none is left (a direct reply: the chat's next rows wait longer)."""
        now = time.monotonic()
        with self._lock:
            tokens, last = self._buckets.get(address) or (self.burst, now)
            tokens = min(self.burst, tokens + (now - last) * self.rate)
            if tokens >= 1.0 or force:
                self._buckets.put(address, (max(tokens - 1.0, -self.burst), now), now)
                return 0.0
            self._buckets.put(address, (tokens, now), now)
            return (1.0 - tokens) / self.rate


def _bucket_last(bucket: tuple[float, float]) -> float:
    return bucket[1]


class Pacing:
    """A channel's limits in this process: the shared GCRA rate, the per-chat buckets and the
    guard on send starts (shared by the dispatcher and the direct replies).

    `horizon`: the furthest ahead of now the shared pace (tat) can be while every slot reserved
    is used: the dispatcher sends no slot more than half a lease ahead, and one reservation adds
    at most a batch. A tat further ahead was left by a clock since set back: reserve_slots resets
    it, so no reply waits for more than this, whatever the clock does."""

    def __init__(self, channel: str, limits: ChannelLimits, settings=None) -> None:
        self.channel = channel
        self.limits = limits
        self.horizon = outbox.PACE_HORIZON
        if settings is not None:
            self.horizon = settings.outbox_lease.total_seconds() / 2
            if limits.rate:
                self.horizon += settings.outbox_batch_size / limits.rate
        self.chats = ChatBuckets(limits.per_chat_rate, limits.per_chat_burst) if limits.per_chat_rate else None
        self.starts = StartWindow(limits.per_second) if limits.per_second > 0 else None


class PacedSender:
    """The direct path for conversation replies: each message reserves one slot of the channel's
    shared pace first (one UPDATE ... RETURNING; no wait while the channel is idle), so replies
    count toward the rate the dispatcher keeps; while the channel is paused by a 429 it answers
    "retry_after" at once (send_replies hands the rows to the dispatcher), and a 429 it receives
    pauses the channel for every worker. The dispatcher unwraps it (`inner`) and paces in batches."""

    def __init__(self, inner: Sender, db: DbEngine, pacing: Pacing) -> None:
        self.inner = inner
        self.channel = inner.channel
        self.db = db
        self.pacing = pacing

    def __getattr__(self, name: str) -> Any:  # the channel's own helpers stay reachable
        return getattr(self.__dict__["inner"], name)

    async def send(self, address: str, out: Outbound, *, kind: str = "reply") -> str:
        rate = self.pacing.limits.rate
        if rate:
            try:
                slot = await asyncio.to_thread(self._reserve, rate)
            except Exception as exc:  # noqa: BLE001  (the database is briefly busy: send anyway)
                log.warning("no pacing slot for a %s reply (%s); sending anyway", self.channel, exc)
                slot = None
            if slot is not None and slot.paused_for > 0:
                raise SendError("retry_after", "the channel is paused after a 429", slot.paused_for)
            if slot is not None and slot.start_in > 0:
                await asyncio.sleep(slot.start_in)
        if self.pacing.chats is not None:
            self.pacing.chats.take(address, force=True)
        try:
            return await send_paced(self.inner, self.pacing.starts, address, out, kind)
        except SendError as exc:
            if exc.kind == "retry_after":
                await asyncio.to_thread(self._pause, exc.retry_after)
            raise

    def _reserve(self, rate: float) -> outbox.Reservation:
        with transaction(self.db) as db:
            return outbox.reserve_slots(db, self.channel, 1, rate, horizon=self.pacing.horizon)

    def _pause(self, seconds: float) -> None:
        try:
            with transaction(self.db) as db:
                outbox.pause_channel(db, self.channel, max(seconds, 0.5))
        except Exception:  # noqa: BLE001
            log.exception("could not record the pause of %s", self.channel)


def paced(app, sender: Sender) -> Sender:
    """The sender App.handle uses for direct replies: paced when the channel has a rate limit."""
    if isinstance(sender, PacedSender):
        return sender
    pacing = Pacing(sender.channel, channel_limits(app.settings, sender.channel), app.settings)
    if pacing.limits.rate is None and pacing.chats is None:
        return sender
    return PacedSender(sender, app.db, pacing)


# ---------------------------------------------------------------- the dispatcher
@dataclass
class _Row:
    id: int
    address: str
    kind: str
    payload: dict
    attempts: int


@dataclass
class _Outcome:
    row: _Row
    kind: str  # sent, skip (back to pending), retry_after, transient, permanent, blocked, window, gone (chat blocked)
    reason: str = ""
    provider_id: str = ""
    retry_after: float = 0.0
    at: float = field(default_factory=time.monotonic)


@dataclass
class _Claimed:
    rows: list[_Row] = field(default_factory=list)
    times: list[float] = field(default_factory=list)   # monotonic send times
    full: bool = False                                 # as many due rows as asked for: more may wait
    paused_for: float = 0.0


def client_ready(client) -> bool:
    """Whether a sender's client (a PTB Bot) is initialised (PTB 22: _bot_initialized)."""
    for flag in ("_bot_initialized", "_initialized"):
        if hasattr(client, flag):
            return bool(getattr(client, flag))
    return True


def _host() -> str:
    return socket.gethostname()[:40]


def _dead_here(worker_id: str) -> bool:
    """A worker of this host (host:pid:role) whose process is gone: dead, whatever its heartbeat says."""
    parts = worker_id.rsplit(":", 2)
    if len(parts) != 3 or parts[0] != _host() or not parts[1].isdigit():
        return False
    pid = int(parts[1])
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


class Dispatcher:
    """Delivers the outbox through `senders` (channel → Sender). `start()` returns False (and logs
    why) when it may not dispatch: another live dispatcher on the same SQLite database."""

    def __init__(self, app_or_db, senders: dict[str, Sender], worker_id: str, settings=None, *,
                 role: str = "run", retry_when_refused: bool = False) -> None:
        if isinstance(app_or_db, DbEngine):
            if settings is None:
                raise TypeError("Dispatcher(db, ...) needs settings")
            self.db = app_or_db
        else:
            self.db = app_or_db.db
            settings = settings or app_or_db.settings
        self.settings = settings
        self.worker_id = worker_id
        self.role = role
        self.retry_when_refused = retry_when_refused
        self.sqlite = is_sqlite(self.db)
        self.runners: dict[str, _ChannelRunner] = {}
        for channel, sender in senders.items():
            inner = getattr(sender, "inner", sender) if isinstance(sender, PacedSender) else sender
            pacing = sender.pacing if isinstance(sender, PacedSender) else \
                Pacing(channel, channel_limits(settings, channel), settings)
            self.runners[channel] = _ChannelRunner(self, channel, inner, pacing)
        self.started = False
        self.dispatching = False
        self.refused = ""
        self.stopping = False
        self._stop = asyncio.Event()
        self._tasks: dict[str, asyncio.Task] = {}
        self._heartbeat: asyncio.Task | None = None

    # -- lifecycle
    async def start(self) -> bool:
        """Record this worker and start dispatching; False when refused (SQLite, another dispatcher)."""
        if self.started:
            return self.dispatching
        self.started = True
        rivals = await asyncio.to_thread(self._register)
        if rivals:
            self.refused = SQLITE_SINGLE.format(others=", ".join(rivals))
            log.error(self.refused)
        else:
            await self._warm_up()
            self._start_runners()
        self._heartbeat = asyncio.create_task(self._heartbeat_loop(), name=f"outbox-heartbeat-{self.worker_id}")
        return self.dispatching

    async def stop(self) -> None:
        """Stop claiming, let sends already on the wire finish (up to STOP_GRACE), record every
        outcome, give back what this worker still holds and remove its heartbeat."""
        if not self.started or self.stopping:
            return
        self.stopping = True
        self._stop.set()
        for runner in self.runners.values():
            runner.wake.set()
        if self._tasks:
            await asyncio.gather(*self._tasks.values(), return_exceptions=True)
        if self._heartbeat is not None:
            self._heartbeat.cancel()
            await asyncio.gather(self._heartbeat, return_exceptions=True)
        try:
            released = await asyncio.to_thread(self._unregister)
            if released:
                log.info("outbox: gave back %d claimed rows at stop", released)
        except Exception:  # noqa: BLE001
            log.exception("outbox: could not give back claimed rows at stop (their leases will run out)")
        if self.dispatching:
            log.info("outbox dispatcher %s stopped", self.worker_id)

    async def wait(self) -> None:
        await self._stop.wait()

    async def _warm_up(self) -> None:
        """Open the senders' connections before the first slot (a Telegram Bot initialises on its
        first call: done during a send, it would make that send late for its slot)."""
        for runner in self.runners.values():
            client = getattr(runner.sender, "bot", None)
            if client is None or client_ready(client):
                continue
            try:
                await asyncio.wait_for(client.initialize(), 15)
            except Exception as exc:  # noqa: BLE001  (the first send will try again and apply the rules)
                log.warning("outbox %s: sender not initialised ahead: %s", runner.channel, exc)

    def _start_runners(self) -> None:
        self.dispatching = True
        for channel, runner in self.runners.items():
            self._tasks[channel] = asyncio.create_task(runner.run(), name=f"outbox-{channel}")
        log.info("outbox dispatcher %s running for %s", self.worker_id, ", ".join(self.runners) or "no channel")

    def _register(self) -> list[str]:
        """Heartbeat row in; on SQLite refuse beside another live dispatcher, else give back the
        'sending' rows of dead workers at once. Returns the live rival dispatchers (refused)."""
        with transaction(self.db) as db:
            others = [w for w in outbox.live_workers(db, HEARTBEAT_STALE)
                      if w.worker_id != self.worker_id and not _dead_here(w.worker_id)]
            rivals = [w.worker_id for w in others if w.dispatching] if self.sqlite and self.runners else []
            outbox.forget_workers_except(db, [w.worker_id for w in others] + [self.worker_id])
            outbox.beat(db, self.worker_id, self.role, dispatching=bool(self.runners) and not rivals)
            if self.sqlite and self.runners and not rivals:
                released = outbox.release_dead_workers(db, self.runners, [w.worker_id for w in others]
                                                       + [self.worker_id])
                if released:
                    log.info("outbox: gave back %d rows claimed by workers that are gone", released)
            return rivals

    def _unregister(self) -> int:
        with transaction(self.db) as db:
            released = outbox.release_worker(db, self.worker_id)
            outbox.forget_worker(db, self.worker_id)
            return released

    def _beat(self) -> None:
        with transaction(self.db) as db:
            outbox.beat(db, self.worker_id, self.role, dispatching=self.dispatching and bool(self.runners))

    async def _heartbeat_loop(self) -> None:
        while not self.stopping:
            try:
                await asyncio.wait_for(self._stop.wait(), HEARTBEAT_INTERVAL)
                return
            except asyncio.TimeoutError:
                pass
            try:
                if not self.dispatching and self.retry_when_refused:
                    if not await asyncio.to_thread(self._register):
                        log.info("outbox: the other dispatcher is gone; this process dispatches now")
                        self.refused = ""
                        await self._warm_up()
                        self._start_runners()
                    continue
                await asyncio.to_thread(self._beat)
                for channel, task in list(self._tasks.items()):
                    if task.done() and not task.cancelled() and not self.stopping:  # a bug: log, start again
                        log.error("outbox loop for %s ended: %r; restarting it", channel, task.exception())
                        self._tasks[channel] = asyncio.create_task(self.runners[channel].run())
                for runner in self.runners.values():
                    runner.report()
            except Exception:  # noqa: BLE001
                log.exception("outbox heartbeat failed")

    # -- retry rules
    def backoff(self, attempts: int) -> float:
        cap = self.settings.outbox_backoff_cap.total_seconds()
        delay = min(cap, BACKOFF_BASE * 2 ** max(0, attempts - 1))
        return delay / 2 + random.uniform(0, delay / 2)


class _ChannelRunner:
    """The loop of one channel in one worker."""

    def __init__(self, dispatcher: Dispatcher, channel: str, sender: Sender, pacing: Pacing) -> None:
        self.d = dispatcher
        self.channel = channel
        self.sender = sender
        self.pacing = pacing
        self.interval = 1.0 / pacing.limits.rate if pacing.limits.rate else 0.0
        self.unconfirmed = 0                      # claimed rows not yet recorded
        self.outcomes: list[_Outcome] = []
        self.tasks: set[asyncio.Task] = set()
        self.last_by_address: dict[str, asyncio.Task] = {}
        self.blocked: dict[str, tuple[float, str]] = {}  # address → (when, reason), found in this process
        self.paused_until = 0.0                   # monotonic
        self.wake = asyncio.Event()
        self.counts: dict[str, int] = {}

    # -- the loop
    async def run(self) -> None:
        d = self.d
        batch = d.settings.outbox_batch_size
        poll = d.settings.outbox_poll_interval
        while not d.stopping:
            self.wake.clear()
            wait = poll
            try:
                await self._settle(force=False)
                paused = self.paused_until - time.monotonic()
                room = batch - self.unconfirmed
                if paused > 0:
                    wait = paused
                elif room >= max(1, (batch + 1) // 2):
                    claimed = await asyncio.to_thread(self._claim, room)
                    if claimed.paused_for > 0:
                        self._pause_locally(claimed.paused_for)
                    self._schedule(claimed)
                    if claimed.full and claimed.paused_for <= 0:
                        continue
                elif self.tasks:
                    wait = SETTLE_AFTER
            except Exception:  # noqa: BLE001  (database briefly unavailable...): try again soon
                log.exception("outbox %s: round failed", self.channel)
                wait = max(poll, 1.0)
            try:
                await asyncio.wait_for(self.wake.wait(), wait)
            except asyncio.TimeoutError:
                pass
        await self._drain()

    async def _drain(self) -> None:
        if self.tasks:
            done, pending = await asyncio.wait(set(self.tasks), timeout=STOP_GRACE)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending, timeout=2)
        for attempt in range(3):
            try:
                await self._settle(force=True)
                return
            except Exception:  # noqa: BLE001
                log.exception("outbox %s: could not record outcomes at stop", self.channel)
                await asyncio.sleep(0.5)

    def _pause_locally(self, seconds: float) -> None:
        self.paused_until = max(self.paused_until, time.monotonic() + seconds)

    # -- claiming (in a worker thread)
    def _claim(self, room: int) -> _Claimed:
        d = self.d
        limits = self.pacing.limits
        result = _Claimed()
        with transaction(d.db) as db:
            if limits.rate:
                result.paused_for = outbox.channel_paused_for(db, self.channel)
                if result.paused_for > 0:
                    return result
            claimed = outbox.claim(db, d.worker_id, self.channel, room, d.settings.outbox_lease)
            if not claimed:
                return result
            result.full = len(claimed) == room
            rows = [_Row(r.id, r.address, r.kind, dict(r.payload or {}), r.attempts) for r in claimed]
            too_many = [r.id for r in rows if r.attempts > d.settings.outbox_max_attempts]
            if too_many:  # claimed again and again: its worker kept dying while sending it
                outbox.finish(db, too_many, "failed", f"gave up after {d.settings.outbox_max_attempts} attempts "
                                                      "(the worker stopped while sending)", worker_id=d.worker_id)
            rows = [r for r in rows if r.id not in set(too_many)]
            gone = outbox.unreachable_addresses(db, self.channel, [r.address for r in rows])
            gone |= self._blocked_now()
            if gone:
                outbox.finish(db, [r.id for r in rows if r.address in gone], "unsendable",
                              "blocked: the resident cannot be reached on this channel", worker_id=d.worker_id)
                rows = [r for r in rows if r.address not in gone]
            if self.pacing.chats is not None:
                ready = []
                now = utcnow()
                for r in rows:
                    wait = self.pacing.chats.take(r.address)
                    if wait > 0:
                        outbox.defer(db, [r.id], until=now + timedelta(seconds=wait), worker_id=d.worker_id)
                    else:
                        ready.append(r)
                rows = ready
            if rows and limits.rate:
                slots = outbox.reserve_slots(db, self.channel, len(rows), limits.rate, horizon=self.pacing.horizon)
                base = time.monotonic()
                if slots.paused_for > 0:
                    outbox.defer(db, [r.id for r in rows], worker_id=d.worker_id)
                    result.paused_for = slots.paused_for
                    return result
                result.times = [base + slots.at(i) for i in range(len(rows))]
            else:
                result.times = [0.0] * len(rows)
            result.rows = rows
        return result

    def _is_blocked(self, address: str) -> bool:
        """A 403 from this chat in this process lately (older ones: the database decides)."""
        entry = self.blocked.get(address)
        if entry is None:
            return False
        if time.monotonic() - entry[0] > self.d.settings.outbox_lease.total_seconds():
            self.blocked.pop(address, None)
            return False
        return True

    def _blocked_now(self) -> set[str]:
        """The same, read from the claim's thread (a snapshot, nothing changed)."""
        horizon = time.monotonic() - self.d.settings.outbox_lease.total_seconds()
        return {a for a, (when, _) in list(self.blocked.items()) if when >= horizon}

    # -- sending
    def _schedule(self, claimed: _Claimed) -> None:
        for row, at in zip(claimed.rows, claimed.times):
            previous = self.last_by_address.get(row.address)
            task = asyncio.create_task(self._deliver(row, at, previous))
            self.tasks.add(task)
            self.last_by_address[row.address] = task
            task.add_done_callback(lambda t, a=row.address: self._forget(t, a))
        self.unconfirmed += len(claimed.rows)

    def _forget(self, task: asyncio.Task, address: str) -> None:
        self.tasks.discard(task)
        if self.last_by_address.get(address) is task:
            del self.last_by_address[address]

    async def _deliver(self, row: _Row, at: float, previous: asyncio.Task | None) -> str:
        try:
            if previous is not None:  # one chat's messages stay in order
                if not previous.done():
                    await asyncio.wait([previous])
                if not previous.cancelled() and previous.result() in ("skip", "retry_after", "transient"):
                    outcome = _Outcome(row, "skip", "an earlier message to this chat is not out yet")
                else:
                    outcome = await self._send_at(row, at)
            else:
                outcome = await self._send_at(row, at)
        except asyncio.CancelledError:
            outcome = _Outcome(row, "skip", "stopped")
        except Exception as exc:  # noqa: BLE001
            log.exception("outbox %s: sending row %s failed unexpectedly", self.channel, row.id)
            outcome = _Outcome(row, "transient", f"{type(exc).__name__}: {exc}")
        self.outcomes.append(outcome)
        self.wake.set()
        return outcome.kind

    async def _send_at(self, row: _Row, at: float) -> _Outcome:
        lease = self.d.settings.outbox_lease.total_seconds()
        if at - time.monotonic() > lease / 2:  # never hold a claim near its lease's end
            return _Outcome(row, "skip", "its send slot is too far ahead")
        while True:
            now = time.monotonic()
            if self.d.stopping:
                return _Outcome(row, "skip", "stopping")
            if self.paused_until > now:  # a 429: back to pending, claimed again after the pause
                return _Outcome(row, "skip", "the channel is paused")
            wait = at - now
            if wait <= 0:
                break
            try:
                await asyncio.wait_for(self.d._stop.wait(), wait)
            except asyncio.TimeoutError:
                pass
        if self.interval and now - at > self.interval * LATE_TOLERANCE:
            # Woken too late (a busy machine, a slow first connection): sent now it would bunch
            # with the slots after it, so it goes back to pending and takes a fresh slot. Every
            # send starts within a quarter interval of its slot: at 29.25/s no second holds 31
            # (a send slowed down after its start bunches too: the guard in send_paced sees to it).
            return _Outcome(row, "skip", "late for its send slot")
        if self._is_blocked(row.address):  # an earlier message to this chat answered 403
            return _Outcome(row, "gone", self.blocked[row.address][1])
        try:
            out = Outbound.from_dict(row.payload)
        except Exception as exc:  # noqa: BLE001
            return _Outcome(row, "permanent", f"unreadable payload: {type(exc).__name__}: {exc}")
        timeout = lease * 0.8  # an answer must come before the claim's lease runs out
        try:  # the guard's few ms come after the lateness rule: a send held there bunches with nothing
            provider_id = await asyncio.wait_for(send_paced(self.sender, self.pacing.starts, row.address, out,
                                                            row.kind), timeout)
        except SendError as exc:
            if exc.kind == "retry_after":
                self._pause_locally(max(exc.retry_after, 0.5))
                self.wake.set()
            elif exc.kind == "blocked":
                self.blocked[row.address] = (time.monotonic(), exc.reason or "blocked")
            kind = exc.kind if exc.kind in ("retry_after", "transient", "permanent", "blocked", "window") \
                else "transient"
            return _Outcome(row, kind, exc.reason or exc.kind, retry_after=exc.retry_after)
        except asyncio.TimeoutError:
            return _Outcome(row, "transient", f"no answer within {timeout:.0f}s")
        return _Outcome(row, "sent", provider_id=str(provider_id or ""))

    # -- recording outcomes
    async def _settle(self, *, force: bool) -> None:
        if not self.outcomes:
            return
        half = max(1, self.d.settings.outbox_batch_size // 2)
        due = (force or not self.tasks or len(self.outcomes) >= half
               or time.monotonic() - self.outcomes[0].at >= SETTLE_AFTER
               or any(o.kind in ("retry_after", "blocked") for o in self.outcomes))
        if not due:
            return
        outcomes, self.outcomes = self.outcomes, []
        try:
            paused_for = await asyncio.to_thread(self._record, outcomes)
        except BaseException:
            self.outcomes = outcomes + self.outcomes  # kept (and still counted unconfirmed): tried again
            raise
        self.unconfirmed -= len(outcomes)
        for o in outcomes:
            self.counts[o.kind] = self.counts.get(o.kind, 0) + 1
        if paused_for > 0:
            self._pause_locally(paused_for)

    def _record(self, outcomes: list[_Outcome]) -> float:
        d = self.d
        me = d.worker_id
        now = utcnow()
        with transaction(d.db) as db:
            sent = [o for o in outcomes if o.kind == "sent"]
            if sent:
                outbox.mark_sent(db, [o.row.id for o in sent], [o.provider_id for o in sent],
                                 forget=[o.row.id for o in sent if "forget" in o.row.payload])
            skipped = [o.row.id for o in outcomes if o.kind in ("skip", "retry_after")]
            outbox.defer(db, skipped, worker_id=me)
            pause = max((o.retry_after for o in outcomes if o.kind == "retry_after"), default=0.0)
            if any(o.kind == "retry_after" for o in outcomes):
                outbox.pause_channel(db, self.channel, max(pause, 0.5))
                log.warning("outbox %s: rate limited (429); every worker pauses %.1fs", self.channel, pause)
            for o in outcomes:
                reason = f"{o.kind}: {o.reason}"
                if o.kind == "transient":
                    if o.row.attempts >= d.settings.outbox_max_attempts:
                        outbox.finish(db, [o.row.id], "failed",
                                      f"gave up after {o.row.attempts} attempts: {o.reason}", worker_id=me)
                    else:
                        delay = d.backoff(o.row.attempts)
                        outbox.retry_later(db, o.row.id, now + timedelta(seconds=delay), reason, worker_id=me)
                        # the chat's later rows wait for it: a resident never reads them out of order
                        outbox.hold_back_after(db, o.row.id, self.channel, o.row.address,
                                               now + timedelta(seconds=delay))
                elif o.kind == "permanent":
                    outbox.finish(db, [o.row.id], "failed", reason, worker_id=me)
                elif o.kind == "window":
                    outbox.finish(db, [o.row.id], "unsendable", reason, worker_id=me)
                elif o.kind in ("blocked", "gone"):
                    outbox.finish(db, [o.row.id], "unsendable", f"blocked: {o.reason}", worker_id=me)
            for address in {o.row.address for o in outcomes if o.kind == "blocked"}:
                why = next(o.reason for o in outcomes if o.kind == "blocked" and o.row.address == address)
                cancelled = outbox.mark_unreachable(db, self.channel, address, why)
                row = next(o.row.id for o in outcomes if o.kind == "blocked" and o.row.address == address)
                log.info("outbox %s: the recipient of row %s blocked the bot (%s); marked unreachable, "
                         "%d waiting rows cancelled", self.channel, row, why, cancelled)
            return outbox.channel_paused_for(db, self.channel) if self.pacing.limits.rate else 0.0

    def report(self) -> None:
        if self.counts:
            counts, self.counts = self.counts, {}
            log.info("outbox %s: %s", self.channel, ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))


# ---------------------------------------------------------------- the scheduler job (katilim run)
def outbox_job(app) -> Job:
    """`katilim run`: the dispatcher runs beside the channels; on SQLite, when another dispatcher
    is live, this process handles conversations only and takes over when the other one is gone."""
    dispatcher = Dispatcher(app, dict(app.senders), app.worker_id, app.settings, role="run",
                            retry_when_refused=True)

    async def run() -> None:
        if not dispatcher.started:
            await dispatcher.start()

    return Job("outbox", HEARTBEAT_INTERVAL, run, dispatcher.stop)
