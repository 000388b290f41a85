"""Broadcast delivery through a Bot API server enforcing Telegram's 30 messages per second with 429s
(tests/fakes/telegram_api.FakeTelegramServer, rate_limit_per_second=30), run in a process of its own
(FakeTelegramProcess, ahead of other processes for the CPU where allowed): a real Bot API server is
another machine, and arrival times taken inside the sending process, or by a server waiting behind
it for the CPU, would carry its GIL, event loop, garbage collector and scheduling pauses.

Our path: N consenting residents, one broadcast fanned out into the outbox (storage/broadcasts.py)
and delivered by the outbox dispatcher (bot/dispatcher.py) with the real TelegramSender, on SQLite.
Beside it, in the same run: the same N messages (same recipients, same texts) sent with
python-telegram-bot's AIORateLimiter (ApplicationBuilder().rate_limiter(AIORateLimiter()), its
defaults) through a fresh server with the same limit. For each: the achieved rate as a fraction of
the limit (server arrival times of the delivered messages), the 429s the server answered, and the
lost and duplicated messages (the server's delivered chat ids compared with the recipients).
The reference runs in its own process (`python -m bench.broadcast --ptb N`) with its own server
process, measured the same way.
The full run sends one side after the other (~11 minutes each at 30/s); the quick run sends both at
once, each through its own server with the same limit, to stay under a minute."""
from __future__ import annotations

import asyncio
import collections
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.common import Result, seed_residents

LIMIT = 30
FIRST_CHAT = 10_000_000
TEXTS = {"tr": "Pazar günü Kozağaç parkında fidan dikimi var.", "en": "Tree planting in Kozağaç park on Sunday."}
TARGET = "≥ 97% of the limit, 0 lost, 0 duplicates, 0 429s"


def _busiest_second(times: list[float]) -> int:
    """The most arrivals in any sliding second (the server's own way of counting)."""
    times = sorted(times)
    best = start = 0
    for end, t in enumerate(times):
        while t - times[start] >= 1.0:
            start += 1
        best = max(best, end - start + 1)
    return best


def _summary(tg, chats: list[int]) -> dict:
    seen = tg.record()
    delivered = [(int(chat), t) for chat, t in seen["delivered"]]
    count_429 = seen["count_429"]
    per_chat = collections.Counter(chat for chat, _ in delivered)
    times = [t for _, t in delivered]
    span = max(times) - min(times) if len(times) > 1 else 0.0
    rate = (len(times) - 1) / span if span else 0.0
    return dict(rate=rate, share=rate / LIMIT, count_429=count_429, busiest=_busiest_second(times),
                lost=len(set(chats) - set(per_chat)), duplicates=sum(n - 1 for n in per_chat.values() if n > 1),
                extra=len(set(per_chat) - set(chats)), delivered=len(times), span=span)


async def _ours(n: int, tmp: Path) -> dict:
    from sqlalchemy import func, select

    from bot.app import add_configured_channels, build_app
    from bot.dispatcher import Dispatcher
    from bot.settings import load_settings
    from conversations.domain import broadcasts as domain_broadcasts
    from storage import broadcasts
    from storage.db import transaction
    from storage.models import OutboxMessage
    from tests.fakes.telegram_api import FakeTelegramProcess

    chats = [FIRST_CHAT + i for i in range(1, n + 1)]
    with FakeTelegramProcess(rate_limit_per_second=LIMIT) as tg:
        settings = load_settings(database_url=f"sqlite:///{tmp / 'broadcast.db'}", media_dir=tmp / "media",
                                 http_port=0, telegram_bot_token=tg.token, telegram_api_url=tg.root, _env_file=None)
        app = build_app(settings)
        add_configured_channels(app)
        with app.db.begin() as conn:
            seed_residents(conn, n, first_chat=FIRST_CHAT)
        with transaction(app.db) as s:
            b = broadcasts.create(s, texts=TEXTS, audience={}, created_by="bench")
        assert domain_broadcasts.start_now(app.db, b.id, app.worker_id)
        OUT = OutboxMessage.__table__

        def waiting() -> int:
            with transaction(app.db) as s:
                return s.exec(select(func.count()).select_from(OUT).where(OUT.c.status.in_(("pending", "sending")))
                              ).scalar_one()

        dispatcher = Dispatcher(app, app.senders, app.worker_id, app.settings)
        began = time.monotonic()
        if not await dispatcher.start():
            raise RuntimeError(dispatcher.refused or "the dispatcher did not start")
        try:
            deadline = began + n / (LIMIT * 0.8) + 60
            while await asyncio.to_thread(waiting) and time.monotonic() < deadline:
                await asyncio.sleep(0.5)
        finally:
            await dispatcher.stop()
            await app.senders["telegram"].inner.bot.shutdown()
            app.db.dispose()
        result = _summary(tg, chats)
        result["wall"] = time.monotonic() - began
        return result


