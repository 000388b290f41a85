"""The scheduler: a few named periodic jobs that scan the database (due reminders, scheduled
broadcasts, the outbox, housekeeping), never one APScheduler job per reminder. Its job store is
in memory and belongs to this process; the work itself is claimed through the database, so any
number of processes can run the same jobs safely. The jobs are the features' and the channels'
(bot/features.py: a job factory takes the App and returns a Job, or None when it has nothing to do
in this process)."""
from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Awaitable, Callable

from apscheduler.schedulers.asyncio import AsyncIOScheduler
from sqlalchemy import delete

from storage import attachments, outbox, panel
from storage.db import transaction, utcnow
from storage.models import ProcessedInbound

log = logging.getLogger(__name__)


@dataclass
class Job:
    name: str
    seconds: float
    run: Callable[..., Awaitable[None]]
    stop: Callable[..., Awaitable[None]] | None = None


def scan_job(app, name: str, seconds: float, scan: Callable[[Any], Any], *, failed: str) -> Job:
    """A job whose run is `scan(app)` in a thread (a database scan that commits its own work); a
    failure is logged with `failed` and the next run tries again (nothing of it was committed)."""

    async def run(app=app) -> None:
        try:
            await asyncio.to_thread(scan, app)
        except Exception:  # logged; the next run tries again
            log.exception(failed)

    return Job(name, seconds, run)


def housekeeping(app) -> Job:
    async def run(app=app) -> None:
        def purge():
            with transaction(app.db) as db:
                db.exec(delete(ProcessedInbound).where(ProcessedInbound.at < utcnow() - timedelta(days=7)))
                purged = outbox.purge_sent(db, app.settings.outbox_retention)
                goodbyes = outbox.purge_erased(db)
                swept = attachments.sweep(db, app.settings.media_dir)
                ended = panel.purge(db)  # the staff console's sessions and sign-in links ended a week ago
                panel.purge_summaries(db)  # the overdue summaries' days, after KEEP_SUMMARIES
            if ended:
                log.info("housekeeping: %d ended console sessions and sign-in links deleted", ended)
            if purged:
                log.info("housekeeping: %d delivered outbox rows past OUTBOX_RETENTION deleted", purged)
            if goodbyes:
                log.info("housekeeping: %d undelivered goodbyes to erased residents deleted", goodbyes)
            if swept:
                log.info("housekeeping: %d stored files nothing points at any more deleted", swept)

        await asyncio.to_thread(purge)

    return Job("housekeeping", 3600, run)


_RUNNING: dict[int, list[Job]] = {}
_IN_FLIGHT: dict[int, set[asyncio.Task]] = {}  # per app: the runs under way
STOP_GRACE = 10.0  # seconds the runs under way at shutdown have to finish (each is one short scan)


def _tracked(app, j: Job) -> Callable[[], Awaitable[None]]:
    """j.run, noted while under way, so that shutdown lets it finish instead of cancelling it."""
    runs = _IN_FLIGHT.setdefault(id(app), set())

    async def run() -> None:
        task = asyncio.current_task()
        runs.add(task)
        try:
            await j.run()
        finally:
            runs.discard(task)

    return run


def start_scheduler(app) -> AsyncIOScheduler:
    scheduler = AsyncIOScheduler(timezone="UTC")
    jobs = [j for j in (factory(app) for factory in app.jobs()) if j is not None]
    for j in jobs:
        scheduler.add_job(_tracked(app, j), "interval", seconds=j.seconds, id=j.name, name=j.name, max_instances=1,
                          coalesce=True, next_run_time=utcnow(), misfire_grace_time=None)
    scheduler.start()
    _RUNNING[id(app)] = jobs
    _GUARDS[id(app)] = asyncio.create_task(_clock_guard(scheduler, {j.name: j.seconds for j in jobs}),
                                           name="scheduler-clock-guard")
    log.info("scheduler started with jobs: %s", ", ".join(j.name for j in jobs))
    return scheduler


_GUARDS: dict[int, asyncio.Task] = {}
CLOCK_GUARD_INTERVAL = 1.0  # seconds (monotonic) between two looks at the jobs' next run times


def clamp_next_runs(scheduler: AsyncIOScheduler, intervals: dict[str, float], now=None) -> list[str]:
    """Jobs whose next run is further ahead than their interval (the clock was set back since it
    was planned) run now instead; the names of those moved."""
    now = now or utcnow()
    moved = []
    for scheduled in scheduler.get_jobs():
        seconds = intervals.get(scheduled.id)
        due = scheduled.next_run_time
        if seconds is None or due is None or due <= now + timedelta(seconds=seconds + CLOCK_GUARD_INTERVAL):
            continue
        scheduled.modify(next_run_time=now)
        moved.append(scheduled.id)
    return moved


async def _clock_guard(scheduler: AsyncIOScheduler, intervals: dict[str, float]) -> None:
    """APScheduler plans interval jobs on the wall clock: set back an hour, it would wait an hour
    for every job (the reminders, the broadcasts, the inbox). This loop, paced by the monotonic
    clock (asyncio's), brings such jobs back to now."""
    while True:
        await asyncio.sleep(CLOCK_GUARD_INTERVAL)
        try:
            moved = clamp_next_runs(scheduler, intervals)
        except Exception:
            log.exception("scheduler clock guard failed")
            continue
        if moved:
            log.warning("the clock went back: scheduler jobs %s run now instead of later", ", ".join(moved))


async def stop_jobs(app, scheduler: AsyncIOScheduler | None = None) -> None:
    """Shutdown: with `scheduler`, no new runs start, the runs under way finish (at most STOP_GRACE
    seconds; the scheduler's shutdown cancels what is left), then the scheduler stops; then each
    job's own stop (the outbox dispatcher's)."""
    guard = _GUARDS.pop(id(app), None)
    if guard is not None:
        guard.cancel()
        await asyncio.gather(guard, return_exceptions=True)
    if scheduler is not None:
        scheduler.pause()
        runs = _IN_FLIGHT.get(id(app), set())
        if runs:
            await asyncio.wait(set(runs), timeout=STOP_GRACE)
        scheduler.shutdown(wait=False)
    _IN_FLIGHT.pop(id(app), None)
    for j in _RUNNING.pop(id(app), []):
        if j.stop is not None:
            await j.stop()


def inbox(app) -> Job:
    """Messages a webhook accepted but whose process died before handling them."""

    async def run(app=app) -> None:
        from conversations.messages import Inbound
        from storage import inbox as queue

        def load():
            with transaction(app.db) as db:
                return [(row_id, Inbound.from_dict(payload)) for row_id, payload in queue.stale(db, timedelta(seconds=60))]

        for row_id, msg in await asyncio.to_thread(load):
            log.warning("handling %s message %s accepted before a restart", msg.channel, msg.external_id)
            try:
                await app.handle(msg, inbox_id=row_id)
            except Exception:
                log.exception("inbox message %s not handled; will retry", row_id)

    return Job("inbox", 15, run)
