"""Helpers for the volunteer, event and reminder tests: staff records and local times. Residents are
driven by tests/support/chat.py's `Chat`."""
from __future__ import annotations

from datetime import datetime, timedelta

from conversations.when import parse_when
from storage.db import utcnow
from tests.support.chat import Chat


def make_staff(app, person: Chat) -> Chat:
    return person.make_staff()


def local_time(text: str, tz: str = "Europe/Istanbul", *, base: datetime | None = None) -> datetime:
    """A local time as staff type it ("2030-11-30 14:00"), read by the one parser (past or not)."""
    return parse_when(text, utcnow(), tz, max_ahead=None, base=base, future=False)


def local(app, text: str) -> datetime:
    return local_time(text, app.engine.config.timezone)


def soon(**kw) -> datetime:
    return utcnow() + timedelta(**kw)
