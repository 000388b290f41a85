"""What becomes of a claimed outbox row once its send is over: the dispatcher's retry rules.

A send ends as one of `Delivery` (sent; deferred: back to pending without counting an attempt;
gone: its chat answered 403 earlier in this process) or as the SendFailure its sender raised
(handlers.delivery):
- RATE_LIMITED pauses the channel for every worker (ChannelRate.paused_until, retry_after) and
  puts the row back without counting it;
- RETRYABLE retries with exponential backoff and jitter up to OUTBOX_BACKOFF_CAP, failed after
  OUTBOX_MAX_ATTEMPTS; the chat's later rows wait for the retry (a resident never reads a chat's
  messages out of order);
- PERMANENT fails the row with the reason;
- UNREACHABLE marks the resident's identity unreachable and cancels its other waiting rows
  (nothing more goes to it until the resident writes again);
- WINDOW marks the row unsendable.
Outcomes are written in small groups (`record`, one transaction) as sends finish.
"""
from __future__ import annotations

import logging
import random
import time
from dataclasses import dataclass, field
from datetime import timedelta
from enum import Enum

from handlers.delivery import SendFailure
from storage import outbox
from storage.db import transaction, utcnow

log = logging.getLogger(__name__)

BACKOFF_BASE = 1.0  # first retry after a RETRYABLE failure: 0.5-1 s, then doubling


class Delivery(Enum):
    """How a claimed row's turn ended, other than a SendFailure."""

    SENT = "sent"
    DEFERRED = "deferred"  # back to pending, the attempt not counted (paused, stopping, late, a chat's earlier row)
    GONE = "gone"          # its chat answered 403 earlier in this process: unsendable


@dataclass
class Row:
    """A claimed outbox row, as the dispatcher holds it."""

    id: int
    address: str
    kind: str
    payload: dict
    attempts: int


@dataclass
class Outcome:
    row: Row
    kind: Delivery | SendFailure
    reason: str = ""
    provider_id: str = ""
    retry_after: float = 0.0
    at: float = field(default_factory=time.monotonic)


def backoff(attempts: int, cap: timedelta) -> float:
    """Seconds before a row that failed `attempts` times is tried again: doubling from
    BACKOFF_BASE up to `cap`, half of it random (rows failed together do not come back together)."""
    delay = min(cap.total_seconds(), BACKOFF_BASE * 2 ** max(0, attempts - 1))
    return delay / 2 + random.uniform(0, delay / 2)


def record(db_engine, channel: str, worker_id: str, settings, outcomes: list[Outcome], *, paced: bool) -> float:
    """Write the outcomes of a group of sends in one transaction; the seconds the channel is
    paused for now (0 when not paced)."""
    now = utcnow()
    with transaction(db_engine) as db:
        sent = [o for o in outcomes if o.kind is Delivery.SENT]
        if sent:
            outbox.mark_sent(db, [o.row.id for o in sent], [o.provider_id for o in sent],
                             forget=[o.row.id for o in sent if "forget" in o.row.payload])
        deferred = [o.row.id for o in outcomes if o.kind in (Delivery.DEFERRED, SendFailure.RATE_LIMITED)]
        outbox.defer(db, deferred, worker_id=worker_id)
        if any(o.kind is SendFailure.RATE_LIMITED for o in outcomes):
            pause = max(o.retry_after for o in outcomes if o.kind is SendFailure.RATE_LIMITED)
            outbox.pause_channel(db, channel, max(pause, 0.5))
            log.warning("outbox %s: rate limited (429); every worker pauses %.1fs", channel, pause)
        for o in outcomes:
            reason = f"{o.kind.value}: {o.reason}"
            if o.kind is SendFailure.RETRYABLE:
                if o.row.attempts >= settings.outbox_max_attempts:
                    outbox.finish(db, [o.row.id], "failed",
                                  f"gave up after {o.row.attempts} attempts: {o.reason}", worker_id=worker_id)
                else:
                    until = now + timedelta(seconds=backoff(o.row.attempts, settings.outbox_backoff_cap))
                    outbox.retry_later(db, o.row.id, until, reason, worker_id=worker_id)
                    # the chat's later rows wait for it: a resident never reads them out of order
                    outbox.hold_back_after(db, o.row.id, channel, o.row.address, until)
            elif o.kind is SendFailure.PERMANENT:
                outbox.finish(db, [o.row.id], "failed", reason, worker_id=worker_id)
            elif o.kind is SendFailure.WINDOW:
                outbox.finish(db, [o.row.id], "unsendable", reason, worker_id=worker_id)
            elif o.kind in (SendFailure.UNREACHABLE, Delivery.GONE):
                outbox.finish(db, [o.row.id], "unsendable", f"blocked: {o.reason}", worker_id=worker_id)
        unreachable = [o for o in outcomes if o.kind is SendFailure.UNREACHABLE]
        for address in {o.row.address for o in unreachable}:
            first = next(o for o in unreachable if o.row.address == address)
            cancelled = outbox.mark_unreachable(db, channel, address, first.reason)
            log.info("outbox %s: the recipient of row %s blocked the bot (%s); marked unreachable, "
                     "%d waiting rows cancelled", channel, first.row.id, first.reason, cancelled)
        return outbox.channel_paused_for(db, channel) if paced else 0.0
