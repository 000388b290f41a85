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
import time
from datetime import timedelta
from pathlib import Path

import pytest
from sqlmodel import Session, func, select

from conversations.i18n import t_in
from storage import broadcasts as bc
from storage import outbox
from storage.db import transaction
from storage.models import (
    ChannelIdentity,
    ConsentRecord,
    ConversationSession,
    OutboxMessage,
    ProcessedInbound,
    Resident,
)
from storage.participation import Reminder
from tests.conftest import test_env as subprocess_env
from tests.fakes.telegram_api import FakeTelegramServer
from tests.test_broadcasts import add_resident
from tests.test_dispatcher import settled, wait_until
from tests.test_faults import replies, running, say  # noqa: F401  (fixtures)
from tests.test_run_process import katilim

pytestmark = pytest.mark.filterwarnings("ignore:.*retry_after.*")
BATCH = 10  # OUTBOX_BATCH_SIZE's default: the in-flight bound
DOWNTIME = float(os.environ.get("KATILIM_TEST_PG_DOWNTIME", "4"))  # seconds PostgreSQL stays down


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
def test_sigkill_mid_onboarding_resumes_where_the_resident_was(make_app, tmp_path, figure):
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
    figure(f"SIGKILL mid-onboarding: start-up {max(run.started):.1f}s; the message sent while down answered "
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


# ---------------------------------------------------------------- SIGKILL mid-broadcast
def test_sigkill_mid_broadcast_of_katilim_run(make_app, tmp_path, figure):
    """A 120-recipient broadcast created while `katilim run` runs (its "broadcasts" job fans it
    out), the process killed after about a third went out, started again: every recipient reached,
    repeats within OUTBOX_BATCH_SIZE."""
    app = make_app()
    chats = [str(830_000 + i) for i in range(120)]
    with transaction(app.db) as db:
        for chat in chats:
            add_resident(db, address=chat)
    with FakeTelegramServer(rate_limit_per_second=30) as tg:  # Telegram's limit, as the real server
        run = Run(tg, tmp_path, app.settings.database_url, OUTBOX_BATCH_SIZE=str(BATCH))
        try:
            run.start()
            with transaction(app.db) as db:
                broadcast_id = bc.create(db, texts={"tr": "Yarın 09:00-13:00 su kesintisi"}, audience={},
                                         created_by="test").id
            sync_wait(lambda: sum(per_chat(tg, chats).values()) >= 40, 30, "a third delivered")
            run.kill()
            at_kill = sum(per_chat(tg, chats).values())
            began = time.monotonic()
            run.start()
            sync_wait(lambda: progress(app, broadcast_id).waiting == 0, 40, "the broadcast completed")
            took = time.monotonic() - began
            time.sleep(0.5)
            code = run.stop()
        finally:
            run.close()
        output = run.output()
        counts = per_chat(tg, chats)
        limited = tg.count_429
    twice = sum(n - 1 for n in counts.values() if n > 1)
    figure(f"SIGKILL mid-broadcast (katilim run): {at_kill}/120 out at the kill, {twice} delivered twice "
          f"(bound {BATCH}), the rest out {took:.1f}s after the restart began, 429s {limited}")
    assert code == 0, output[-3000:]
    assert set(counts) == set(chats)
    assert twice <= BATCH
    assert progress(app, broadcast_id).sent == len(chats)


def progress(app, broadcast_id: int) -> outbox.BroadcastProgress:
    with transaction(app.db) as db:
        return outbox.broadcast_progress(db, broadcast_id)


# ---------------------------------------------------------------- SIGKILL while reminders go out
def test_sigkill_while_forty_reminders_go_out(make_app, tmp_path, figure):
    """Forty residents' reminders come due at once; `katilim run` (paced at 9/s here, so the kill
    lands mid-delivery) is killed after ten went out and started again: every reminder reaches its
    resident, the scan wrote exactly one outbox row per reminder, repeats stay within the bound."""
    from tests.test_reminders import add_event, register

    app = make_app()
    chats = [str(840_000 + i) for i in range(40)]
    with transaction(app.db) as db:
        ids = []
        for chat in chats:
            resident = add_resident(db, address=chat, consents=())
            db.add(ConsentRecord(resident_id=resident.id, purpose="reminders", granted=True, notice_version="t"))
            ids.append(resident.id)
    event = add_event(app, "Fidan Dikimi", timedelta(minutes=10))
    for resident_id in ids:
        register(app, event, resident_id, [timedelta(minutes=10) - timedelta(seconds=2)])  # due in ~2 s
    with FakeTelegramServer() as tg:
        run = Run(tg, tmp_path, app.settings.database_url, REMINDER_SCAN_INTERVAL="0.5",
                  TELEGRAM_MESSAGES_PER_SECOND="10", OUTBOX_BATCH_SIZE=str(BATCH))
        try:
            run.start()
            sync_wait(lambda: sum(per_chat(tg, chats, "⏰").values()) >= 10, 30, "ten reminders out")
            run.kill()
            at_kill = sum(per_chat(tg, chats, "⏰").values())
            began = time.monotonic()
            run.start()
            sync_wait(lambda: settled(app.db), 30, "every reminder delivered")
            took = time.monotonic() - began
            time.sleep(1.5)  # more scans: nothing is queued again
            code = run.stop()
        finally:
            run.close()
        output = run.output()
        counts = per_chat(tg, chats, "⏰")
    with Session(app.db) as db:
        rows = db.exec(select(func.count()).select_from(OutboxMessage).where(OutboxMessage.kind == "reminder")).one()
        states = collections.Counter(r.status for r in db.exec(select(Reminder)))
    twice = sum(n - 1 for n in counts.values() if n > 1)
    figure(f"SIGKILL while reminders go out: {at_kill}/40 out at the kill, {twice} delivered twice "
          f"(bound {BATCH}), the rest out {took:.1f}s after the restart began; {rows} outbox rows for 40 reminders")
    assert code == 0, output[-3000:]
    assert rows == 40 and states == {"sent": 40}
    assert set(counts) == set(chats) and twice <= BATCH


# ---------------------------------------------------------------- PostgreSQL restarted
def _pg_bin() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"), key=lambda p: int(p.split("/")[4]))
    return Path(found[-1]).parent if found else None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Cluster:
    """A throwaway PostgreSQL cluster in a temporary folder on its own port (as the postgres user
    when we are root: the server refuses to run as root)."""

    def __init__(self) -> None:
        bin_dir = _pg_bin()
        if bin_dir is None or not (bin_dir / "initdb").exists():
            pytest.skip("PostgreSQL server binaries (initdb, pg_ctl under /usr/lib/postgresql/*/bin) not installed")
        self.bin = bin_dir
        self.as_postgres: list[str] = []
        self.base = Path(tempfile.mkdtemp(prefix="katilim-pg-"))
        if os.geteuid() == 0:
            import pwd

            try:
                user = pwd.getpwnam("postgres")
            except KeyError:
                shutil.rmtree(self.base)
                pytest.skip("running as root and there is no postgres user to run a throwaway cluster as")
            os.chown(self.base, user.pw_uid, user.pw_gid)
            runuser = shutil.which("runuser")
            self.as_postgres = [runuser, "-u", "postgres", "--"] if runuser else ["su", "postgres", "-c"]
        self.data = self.base / "data"
        self.port = _free_port()
        self.url = f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, *cmd: str, timeout: float = 60) -> None:
        args = [str(c) for c in cmd]
        if self.as_postgres[-1:] == ["-c"]:
            import shlex

            args = [*self.as_postgres, shlex.join(args)]
        else:
            args = [*self.as_postgres, *args]
        done = subprocess.run(args, capture_output=True, text=True, timeout=timeout)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(args)}: {done.stdout}{done.stderr}")

    def start(self) -> None:
        self._run(self.bin / "initdb", "-D", self.data, "-A", "trust", "-U", "postgres", "-E", "UTF8", "--no-sync")
        with (self.data / "postgresql.conf").open("a") as conf:  # every start uses them (never 5432)
            conf.write(f"\nport = {self.port}\nunix_socket_directories = '{self.base}'\n"
                       "listen_addresses = '127.0.0.1'\nfsync = off\nfull_page_writes = off\n"
                       "synchronous_commit = off\n")
        self.start_server()

    def stop_server(self) -> None:
        self._run(self.bin / "pg_ctl", "-D", self.data, "-m", "fast", "-w", "stop")

    def start_server(self) -> None:
        self._run(self.bin / "pg_ctl", "-D", self.data, "-l", self.base / "server.log", "-w", "start")

    def stop(self) -> None:
        try:
            self._run(self.bin / "pg_ctl", "-D", self.data, "-m", "immediate", "-w", "stop", timeout=30)
        except Exception:  # noqa: BLE001  (never started, already stopped)
            pass
        shutil.rmtree(self.base, ignore_errors=True)


