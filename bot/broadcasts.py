"""The scheduler's "broadcasts" job: every few seconds, fan out the due scheduled broadcasts
(claimed through the database, so exactly once with any number of workers) and check running
ones for progress and completion (conversations/domain/broadcasts.py, storage/broadcasts.py)."""
from __future__ import annotations

import asyncio

from bot.scheduler import Job
from conversations.domain import broadcasts

INTERVAL_SECONDS = 2.0


def broadcasts_job(app) -> Job:
    tz = app.engine.config.timezone

    async def run(app=app) -> None:
        await asyncio.to_thread(broadcasts.tick, app.db, app.worker_id, tz)

    return Job("broadcasts", INTERVAL_SECONDS, run)
