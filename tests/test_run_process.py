"""`katilim run` as a real process: it answers through the (fake) Telegram Bot API, stops cleanly on
SIGTERM, refuses to start without a channel, and names an invalid setting in one line."""
from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

from sqlmodel import Session, create_engine, select

from conversations.i18n import t_in
from storage.models import ChannelIdentity
from tests.conftest import test_env as subprocess_env
from tests.fakes.telegram_api import FakeTelegramServer


def katilim() -> list[str]:
    script = Path(sys.executable).parent / "katilim"
    return [str(script)] if script.exists() else [sys.executable, "-m", "bot.cli"]


def run_katilim(tmp_path: Path, *args: str, timeout: float = 30, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([*katilim(), *args], cwd=tmp_path, env=subprocess_env(**env), capture_output=True, text=True,
                          timeout=timeout)


def test_run_answers_on_telegram_and_stops_on_sigterm(tmp_path):
    db = tmp_path / "katilim.db"
    log = (tmp_path / "katilim.log").open("w")
    with FakeTelegramServer() as tg:
        env = subprocess_env(TELEGRAM_BOT_TOKEN=tg.token, TELEGRAM_API_URL=tg.root, DATABASE_URL=f"sqlite:///{db}",
                       HTTP_PORT="0", MEDIA_DIR=str(tmp_path / "media"))
        proc = subprocess.Popen([*katilim(), "run"], cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
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
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            log.close()
    output = (tmp_path / "katilim.log").read_text()
    assert code == 0, output
    assert took < 5, output
    assert "Traceback" not in output, output
    engine = create_engine(f"sqlite:///{db}")
    with Session(engine) as session:
        assert session.exec(select(ChannelIdentity).where(ChannelIdentity.address == "4242")).first()
    engine.dispose()


def test_run_without_a_channel_explains_and_exits_1(tmp_path):
    result = run_katilim(tmp_path, "run", DATABASE_URL=f"sqlite:///{tmp_path / 'k.db'}",
                         MEDIA_DIR=str(tmp_path / "media"), HTTP_PORT="0")
    assert result.returncode == 1, result.stderr
    assert "TELEGRAM_BOT_TOKEN" in result.stderr and "katilim chat" in result.stderr


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
