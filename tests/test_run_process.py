"""`katilim run` as a real process: it answers through the (fake) Telegram Bot API, stops cleanly on
SIGTERM, refuses to start without a channel, and names an invalid setting in one line."""
from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path

import httpx
from sqlmodel import Session, create_engine, select

from conversations.domain import events as event_ops
from conversations.i18n import t_in
from conversations.permissions import Actor
from storage import broadcasts as bc
from storage.db import make_engine, transaction, utcnow
from storage.models import Broadcast, ChannelIdentity
from tests.conftest import test_env as subprocess_env
from tests.fakes.telegram_api import FakeTelegramServer


def katilim() -> list[str]:
    script = Path(sys.executable).parent / "katilim"
    return [str(script)] if script.exists() else [sys.executable, "-m", "bot.cli"]


def run_katilim(tmp_path: Path, *args: str, timeout: float = 30, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([*katilim(), *args], cwd=tmp_path, env=subprocess_env(**env), capture_output=True, text=True,
                          timeout=timeout)


@contextmanager
def started(tmp_path: Path, *args: str, env: dict[str, str], **popen):
    """`katilim ARGS` running; killed at the end if it has not stopped by itself."""
    proc = subprocess.Popen([*katilim(), *args], cwd=tmp_path, env=env, **popen)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_run_answers_on_telegram_and_stops_on_sigterm(tmp_path):
    db = tmp_path / "katilim.db"
    log = (tmp_path / "katilim.log").open("w")
    with FakeTelegramServer() as tg:
        env = subprocess_env(TELEGRAM_BOT_TOKEN=tg.token, TELEGRAM_API_URL=tg.root, DATABASE_URL=f"sqlite:///{db}",
                       HTTP_PORT="0", MEDIA_DIR=str(tmp_path / "media"))
        with started(tmp_path, "run", env=env, stdout=log, stderr=subprocess.STDOUT) as proc:
            tg.wait_for(lambda s: s.calls_of("getUpdates"), timeout=30)
            assert {c.params.get("language_code") for c in tg.calls_of("setMyCommands")} == {None, "tr", "en", "ar"}
            tg.push_text(4242, "/start")
            first = tg.wait_for(lambda s: s.delivered_texts(4242), timeout=15)[0]
            assert first.splitlines()[0] == t_in("tr", "onboarding.choose_language")
            tg.push_callback(4242, "lang:en")
            tg.wait_for(lambda s: any(t.startswith(t_in("en", "notice.summary")[:12])
                                      for t in s.delivered_texts(4242)), timeout=15)
            stopping = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            code = proc.wait(timeout=10)
            took = time.monotonic() - stopping
    log.close()
    output = (tmp_path / "katilim.log").read_text()
    assert code == 0, output
    assert took < 5, output
    assert "Traceback" not in output, output
    engine = create_engine(f"sqlite:///{db}")
    with Session(engine) as session:
        assert session.exec(select(ChannelIdentity).where(ChannelIdentity.address == "4242")).first()
    engine.dispose()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until(what, timeout: float = 30, every: float = 0.2):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            found = what()
        except Exception:  # noqa: BLE001  (the database or the server not there yet)
            found = None
        if found:
            return found
        time.sleep(every)
    raise AssertionError(f"not within {timeout}s")


def test_run_without_a_channel_serves_http_and_the_scheduler(tmp_path):
    """No channel configured: it says which channels are off, and the HTTP server (health,
    Open311, the staff console) and the scheduler run all the same, until SIGTERM."""
    port = free_port()
    log = (tmp_path / "katilim.log").open("w")
    env = subprocess_env(DATABASE_URL=f"sqlite:///{tmp_path / 'k.db'}", LANG="C.UTF-8",
                         MEDIA_DIR=str(tmp_path / "media"), HTTP_PORT=str(port))
    with started(tmp_path, "run", env=env, stdout=log, stderr=subprocess.STDOUT) as proc:
        health = wait_until(lambda: httpx.get(f"http://127.0.0.1:{port}/health", timeout=2))
        assert health.status_code == 200
        assert httpx.get(f"http://127.0.0.1:{port}/open311/v2/services.json", timeout=5).status_code == 200
        assert httpx.get(f"http://127.0.0.1:{port}/panel/login", timeout=5).status_code == 200
        wait_until(lambda: "scheduler started" in (tmp_path / "katilim.log").read_text())
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=15)
    log.close()
    output = (tmp_path / "katilim.log").read_text()
    assert code == 0, output
    assert output.splitlines()[0] == t_in("en", "console.no_channel", url=f"http://127.0.0.1:{port}"), output
    assert "TELEGRAM_BOT_TOKEN" in output and "Traceback" not in output


