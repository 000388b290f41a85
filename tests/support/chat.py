"""`Chat`: one person talking to the real engine, as every channel does (`Engine.handle`, one
transaction per message), on the console channel unless told otherwise.

    chat = Chat(app, "ayse")               # address "ayse"; Chat(app) gets a fresh one
    chat.onboard()                         # /start → Türkçe → all consents → no mahalle → menu
    chat.say("/bildir")                    # text; a leading slash makes it a command, as channels parse it
    chat.tap("yol")                        # a button
    chat.location(38.385, 27.175); chat.photo(path)
    assert chat.said == T("tr", "report.ask_description")   # the whole text of the last replies
    assert chat.state == "report.description" and chat.keys() == ["back"]

Every message carries a unique external id, the resident's language as the channel's hint and the
address as display name. Every reply is checked: an answer with the engine's apology
(engine.error, a state crashed) fails the test at once.
"""
from __future__ import annotations

import uuid
from datetime import datetime
from itertools import count
from pathlib import Path
from typing import Any

from sqlmodel import select

from conversations.i18n import LANGUAGES, translator
from conversations.messages import Inbound, Kind, Media, Outbound
from conversations.step import IDLE
from handlers.kit import parse_command
from storage.db import transaction
from storage.models import ChannelIdentity, ConsentRecord, ConversationSession, OutboxMessage, Resident, Staff

_ids = count(1)
STAFF_COLUMN = {"console": "console", "telegram": "telegram_id", "whatsapp": "whatsapp"}


def public(data: dict[str, Any] | None) -> dict[str, Any]:
    """A session's collected data without the engine's own keys (those starting with "_")."""
    return {k: v for k, v in (data or {}).items() if not k.startswith("_")}


def error_texts() -> set[str]:
    """The engine's apology (engine.error) in every language."""
    return {translator(lang)("engine.error") for lang in LANGUAGES}


