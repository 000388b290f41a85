"""Flood control on the inbound path: one account (a script, a stuck client) sending many messages
in a few seconds is throttled, the other residents are not affected.

`App.handle` asks `FloodGuard.admit(channel, address)` before anything else (no media download, no
database work for a message that is dropped). Each (channel, address) has a token bucket in this
process: FLOOD_MESSAGES tokens, refilled at FLOOD_MESSAGES per FLOOD_WINDOW. A message without a
token is not processed; the first one in a throttle window gets one polite notice ("flood.slow_down",
in the resident's language) through the outbox like any reply, the next ones in the same window get
nothing; a throttled message that a webhook put in the inbox leaves it (it is not handled later).
A message admitted once (same external id: retried after a database error, delivered again) takes
no second token while its bucket is kept. The terminal (`katilim chat`) is local and never throttled.

The buckets live in memory: several workers each allow FLOOD_MESSAGES per window (one resident's
updates normally reach one worker), and a restart forgets them. A bucket idle for a window is full
again, the same as none: it is dropped (bot/idle.py), so memory follows the accounts active in the
last window, not every resident ever seen; MAX_KEYS caps it.
"""
from __future__ import annotations

import asyncio
import logging
import threading
import time
from dataclasses import dataclass
from datetime import timedelta

from sqlmodel import select

from bot.idle import IdleMap
from conversations.i18n import N_, translator
from conversations.messages import Inbound, Outbound
from storage import outbox
from storage.db import transaction, utcnow
from storage.models import ChannelIdentity, Resident

log = logging.getLogger(__name__)

LOCAL_CHANNELS = frozenset({"console"})  # the operator's own terminal: never throttled
NOTICE_KEY = N_("flood.slow_down")

PASS, NOTICE, DROP = "pass", "notice", "drop"


SEEN = 16  # admitted external ids remembered per account


@dataclass(slots=True)
class _Bucket:
    tokens: float
    last: float
    noticed: float | None = None  # monotonic time of the last notice
    seen: tuple[str, ...] = ()    # the last SEEN admitted external ids


class FloodGuard:
    """A token bucket per (channel, address), kept while the account is active; thread-safe."""

    MAX_KEYS = 50_000

    def __init__(self, messages: int, window: timedelta | float, clock=time.monotonic) -> None:
        seconds = window.total_seconds() if isinstance(window, timedelta) else float(window)
        self.capacity = float(max(1, messages))
        self.window = max(seconds, 0.001)
        self.rate = self.capacity / self.window
        self.clock = clock
        # idle for a window: full again (and any notice a window old), the same as no bucket; a step
        # retried later than that takes a token from a full bucket
        self._buckets: IdleMap[tuple[str, str], _Bucket] = IdleMap(self.window, _last_used, self.MAX_KEYS)
        self._lock = threading.Lock()

    @classmethod
    def from_settings(cls, settings) -> "FloodGuard":
        return cls(settings.flood_messages, settings.flood_window)

    def admit(self, channel: str, address: str, external_id: str = "") -> str:
        """PASS (process it), NOTICE (throttled: tell the resident once) or DROP (throttled, already told).
        A message admitted before (same external id: a step retried after a database error, an update
        delivered again) passes without taking another token."""
        if channel in LOCAL_CHANNELS:
            return PASS
        now = self.clock()
        key = (channel, address)
        with self._lock:
            bucket = self._buckets.get(key) or _Bucket(self.capacity, now)
            self._buckets.put(key, bucket, now)
            if external_id and external_id in bucket.seen:
                return PASS
            bucket.tokens = min(self.capacity, bucket.tokens + (now - bucket.last) * self.rate)
            bucket.last = now
            if bucket.tokens >= 1.0:
                bucket.tokens -= 1.0
                if external_id:
                    bucket.seen = (*bucket.seen[1 - SEEN:], external_id)
                return PASS
            if bucket.noticed is None or now - bucket.noticed >= self.window:
                bucket.noticed = now
                return NOTICE
            return DROP

    def forget(self, channel: str, address: str) -> None:
        """The account's resident erased their data: its bucket goes now, not after a window."""
        with self._lock:
            self._buckets.pop((channel, address))

    def __len__(self) -> int:
        """The number of accounts with a bucket (those active lately)."""
        return len(self._buckets)


def _last_used(bucket: _Bucket) -> float:
    return bucket.last


def _drop(app, msg: Inbound, inbox_id: int | None, notice: bool) -> list[tuple[int, Outbound]]:
    """The message leaves the inbox (a webhook persisted it: it must not be handled later); on a
    notice, the notice as a reply row claimed by this worker (sent at once; the dispatcher retries it)."""
    with transaction(app.db) as db:
        if inbox_id is not None:
            from storage import inbox

            inbox.done(db, inbox_id)
        if not notice:
            return []
        row = db.exec(select(ChannelIdentity, Resident).join(Resident, Resident.id == ChannelIdentity.resident_id)
                      .where(ChannelIdentity.channel == msg.channel, ChannelIdentity.address == msg.address)).first()
        if row is None:  # nothing processed from this account yet: nobody to answer in a known language
            return []
        identity, resident = row
        text = translator(resident.locale or app.settings.default_locale)(NOTICE_KEY)
        return outbox.enqueue_replies(db, identity, [Outbound(text=text)], claimed_by=app.worker_id, now=utcnow())


async def throttled(app, msg: Inbound, verdict: str, inbox_id: int | None = None) -> list[tuple[int, Outbound]]:
    """A throttled message: not processed (and out of the inbox); on NOTICE the resident is told
    once (best effort)."""
    if verdict != NOTICE:
        if inbox_id is not None:
            try:
                await asyncio.to_thread(_drop, app, msg, inbox_id, False)
            except Exception as exc:  # noqa: BLE001  (the inbox job will offer it again, throttled again)
                log.warning("flood message %s not removed from the inbox: %s", msg.external_id, exc)
        return []
    # the account is not looked up here (no database work for a flood): named by its channel only
    log.warning("flood from a %s account: throttled (more than %d messages per %gs)", msg.channel,
                app.settings.flood_messages, app.settings.flood_window.total_seconds())
    try:
        rows = await asyncio.to_thread(_drop, app, msg, inbox_id, True)
    except Exception as exc:  # noqa: BLE001  (the database is busy: the flood is dropped all the same)
        log.warning("flood notice on %s not queued: %s", msg.channel, exc)
        return []
    sender = app.senders.get(msg.channel)
    if rows and sender is not None:
        from handlers.delivery import send_replies

        await send_replies(app.db, sender, rows, msg.address)
    return rows
