"""The clock can move: stepped back an hour (and forward again), replies, announcements and the
scheduler's jobs are not held back, and the stored pace does not run ahead.

The end-to-end test runs a real `katilim run` (Telegram long polling against the fake Bot API,
SQLite) whose wall clock the test steps while it runs: tests/fakes/wallclock.c, built here with
the C compiler and loaded with LD_PRELOAD, shifts CLOCK_REALTIME by the seconds written in a file
and leaves CLOCK_MONOTONIC alone, as stepping the machine's clock does. Without a C compiler the
test is skipped (with CI=true it fails: .ci/run installs one). The storage tests set the state
such a step leaves (a pace, a pause, a queued row an hour ahead) on SQLite and PostgreSQL."""
from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import time
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import update
from sqlmodel import Session, create_engine, select

from conversations.i18n import t_in
from conversations.messages import Inbound, Kind, Outbound
from storage import outbox
from storage.db import transaction, utcnow
from storage.models import Broadcast, ChannelRate, OutboxMessage
from tests.conftest import test_env as subprocess_env
from tests.fakes.telegram_api import FakeTelegramServer
from tests.test_run_process import katilim

WALLCLOCK_C = Path(__file__).parent / "fakes" / "wallclock.c"
CHAT = 7070
HELD_BOUND = 5.0  # seconds a reply may take, whatever the clock did (it takes well under one)


@pytest.fixture(scope="module")
def wallclock(tmp_path_factory) -> Path:
    """The LD_PRELOAD library that lets a test step a process's wall clock."""
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        why = "no C compiler (cc) to build tests/fakes/wallclock.c, the stepped wall clock"
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI=true: {why}")
        pytest.skip(why)
    library = tmp_path_factory.mktemp("wallclock") / "wallclock.so"
    subprocess.run([compiler, "-shared", "-fPIC", "-O2", "-o", str(library), str(WALLCLOCK_C), "-ldl"],
                   check=True, capture_output=True)
    return library


