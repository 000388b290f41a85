"""Pacing: every message a channel sends (the dispatcher's and the direct conversation replies)
stays under the platform's limits, which each sender declares (`Sender.limits(settings)`:
handlers.delivery.ChannelLimits).

- The shared pace: GCRA on `ChannelRate` (`storage.outbox.reserve_slots`, one atomic UPDATE ...
  RETURNING: start = max(tat, now), tat = start + k/rate). Slot i goes out at start + i/rate, so
  any number of workers together stay under the limit. The pace is 97.5% of the platform's limit
  (PACE_SHARE: 30/s → 29.25/s, 10/s → 9.75/s; the 2.5% headroom means a server counting 30 per
  sliding second sees no 429); a channel without a limit (the terminal) is not paced.
- A send more than a quarter interval late for its slot (LATE_TOLERANCE: a busy machine) goes back
  to pending for a fresh slot (bot/dispatcher.py).
- The guard on send starts (`StartWindow`, shared by the dispatcher and the direct replies): sends
  still bunch (a send can reach the socket tens of ms after its start: PTB, the connection pool, a
  busy event loop; a batch's slots are mapped to this process's clock when the reservation
  returns, up to tens of ms late under load), so the guard keeps the times of this process's last
  `limit` requests: one waits until the request `limit` before it went at least START_SPAN
  (1.0205 s) ago. It is taken on the wire, right before the request's body goes out, when the
  sender's HTTP client supports it (`gates_on_wire`: it awaits handlers.delivery.send_gate; the
  Telegram channel's Bot, where each part of a message in several parts takes its place), else
  just before `send`. The pace spaces `limit` slots 1.0256 s apart, so the guard holds back only
  bunched requests, by a few ms, and never lowers the rate. It is per process: several workers
  rely on the shared pace.
- Per-chat pacing (the platform's per-chat limit with its burst: Telegram's 1/s, burst 3) is a
  token bucket per chat in this process (`ChatBuckets`): a row whose chat is out of tokens goes
  back to pending until one is free, without counting as an attempt. Several workers do not share
  it (a chat rarely has rows in two workers at once; if Telegram does answer 429, the channel
  pauses).
- Conversation replies go out directly (handlers.delivery.send_replies) through `PacedSender`, which
  reserves one slot of the same GCRA before each reply (one UPDATE; no wait while the channel is
  idle, at most one batch's worth while a broadcast runs) and shares the per-chat buckets; a 429
  on the direct path pauses the channel for the dispatcher too.
- The clock can move (an administrator or NTP steps it): waits in this process are measured on
  the monotonic clock (slots are mapped to it when reserved, the guard and the chat buckets use
  it), and what is stored on the wall clock is clamped when read: a pace (tat) further ahead than
  `Pacing.horizon` (half a lease plus one batch: no slot further ahead is ever used) is reset to
  now, a pause never lasts longer than the retry_after it was asked for (storage.outbox.MAX_PAUSE,
  an hour, at most). So a step back of an hour holds no reply back.
"""
from __future__ import annotations

import asyncio
import collections
import logging
import threading
import time
from typing import Any

from sqlalchemy.engine import Engine as DbEngine

from bot.idle import IdleMap
from conversations.messages import Outbound
from handlers.delivery import ChannelLimits, Sender, SendError, SendFailure, send_gate
from storage import outbox
from storage.db import transaction

log = logging.getLogger(__name__)

PACE_SHARE = 0.975  # of the platform's limit: 30/s → 29.25/s, 10/s → 9.75/s
# The guard (StartWindow): this process's request n goes no sooner than this after request
# n - limit. The pace spaces them 1/PACE_SHARE = 1.0256 s apart, so only bunched requests wait (a
# few ms) and the rate stays the pace's.
START_SPAN = 1.0 + 0.8 * (1 / PACE_SHARE - 1)  # 1.0205 s
LATE_TOLERANCE = 0.25  # a send more than this share of the interval past its slot waits for a new one


