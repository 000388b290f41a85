"""Reminders: rows only with the "reminders" consent; the scan claims due rows race-free and
writes their outbox rows in the same transaction (never twice, even with two scanners at once);
a reminder past the grace window is dropped; delivery through the real scheduler, dispatcher and
PTB Application at the right time; exactly once across a SIGKILL and restart of `katilim run`."""
from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import threading
import time
from datetime import timedelta
from pathlib import Path

from sqlmodel import Session, select

from conversations import attendance
from conversations.domain import events as event_ops
from conversations.i18n import t_in
from conversations.permissions import Actor
from conversations.reminders import send_due_reminders
from conversations.when import span_text
from storage.db import aware, transaction, utcnow
from storage.models import OutboxMessage
from storage.participation import Event, Reminder
from tests.conftest import test_env as subprocess_env
from tests.fakes.telegram_api import FakeTelegramServer
from tests.support.chat import Chat
from tests.support.texts import consent_needed

TZ = "Europe/Istanbul"


def add_event(app, title: str, starts_in: timedelta, **kw) -> Event:
    starts = utcnow() + starts_in
    with transaction(app.db) as db:
        return event_ops.create_event(db, Actor.cli("test"), title={"tr": title, "en": title}, starts_at=starts,
                                      ends_at=starts + timedelta(hours=1), place="Buca Kent Konseyi", **kw)


def register(app, event: Event, resident_id: int, offsets) -> None:
    with transaction(app.db) as db:
        outcome, _ = attendance.register(db, event.id, resident_id, now=utcnow(), offsets=offsets)
    assert outcome == "going"


def reminders(app) -> list[Reminder]:
    with Session(app.db) as db:
        return list(db.exec(select(Reminder).order_by(Reminder.id)))


def reminder_rows(app) -> list[OutboxMessage]:
    with Session(app.db) as db:
        return list(db.exec(select(OutboxMessage).where(OutboxMessage.kind == "reminder").order_by(OutboxMessage.id)))


def test_reminders_need_consent_and_follow_the_event(make_app):
    app = make_app()
    event = add_event(app, "İklim Paneli", timedelta(days=3))
    ayse = Chat(app, "ayse").onboard(consent="none")
    ayse.send(f"/start ev_{event.id}")
    ayse.tap("rsvp")  # registering needs no consent of its own
    assert t_in("tr", "event.reminders_off_hint") in ayse.texts() and "remind" in ayse.keys()
    assert reminders(app) == []
    ayse.tap("remind")
    assert ayse.texts() == consent_needed(app, "tr", "reminders")
    ayse.tap("yes")
    assert t_in("tr", "event.reminders_enabled") in ayse.texts() and "remind" not in ayse.keys()
    rows = reminders(app)
    assert [(r.offset_seconds, r.status) for r in rows] == [(86400, "pending"), (7200, "pending")]
    assert aware(rows[0].due_at) == aware(event.starts_at) - timedelta(hours=24)

    # consent withdrawn later: the reminders are dropped at once (the participation router's on_withdrawal)...
    ayse.send("/menu")
    ayse.tap("privacy")
    ayse.tap("p:reminders")
    assert {(r.status, r.note) for r in reminders(app)} == {("dropped", "no_consent")}
    with transaction(app.db) as db:
        result = send_due_reminders(db, aware(event.starts_at) - timedelta(hours=2), grace=timedelta(hours=30), tz=TZ)
    assert (result.sent, result.dropped) == (0, 0)

    # ...and one whose consent went without that (recorded before withdrawals had effects) is
    # dropped when it comes due
    ayse.send("/menu")
    ayse.tap("privacy")
    ayse.tap("p:reminders")                      # granted again: planned again
    assert [r.status for r in reminders(app)] == ["pending", "pending"]
    ayse_id = ayse.resident_id
    with transaction(app.db) as db:
        from storage.consents import record_consent

        record_consent(db, ayse_id, "reminders", False, "old")
        result = send_due_reminders(db, aware(event.starts_at) - timedelta(hours=2), grace=timedelta(hours=30), tz=TZ)
    assert (result.sent, result.dropped) == (0, 2)
    assert {(r.status, r.note) for r in reminders(app)} == {("dropped", "no_consent")}


