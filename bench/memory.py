"""Memory of a real `katilim run` process (Telegram long polling against the local Bot API server,
SQLite): resident set size (VmRSS, /proc/<pid>/status) once idle, and after N distinct chats have
each started a conversation (/start pushed through getUpdates, every chat answered: N/10 at once,
then the other 9N/10 at once). The reference in the same run is the same process idle, before the
conversations; the growth from N/10 to N conversations says whether memory is flat (the first ones
also warm caches and pools up).

The server has no rate limit here and TELEGRAM_MESSAGES_PER_SECOND=1000, so the replies are not
held to Telegram's 30/s pace: this scenario measures memory, not pacing (see "broadcast")."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.common import Result, mb, proc_status

FIRST_CHAT = 20_000_000
TARGET = "< 200 MB"


def _katilim() -> list[str]:
    script = Path(sys.executable).parent / "katilim"
    return [str(script)] if script.exists() else [sys.executable, "-m", "bot.cli"]


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("TELEGRAM_", "TWILIO_", "KATILIM_", "DATABASE_URL", "PUBLIC_BASE_URL"))}
    env.update(extra)
    return env


def _answered(tg, chats: set[int]) -> int:
    with tg._lock:
        got = {int(c.chat_id) for c in tg.delivered if c.chat_id is not None}
    return len(chats & got)


def _wait(what: str, predicate, timeout: float, proc: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if proc.poll() is not None:
            tail = log.read_text(errors="replace").strip().splitlines()[-1:] or ["no output"]
            raise RuntimeError(f"katilim run exited ({proc.returncode}): {tail[0][:120]}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not within {timeout:.0f} s")
        time.sleep(0.2)


def run(quick: bool) -> list[Result]:
    n = 1_000 if quick else 10_000
    name = f"memory, `katilim run` (Telegram polling, SQLite), {n:,} active conversations"
    try:
        from tests.fakes.telegram_api import FakeTelegramServer
    except ImportError as exc:
        return [Result(name, f"not measured: {exc}", "—", TARGET, None)]
    with tempfile.TemporaryDirectory() as tmp, FakeTelegramServer() as tg:
        tmpdir = Path(tmp)
        log = tmpdir / "katilim.log"
        env = _env(TELEGRAM_BOT_TOKEN=tg.token, TELEGRAM_API_URL=tg.root,
                   DATABASE_URL=f"sqlite:///{tmpdir / 'katilim.db'}", HTTP_PORT="0",
                   MEDIA_DIR=str(tmpdir / "media"), TELEGRAM_MESSAGES_PER_SECOND="1000", LOG_LEVEL="WARNING")
        with log.open("w") as out:
            proc = subprocess.Popen([*_katilim(), "run"], cwd=tmpdir, env=env, stdout=out, stderr=subprocess.STDOUT)
        try:
            _wait("polling", lambda: tg.calls_of("getUpdates"), 60, proc, log)
            # one conversation first, so idle means "serving" (the engine's lazy imports done)
            tg.push_text(FIRST_CHAT, "/start")
            _wait("the first answer", lambda: _answered(tg, {FIRST_CHAT}), 60, proc, log)
            time.sleep(1)
            idle = proc_status(proc.pid)
            took = 0.0
            sizes = []
            for first, last in ((1, n // 10), (n // 10 + 1, n)):
                chats = {FIRST_CHAT + i for i in range(first, last + 1)}
                began = time.monotonic()
                for chat in sorted(chats):
                    tg.push_text(chat, "/start")
                _wait(f"{last:,} answers", lambda chats=chats: _answered(tg, chats) == len(chats), 60 + n / 5, proc, log)
                took += time.monotonic() - began
                time.sleep(1)
                sizes.append(proc_status(proc.pid))
            early, busy = sizes
        except Exception as exc:  # noqa: BLE001 - a failing scenario is a row of the table, not the end of the run
            return [Result(name, f"failed: {type(exc).__name__}: {exc}"[:200], "—", TARGET, None)]
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
    ok = busy["VmRSS"] < 200 * 1024 and busy["VmHWM"] < 200 * 1024
    return [Result(
        name,
        f"VmRSS {mb(busy['VmRSS'])} (peak VmHWM {mb(busy['VmHWM'])}); {n:,} chats answered in {took:.1f} s "
        f"({n / took:,.0f}/s)",
        f"same process idle (one conversation): VmRSS {mb(idle['VmRSS'])}; "
        f"growth {mb(busy['VmRSS'] - idle['VmRSS'])} = {(busy['VmRSS'] - idle['VmRSS']) / n:.1f} kB per conversation; "
        f"from {n // 10:,} to {n:,}: {(busy['VmRSS'] - early['VmRSS']) / (n - n // 10):.2f} kB per conversation",
        TARGET, ok)]