def paced_rate(limit: float) -> float:
    """A little under the platform's limit, so no sliding second ever holds more than the limit:
    `limit` consecutive slots span 1/PACE_SHARE = 1.0256 s. Sends leave at most a quarter interval
    after their slot (LATE_TOLERANCE) and, in one process, `limit` requests never go on the wire
    within START_SPAN (the StartWindow guard), which leaves some 20 ms for the way from our socket
    to the platform's clock."""
    return limit * PACE_SHARE


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
    handlers.delivery.send_gate), else now. The wire is what the platform counts: between the call and
    the socket, PTB, the connection pool and a busy event loop can take tens of ms."""
    if starts is None:
        return await sender.send(address, out, kind=kind)
    if not sender.gates_on_wire:
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
    """A channel's limits in this process: the shared GCRA rate (`rate`, messages per second for
    every worker together; None: not paced), the per-chat buckets and the guard on send starts
    (shared by the dispatcher and the direct replies).

    `horizon`: the furthest ahead of now the shared pace (tat) can be while every slot reserved
    is used: the dispatcher sends no slot more than half a lease ahead, and one reservation adds
    at most a batch. A tat further ahead was left by a clock since set back: reserve_slots resets
    it, so no reply waits for more than this, whatever the clock does."""

    def __init__(self, channel: str, limits: ChannelLimits, settings=None) -> None:
        self.channel = channel
        self.limits = limits
        self.rate = paced_rate(limits.per_second) if limits.per_second > 0 else None
        self.horizon = outbox.PACE_HORIZON
        if settings is not None:
            self.horizon = settings.outbox_lease.total_seconds() / 2
            if self.rate:
                self.horizon += settings.outbox_batch_size / self.rate
        self.chats = ChatBuckets(limits.per_chat_per_second, limits.per_chat_burst) \
            if limits.per_chat_per_second > 0 else None
        self.starts = StartWindow(int(limits.per_second)) if int(limits.per_second) > 0 else None

    @classmethod
    def of(cls, sender: Sender, settings) -> Pacing:
        """The pacing a sender's declared limits call for."""
        return cls(sender.channel, sender.limits(settings), settings)


class PacedSender:
    """The direct path for conversation replies: each message reserves one slot of the channel's
    shared pace first (one UPDATE ... RETURNING; no wait while the channel is idle), so replies
    count toward the rate the dispatcher keeps; while the channel is paused by a 429 it answers
    RATE_LIMITED at once (send_replies hands the rows to the dispatcher), and a 429 it receives
    pauses the channel for every worker. The dispatcher unwraps it (`inner`) and paces in batches."""

    def __init__(self, inner: Sender, db: DbEngine, pacing: Pacing) -> None:
        self.inner = inner
        self.channel = inner.channel
        self.db = db
        self.pacing = pacing

    def __getattr__(self, name: str) -> Any:  # the channel's own helpers stay reachable
        return getattr(self.__dict__["inner"], name)

    async def send(self, address: str, out: Outbound, *, kind: str = "reply") -> str:
        rate = self.pacing.rate
        if rate:
            try:
                slot = await asyncio.to_thread(self._reserve, rate)
            except Exception as exc:  # noqa: BLE001  (the database is briefly busy: send anyway)
                log.warning("no pacing slot for a %s reply (%s); sending anyway", self.channel, exc)
                slot = None
            if slot is not None and slot.paused_for > 0:
                raise SendError(SendFailure.RATE_LIMITED, "the channel is paused after a 429", slot.paused_for)
            if slot is not None and slot.start_in > 0:
                await asyncio.sleep(slot.start_in)
        if self.pacing.chats is not None:
            self.pacing.chats.take(address, force=True)
        try:
            return await send_paced(self.inner, self.pacing.starts, address, out, kind)
        except SendError as exc:
            if exc.failure is SendFailure.RATE_LIMITED:
                await asyncio.to_thread(self._pause, exc.retry_after)
            raise

    def _reserve(self, rate: float) -> outbox.Reservation:
        with transaction(self.db) as db:
            return outbox.reserve_slots(db, self.channel, 1, rate, horizon=self.pacing.horizon)

    def _pause(self, seconds: float) -> None:
        try:
            with transaction(self.db) as db:
                outbox.pause_channel(db, self.channel, max(seconds, 0.5))
        except Exception:
            log.exception("could not record the pause of %s", self.channel)


def paced(app, sender: Sender) -> Sender:
    """The sender App.handle uses for direct replies: paced when the channel has a limit."""
    if isinstance(sender, PacedSender):
        return sender
    pacing = Pacing.of(sender, app.settings)
    if pacing.rate is None and pacing.chats is None:
        return sender
    return PacedSender(sender, app.db, pacing)


def unpaced(sender: Sender) -> Sender:
    """The channel's own sender under a PacedSender (the dispatcher paces in batches itself)."""
    return sender.inner if isinstance(sender, PacedSender) else sender
