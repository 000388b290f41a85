"""The daily overdue summary (issue 15): once a day, from OVERDUE_SUMMARY_HOUR (the municipality's
local time), each staff member the bot can reach gets one message listing the open reports past
their due time that are theirs to work on: of their departments and assigned to them (every
report for an admin or a staff member without departments). Viewers only read, in the console,
and get none; nobody with nothing overdue gets one.

The "overdue_summary" job (bot/report_jobs.py) calls `send_overdue_summaries` every minute. The
day's summary of a staff member is a row (storage.panel.OverdueSummary, unique per staff member
and local day) written in the transaction that queues its outbox row, so that several workers,
restarts and the minute's runs after the first send it once: persist first, the dispatcher sends.
A process down at the hour sends it when it is back, the same day.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import date, datetime
from zoneinfo import ZoneInfo

from sqlmodel import Session

from conversations import notify
from conversations.i18n import translator
from storage import outbox, panel
from storage import report_list as rl
from storage.staff import chat_addresses, chat_staff

log = logging.getLogger(__name__)
# how many reports a summary lists (the longest overdue first); the rest are counted
SHOWN = 10
CONSOLE_LIST = "/panel/reports?overdue=1"


@dataclass
class SummaryResult:
    day: date | None = None     # the local day summarised (None: before the hour)
    sent: int = 0               # staff members told
    quiet: int = 0              # staff members with nothing overdue (nothing sent)
    reports: int = 0            # overdue reports counted in the summaries sent


def summary_day(now: datetime, *, hour: int, tz: str) -> date | None:
    """The local day whose summary is due at `now`, or None before the day's hour."""
    local = now.astimezone(ZoneInfo(tz))
    return local.date() if local.hour >= hour else None


def send_overdue_summaries(db: Session, now: datetime, *, hour: int = 8, tz: str = "Europe/Istanbul",
                           catalog=None, console_base: str = "") -> SummaryResult:
    """Queue today's summary of every staff member not summarised yet today (see the module's
    docstring). `console_base`: the console's public root (PUBLIC_BASE_URL), for the link to its
    list filtered on overdue; empty: no link."""
    day = summary_day(now, hour=hour, tz=tz)
    result = SummaryResult(day=day)
    if day is None:
        return result
    done = panel.summarised_on(db, day)
    members = [m for m in chat_staff(db) if m.id not in done]
    if not members:
        return result
    reach = chat_addresses(db, members)
    departments = panel.departments_by_staff(db)
    console_url = console_base.rstrip("/") + CONSOLE_LIST if console_base else ""
    for member in members:
        to = reach.get(member.id)
        if to is None:
            continue
        mine = () if member.role == "admin" else departments.get(member.id, ())
        total, shown = rl.overdue_of(db, now, departments=mine, staff_id=member.id, limit=SHOWN)
        if not panel.claim_summary(db, member.id, day, total, now=now):
            continue            # another worker made it meanwhile
        if not total:
            result.quiet += 1
            continue
        lang = to.locale
        message = notify.overdue_summary(translator(lang), lang, total, shown, catalog=catalog, tz=tz,
                                         console_url=console_url)
        outbox.enqueue(db, to.channel, to.address, message, resident_id=to.resident_id, kind="notification")
        result.sent += 1
        result.reports += total
    return result
