"""Helpers for the volunteer, event and reminder tests: staff records and local times. Residents are
driven by tests/support/chat.py's `Chat`."""
from __future__ import annotations

from datetime import datetime, timedelta

from storage.db import utcnow
from tests.support.chat import Chat

Person = Chat  # kept for branches in flight; remove after merge (use tests.support.chat.Chat)


def make_staff(app, person: Chat) -> Chat:
    return person.make_staff()


def local(app, text: str) -> datetime:
    from conversations.participation import parse_local

    return parse_local(text, app.engine.config.timezone)


def soon(**kw) -> datetime:
    return utcnow() + timedelta(**kw)
