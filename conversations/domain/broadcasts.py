"""What staff do with a broadcast (send now or later, schedule a draft, cancel) and what the
scheduler does with it (fan out, follow it to the end), with the words of conversations/notify.py."""
from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy.engine import Engine
from sqlmodel import Session

from conversations.domain import authorise
from conversations.notify import BroadcastWords
from conversations.permissions import Actor
from storage import broadcasts as bc
from storage.models import Broadcast


def send(db: Session, actor: Actor, *, texts: dict[str, str | None], audience: dict[str, Any] | None,
         notify_address: str = "", photo_path: str = "", scheduled_at: datetime | None = None,
         draft: bool = False, now: datetime | None = None) -> Broadcast:
    """A new broadcast, sent at `scheduled_at` (now when None) unless `draft` (BroadcastError on bad input)."""
    authorise(db, actor, "broadcast.send", "broadcast")
    return bc.create(db, texts=texts, audience=audience, created_by=actor.who, notify_address=notify_address,
                     photo_path=photo_path, scheduled_at=scheduled_at, draft=draft, now=now)


def schedule(db: Session, actor: Actor, b: Broadcast, at: datetime, *, now: datetime | None = None) -> None:
    authorise(db, actor, "broadcast.send", f"broadcast:{b.id}")
    bc.schedule(db, b, at, actor.who, now=now)


def cancel(db: Session, actor: Actor, broadcast_id: int, *, tz: str = "Europe/Istanbul",
           now: datetime | None = None) -> bc.Cancelled | None:
    """Cancel a broadcast (an admin any, a staff member their own); None when it is unknown or
    can no longer be cancelled. The creator is told when someone else cancels it."""
    b = db.get(Broadcast, broadcast_id)
    if b is None:
        return None
    authorise(db, actor, "broadcast.cancel", f"broadcast:{broadcast_id}", owner=b.created_by)
    return bc.cancel(db, broadcast_id, actor.who, compose=BroadcastWords(tz), now=now)


# ---------------------------------------------------------------- the scheduler's part
def tick(db_engine: Engine, worker_id: str, tz: str = "Europe/Istanbul") -> None:
    """One run of the scheduler's "broadcasts" job."""
    bc.tick(db_engine, worker_id, BroadcastWords(tz))


def start_now(db_engine: Engine, broadcast_id: int, worker_id: str, tz: str = "Europe/Istanbul") -> bool:
    return bc.start_now(db_engine, broadcast_id, worker_id, BroadcastWords(tz))


def fan_out(db_engine: Engine, broadcast_id: int, worker_id: str, *, chunk: int = bc.CHUNK,
            tz: str = "Europe/Istanbul") -> int:
    return bc.fan_out(db_engine, broadcast_id, worker_id, compose=BroadcastWords(tz), chunk=chunk)


def check_running(db_engine: Engine, tz: str = "Europe/Istanbul", now: datetime | None = None) -> list[int]:
    return bc.check_running(db_engine, BroadcastWords(tz), now)
