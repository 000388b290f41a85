"""The channel kit: what every channel adapter (Telegram, WhatsApp, the terminal) does the same
way, written once.

- `split_text(text, limit, measure)`: a long text in pieces a platform accepts, cut at a
  paragraph, line or word boundary (`utf16_len` where the platform counts UTF-16 code units, as
  Telegram and Twilio do).
- `AddressLocks`: one resident's messages handled one at a time and in order, other residents'
  meanwhile; nothing stays in memory for a quiet address.
- `parse_command(text)`: "/Bildir@katilim_bot çukur" → Command("bildir", "çukur").
- `read_body(request, limit)`: a webhook's body, refused over `limit` bytes without reading the rest.
- `handle(app, msg)`: a resident's message handed to the conversation (bot.app.App.handle), run
  again while the database is unavailable, by the one retry policy (storage.db.DB_RETRY).

What a sender provides the dispatcher (its limits, its errors as handlers.delivery.SendFailure) is in
handlers/delivery.py.
"""
from __future__ import annotations

import asyncio
import contextlib
import re
from typing import AsyncIterator, Callable, NamedTuple

from conversations.messages import Inbound
from storage.db import DB_RETRY


class ChannelSetupError(Exception):
    """A channel cannot start as configured (a refused token, a missing public URL): the message is
    one line saying what to fix; `katilim` prints it and exits 2."""


# ---------------------------------------------------------------- long texts
def utf16_len(text: str) -> int:
    """Length as Telegram and Twilio count it (UTF-16 code units: an emoji counts two)."""
    return len(text.encode("utf-16-le")) // 2


def _fitting(text: str, limit: int, measure: Callable[[str], int]) -> int:
    """The number of characters of text whose measure is at most limit."""
    low, high = 0, len(text)
    while low < high:
        mid = (low + high + 1) // 2
        if measure(text[:mid]) <= limit:
            low = mid
        else:
            high = mid - 1
    return low


def split_text(text: str, limit: int, measure: Callable[[str], int] = len) -> list[str]:
    """Split text into pieces whose `measure` is at most `limit`, on a paragraph, line or word
    boundary where there is one (a word longer than the limit is cut). No piece is empty;
    whitespace at the cuts is dropped, nothing else."""
    if limit < 1:
        raise ValueError("limit must be positive")
    pieces: list[str] = []
    rest = text.strip()
    while rest:
        if measure(rest) <= limit:
            pieces.append(rest)
            break
        cut = max(1, _fitting(rest, limit, measure))
        window = rest[:cut + 1]  # a boundary right after the window still counts
        at = -1
        for sep in ("\n\n", "\n", " "):
            found = window.rfind(sep, 0, cut + 1)
            if found > 0 and (found >= cut // 2 or sep == " "):
                at = found
                break
        if at <= 0:
            found = max(window.rfind(c, 0, cut + 1) for c in ("\n", " ", "\t"))
            at = found if found > 0 else cut
        pieces.append(rest[:at].rstrip())  # rest starts with no whitespace: never empty
        rest = rest[at:].lstrip()
    return pieces


# ---------------------------------------------------------------- one address at a time
class AddressLocks:
    """An asyncio lock per address (a chat, a phone number). `async with locks.hold(address):`
    registers the caller before anything is awaited, so one address's messages are handled in
    the order they arrived (asyncio's locks are fair), while other addresses go on. An address's
    lock is dropped when no one holds or waits for it: `len(locks)` is the addresses busy now."""

    def __init__(self) -> None:
        self._locks: dict[str, list] = {}  # address → [lock, holders and waiters]

    def __len__(self) -> int:
        return len(self._locks)

    @contextlib.asynccontextmanager
    async def hold(self, address: str) -> AsyncIterator[None]:
        entry = self._locks.setdefault(address, [asyncio.Lock(), 0])
        entry[1] += 1
        try:
            async with entry[0]:
                yield
        finally:
            entry[1] -= 1
            if entry[1] == 0:
                self._locks.pop(address, None)


# ---------------------------------------------------------------- commands
_COMMAND = re.compile(r"/([^\s/]\S*)(?:\s(.*))?", re.DOTALL)


class Command(NamedTuple):
    name: str  # lower case, without the slash and without Telegram's "@bot" suffix
    args: str  # the rest of the line as typed

    @property
    def text(self) -> str:
        """The command as the conversation reads it (Inbound.text): "/bagla 1234567890"."""
        return f"/{self.name} {self.args}".strip()


def parse_command(text: str) -> Command | None:
    """A typed command, the same on every channel: a slash and a name at the start ("/start",
    "/Start@katilim_bot ev_12", " /bagla şimdi"); None for anything else ("/", "//", "a/b")."""
    match = _COMMAND.fullmatch(text.strip())
    if match is None:
        return None
    name = match[1].split("@", 1)[0].lower()
    return Command(name, match[2] or "") if name else None


# ---------------------------------------------------------------- webhooks
async def read_body(request, limit: int) -> bytes | None:
    """A request's body (a FastAPI/Starlette Request), or None when it is over `limit` bytes:
    refused on a declared Content-Length before anything is read, else as soon as what arrives
    passes the limit (the rest is never read)."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        return None
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            return None
    return bytes(body)


# ---------------------------------------------------------------- handing a message on
async def handle(app, msg: Inbound, *, inbox_id: int | None = None):
    """A resident's message, as every channel hands it to the conversation: App.handle (the
    step in one transaction, then its replies), run again while the database is unavailable
    (storage.db.DB_RETRY: about a minute, the same for every channel). After that the error goes
    to the channel: a Telegram webhook answers 500 (Telegram sends the update again), a WhatsApp
    message stays in the inbox for the scheduler's "inbox" job."""
    what = f"handling {msg.channel} message {msg.external_id}".rstrip()
    return await DB_RETRY.call_async(lambda: app.handle(msg, inbox_id=inbox_id), what=what)
