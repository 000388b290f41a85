"""Fault suite (issue 7), process part: `katilim run` killed with SIGKILL (no clean stop: no
released claims, no flushed anything) and started again, and a PostgreSQL server restarted under a
running bot.

- Mid-onboarding: the state and what was collected survive; a message sent while the bot was down
  is handled after the restart; a reply on the wire at the kill arrives at most twice.
- Mid-broadcast: every recipient is reached; only claimed-but-unconfirmed rows can repeat, at most
  OUTBOX_BATCH_SIZE (the documented in-flight bound). (test_dispatcher.py kills `katilim worker`.)
- During reminder delivery, forty reminders due at once: the scan writes exactly one outbox row per
  reminder across the kill; delivery repeats only within the in-flight bound. (test_reminders.py
  kills between scans.)
- PostgreSQL (a throwaway cluster of our own, never the shared one) restarted while residents
  write: the bot reconnects (pool_pre_ping) and nothing is lost.
"""
from __future__ import annotations

import asyncio
import collections
import glob
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from datetime import timedelta
from pathlib import Path

import pytest
from sqlmodel import Session, func, select

from conversations import participation as P
from conversations.i18n import t_in
from storage import broadcasts as bc
from storage import outbox
from storage.db import transaction, utcnow
from storage.models import ChannelIdentity, ConsentRecord, ConversationSession, OutboxMessage, ProcessedInbound, Resident
from storage.participation import Reminder
from tests.conftest import test_env as subprocess_env
from tests.fakes.telegram_api import FakeTelegramServer
from tests.test_broadcasts import add_resident
from tests.test_dispatcher import settled, wait_until
from tests.test_faults import replies, running, say, tg  # noqa: F401  (fixtures)
from tests.test_run_process import katilim

pytestmark = pytest.mark.filterwarnings("ignore:.*retry_after.*")
BATCH = 10  # OUTBOX_BATCH_SIZE's default: the in-flight bound


# ---------------------------------------------------------------- `katilim run` as a process
class Run:
    """`katilim run` processes on one database and one fake Bot API server, started and killed."""

    def __init__(self, tg: FakeTelegramServer, tmp_path: Path, database_url: str, **extra: str) -> None:
        self.tg = tg
        self.env = subprocess_env(TELEGRAM_BOT_TOKEN=tg.token, TELEGRAM_API_URL=tg.root, DATABASE_URL=database_url,
                                  HTTP_PORT="0", MEDIA_DIR=str(tmp_path / "media"), **extra)
        self.cwd = tmp_path
        self.log_path = tmp_path / "run.log"
        self.log = self.log_path.open("a")
        self.proc: subprocess.Popen | None = None
        self.started: list[float] = []

    def start(self) -> float:
        """Start a process and wait until it polls Telegram; returns the seconds it took."""
        began = time.monotonic()
        polls = len(self.tg.calls_of("getUpdates"))
        self.proc = subprocess.Popen([*katilim(), "run"], cwd=self.cwd, env=self.env, stdout=self.log,
                                     stderr=subprocess.STDOUT)
        self.tg.wait_for(lambda s: len(s.calls_of("getUpdates")) > polls or self.proc.poll() is not None, timeout=60)
        assert self.proc.poll() is None, self.output()
        self.started.append(time.monotonic() - began)
        return self.started[-1]

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> int:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            return -9

    def output(self) -> str:
        if not self.log.closed:
            self.log.flush()
        return self.log_path.read_text()

    def close(self) -> None:
        self.stop()
        self.log.close()


