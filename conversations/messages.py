"""One message model for every channel (like RapidPro's courier).

Adapters turn a Telegram update, a Twilio webhook or a terminal line into an `Inbound`, and render
an `Outbound` as Telegram keyboards, WhatsApp numbered choices or numbered terminal lines.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any


class Kind(StrEnum):
    TEXT = "text"
    COMMAND = "command"      # /start, /iptal ... (command without the slash, lower-case; args in text)
    CHOICE = "choice"        # a tapped button or a numbered answer resolved to a choice key
    LOCATION = "location"
    PHOTO = "photo"
    VOICE = "voice"
    DOCUMENT = "document"
    STICKER = "sticker"
    CONTACT = "contact"
    OTHER = "other"          # anything else (video, poll, game...)


@dataclass
class Media:
    """A file the channel holds; `ref` is what the adapter needs to download it (file id, URL).
    After App.handle: `ref` is the stored file in MEDIA_DIR (`stored`) and `content_type` what its
    bytes are, or `ref` is "" and `refused` says why it was not kept (storage/media.py's reasons)."""

    ref: str
    content_type: str = ""
    size: int | None = None
    filename: str = ""
    refused: str = ""
    stored: bool = False


@dataclass
class Inbound:
    channel: str                    # "telegram", "whatsapp", "console"
    address: str                    # chat id, phone number, terminal name
    kind: Kind
    text: str = ""
    command: str = ""
    choice: str = ""
    latitude: float | None = None
    longitude: float | None = None
    media: list[Media] = field(default_factory=list)
    phone: str = ""                 # a shared contact's number
    display_name: str = ""
    language_hint: str = ""         # e.g. Telegram's language_code
    external_id: str = ""           # update id / MessageSid, for idempotency
    received_at: datetime | None = None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["received_at"] = self.received_at.isoformat() if self.received_at else None
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Inbound":
        """The message `to_dict` wrote (storage/inbox.py keeps it as JSON)."""
        d = dict(d)
        d["kind"] = Kind(d["kind"])
        d["media"] = [Media(**m) for m in d.get("media") or []]
        if d.get("received_at"):
            d["received_at"] = datetime.fromisoformat(d["received_at"])
        return cls(**d)


@dataclass
class Choice:
    key: str
    label: str


@dataclass
class Attachment:
    filename: str
    content_type: str
    data: str                       # text content (JSON export, .ics); binary files go through `path`
    path: str = ""


_OPTIONAL_FIELDS = ("columns", "photo_path", "latitude", "longitude", "venue_title", "remove_keyboard",
                   "request_contact", "request_location", "location_hint")


@dataclass
class Outbound:
    text: str = ""
    choices: list[Choice] = field(default_factory=list)
    columns: int = 1                # how many buttons per row where the channel has buttons
    document: Attachment | None = None
    photo_path: str = ""            # a stored media file to send as a photo (caption = text)
    latitude: float | None = None
    longitude: float | None = None
    venue_title: str = ""
    remove_keyboard: bool = False
    request_contact: str = ""       # a "share my phone number" button with this label (Telegram);
                                    # channels without one show the text only
    request_location: str = ""      # a one-tap "send my location" button with this label (Telegram's
                                    # request_location); channels without one add `location_hint`
    location_hint: str = ""         # how to share a location pin where there is no such button
                                    # (WhatsApp: 📎 → Location); ignored where the button is shown
    link_preview: bool = True       # False: the channel shows no preview of the links in the text
                                    # (Telegram would fetch a one-time sign-in link to preview it)
    forget: list[dict[str, str]] | None = None  # the goodbye after an erasure: the files ({"name",
                                    # "sha256"}) a channel wrote for the recipient, to delete; once
                                    # sent, the outbox row keeps no address (storage.outbox.mark_sent)

    def to_dict(self) -> dict[str, Any]:
        """The outbox payload: only the fields set (built by hand: asdict's deep copy costs more
        than the rest of a conversation step's bookkeeping)."""
        d: dict[str, Any] = {"text": self.text}
        if self.choices:
            d["choices"] = [{"key": c.key, "label": c.label} for c in self.choices]
        if self.document is not None:
            doc = self.document
            d["document"] = {"filename": doc.filename, "content_type": doc.content_type, "data": doc.data,
                             "path": doc.path}
        for name in _OPTIONAL_FIELDS:
            value = getattr(self, name)
            if value is not None and value != "" and value is not False:  # 0.0 is a coordinate
                d[name] = value
        if not self.link_preview:
            d["link_preview"] = False
        if self.forget is not None:
            d["forget"] = [dict(item) for item in self.forget]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Outbound":
        d = dict(d)
        d["choices"] = [Choice(**c) for c in d.get("choices", [])]
        if d.get("document"):
            d["document"] = Attachment(**d["document"])
        return cls(**d)

    def choice_label(self, key: str) -> str | None:
        return next((c.label for c in self.choices if c.key == key), None)
