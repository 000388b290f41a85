"""The `tg` fixture: a fake Telegram Bot API server (tests/fakes/telegram_api.py) for one test.
tests/conftest.py imports it, so every test file has it without defining or importing it."""
from __future__ import annotations

import pytest

from tests.fakes.telegram_api import FakeTelegramServer


@pytest.fixture
def tg():
    with FakeTelegramServer() as server:
        yield server
