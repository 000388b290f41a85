"""The terminal channel: `katilim chat [--as NAME]`, the same engine and database as Telegram.

Choices are shown numbered and answered by number or text. A few console verbs stand in for what a
phone sends: `/konum 38.39 27.17` or just `38.39 27.17` (a location pin), `/foto PATH` (a photo), `/ses PATH` (a voice
note), `/cikartma` (a sticker); `/cikis` or Ctrl-D leaves. The file of `/foto` and `/ses` is read
like a channel's download (`ConsoleChannel.read_file`) and goes through the same judging and
cleaning into MEDIA_DIR as any other channel's (bot/app.py): a missing or non-image file is
refused in the resident's language, and the user's own path is never stored.
"""
from __future__ import annotations

import asyncio
import glob
import hashlib
import re
import sys
import tempfile
import threading
from datetime import timedelta
from pathlib import Path
from typing import Callable, TextIO

from conversations.messages import Inbound, Kind, Media, Outbound
from conversations.step import IDLE
from handlers import kit
from handlers.delivery import ChannelLimits, send_replies
from handlers.kit import parse_command

CHANNEL = "console"
QUIT = {"/cikis", "/çıkış", "/quit", "/exit"}
# A latitude and a longitude typed as a terminal user copies them from a map: decimal points, a
# space or a comma between them.
COORDINATES = re.compile(r"(-?\d{1,2}\.\d+)(?:\s*[,;]\s*|\s+)(-?\d{1,3}\.\d+)")


class ConsoleSender:
    """Prints a terminal resident's messages. The files the bot sends them (their data export, an
    event's .ics) are written under FILES_DIR/<resident id>/ (ConsoleChannel: MEDIA_DIR/console),
    one folder per resident, never in the current directory."""

    channel = CHANNEL
    gates_on_wire = False

    def __init__(self, out: TextIO | None = None, files_dir: Path | None = None,
                 resident_of: Callable[[str], int | None] | None = None) -> None:
        self.out = out or sys.stdout
        self.files_dir = files_dir or Path(tempfile.gettempdir()) / "katilim-console"
        self.resident_of = resident_of
        self.residents: dict[str, int] = {}   # address → resident id, as first looked up
        self.sent = 0

    def limits(self, settings) -> ChannelLimits:
        """A terminal has no limits: nothing is paced."""
        return ChannelLimits()

    async def warm_up(self) -> None:
        """Nothing to open."""

    async def close(self) -> None:
        """Nothing to close."""

    async def folder(self, address: str) -> Path:
        """FILES_DIR/<resident id>/ of this address (made on first use, readable by its owner only)."""
        if address not in self.residents and self.resident_of is not None:
            resident_id = await asyncio.to_thread(self.resident_of, address)
            if resident_id is not None:
                self.residents[address] = resident_id
        folder = self.files_dir / str(self.residents.get(address, "unknown"))
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        return folder

    async def send(self, address: str, out: Outbound, *, kind: str = "reply") -> str:
        folder = await self.folder(address) if out.document is not None else self.files_dir
        self.out.write(render(out, folder) + "\n")
        self.out.flush()
        if out.forget:
            forget(out.forget, self.files_dir)
        self.sent += 1
        return f"console-{self.sent}"


def forget(files: list[dict[str, str]], files_dir: Path) -> int:
    """The goodbye after an erasure: the files this terminal wrote for the resident (their data
    export, calendar files) under FILES_DIR/<resident id>/ are deleted, each only if it still
    holds the bytes written (never another file of the same name)."""
    removed = 0
    for item in files:
        name = Path(item.get("name", "")).name
        if not name:
            continue
        for path in files_dir.glob(f"*/{glob.escape(name)}"):
            try:
                if path.is_file() and hashlib.sha256(path.read_bytes()).hexdigest() == item.get("sha256"):
                    path.unlink()
                    removed += 1
            except OSError:
                continue
    return removed


def render(out: Outbound, files_dir: Path) -> str:
    lines = []
    if out.photo_path:
        lines.append(f"🖼  {out.photo_path}")
    if out.text:
        lines.append(out.text)
    if out.latitude is not None and out.longitude is not None:
        title = f"{out.venue_title} " if out.venue_title else ""
        lines.append(f"📍 {title}({out.latitude:.5f}, {out.longitude:.5f})")
    if out.document is not None:
        path = files_dir / Path(out.document.filename).name
        if out.document.path:
            path.write_bytes(Path(out.document.path).read_bytes())
        else:
            path.write_text(out.document.data, encoding="utf-8")
        lines.append(f"📎 {path}")
    for i, choice in enumerate(out.choices, 1):
        lines.append(f"  {i} · {choice.label}")
    return "\n".join(lines)


def parse_line(address: str, line: str, *, counter: int = 0) -> Inbound | None:
    """A typed line → an inbound message (None to quit)."""
    text = line.rstrip("\n")
    stripped = text.strip()
    if stripped.lower() in QUIT:
        return None
    base = dict(channel=CHANNEL, address=address, display_name=address)
    command = parse_command(stripped)
    if command is not None:
        verb, rest = command
        if verb in ("konum", "location"):
            numbers = re.findall(r"-?\d+(?:[.,]\d+)?", rest)
            if len(numbers) == 2:
                lat, lon = (float(n.replace(",", ".")) for n in numbers)
                return Inbound(kind=Kind.LOCATION, latitude=lat, longitude=lon, **base)
        if verb in ("foto", "photo", "ses", "voice") and rest.strip():
            path = Path(rest.strip()).expanduser()
            kind = Kind.PHOTO if verb in ("foto", "photo") else Kind.VOICE
            # ref: where ConsoleChannel.read_file reads it from; what the file is, its bytes say
            return Inbound(kind=kind, media=[Media(ref=str(path), filename=path.name)], **base)
        if verb in ("cikartma", "sticker"):
            return Inbound(kind=Kind.STICKER, **base)
        return Inbound(kind=Kind.COMMAND, command=verb, text=command.text, **base)
    pin = COORDINATES.fullmatch(stripped)
    if pin:  # "38.39 27.17" or "38.39, 27.17" typed: a location, as /konum 38.39 27.17
        lat, lon = float(pin.group(1)), float(pin.group(2))
        if -90 <= lat <= 90 and -180 <= lon <= 180:
            return Inbound(kind=Kind.LOCATION, latitude=lat, longitude=lon, **base)
    return Inbound(kind=Kind.TEXT, text=text, **base)