@pytest.fixture
def cluster():
    c = Cluster()
    try:
        c.start()
    except Exception as exc:  # noqa: BLE001 - a throwaway cluster that cannot start, for any reason, is a skip with it
        c.stop()
        pytest.skip(f"could not start a throwaway PostgreSQL cluster: {exc}")
    yield c
    c.stop()


async def test_postgresql_restarted_while_residents_write(running, tg, cluster, caplog, figure):
    """Our own PostgreSQL cluster stopped for DOWNTIME seconds and started again while three residents write:
    the pooled connections are dead (pool_pre_ping replaces them), a step that meets the server
    down is retried, and every message is answered; nothing is lost or left in the outbox."""
    app, channel = await running(database_url=cluster.url)
    assert app.db.dialect.name == "postgresql" and app.db.pool._pre_ping
    await say(tg, 9500, "/start", 1)
    await say(tg, 9500, "2", 2)
    pushed = []
    async def restart():
        await asyncio.to_thread(cluster.stop_server)
        await asyncio.sleep(DOWNTIME)
        await asyncio.to_thread(cluster.start_server)
        return time.monotonic() - began

    began = time.monotonic()
    restart = asyncio.create_task(restart())
    for text, chat, lang in (("2", 9500, "en"), ("/start", 9501, "tr"), ("/start", 9502, "ar"), ("1", 9500, "en"),
                             ("1", 9501, "tr"), ("/yardim", 9502, "ar")):
        pushed.append(tg.push_text(chat, text, language_code=lang)["update_id"])
        await asyncio.sleep(0.25)
    took_restart = await restart
    restarted = time.monotonic()
    await tg.async_wait_for(lambda s: set(pushed) <= set(channel.completed), timeout=30)
    await tg.async_wait_for(lambda s: len(replies(s, 9500)) >= 4 and len(replies(s, 9501)) >= 2
                            and len(replies(s, 9502)) >= 2, timeout=30)
    answered = time.monotonic()
    after = await say(tg, 9501, "kozagac", len(replies(tg, 9501)) + 1, lang="tr")  # and on it goes
    with Session(app.db) as db:
        recorded = set(db.exec(select(ProcessedInbound.external_id)))
    figure(f"PostgreSQL restart: {took_restart:.1f}s down-and-up while 6 messages arrived over "
          f"{restarted - began:.1f}s; all answered {answered - restarted:.1f}s after it was back; next reply "
          f"{after:.2f}s")
    assert {str(u) for u in pushed} <= recorded
    assert any("database busy or unreachable" in r.getMessage() for r in caplog.records)  # it did meet the outage
    assert replies(tg, 9502)[0].splitlines()[0] == t_in("ar", "onboarding.choose_language")
    await wait_until(lambda: settled(app.db), 15, "nothing left in the outbox")
