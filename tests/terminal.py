"""The terminal channel driven in-process: a person at `katilim chat --as NAME`, typing lines that
go through handlers/console.py exactly as typed ones do (parse_line, the channel kit, App.handle
with the channel's rules, ConsoleSender's printing), and reading what the screen shows.

One Terminal per application, as one `katilim chat` is one process: two people (a resident and a
staff member) are two applications on the same database."""
from __future__ import annotations

import io

from handlers import kit
from handlers.console import ConsoleChannel, parse_line


class Terminal:
    def __init__(self, app, name: str) -> None:
        self.app, self.name = app, name
        self.screen = io.StringIO()
        self.channel = ConsoleChannel(app, name, stdin=io.StringIO(), stdout=self.screen)
        app.add_channel(self.channel)
        self._read = 0

    def shown(self) -> str:
        """What the screen shows since the last look."""
        text = self.screen.getvalue()[self._read:]
        self._read = len(self.screen.getvalue())
        return text

    def everything(self) -> str:
        return self.screen.getvalue()

    async def open(self) -> str:
        """`katilim chat` starting: its greeting."""
        await self.channel.greet()
        return self.shown()

    async def type(self, line: str) -> str:
        """One typed line and what the screen shows after it."""
        msg = parse_line(self.name, line)
        assert msg is not None, "a quitting line"
        await kit.handle(self.app, msg)
        return self.shown()

    async def wait(self) -> str:
        """What others queued for this resident (a status change, a reminder, an announcement),
        printed as the running chat prints it."""
        await self.channel.deliver_pending()
        return self.shown()

    async def script(self, *lines: str) -> str:
        """Several typed lines; the screen after all of them."""
        return "".join([await self.type(line) for line in lines])

    @property
    def resident_id(self) -> int | None:
        return self.channel.resident_of(self.name)
