"""The scheduler job of reports (issue 15), listed in bot/features.py:

* "overdue_summary" (every minute): from OVERDUE_SUMMARY_HOUR, each staff member's daily summary
  of overdue reports becomes an outbox row, once per local day (conversations/overdue.py: the
  day is recorded in the transaction that queues the message); several processes may run it.

It reads the database only: nothing is kept in the scheduler, so a restart loses nothing.
"""
from __future__ import annotations

import logging
from datetime import datetime

from bot.scheduler import Job, scan_job
from conversations import overdue
from storage.db import retrying, transaction, utcnow

log = logging.getLogger(__name__)
OVERDUE_INTERVAL = 60  # seconds between two looks (before the hour and once everyone is told: one cheap query)


def scan_overdue(app, now: datetime | None = None) -> overdue.SummaryResult:
    """Queue the summaries due at `now` (default: the clock's now), in one transaction."""
    now = now or utcnow()

    def run():
        with transaction(app.db) as db:
            return overdue.send_overdue_summaries(db, now, hour=app.settings.overdue_summary_hour,
                                                  tz=app.engine.config.timezone, catalog=app.catalog,
                                                  console_base=app.settings.public_base_url)

    result = retrying(run, what="the overdue summary")
    if result.sent or result.quiet:
        log.info("overdue summary of %s: %d staff told of %d reports, %d with nothing overdue", result.day,
                 result.sent, result.reports, result.quiet)
    return result


def overdue_summary_job(app) -> Job:
    return scan_job(app, "overdue_summary", OVERDUE_INTERVAL, scan_overdue, failed="overdue summary failed")
