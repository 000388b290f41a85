"""Reminders at scale: with N RSVPs stored (each with a pending reminder, 100 of them due now), the
cost of one due-reminder scan (bot/participation_jobs.scan_reminders, the "reminders" job) and of
start-up (build_app + start_scheduler), with the number of scheduler jobs. Beside each, in the same
run: the same on a database with only the 100 due reminders, so any growth with N shows."""
from __future__ import annotations

import asyncio
import statistics
import tempfile
import time
from datetime import timedelta
from pathlib import Path

from bench.common import Result, numbers, pg_url_or_none, seed_residents

RESIDENTS = 10_000
DUE = 100
SCAN_TARGET = "scan < 50 ms; jobs independent of reminders"


def _settings(url: str, media: Path):
    from bot.settings import load_settings

    return load_settings(database_url=url, media_dir=media, http_port=0, telegram_bot_token="", _env_file=None)


def _seed(url: str, rsvps: int) -> None:
    """RESIDENTS residents (consenting to reminders), rsvps // RESIDENTS future events each with
    every resident going, one pending reminder per RSVP; the first DUE reminders are due now."""
    from sqlalchemy import Integer, String, case, insert, literal, select

    from conversations.attendance import new_checkin_token
    from storage.db import make_engine, utcnow
    from storage.migrate import upgrade
    from storage.participation import Event, Reminder, Rsvp

    db = make_engine(url)
    upgrade(db)
    now = utcnow()
    residents = min(RESIDENTS, rsvps)
    events = max(1, rsvps // residents)
    E, RS, RM = Event.__table__, Rsvp.__table__, Reminder.__table__
    with db.begin() as conn:
        seed_residents(conn, residents, purposes=("reminders", "announcements"))
        start = now + timedelta(days=3)
        conn.execute(insert(E), [dict(id=e, title={"tr": f"Etkinlik {e}"}, description={}, type="panel",
                                      starts_at=start + timedelta(hours=e), ends_at=start + timedelta(hours=e + 2),
                                      place="Buca", going=residents, status="active",
                                      checkin_token=new_checkin_token(), sequence=0, anonymous_checkins=0,
                                      created_by="bench", created_at=now, updated_at=now)
                                 for e in range(1, events + 1)])
        for e in range(1, events + 1):
            s = numbers(1, residents)
            conn.execute(insert(RS).from_select(
                ["event_id", "resident_id", "status", "created_at", "updated_at"],
                select(literal(e, Integer), s.c.x, literal("going", String), literal(now, RS.c.created_at.type),
                       literal(now, RS.c.updated_at.type))))
            s = numbers(1, residents)
            due = case((s.c.x <= (DUE if e == 1 else 0), literal(now - timedelta(minutes=1), RM.c.due_at.type)),
                       else_=literal(start + timedelta(hours=e - 2), RM.c.due_at.type))
            conn.execute(insert(RM).from_select(
                ["resident_id", "subject_kind", "subject_id", "offset_seconds", "due_at", "status", "note",
                 "created_at"],
                select(s.c.x, literal("event", String), literal(e, Integer), literal(7200, Integer), due,
                       literal("pending", String), literal("", String), literal(now, RM.c.created_at.type))))
    if db.dialect.name == "postgresql":
        with db.connect() as conn:
            conn.exec_driver_sql("ANALYZE")
            conn.commit()
    db.dispose()


def _rearm(app) -> None:
    """The DUE reminders pending again, their outbox rows gone (so the next scan does the same work)."""
    from sqlalchemy import delete, update

    from storage.db import transaction
    from storage.models import OutboxMessage
    from storage.participation import Reminder

    with transaction(app.db) as db:
        db.exec(update(Reminder).where(Reminder.subject_id == 1, Reminder.resident_id <= DUE)
                .values(status="pending", sent_at=None, note=""))
        db.exec(delete(OutboxMessage).where(OutboxMessage.kind == "reminder"))


def _measure(url: str, media: Path, repeats: int) -> dict:
    from bot.app import build_app
    from bot.participation_jobs import scan_reminders
    from bot.scheduler import start_scheduler, stop_jobs

    async def start_and_count():
        t0 = time.perf_counter()
        app = build_app(_settings(url, media))
        sched = start_scheduler(app)
        took = time.perf_counter() - t0
        jobs = len(sched.get_jobs())
        # start() already launched each job's first run: let them finish (the reminders job's
        # first scan included), then stop, as `katilim run` does at SIGTERM
        await asyncio.sleep(0.05)
        running = [t for t in asyncio.all_tasks()  # the job runs, not what they started (heartbeats)
                   if getattr(t.get_coro(), "__name__", "") == "run_coroutine_job"]
        if running:
            await asyncio.wait(running, timeout=30)
        sched.shutdown(wait=False)
        await stop_jobs(app)
        return app, took, jobs

    app, startup, jobs = asyncio.run(start_and_count())
    _rearm(app)  # the first run of the reminders job at start-up queued the due ones
    due_scans, idle_scans, sent = [], [], 0
    for _ in range(repeats):
        t0 = time.perf_counter()
        result = scan_reminders(app)
        due_scans.append(time.perf_counter() - t0)
        sent = result.sent
        for _ in range(5):  # nothing due now: the cost of finding nothing among all the pending
            t0 = time.perf_counter()
            scan_reminders(app)
            idle_scans.append(time.perf_counter() - t0)
        _rearm(app)
    app.db.dispose()
    return dict(startup=startup, jobs=jobs, due=statistics.median(due_scans), idle=statistics.median(idle_scans),
                sent=sent)


def run(quick: bool) -> list[Result]:
    n = 100_000 if quick else 1_000_000
    repeats = 3 if quick else 7  # the median of a few: one scan alone is at the mercy of the machine
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        media = Path(tmp) / "media"
        # the imports first, so the first start-up measured does not pay for them
        import bot.app
        import bot.dispatcher
        import bot.participation_jobs  # noqa: F401 - imported for its cost, before the clock starts
        targets = [("SQLite", lambda size: (f"sqlite:///{Path(tmp) / f'rem-{size}.db'}", None)),
                   ("PostgreSQL", lambda size: pg_url_or_none())]
        for name, fresh in targets:
            measured = {}
            try:
                for size in (DUE, n):
                    got = fresh(size)
                    if got is None:
                        raise LookupError(f"{name} not reachable")
                    url, cleanup = got
                    try:
                        t0 = time.perf_counter()
                        _seed(url, size)
                        seeded = time.perf_counter() - t0
                        measured[size] = _measure(url, media, repeats)
                        measured[size]["seed"] = seeded
                    finally:
                        if cleanup:
                            cleanup()
            except LookupError as exc:
                results.append(Result(f"reminders, {name}", f"not measured: {exc}", "—", SCAN_TARGET, None))
                continue
            except Exception as exc:  # noqa: BLE001 - a failing scenario is a row of the table, not the end of the run
                results.append(Result(f"reminders, {name}", f"failed: {type(exc).__name__}: {exc}"[:200], "—",
                                      SCAN_TARGET, None))
                continue
            big, ref = measured[n], measured[DUE]
            ok = big["due"] < 0.050 and big["jobs"] == ref["jobs"] and big["sent"] == DUE
            results.append(Result(
                f"reminders, {name}: {n:,} RSVPs with a pending reminder, {DUE} due",
                f"scan {big['due'] * 1000:.1f} ms ({big['sent']} queued, "
                f"{big['due'] * 1000 / max(1, big['sent']):.1f} ms each), idle scan {big['idle'] * 1000:.1f} ms; "
                f"start-up {big['startup'] * 1000:.0f} ms, {big['jobs']} scheduler jobs",
                f"with only the {DUE} due reminders stored: scan {ref['due'] * 1000:.1f} ms, idle "
                f"{ref['idle'] * 1000:.1f} ms; start-up {ref['startup'] * 1000:.0f} ms, {ref['jobs']} jobs",
                SCAN_TARGET, ok))
    return results
