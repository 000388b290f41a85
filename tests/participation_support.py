"""Helpers for the volunteer, event and reminder tests: residents talking to the real engine
(Engine.handle, one transaction per message, as every channel does) and what the outbox holds."""
from __future__ import annotations

from datetime import datetime, timedelta
from itertools import count

from sqlmodel import Session, select

from conversations.messages import Inbound, Kind, Outbound
from conversations.when import parse_when
from storage.db import transaction, utcnow
from storage.models import ChannelIdentity, OutboxMessage, Staff

_ids = count(1)


class Person:
    """A resident (or staff member) on the terminal channel, driven through Engine.handle."""

    def __init__(self, app, address: str, channel: str = "console") -> None:
        self.app, self.address, self.channel = app, address, channel
        self.last: list[Outbound] = []

    def _handle(self, **kw) -> list[Outbound]:
        msg = Inbound(channel=self.channel, address=self.address, external_id=f"{self.address}-{next(_ids)}", **kw)
        self.last = [out for _, out in self.app.engine.handle(msg).replies]
        return self.last

    def send(self, text: str) -> list[Outbound]:
        if text.startswith("/"):
            name = text[1:].split()[0].lower()
            return self._handle(kind=Kind.COMMAND, command=name, text=text)
        return self._handle(kind=Kind.TEXT, text=text)

    def tap(self, key: str) -> list[Outbound]:
        return self._handle(kind=Kind.CHOICE, choice=key)

    def location(self, lat: float, lon: float) -> list[Outbound]:
        return self._handle(kind=Kind.LOCATION, latitude=lat, longitude=lon)

    def onboard(self, consent: str = "all", lang: str = "tr") -> "Person":
        self.send("/start")
        self.tap(f"lang:{lang}")
        self.tap(consent)
        if consent != "none":
            self.tap("skip")
        return self

    @property
    def resident_id(self) -> int:
        with Session(self.app.db) as db:
            return db.exec(select(ChannelIdentity.resident_id).where(ChannelIdentity.channel == self.channel,
                                                                     ChannelIdentity.address == self.address)).one()

    def keys(self, replies: list[Outbound] | None = None) -> list[str]:
        return [c.key for out in (self.last if replies is None else replies) for c in out.choices]

    def texts(self, replies: list[Outbound] | None = None) -> str:
        return "\n".join(out.text for out in (self.last if replies is None else replies))

    def notifications(self, kind: str | None = None) -> list[Outbound]:
        """Messages queued for this resident outside their own conversation (pending outbox rows)."""
        with Session(self.app.db) as db:
            query = select(OutboxMessage).where(OutboxMessage.address == self.address,
                                                OutboxMessage.channel == self.channel,
                                                OutboxMessage.kind != "reply").order_by(OutboxMessage.id)
            if kind:
                query = query.where(OutboxMessage.kind == kind)
            return [Outbound.from_dict(row.payload) for row in db.exec(query)]


def make_staff(app, person: Person) -> Person:
    with transaction(app.db) as db:
        db.add(Staff(console=person.address, role="staff"))
    return person


def local_time(text: str, tz: str = "Europe/Istanbul", *, base: datetime | None = None) -> datetime:
    """A local time as staff type it ("2030-11-30 14:00"), read by the one parser (past or not)."""
    return parse_when(text, utcnow(), tz, max_ahead=None, base=base, future=False)


def local(app, text: str) -> datetime:
    return local_time(text, app.engine.config.timezone)


def soon(**kw) -> datetime:
    return utcnow() + timedelta(**kw)
