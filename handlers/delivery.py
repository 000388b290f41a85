"""Delivery: the Sender each channel provides (its limits, the errors it raises as a
SendFailure), and the direct path for conversation replies (the dispatcher in bot/dispatcher.py
delivers everything else)."""
from __future__ import annotations

import asyncio
import contextvars
import logging
from dataclasses import dataclass
from enum import Enum
from typing import Awaitable, Callable, Protocol

from sqlalchemy.engine import Engine as DbEngine

from conversations.messages import Outbound
from storage import outbox
from storage.db import transaction

log = logging.getLogger(__name__)


class SendFailure(Enum):
    """What a failed send means for its message, in the dispatcher's terms (each sender maps its
    platform's answers to one of these: handlers/telegram.py and handlers/whatsapp.py `send_error`)."""

    RETRYABLE = "retryable"        # a timeout, a 5xx, a dropped connection: retried with backoff
    RATE_LIMITED = "rate_limited"  # a 429: the channel pauses for SendError.retry_after, for every worker
    PERMANENT = "permanent"        # a 400-class refusal: the row fails with the reason
    UNREACHABLE = "unreachable"    # the resident blocked us or unsubscribed: unreachable until they write
    WINDOW = "window"              # outside a messaging window, no template: recorded as unsendable


@dataclass
class SendError(Exception):
    """A send that failed: what it means (`failure`), the platform's words (`reason`) and, for
    RATE_LIMITED, the seconds to wait (`retry_after`)."""

    failure: SendFailure
    reason: str = ""
    retry_after: float = 0.0

    def __post_init__(self) -> None:
        if not isinstance(self.failure, SendFailure):
            raise TypeError(f"SendError needs a SendFailure, not {self.failure!r}")

    def __str__(self) -> str:
        return f"{self.failure.value}: {self.reason}"


@dataclass(frozen=True)
class ChannelLimits:
    """What a platform allows a bot, as its sender declares it (`Sender.limits(settings)`); the
    dispatcher paces a little under these (bot/pacing.py). 0: no limit (the terminal)."""

    per_second: float = 0.0            # messages per second on the whole channel, all workers together
    per_chat_per_second: float = 0.0   # messages per second to one chat
    per_chat_burst: int = 1            # ... with a burst of this many


class Sender(Protocol):
    """What a channel gives the dispatcher and the direct replies (bot.app.Channel.sender)."""

    channel: str
    # True when the sender's HTTP client awaits `send_gate` (below) right before each request's
    # body goes on the wire; False: the dispatcher takes the guard's place before calling send.
    gates_on_wire: bool

    def limits(self, settings) -> ChannelLimits:
        """The platform's limits, from the settings (TELEGRAM_MESSAGES_PER_SECOND...)."""
        ...

    async def warm_up(self) -> None:
        """Open connections ahead of the first send (a late first send would miss its slot)."""
        ...

    async def close(self) -> None:
        """Close what the sender opened itself (a process that only dispatches)."""
        ...

    async def send(self, address: str, out: Outbound, *, kind: str = "reply") -> str:
        """Deliver one message; return the provider's message id; raise SendError."""
        ...


# While a paced send runs (bot.pacing.send_paced): the guard on the channel's send starts. A
# sender whose HTTP client awaits it for each request, just before the request's body goes on the
# wire, says so with `gates_on_wire = True`; the others are gated before `send` is called.
send_gate: contextvars.ContextVar[Callable[[], Awaitable[object]] | None] = \
    contextvars.ContextVar("send_gate", default=None)


async def send_replies(db: DbEngine, sender: Sender, replies: list[tuple[int, Outbound]], address: str) -> None:
    """Send a step's replies now, in order, and confirm them. Any failure leaves the row claimed;
    its lease runs out and the dispatcher retries it with the usual rules."""
    sent: list[int] = []
    provider_ids: list[str] = []
    try:
        for row_id, out in replies:
            try:
                provider_ids.append(await sender.send(address, out))
            except SendError as exc:
                log.warning("reply %s on %s not sent now (%s); the dispatcher will retry",
                            row_id, sender.channel, exc)
                await _release(db, [row_id for row_id, _ in replies if row_id not in sent])
                break
            sent.append(row_id)
    finally:
        if sent:
            goodbyes = [row_id for row_id, out in replies if out.forget is not None]
            await asyncio.to_thread(_confirm, db, sent, provider_ids, goodbyes)


def _confirm(db: DbEngine, ids: list[int], provider_ids: list[str], forget: list[int]) -> None:
    with transaction(db) as session:
        outbox.mark_sent(session, ids, provider_ids, forget=forget)


async def _release(db: DbEngine, ids: list[int]) -> None:
    def run():
        with transaction(db) as session:
            outbox.release_rows(session, ids)

    await asyncio.to_thread(run)