class Chat:
    """One resident (or staff member) on a channel, driven through `app.engine.handle`.

    Each sending method returns the replies (a list of Outbound) and keeps them in `last`; `handled`
    is what the engine returned for the last message (`.duplicate`, `.replies`)."""

    def __init__(self, app, address: str | None = None, channel: str = "console", *, lang: str = "tr") -> None:
        self.app, self.channel, self.lang = app, channel, lang
        self.address = address or f"r-{uuid.uuid4().hex[:10]}"
        self.last: list[Outbound] = []
        self.handled = None
        self.staff = False

    # ------------------------------------------------------------ sending
    def inbound(self, kind: Kind, **fields) -> list[Outbound]:
        """Any inbound message: its kind and Inbound's fields (text=, choice=, media=, external_id=...)."""
        fields.setdefault("external_id", f"{self.address}-{next(_ids)}"[-64:])
        fields.setdefault("display_name", self.address)
        fields.setdefault("language_hint", self.lang)
        msg = Inbound(channel=self.channel, address=self.address, kind=kind, **fields)
        self.handled = self.app.engine.handle(msg)
        self.last = [out for _, out in self.handled.replies]
        crashed = error_texts() & {out.text for out in self.last}
        assert not crashed, f"the engine answered engine.error (a state crashed) in reply to {kind}: {fields!r}"
        return self.last

    def say(self, text: str) -> list[Outbound]:
        """Typed text; a command when it starts with a slash ("/bildir", "/start ev_12"), parsed as
        the channels parse it (handlers/kit.py)."""
        command = parse_command(text)
        if command is not None:
            return self.inbound(Kind.COMMAND, command=command.name, text=text)
        return self.inbound(Kind.TEXT, text=text)

    def command(self, name: str, arg: str = "") -> list[Outbound]:
        """The command `name` exactly as given (no lower-casing), typed as "/name arg"."""
        return self.inbound(Kind.COMMAND, command=name, text=f"/{name} {arg}".rstrip())

    def tap(self, key: str) -> list[Outbound]:
        """A button: the choice's key."""
        return self.inbound(Kind.CHOICE, choice=key)

    def location(self, lat: float, lon: float) -> list[Outbound]:
        return self.inbound(Kind.LOCATION, latitude=lat, longitude=lon)

    def photo(self, path: Path, content_type: str = "image/jpeg") -> list[Outbound]:
        """A photo: a file already on this machine (the console channel's way of sending one)."""
        return self.inbound(Kind.PHOTO, media=[Media(ref=str(path), content_type=content_type,
                                                     size=path.stat().st_size)])

    def voice(self, path: Path) -> list[Outbound]:
        return self.inbound(Kind.VOICE, media=[Media(ref=str(path), content_type="audio/ogg",
                                                     size=path.stat().st_size)])

    def send(self, what: Kind | str = Kind.TEXT, **fields) -> list[Outbound]:
        """`send("text")` is `say`; `send(Kind.X, **fields)` is `inbound`."""
        return self.inbound(what, **fields) if isinstance(what, Kind) else self.say(what)

    # Other names the earlier drivers used: text (say), cmd (command), choose (tap), pin (location).
    text = say
    cmd = command
    choose = tap
    pin = location

    # ------------------------------------------------------------ what was answered
    def texts(self, replies: list[Outbound] | None = None) -> str:
        """The whole text of the last replies (or of `replies`), one message a line."""
        return "\n".join(out.text for out in (self.last if replies is None else replies))

    def messages(self, replies: list[Outbound] | None = None) -> list[str]:
        """The texts of the last replies (or of `replies`), one a message."""
        return [out.text for out in (self.last if replies is None else replies)]

    @property
    def said(self) -> str:
        """The whole text of the last replies."""
        return self.texts()

    def keys(self, replies: list[Outbound] | None = None) -> list[str]:
        """The buttons' keys of the last replies (or of `replies`)."""
        return [c.key for out in (self.last if replies is None else replies) for c in out.choices]

    def notifications(self, kind: str | None = None) -> list[Outbound]:
        """Messages queued for this address outside its own conversation (outbox rows that are not
        replies), oldest first; of one kind ("notification", "reminder"...) when given."""
        with transaction(self.app.db) as db:
            query = select(OutboxMessage).where(OutboxMessage.address == self.address,
                                                OutboxMessage.channel == self.channel,
                                                OutboxMessage.kind != "reply").order_by(OutboxMessage.id)
            if kind:
                query = query.where(OutboxMessage.kind == kind)
            return [Outbound.from_dict(row.payload) for row in db.exec(query)]

    # ------------------------------------------------------------ the database
    def rows(self) -> tuple[ChannelIdentity | None, Resident | None, ConversationSession | None]:
        """(identity, resident, session) in one query; Nones before the first message."""
        with transaction(self.app.db) as db:
            row = db.exec(select(ChannelIdentity, Resident, ConversationSession)
                          .join(Resident, Resident.id == ChannelIdentity.resident_id)
                          .outerjoin(ConversationSession, ConversationSession.resident_id == Resident.id)
                          .where(ChannelIdentity.channel == self.channel, ChannelIdentity.address == self.address)
                          ).first()
            return tuple(row) if row is not None else (None, None, None)

    @property
    def resident(self) -> Resident:
        return self.rows()[1]

    @property
    def resident_id(self) -> int:
        return self.rows()[0].resident_id

    @property
    def session(self) -> ConversationSession:
        return self.rows()[2]

    @property
    def state(self) -> str:
        return self.session.state

    @property
    def data(self) -> dict[str, Any]:
        return public(self.session.data)

    def where(self) -> tuple[str | None, dict[str, Any]]:
        """(state, collected data) in one query."""
        session = self.session
        return (session.state, public(session.data)) if session is not None else (None, {})

    def consents(self) -> list[ConsentRecord]:
        with transaction(self.app.db) as db:
            return list(db.exec(select(ConsentRecord).where(ConsentRecord.resident_id == self.resident_id)
                                .order_by(ConsentRecord.id)))

    def set_session(self, state_name: str | None = None, data: dict | None = None,
                    updated_at: datetime | None = None) -> None:
        """Put the resident's session row in a given state (as a stored state from earlier code)."""
        with transaction(self.app.db) as db:
            identity = db.exec(select(ChannelIdentity).where(ChannelIdentity.channel == self.channel,
                                                             ChannelIdentity.address == self.address)).one()
            row = db.get(ConversationSession, identity.resident_id)
            if state_name is not None:
                row.state = state_name
            if data is not None:
                row.data = data
            if updated_at is not None:
                row.updated_at = updated_at
            db.add(row)

    def make_staff(self, role: str = "staff", **fields) -> "Chat":
        """A staff record for this address on its channel (before or after its first message)."""
        with transaction(self.app.db) as db:
            db.add(Staff(role=role, **{STAFF_COLUMN[self.channel]: self.address}, **fields))
        self.staff = True
        return self

    # ------------------------------------------------------------ flows
    def onboard(self, consent: str | list[bool] = "all", lang: str | None = None, mahalle: str | None = None,
                first: str = "/start") -> "Chat":
        """First contact (`first`) → language (`lang`, else the chat's) → the notice → consents ("all",
        "none", or one yes/no a purpose) → the mahalle (typed, or skipped) → the menu."""
        lang = lang or self.lang
        self.say(first)
        assert self.state == "onboarding.language", self.state
        self.tap(f"lang:{lang}")
        assert self.state == "onboarding.notice", self.state
        if isinstance(consent, str):
            self.tap(consent)
        else:
            self.tap("choose")
            for granted in consent:
                assert self.state == "onboarding.purpose", self.state
                self.tap("yes" if granted else "no")
        if self.state == "mahalle.pick":
            self.say(mahalle) if mahalle else self.tap("skip")
        assert self.state == IDLE, self.state
        return self
