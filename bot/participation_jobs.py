"""The scheduler jobs of volunteer pools and events (issue 5), listed in bot/features.py:

* "reminders" (every REMINDER_SCAN_INTERVAL seconds): due reminders become outbox rows, claimed
  race-free in the transaction that writes them (conversations.reminders.send_due_reminders);
  several processes may run it at once.
* "feedback" (every minute): after an event ends, everyone who came gets the 1-5 rating question.

Both read the database only: nothing is kept in the scheduler, so a restart loses nothing.
"""
from __future__ import annotations

import logging

from bot.scheduler import Job, scan_job
from conversations import attendance, reminders
from storage.db import retrying, transaction, utcnow

log = logging.getLogger(__name__)
BATCH = 200
FEEDBACK_INTERVAL = 60


def scan_reminders(app) -> reminders.ScanResult:
    """Send every due reminder (in batches of BATCH, one transaction each)."""
    total = reminders.ScanResult()
    tz, grace = app.engine.config.timezone, reminders.grace_of(app.settings)
    while True:
        def batch():
            with transaction(app.db) as db:
                return reminders.send_due_reminders(db, utcnow(), grace=grace, tz=tz, limit=BATCH)

        result = retrying(batch)
        total.sent += result.sent
        total.dropped += result.dropped
        if result.sent + result.dropped < BATCH:
            break
    if total.sent or total.dropped:
        log.info("reminders: %d queued, %d dropped", total.sent, total.dropped)
    return total


def ask_feedback(app) -> int:
    def run():
        with transaction(app.db) as db:
            return attendance.request_feedback(db, utcnow(), tz=app.engine.config.timezone)

    asked = retrying(run)
    if asked:
        log.info("feedback asked from %d attendees", asked)
    return asked


def reminders_job(app) -> Job:
    return scan_job(app, "reminders", app.settings.reminder_scan_interval, scan_reminders,
                    failed="reminder scan failed")


def feedback_job(app) -> Job:
    return scan_job(app, "feedback", FEEDBACK_INTERVAL, ask_feedback, failed="feedback requests failed")
