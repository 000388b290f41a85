"""The inbox: webhooks that must answer at once (Twilio) write the inbound message here before
answering; the step that handles it deletes the row in its own transaction. If the process dies
in between, the scheduler's "inbox" job hands the message to the engine again (which ignores it if
it was in fact handled: ProcessedInbound)."""
from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any, Optional, Protocol

from sqlalchemy import JSON, Column, bindparam, delete
from sqlalchemy.engine import Connection
from sqlmodel import Field, Session, SQLModel, select

from storage.db import utcnow
from storage.fastsql import Prepared, connection_of


class InboundQueue(SQLModel, table=True):
    __tablename__ = "inbound_queue"
    id: Optional[int] = Field(default=None, primary_key=True)
    channel: str = Field(max_length=16)
    payload: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    received_at: datetime = Field(default_factory=utcnow, index=True)


class Message(Protocol):
    """An inbound message as the inbox keeps it: its channel and its JSON (conversations.messages.Inbound;
    conversations' `Inbound.from_dict` reads it back)."""

    channel: str

    def to_dict(self) -> dict[str, Any]: ...


def persist(db: Session, msg: Message) -> int:
    row = InboundQueue(channel=msg.channel, payload=msg.to_dict(), received_at=utcnow())
    db.add(row)
    db.flush()
    return row.id


def done(db: Session | Connection, row_id: int) -> None:
    _DONE.execute(connection_of(db), {"id": row_id})


def stale(db: Session, older_than: timedelta, limit: int = 100) -> list[tuple[int, dict[str, Any]]]:
    """Messages accepted but not handled for a while (their process died): (row id, the message's JSON)."""
    rows = db.exec(select(InboundQueue).where(InboundQueue.received_at < utcnow() - older_than)
                   .order_by(InboundQueue.id).limit(limit)).all()
    return [(row.id, dict(row.payload)) for row in rows]


_DONE = Prepared(delete(InboundQueue).where(InboundQueue.id == bindparam("id")))


def waiting_from(db: Session, addresses: set[tuple[str, str]]) -> list[InboundQueue]:
    """Messages from these (channel, address) pairs accepted and not handled yet (the inbox is
    normally empty: a row lives from a webhook's answer to the end of its step)."""
    if not addresses:
        return []
    channels = sorted({channel for channel, _ in addresses})
    rows = db.exec(select(InboundQueue).where(InboundQueue.channel.in_(channels)).order_by(InboundQueue.id)).all()
    return [row for row in rows if (row.channel, (row.payload or {}).get("address")) in addresses]


def erase_from(db: Session, addresses: set[tuple[str, str]]) -> int:
    """A resident erased their data: the raw messages they sent that wait here go too."""
    rows = waiting_from(db, addresses)
    if rows:
        db.exec(delete(InboundQueue).where(InboundQueue.id.in_([row.id for row in rows])))
    return len(rows)
