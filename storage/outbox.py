"""The outbox: every message that leaves is a row first, committed with the change that caused
it, then delivered by a dispatcher (bot/delivery.py). Claims use leases, so a crashed worker's
rows are picked up again after `lease` passes; on PostgreSQL claims use FOR UPDATE SKIP LOCKED so
several workers share one outbox."""
from __future__ import annotations

from datetime import datetime, timedelta
from typing import Callable, Iterable

from sqlalchemy import and_, or_, update
from sqlmodel import Session, select

from conversations.i18n import Translator, translator
from conversations.messages import Outbound
from storage.db import utcnow
from storage.models import ChannelIdentity, OutboxMessage, Resident

REPLY_LEASE = timedelta(seconds=30)
PRIORITY_REPLY = 0
PRIORITY_NOTIFICATION = 3
PRIORITY_BROADCAST = 8


def enqueue(db: Session, channel: str, address: str, out: Outbound, *, resident_id: int | None = None,
            kind: str = "notification", priority: int = PRIORITY_NOTIFICATION, broadcast_id: int | None = None,
            available_at: datetime | None = None) -> OutboxMessage:
    row = OutboxMessage(channel=channel, address=address, resident_id=resident_id, kind=kind,
                        priority=priority, payload=out.to_dict(), broadcast_id=broadcast_id,
                        available_at=available_at or utcnow())
    db.add(row)
    return row


def enqueue_replies(db: Session, identity: ChannelIdentity, replies: Iterable[Outbound], *,
                    claimed_by: str, now: datetime) -> list[tuple[int, Outbound]]:
    """Replies to the message being handled: claimed by this worker for direct sending; if the
    worker dies before confirming, the lease runs out and the dispatcher delivers them."""
    rows = []
    for out in replies:
        row = OutboxMessage(channel=identity.channel, address=identity.address, resident_id=identity.resident_id,
                            kind="reply", priority=PRIORITY_REPLY, payload=out.to_dict(), status="sending",
                            claimed_by=claimed_by, claimed_until=now + REPLY_LEASE, available_at=now,
                            created_at=now)
        db.add(row)
        rows.append((row, out))
    if rows:
        db.flush()
    return [(row.id, out) for row, out in rows]


def reachable_identity(db: Session, resident_id: int) -> ChannelIdentity | None:
    """The channel the resident used last and can still be reached on."""
    return db.exec(select(ChannelIdentity)
                   .where(ChannelIdentity.resident_id == resident_id, ChannelIdentity.unreachable == False)  # noqa: E712
                   .order_by(ChannelIdentity.last_inbound_at.desc().nulls_last(), ChannelIdentity.id.desc())
                   ).first()


def notify_resident(db: Session, resident_id: int, build: Callable[[Translator, str], Outbound], *,
                    kind: str = "notification", priority: int = PRIORITY_NOTIFICATION,
                    tz: str = "Europe/Istanbul", broadcast_id: int | None = None,
                    available_at: datetime | None = None) -> int:
    """Queue a message to a resident in their own language; 0 when they cannot be reached."""
    resident = db.get(Resident, resident_id)
    identity = reachable_identity(db, resident_id) if resident else None
    if identity is None:
        return 0
    out = build(translator(resident.locale), resident.locale)
    enqueue(db, identity.channel, identity.address, out, resident_id=resident_id, kind=kind, priority=priority,
            broadcast_id=broadcast_id, available_at=available_at)
    return 1


def claim(db: Session, worker_id: str, channel: str, limit: int, lease: timedelta,
          now: datetime | None = None) -> list[OutboxMessage]:
    """Claim up to `limit` due rows of a channel for this worker (pending, or whose lease ran out)."""
    now = now or utcnow()
    due = or_(and_(OutboxMessage.status == "pending", OutboxMessage.available_at <= now),
              and_(OutboxMessage.status == "sending", OutboxMessage.claimed_until < now))
    query = (select(OutboxMessage).where(OutboxMessage.channel == channel, due)
             .order_by(OutboxMessage.priority, OutboxMessage.id).limit(limit))
    if db.get_bind().dialect.name == "postgresql":
        query = query.with_for_update(skip_locked=True)
    rows = list(db.exec(query))
    for row in rows:
        row.status = "sending"
        row.claimed_by = worker_id
        row.claimed_until = now + lease
        row.attempts += 1
        db.add(row)
    return rows


def mark_sent(db: Session, ids: list[int], provider_ids: list[str] | None = None) -> None:
    now = utcnow()
    for i, row_id in enumerate(ids):
        values = {"status": "sent", "sent_at": now, "claimed_until": None, "error": ""}
        if provider_ids and provider_ids[i]:
            values["provider_id"] = provider_ids[i][:64]
        db.exec(update(OutboxMessage).where(OutboxMessage.id == row_id, OutboxMessage.status == "sending")
                .values(**values))


def release_worker(db: Session, worker_id: str) -> int:
    """Give back rows a worker claimed but did not confirm (at a clean stop, or a restart of the
    only dispatcher on SQLite)."""
    result = db.exec(update(OutboxMessage).where(OutboxMessage.status == "sending",
                                                 OutboxMessage.claimed_by == worker_id)
                     .values(status="pending", claimed_until=None, claimed_by=""))
    return result.rowcount or 0


def release_rows(db: Session, ids: list[int]) -> None:
    """Hand claimed rows back to the dispatcher at once (a direct send failed)."""
    if ids:
        db.exec(update(OutboxMessage).where(OutboxMessage.id.in_(ids), OutboxMessage.status == "sending")
                .values(status="pending", claimed_until=None, claimed_by=""))
