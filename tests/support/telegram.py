"""Telegram for the tests: the `tg` fixture (a fake Telegram Bot API server, tests/fakes/telegram_api.py;
tests/conftest.py imports it, so every test file has it), and `TelegramChat`, one person talking to
the running bot through that server: each method pushes an update, waits until the channel has
completed it, and returns the Bot API calls the bot made to this chat meanwhile (edits of a tapped
message left out, except for `push`, which returns them all)."""
from __future__ import annotations

import pytest

from tests.fakes.telegram_api import FakeTelegramServer


@pytest.fixture
def tg():
    with FakeTelegramServer() as server:
        yield server


class TelegramChat:
    def __init__(self, tg: FakeTelegramServer, channel, chat_id: int, language_code: str = "tr",
                 first_name: str = "Ayşe", timeout: float = 10) -> None:
        self.tg, self.channel, self.id, self.timeout = tg, channel, chat_id, timeout
        self.language_code, self.first_name = language_code, first_name
        self.tg._user(chat_id, first_name, language_code)

    @property
    def lang(self) -> str:
        return self.language_code

    async def push(self, method: str, *args, **kwargs) -> list:
        """Any of the fake server's push_<method> updates; every call made meanwhile, edits too."""
        before = len(self.tg.sent_messages(self.id))
        uid = getattr(self.tg, f"push_{method}")(self.id, *args, **kwargs)["update_id"]
        await self.tg.async_wait_for(lambda s: uid in self.channel.completed, timeout=self.timeout)
        return self.tg.sent_messages(self.id)[before:]

    async def _sent(self, method: str, *args, **kwargs) -> list:
        return [c for c in await self.push(method, *args, **kwargs) if c.method != "editMessageText"]

    async def say(self, text: str) -> list:
        return await self._sent("text", text, first_name=self.first_name, language_code=self.language_code)

    async def tap(self, data: str, message_id: int | None = None) -> list:
        return await self._sent("callback", data, message_id)

    async def pin(self, lat: float, lon: float) -> list:
        return await self._sent("location", lat, lon)

    async def photo(self, content: bytes) -> list:
        return await self._sent("photo", content)

    async def contact(self, phone: str) -> list:
        return await self._sent("contact", phone)

    def last_prompt(self):
        """The last message sent to this chat with buttons."""
        return [c for c in self.tg.sent_messages(self.id) if c.params.get("reply_markup")][-1]

    async def onboard(self) -> None:
        """/start → the chat's language → all consents → no mahalle."""
        await self.say("/start")
        await self.tap(f"lang:{self.language_code}")
        await self.tap("all")
        await self.tap("skip")