def sync_wait(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not met within {timeout}s")
        time.sleep(0.05)


def wait_replies(tg: FakeTelegramServer, chat, n: int, timeout: float = 20) -> list[str]:
    return tg.wait_for(lambda s: len(replies(s, chat)) >= n and replies(s, chat), timeout=timeout)


def per_chat(tg: FakeTelegramServer, chats, prefix: str = "") -> collections.Counter:
    wanted = {str(c) for c in chats}
    with tg._lock:
        return collections.Counter(str(c.chat_id) for c in tg.delivered if str(c.chat_id) in wanted
                                   and c.method == "sendMessage" and (c.text or "").startswith(prefix))


# ---------------------------------------------------------------- SIGKILL mid-conversation
def test_sigkill_mid_onboarding_resumes_where_the_resident_was(make_app, tmp_path):
    """Killed after the first consent answer, with the next answer sent while it is down; killed
    again with a reply on the wire. The resident ends onboarded with exactly the answers given."""
    app = make_app()  # migrated here: the processes start on a ready schema
    chat = 4401
    with FakeTelegramServer() as tg:
        run = Run(tg, tmp_path, app.settings.database_url)
        try:
            run.start()
            for text in ("/start", "2", "2", "1"):  # English; consents one by one; reports: yes
                n = len(replies(tg, chat))
                tg.push_text(chat, text, language_code="en")
                wait_replies(tg, chat, n + 1)
            time.sleep(0.3)
            with Session(app.db) as db:
                identity = db.exec(select(ChannelIdentity).where(ChannelIdentity.address == str(chat))).one()
                before = db.get(ConversationSession, identity.resident_id)
                before_state, before_data = before.state, dict(before.data)
            asked = replies(tg, chat)[-1]
            run.kill()

            with Session(app.db) as db:  # what was collected is on disk
                after = db.get(ConversationSession, identity.resident_id)
                assert (after.state, after.data) == (before_state, before_data)
            assert before_state != "menu" and before_data
            n = len(replies(tg, chat))
            tg.push_text(chat, "2", language_code="en")  # volunteering: no, sent while the bot is down
            time.sleep(0.3)
            assert len(replies(tg, chat)) == n
            began = time.monotonic()
            run.start()
            got = wait_replies(tg, chat, n + 1)
            recovered = time.monotonic() - began  # restart to the answer of the message sent while down
            assert got[-1] != asked  # the next question, not the same one again
            for text in ("1", "2"):  # reminders: yes; announcements: no
                n = len(replies(tg, chat))
                tg.push_text(chat, text, language_code="en")
                wait_replies(tg, chat, n + 1)
            time.sleep(0.3)
            assert replies(tg, chat)[-1] == t_in("en", "mahalle.prompt")

            n = len(replies(tg, chat))
            tg.delay_next(1, 3.0)  # the first reply to the mahalle answer is held on the wire...
            tg.push_text(chat, "kozagac", language_code="en")
            tg.wait_for(lambda s: any(c.status == 0 and str(c.chat_id) == str(chat) for c in s.sent_messages(chat)))
            run.kill()  # ...when the process dies; the server still delivers it
            run.start()
            wait_replies(tg, chat, n + 2)
            time.sleep(3.5)  # the held reply lands; nothing else should
            code = run.stop()
        finally:
            run.close()
        output = run.output()
    texts = replies(tg, chat)[n:]
    saved, menu = t_in("en", "mahalle.saved", mahalle="Kozağaç"), t_in("en", "menu.title")
    print(f"\nSIGKILL mid-onboarding: start-up {max(run.started):.1f}s; the message sent while down answered "
          f"{recovered:.1f}s after the restart began; the reply on the wire at the kill arrived {texts.count(saved)}×")
    assert code == 0, output[-3000:]
    assert "Traceback" not in output, output[-3000:]
    assert set(texts) == {saved, menu} and texts.count(menu) == 1 and 1 <= texts.count(saved) <= 2
    with Session(app.db) as db:
        resident = db.get(Resident, identity.resident_id)
        session = db.get(ConversationSession, identity.resident_id)
        consents = {r.purpose: r.granted for r in db.exec(select(ConsentRecord).where(
            ConsentRecord.resident_id == resident.id).order_by(ConsentRecord.id))}
    assert consents == {"reports": True, "volunteering": False, "reminders": True, "announcements": False}
    assert resident.locale == "en" and resident.onboarded_at is not None and session.state == "menu"
    assert resident.mahalle == next(n.key for n in app.catalog.neighbourhoods if n.name == "Kozağaç")