def test_make_run_is_the_whole_system_in_one_process(tmp_path):
    """`make run` with no token: the terminal chat, the HTTP server and the scheduler in one
    process on SQLite. A reminder and a scheduled announcement reach the terminal resident while
    they chat; the announcement's broadcast finishes."""
    port, db_path = free_port(), tmp_path / "katilim.db"
    screen = (tmp_path / "screen.txt").open("w")
    env = subprocess_env(DATABASE_URL=f"sqlite:///{db_path}", MEDIA_DIR=str(tmp_path / "media"), HTTP_PORT=str(port),
                         LANG="tr_TR.UTF-8", KATILIM_REMINDER_OFFSETS="3s", REMINDER_SCAN_INTERVAL="0.5")
    with started(tmp_path, "run", "--or-chat", env=env, stdin=subprocess.PIPE, stdout=screen,
                 stderr=subprocess.PIPE, text=True) as proc:

        def typed(*lines: str) -> None:
            for line in lines:
                proc.stdin.write(line + "\n")
                proc.stdin.flush()

        def shown() -> str:
            return (tmp_path / "screen.txt").read_text()

        db = make_engine(f"sqlite:///{db_path}")
        try:
            wait_until(lambda: t_in("tr", "onboarding.choose_language") in shown())   # greeted, not a bare prompt
            typed("1", "1", "kozagac")                                                # Türkçe, accept all, mahalle
            wait_until(lambda: t_in("tr", "mahalle.saved", mahalle="Kozağaç") in shown())
            assert httpx.get(f"http://127.0.0.1:{port}/health", timeout=5).status_code == 200
            assert httpx.get(f"http://127.0.0.1:{port}/panel/login", timeout=5).status_code == 200
            with transaction(db) as s:
                event = event_ops.create_event(s, Actor.cli("test"), title={"tr": "Gençlik Forumu"},
                                               starts_at=utcnow() + timedelta(seconds=8),
                                               ends_at=utcnow() + timedelta(hours=1), place="Buca Kent Konseyi")
                event_id = event.id
            typed(f"/start ev_{event_id}", t_in("tr", "event.rsvp"))
            with transaction(db) as s:
                broadcast = bc.create(s, texts={"tr": "Yarın su kesintisi var."}, audience={}, created_by="staff:1",
                                      scheduled_at=utcnow() + timedelta(seconds=2))
                broadcast_id = broadcast.id
            wait_until(lambda: "⏰ Hatırlatma: Gençlik Forumu" in shown(), timeout=30)
            wait_until(lambda: "Yarın su kesintisi var." in shown(), timeout=30)

            def finished():
                with transaction(db) as s:
                    return s.get(Broadcast, broadcast_id).status == "done"

            wait_until(finished, timeout=30)
            typed("/cikis")
            code = proc.wait(timeout=30)
        finally:
            screen.close()
            db.dispose()
    err = proc.stderr.read()
    assert code == 0, err
    assert "Traceback" not in err
    assert err.splitlines()[0] == t_in("tr", "console.no_channel_chat", url=f"http://127.0.0.1:{port}/panel")
    assert "katilim chat" not in err + shown()
    assert shown().count("Yarın su kesintisi var.") == 1 and shown().count("⏰ Hatırlatma: Gençlik Forumu") == 1