async def _ptb(n: int) -> dict:
    from telegram.error import RetryAfter, TelegramError
    from telegram.ext import AIORateLimiter, ApplicationBuilder

    from conversations.notify import render_broadcast as render
    from tests.fakes.telegram_api import FakeTelegramProcess

    chats = [FIRST_CHAT + i for i in range(1, n + 1)]
    texts = {lang: render(TEXTS, "", lang).text for lang in ("tr", "en", "ar")}
    lang_of = {1: "en", 2: "ar"}  # as seed_residents: a tenth English, a tenth Arabic
    errors: collections.Counter = collections.Counter()
    with FakeTelegramProcess(rate_limit_per_second=LIMIT) as tg:
        application = (ApplicationBuilder().token(tg.token).base_url(f"{tg.root}/bot")
                       .base_file_url(f"{tg.root}/file/bot").rate_limiter(AIORateLimiter()).build())
        await application.initialize()

        async def one(chat: int) -> None:
            try:
                await application.bot.send_message(chat, texts[lang_of.get((chat - FIRST_CHAT) % 10, "tr")])
            except RetryAfter:
                errors["RetryAfter"] += 1
            except TelegramError as exc:
                errors[type(exc).__name__] += 1

        began = time.monotonic()
        try:
            await asyncio.gather(*(one(c) for c in chats))
        finally:
            await application.shutdown()
        result = _summary(tg, chats)
        result["wall"] = time.monotonic() - began
        result["errors"] = dict(errors)
        return result


def _start_reference(n: int) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "bench.broadcast", "--ptb", str(n)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=os.getcwd())


def _finish_reference(proc: subprocess.Popen, n: int) -> dict | BaseException:
    try:
        out, err = proc.communicate(timeout=n / (LIMIT * 0.5) + 120)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        return TimeoutError("the AIORateLimiter run did not finish")
    if proc.returncode != 0:
        return RuntimeError((err.strip().splitlines() or ["failed"])[-1])
    return json.loads(out.strip().splitlines()[-1])


def _describe(r: dict) -> str:
    return (f"{r['rate']:.2f} msg/s = {r['share'] * 100:.1f}% of {LIMIT}/s (busiest second {r['busiest']}); "
            f"429s {r['count_429']}, lost {r['lost']}, duplicates {r['duplicates']}")


def run(quick: bool) -> list[Result]:
    n = 300 if quick else 20_000
    name = f"broadcast, {n:,} recipients, server limit {LIMIT}/s with 429s"
    for logger in ("bot.dispatcher", "bot.outcomes"):  # 429 warnings would fill the screen
        logging.getLogger(logger).setLevel(logging.ERROR)
    logging.getLogger("telegram.ext.AIORateLimiter").setLevel(logging.CRITICAL)  # a traceback per 429
    with tempfile.TemporaryDirectory() as tmp:
        reference = None
        if quick:  # both at once (under a minute): the reference in its own process and server
            reference = _start_reference(n)
        try:
            ours = asyncio.run(_ours(n, Path(tmp)))
        except Exception as exc:  # noqa: BLE001 - a failing scenario is a row of the table, not the end of the run
            ours = exc
        if reference is None:  # the full run: one after the other, ~11 minutes each
            reference = _start_reference(n)
        ptb = _finish_reference(reference, n)
    if isinstance(ours, BaseException):
        return [Result(name, f"failed: {type(ours).__name__}: {ours}"[:200], "—", TARGET, None)]
    if isinstance(ptb, BaseException):
        reference = f"PTB AIORateLimiter not measured: {type(ptb).__name__}: {ptb}"[:200]
    else:
        reference = f"PTB AIORateLimiter: {_describe(ptb)}"
    ok = (ours["share"] >= 0.97 and ours["lost"] == 0 and ours["duplicates"] == 0 and ours["count_429"] == 0)
    return [Result(f"{name} (outbox dispatcher, SQLite)", _describe(ours), reference, TARGET, ok)]


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--ptb":
        logging.basicConfig(level=logging.WARNING)
        logging.getLogger("telegram.ext.AIORateLimiter").setLevel(logging.CRITICAL)  # a traceback per 429
        print(json.dumps(asyncio.run(_ptb(int(sys.argv[2])))))
    else:
        print("usage: python -m bench.broadcast --ptb N", file=sys.stderr)
        sys.exit(2)