class ConsoleChannel:
    """Reads lines from stdin and hands them to the app; replies are printed by ConsoleSender."""

    name = CHANNEL
    # Choices are numbered lists here too: a typed number (or yes/no) right after a proactive
    # question answers it (conversations/proactive.py), as on WhatsApp.
    numbers_answer_proactive = True

    def __init__(self, app, address: str, *, stdin: TextIO | None = None, stdout: TextIO | None = None,
                 prompt: str = "› ") -> None:
        self.app = app
        self.address = address
        self.stdin = stdin or sys.stdin
        self.sender = ConsoleSender(stdout or sys.stdout, app.settings.media_dir / CHANNEL, self.resident_of)
        self.prompt = prompt
        app.media_fetchers[CHANNEL] = self.read_file

    async def read_file(self, media: Media) -> bytes:
        """The file a `/foto PATH` or `/ses PATH` names (App._fetch_media judges, cleans and stores
        it); refused (storage.media UNREADABLE) when missing or unreadable, or over MEDIA_MAX_BYTES."""
        from storage.media import read_local

        return await asyncio.to_thread(read_local, media.ref, self.app.settings.media_max_bytes)

    async def start(self) -> None:  # the chat loop is driven by run()
        return None

    async def stop(self) -> None:
        return None

    def mount(self, http_app) -> None:
        return None

    def resident_of(self, address: str) -> int | None:
        """The resident this terminal name belongs to (None before their first message)."""
        from sqlmodel import select

        from storage.db import transaction
        from storage.models import ChannelIdentity

        with transaction(self.app.db) as db:
            return db.exec(select(ChannelIdentity.resident_id).where(
                ChannelIdentity.channel == CHANNEL, ChannelIdentity.address == address)).first()

    def _readline(self) -> str:
        if self.stdin.isatty():
            try:
                return input(self.prompt) + "\n"
            except EOFError:
                return ""
        return self.stdin.readline()

    async def _read(self) -> str:
        """The next line, read in a daemon thread: a chat stopped from outside (SIGTERM, Ctrl-C in
        `make run`) never waits for one more line before the process can exit."""
        loop = asyncio.get_running_loop()
        line: asyncio.Future[str] = loop.create_future()

        def read() -> None:
            try:
                got = self._readline()
            except Exception as exc:  # noqa: BLE001 - whatever ends the read (a closed stdin) reaches the waiting chat
                error = exc  # `exc` is unbound once the except clause ends, before the callback runs
                loop.call_soon_threadsafe(lambda: line.done() or line.set_exception(error))
                return
            loop.call_soon_threadsafe(lambda: line.done() or line.set_result(got))

        threading.Thread(target=read, name="console-stdin", daemon=True).start()
        return await line

    def _midway(self) -> bool:
        """This terminal's resident is in the middle of something (a report's draft...)."""
        from storage.db import transaction
        from storage.models import ConversationSession

        resident_id = self.resident_of(self.address)
        if resident_id is None:
            return False
        with transaction(self.app.db) as db:
            session = db.get(ConversationSession, resident_id)
            return session is not None and session.state != IDLE

    async def greet(self) -> None:
        """What the bot says before the first line is typed, as /start does: the language question
        to a newcomer, a welcome back and the menu to someone it knows; never a bare prompt. One
        in the middle of something finds it where they left it (their next line goes on with it)."""
        if await asyncio.to_thread(self._midway):
            return
        await kit.handle(self.app, Inbound(kind=Kind.COMMAND, command="start", text="/start", channel=CHANNEL,
                                           address=self.address, display_name=self.address))

    async def run(self, on_idle: Callable[[], object] | None = None) -> None:
        proactive = asyncio.create_task(self._print_proactive())
        try:
            await self.greet()
            while True:
                line = await self._read()
                if line == "":
                    break
                if not line.strip():
                    continue
                msg = parse_line(self.address, line)
                if msg is None:
                    break
                await kit.handle(self.app, msg)
        finally:
            proactive.cancel()
            await self.deliver_pending()

    async def _print_proactive(self, interval: float = 1.0) -> None:
        """Messages queued for this terminal resident by someone else (a staff status change, a
        reminder, an announcement) are printed as they fall due."""
        while True:
            try:
                await self.deliver_pending()
            except Exception:  # noqa: BLE001  (a busy database: try again next round)
                pass
            await asyncio.sleep(interval)

    async def deliver_pending(self) -> int:
        from storage import outbox
        from storage.db import transaction

        def claim():
            with transaction(self.app.db) as db:
                rows = outbox.claim(db, f"{self.app.worker_id}/console", CHANNEL, 20, timedelta(seconds=30),
                                    address=self.address)
                return [(row.id, Outbound.from_dict(row.payload)) for row in rows]

        rows = await asyncio.to_thread(claim)
        if rows:
            await send_replies(self.app.db, self.sender, rows, self.address)
        return len(rows)