def test_invalid_settings_stop_start_up_with_one_line(tmp_path):
    for env, name in ((dict(HTTP_PORT="abc"), "HTTP_PORT"), (dict(DATABASE_URL="mysql://x"), "DATABASE_URL"),
                      (dict(MEDIA_MAX_BYTES="lots"), "MEDIA_MAX_BYTES")):
        result = run_katilim(tmp_path, "run", TELEGRAM_BOT_TOKEN="1:x", **env)
        assert result.returncode == 2, (env, result.stderr)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and name in lines[0], (env, result.stderr)


def one_line_failure(result: subprocess.CompletedProcess, *names: str) -> str:
    """Exit status 2 and a single stderr line naming each of `names`, no traceback."""
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2, result.stderr
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    for name in names:
        assert name in lines[0], result.stderr
    return lines[0]


def test_a_database_that_cannot_be_opened_stops_every_command_with_one_line(tmp_path):
    """A closed port (with a password in the URL: never printed) and a missing directory stop
    `katilim run`, `katilim chat` and `katilim db upgrade` with one line naming DATABASE_URL."""
    password = "Gizli-Parola-42"
    cases = ((f"postgresql+psycopg://postgres:{password}@127.0.0.1:1/test", "127.0.0.1:1"),
             ("sqlite:////nonexistent/dir/k.db", "/nonexistent/dir"))
    for url, detail in cases:
        for command in (["run"], ["chat"], ["db", "upgrade"]):
            result = run_katilim(tmp_path, *command, DATABASE_URL=url, TELEGRAM_BOT_TOKEN="1:x", HTTP_PORT="0",
                                 MEDIA_DIR=str(tmp_path / "media"))
            line = one_line_failure(result, "DATABASE_URL", detail)
            assert password not in result.stderr + result.stdout, line
            if password in url:
                assert "postgres:***@127.0.0.1:1" in line, line


def test_a_catalog_that_is_not_utf8_stops_start_up_with_one_line(tmp_path):
    catalog = tmp_path / "belediye.toml"
    catalog.write_bytes("[municipality]\nname = \"Güzelbahçe Belediyesi\"\n".encode("latin-1"))
    for command in (["run"], ["chat"]):
        result = run_katilim(tmp_path, *command, KATILIM_CATALOG=str(catalog), TELEGRAM_BOT_TOKEN="1:x",
                             HTTP_PORT="0", DATABASE_URL=f"sqlite:///{tmp_path / 'k.db'}",
                             MEDIA_DIR=str(tmp_path / "media"))
        line = one_line_failure(result, str(catalog), "UTF-8")
        assert f"{catalog}:2:" in line, line


def test_a_media_dir_that_cannot_be_created_stops_start_up_with_one_line(tmp_path):
    result = run_katilim(tmp_path, "run", MEDIA_DIR="/dev/null/media", TELEGRAM_BOT_TOKEN="1:x", HTTP_PORT="0",
                         DATABASE_URL=f"sqlite:///{tmp_path / 'k.db'}")
    one_line_failure(result, "MEDIA_DIR", "/dev/null/media")


def test_a_port_in_use_stops_start_up_with_one_line_naming_it(tmp_path):
    """`katilim run` whose HTTP_PORT another program holds: exit status 2 and a line saying which
    setting to change, no traceback."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_katilim(tmp_path, "run", HTTP_PORT=str(port), DATABASE_URL=f"sqlite:///{tmp_path / 'k.db'}",
                             MEDIA_DIR=str(tmp_path / "media"))
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    assert result.stderr.strip().splitlines()[-1] == (
        f"katilim: HTTP_HOST=127.0.0.1 HTTP_PORT={port}: cannot listen there (the address is in use or cannot be "
        "bound); stop what uses it or choose another HTTP_PORT")