class SteppedRun:
    """`katilim run` with a wall clock the test steps (`step(seconds)`), and its resident's chat."""

    def __init__(self, tmp_path: Path, wallclock: Path, tg: FakeTelegramServer) -> None:
        self.tmp_path, self.tg = tmp_path, tg
        self.clock = tmp_path / "clock-offset"
        self.clock.write_text("0")
        self.db = tmp_path / "katilim.db"
        self.env = subprocess_env(TELEGRAM_BOT_TOKEN=tg.token, TELEGRAM_API_URL=tg.root,
                                  DATABASE_URL=f"sqlite:///{self.db}", HTTP_PORT="0",
                                  MEDIA_DIR=str(tmp_path / "media"), LD_PRELOAD=str(wallclock),
                                  KATILIM_TEST_CLOCK_FILE=str(self.clock))
        self.log = (tmp_path / "katilim.log").open("w")
        self.proc = subprocess.Popen([*katilim(), "run"], cwd=tmp_path, env=self.env, stdout=self.log,
                                     stderr=subprocess.STDOUT)

    def step(self, seconds: float) -> None:
        self.clock.write_text(str(seconds))
        time.sleep(0.1)  # the library reads the file again every 20 ms

    def answer(self, push) -> float:
        """Seconds from a message of the resident to the bot's next message (or edit) in the chat."""
        before = len(self.tg.sent_messages(CHAT)) + len(self.edits())
        started = time.monotonic()
        push()
        self.tg.wait_for(lambda s: len(s.sent_messages(CHAT)) + len(self.edits()) > before, timeout=120)
        return time.monotonic() - started

    def edits(self) -> list:
        return [c for c in self.tg.calls_of("editMessageText") if str(c.params.get("chat_id")) == str(CHAT)]

    def broadcast(self, text: str) -> float:
        """`katilim broadcast send` (with the same stepped clock); seconds until the resident has it."""
        path = self.tmp_path / "announcement.txt"
        path.write_text(text)
        started = time.monotonic()
        done = subprocess.run([*katilim(), "broadcast", "send", "--text-file", str(path)], cwd=self.tmp_path,
                              env=self.env, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        self.tg.wait_for(lambda s: any(text in t for t in s.delivered_texts(CHAT)), timeout=120)
        return time.monotonic() - started

    def stop(self) -> str:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()
        return (self.tmp_path / "katilim.log").read_text()


@pytest.mark.slow
def test_replies_arrive_within_seconds_when_the_clock_is_stepped_back_and_forward(tmp_path, wallclock, figure):
    with FakeTelegramServer() as tg:
        run = SteppedRun(tmp_path, wallclock, tg)
        try:
            tg.wait_for(lambda s: s.calls_of("getUpdates"), timeout=30)
            run.answer(lambda: tg.push_text(CHAT, "/start"))
            run.answer(lambda: tg.push_callback(CHAT, "lang:tr"))
            run.answer(lambda: tg.push_callback(CHAT, "all"))   # every consent given
            run.answer(lambda: tg.push_callback(CHAT, "skip"))  # no mahalle: onboarded, the menu
            for _ in range(3):  # a few replies: the channel's pace is in use
                run.answer(lambda: tg.push_text(CHAT, "/menu"))

            run.step(-3600)  # the machine's clock set back an hour
            back = [run.answer(lambda: tg.push_text(CHAT, "/menu")) for _ in range(5)]
            back_broadcast = run.broadcast("Duyuru: saat geri alındıktan sonra")

            run.step(0)  # and set right again
            forward = [run.answer(lambda: tg.push_text(CHAT, "/menu")) for _ in range(5)]
            forward_broadcast = run.broadcast("Duyuru: saat düzeltildikten sonra")
            assert t_in("tr", "menu.title") in tg.delivered_texts(CHAT)[-2]  # the last: the announcement
        finally:
            output = run.stop()
    assert "Traceback" not in output, output
    engine = create_engine(f"sqlite:///{run.db}")
    with Session(engine) as db:
        tat = db.get(ChannelRate, "telegram").tat
        # the processes' clock really moved: the announcement made during the step is an hour behind
        first, second = db.exec(select(Broadcast).order_by(Broadcast.id)).all()
    engine.dispose()
    ahead = (tat - utcnow()).total_seconds()
    assert timedelta(minutes=55) < second.created_at - first.created_at < timedelta(minutes=65)
    assert max(back + forward) < HELD_BOUND, (back, forward)
    assert max(back_broadcast, forward_broadcast) < HELD_BOUND + 5, (back_broadcast, forward_broadcast)
    assert ahead < 2, f"the stored pace is {ahead:.0f}s ahead of the clock"
    figure(f"clock stepped back 1h, then forward 1h, around a Telegram conversation: slowest reply "
           f"{max(back):.2f}s after the step back, {max(forward):.2f}s after the step forward (bound "
           f"{HELD_BOUND:.0f}s); an announcement arrived in {back_broadcast:.1f}s and {forward_broadcast:.1f}s; "
           f"channel_rate.tat {ahead:+.1f}s from now at the end")


# ---------------------------------------------------------------- what a step leaves in the database
def test_a_pace_pause_or_queued_row_left_ahead_by_the_clock_is_clamped(make_app, db_url):
    """The state a clock set back an hour leaves: the channel's pace (tat) an hour ahead, a
    10-second pause after a 429 that now ends in an hour, a row queued before the step now due in
    an hour. None of them holds anything back for more than seconds."""
    app = make_app(database_url=db_url)
    hour = timedelta(hours=1)
    with transaction(app.db) as db:
        outbox.reserve_slots(db, "telegram", 1, 29.25)
        db.exec(update(ChannelRate).where(ChannelRate.channel == "telegram").values(tat=utcnow() + hour))
    with transaction(app.db) as db:
        slot = outbox.reserve_slots(db, "telegram", 10, 29.25)
    assert slot.paused_for == 0 and slot.start_in < 0.1  # reset to now, not an hour ahead
    with transaction(app.db) as db:
        nxt = outbox.reserve_slots(db, "telegram", 1, 29.25)
    assert nxt.start_in == pytest.approx(10 / 29.25, abs=0.05)  # and paced from there as before

    with transaction(app.db) as db:
        until = outbox.pause_channel(db, "telegram", 10)
        db.exec(update(ChannelRate).where(ChannelRate.channel == "telegram").values(paused_until=until + hour))
    with transaction(app.db) as db:
        assert 9 < outbox.channel_paused_for(db, "telegram") <= 10
    with transaction(app.db) as db:
        assert 9 < outbox.reserve_slots(db, "telegram", 1, 29.25).paused_for <= 10
        until = db.get(ChannelRate, "telegram").paused_until
    assert until < utcnow() + timedelta(seconds=11)  # cut in the database too
    with transaction(app.db) as db:
        assert outbox.pause_channel(db, "telegram", 10 * 3600) <= utcnow() + timedelta(seconds=outbox.MAX_PAUSE)

    with transaction(app.db) as db:  # queued (due at once, or retried in a minute) before the step
        before = [outbox.enqueue(db, "telegram", "42", Outbound(text="queued"), available_at=utcnow() + hour),
                  outbox.enqueue(db, "telegram", "43", Outbound(text="a retry"),
                                 available_at=utcnow() + hour + timedelta(minutes=1))]
        for row in before:
            row.created_at = utcnow() + hour
        later = outbox.enqueue(db, "telegram", "44", Outbound(text="a retry in a minute, after the step"),
                               available_at=utcnow() + timedelta(minutes=1))
        db.flush()
        ids = [row.id for row in before]
    with transaction(app.db) as db:
        claimed = outbox.claim(db, "w", "telegram", 10, timedelta(seconds=30))
    assert sorted(r.id for r in claimed) == ids  # due now; a backoff planned after the step still waits
    assert later.id not in [r.id for r in claimed]


async def test_scheduler_jobs_are_not_held_back_by_a_clock_set_back(make_app):
    """Set back an hour, APScheduler would plan every interval job an hour later; the scheduler's
    clock guard (monotonic) brings them back: a message accepted before a restart is still handled
    by the "inbox" job within seconds."""
    from bot.scheduler import start_scheduler, stop_jobs
    from storage import inbox
    from storage.inbox import InboundQueue

    app = make_app()
    scheduler = start_scheduler(app)
    try:
        await asyncio.sleep(0.5)  # the first runs
        with transaction(app.db) as db:
            inbox.persist(db, Inbound(channel="console", address="ayse", kind=Kind.TEXT, text="merhaba"))
            db.exec(update(InboundQueue).values(received_at=utcnow() - timedelta(minutes=2)))
        for job in scheduler.get_jobs():  # what the step leaves: every next run an hour further ahead
            job.modify(next_run_time=job.next_run_time + timedelta(hours=1))
        started = time.monotonic()
        while time.monotonic() - started < 10:
            with Session(app.db) as db:
                if not db.exec(select(InboundQueue)).all():
                    break
            await asyncio.sleep(0.1)
        took = time.monotonic() - started
    finally:
        await stop_jobs(app, scheduler)
    assert took < 3, f"the inbox job ran {took:.1f}s later"
    with Session(app.db) as db:
        replies = db.exec(select(OutboxMessage).where(OutboxMessage.address == "ayse")).all()
    assert replies  # handled: the resident was answered