def test_scan_sends_each_reminder_once_and_drops_what_is_past_the_grace_window(make_app, db_url):
    app = make_app(database_url=db_url)
    people = [Chat(app, f"p{i}").onboard() for i in range(3)]
    event = add_event(app, "Kompost Atölyesi", timedelta(hours=1))
    offsets = [timedelta(minutes=50)]  # due 10 minutes ago
    for p in people:
        register(app, event, p.resident_id, offsets)
    ids = [p.resident_id for p in people]
    # made while "the bot was down": due long ago
    with transaction(app.db) as db:
        for row in db.exec(select(Reminder)).all():
            row.due_at = utcnow() - (timedelta(hours=2) if row.resident_id == ids[0] else timedelta(minutes=10))
            db.add(row)

    barrier = threading.Barrier(2)
    results = []

    def scan():
        barrier.wait()
        with transaction(app.db) as db:
            results.append(send_due_reminders(db, utcnow(), grace=timedelta(minutes=30), tz=TZ))

    threads = [threading.Thread(target=scan) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert sum(r.sent for r in results) == 2 and sum(r.dropped for r in results) == 1
    with transaction(app.db) as db:
        again = send_due_reminders(db, utcnow(), grace=timedelta(minutes=30), tz=TZ)
    assert (again.sent, again.dropped) == (0, 0)
    sent = reminder_rows(app)
    assert sorted(r.resident_id for r in sent) == sorted(ids[1:])
    assert sent[0].payload["text"] == t_in("tr", "reminder.event", title="Kompost Atölyesi", place="Buca Kent Konseyi",
                                           when=span_text(event.starts_at, event.ends_at, "tr", TZ))
    assert {(r.resident_id, r.status, r.note) for r in reminders(app)} == {
        (ids[0], "dropped", "missed"), (ids[1], "sent", ""), (ids[2], "sent", "")}


async def test_reminder_delivered_through_telegram_at_the_right_time(make_app):
    from bot.app import add_configured_channels
    from bot.scheduler import start_scheduler, stop_jobs

    with FakeTelegramServer() as tg:
        app = make_app(telegram_bot_token=tg.token, telegram_api_url=tg.root, katilim_reminder_offsets="3s",
                       reminder_scan_interval=0.5)
        add_configured_channels(app)
        channel = app.channels["telegram"]
        await channel.start()
        scheduler = start_scheduler(app)
        assert scheduler.get_job("reminders") is not None and scheduler.get_job("feedback") is not None
        try:
            chat = 6262

            async def push(fn):
                uid = fn()["update_id"]
                await tg.async_wait_for(lambda s: uid in channel.completed, timeout=10)

            for step in (lambda: tg.push_text(chat, "/start"), lambda: tg.push_callback(chat, "lang:tr"),
                         lambda: tg.push_callback(chat, "all"), lambda: tg.push_callback(chat, "skip")):
                await push(step)
            event = add_event(app, "Gençlik Forumu", timedelta(seconds=9))
            due_in = (aware(event.starts_at) - timedelta(seconds=3) - utcnow()).total_seconds()
            due_mono = time.monotonic() + due_in
            await push(lambda: tg.push_text(chat, f"/start ev_{event.id}"))
            await push(lambda: tg.push_callback(chat, "rsvp"))

            def reminder_calls(s):
                return [c for c in s.delivered if c.text and c.text.startswith("⏰ Hatırlatma: Gençlik Forumu")]

            (call,) = await tg.async_wait_for(reminder_calls, timeout=15)
            assert due_mono - 0.2 <= call.time <= due_mono + 4, (call.time - due_mono)  # never early
            assert "ev:%d:c" % event.id in str(call.params["reply_markup"])
            await asyncio.sleep(1.5)
            assert len(reminder_calls(tg)) == 1
        finally:
            scheduler.shutdown(wait=False)
            await stop_jobs(app)
            await channel.stop()


async def test_shutdown_lets_a_scan_under_way_finish(make_app, caplog):
    """SIGTERM while a job's scan runs (the first runs start with the scheduler): `katilim run`
    stops the scheduler after the scan is done, not by cancelling it mid-way (which APScheduler
    logs as the job's error, with a traceback)."""
    from bot.features import FEATURES, Feature
    from bot.scheduler import Job, start_scheduler, stop_jobs

    ran = {"started": threading.Event(), "finished": False}

    def slow_scan(app) -> Job:
        async def run() -> None:
            ran["started"].set()
            await asyncio.to_thread(time.sleep, 0.5)
            ran["finished"] = True

        return Job("slow-scan", 3600, run)

    app = make_app(features=FEATURES + (Feature("slow", jobs=(slow_scan,)),))
    scheduler = start_scheduler(app)
    await asyncio.to_thread(ran["started"].wait, 10)
    await stop_jobs(app, scheduler)
    assert ran["finished"]
    assert not scheduler.running
    assert "raised an exception" not in caplog.text


def katilim_run(env: dict, cwd: Path, log) -> subprocess.Popen:
    script = Path(sys.executable).parent / "katilim"
    cmd = [str(script)] if script.exists() else [sys.executable, "-m", "bot.cli"]
    return subprocess.Popen([*cmd, "run"], cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT)


def test_exactly_once_across_a_restart_of_katilim_run(make_app, tmp_path):
    app = make_app()
    chat = "7373"
    person = Chat(app, chat, channel="telegram").onboard()
    log_path = tmp_path / "run.log"
    with FakeTelegramServer() as tg, log_path.open("w") as log:
        env = subprocess_env(TELEGRAM_BOT_TOKEN=tg.token, TELEGRAM_API_URL=tg.root,
                             DATABASE_URL=app.settings.database_url, HTTP_PORT="0",
                             MEDIA_DIR=str(tmp_path / "media"), KATILIM_REMINDER_OFFSETS="3s",
                             REMINDER_SCAN_INTERVAL="0.5", REMINDER_GRACE="30m")

        def texts(title):
            return [t for t in tg.delivered_texts(chat) if t.startswith(f"⏰ Hatırlatma: {title}")]

        first = katilim_run(env, tmp_path, log)
        second = None
        try:
            tg.wait_for(lambda s: s.calls_of("getUpdates"), timeout=30)
            a = add_event(app, "Etkinlik A", timedelta(seconds=60))
            register(app, a, person.resident_id, [timedelta(seconds=58)])  # due in 2 s
            tg.wait_for(lambda s: texts("Etkinlik A"), timeout=20)
            deadline = time.monotonic() + 10
            while not any(r.status == "sent" for r in reminder_rows(app)) and time.monotonic() < deadline:
                time.sleep(0.1)
            first.send_signal(signal.SIGKILL)  # no clean stop
            first.wait(10)

            b = add_event(app, "Etkinlik B", timedelta(seconds=60))
            register(app, b, person.resident_id, [timedelta(seconds=59)])  # due in 1 s
            time.sleep(2)  # B's reminder comes due while nothing runs
            assert texts("Etkinlik B") == []
            second = katilim_run(env, tmp_path, log)
            tg.wait_for(lambda s: texts("Etkinlik B"), timeout=30)  # late, within the grace window
            time.sleep(2)  # a few more scans: nothing is sent again
        finally:
            for proc in (first, second):
                if proc is not None and proc.poll() is None:
                    proc.send_signal(signal.SIGTERM)
                    try:
                        proc.wait(10)
                    except subprocess.TimeoutExpired:
                        proc.kill()
        output = log_path.read_text()
        assert len(texts("Etkinlik A")) == 1, output
        assert len(texts("Etkinlik B")) == 1, output
    assert [(r.subject_id, r.status) for r in reminders(app)] == [(a.id, "sent"), (b.id, "sent")]
    assert "Traceback" not in output, output
