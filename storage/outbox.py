"""The outbox: every message that leaves is a row first, committed with the change that caused
it, then delivered by a dispatcher (bot/dispatcher.py, through each channel's sender:
handlers/delivery.py). Claims use leases, so a crashed worker's rows are picked up again after
`lease` passes; on PostgreSQL claims use FOR UPDATE SKIP LOCKED so several workers share one
outbox."""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Iterable, Protocol

from sqlalchemy import Text, and_, bindparam, cast, delete, false, func, insert, or_, text, true, update
from sqlmodel import Session, select

from storage.db import is_postgres, json_text, one_of, utcnow
from storage.fastsql import Prepared, connection_of, run_all
from storage.models import ChannelIdentity, ChannelRate, OutboxMessage, Resident, WorkerHeartbeat

REPLY_LEASE = timedelta(seconds=30)
# The clock can move (an administrator, NTP stepping it): what is stored is clamped when read.
# A pending row created "in the future" was queued before the clock went back (claim); a pause
# after a 429 lasts at most what was asked, MAX_PAUSE at most; a channel's pace (tat) is at most
# the dispatcher's reservations ahead (reserve_slots' horizon).
CLOCK_SKEW = timedelta(seconds=2)
MAX_PAUSE = 3600.0  # seconds: the longest retry_after honoured
PACE_HORIZON = 15.0  # seconds: reserve_slots' default horizon (half the default OUTBOX_LEASE)
PRIORITY_REPLY = 0
PRIORITY_NOTIFICATION = 3
PRIORITY_BROADCAST = 8


class Payload(Protocol):
    """What an outbox row carries: any message that serialises to JSON (conversations.messages.Outbound
    is one). Storage keeps the dict; it never builds or reads a message's words."""

    def to_dict(self) -> dict[str, Any]: ...


def enqueue(db: Session, channel: str, address: str, out: Payload, *, resident_id: int | None = None,
            kind: str = "notification", priority: int = PRIORITY_NOTIFICATION, broadcast_id: int | None = None,
            available_at: datetime | None = None) -> OutboxMessage:
    return enqueue_payload(db, channel, address, out.to_dict(), resident_id=resident_id, kind=kind, priority=priority,
                           broadcast_id=broadcast_id, available_at=available_at)


def enqueue_payload(db: Session, channel: str, address: str, payload: dict, *, resident_id: int | None = None,
                    kind: str = "notification", priority: int = PRIORITY_NOTIFICATION,
                    broadcast_id: int | None = None, available_at: datetime | None = None) -> OutboxMessage:
    """enqueue with the message's JSON already made."""
    row = OutboxMessage(channel=channel, address=address, resident_id=resident_id, kind=kind,
                        priority=priority, payload=payload, broadcast_id=broadcast_id,
                        available_at=available_at or utcnow())
    db.add(row)
    return row


def enqueue_replies(conn, identity: ChannelIdentity, replies: Iterable[Payload], *,
                    claimed_by: str, now: datetime) -> list[tuple[int, Payload]]:
    """Replies to the message being handled (`conn`: the step's connection, a Connection or a
    Session): claimed by this worker for direct sending; if the worker dies before confirming,
    the lease runs out and the dispatcher delivers them."""
    replies = list(replies)
    if not replies:
        return []
    return reply_ids(run_all(connection_of(conn), reply_statements(identity, replies, claimed_by=claimed_by, now=now)), replies)


def reply_statements(identity: ChannelIdentity, replies: Iterable[Payload], *, claimed_by: str,
                     now: datetime) -> list[tuple[Prepared, dict]]:
    """enqueue_replies' INSERT .. RETURNING id statements, one per reply, for storage.fastsql.run_all
    (the engine sends them with the session write)."""
    common = dict(channel=identity.channel, address=identity.address, resident_id=identity.resident_id,
                  claimed_by=claimed_by, until=now + REPLY_LEASE, now=now)
    return [(_INSERT_REPLY, {**common, "payload": out.to_dict()}) for out in replies]


def reply_ids(results: list[tuple[list[tuple], int]], replies: list[Payload]) -> list[tuple[int, Payload]]:
    """(outbox id, message) for each reply, from the results of run_all that begin with
    reply_statements' (each returns its row's id)."""
    return [(rows[0][0], out) for (rows, _), out in zip(results, replies)]


_O = OutboxMessage.__table__
_INSERT_REPLY = Prepared(insert(_O).values(
    channel=bindparam("channel"), address=bindparam("address"), resident_id=bindparam("resident_id"), kind="reply",
    priority=PRIORITY_REPLY, payload=bindparam("payload"), status="sending", attempts=1,
    claimed_by=bindparam("claimed_by"), claimed_until=bindparam("until"), available_at=bindparam("now"),
    created_at=bindparam("now"), error="", provider_id="").returning(_O.c.id))


def reachable_identity(db: Session, resident_id: int) -> ChannelIdentity | None:
    """The channel the resident used last and can still be reached on."""
    return db.exec(select(ChannelIdentity)
                   .where(ChannelIdentity.resident_id == resident_id, ChannelIdentity.unreachable == false())
                   .order_by(ChannelIdentity.last_inbound_at.desc().nulls_last(), ChannelIdentity.id.desc())
                   ).first()


def reachable_many(db: Session, ids: Iterable[int]) -> dict[int, tuple[str, str, str]]:
    """resident → (channel, address, language) of the identity each used last and can still be
    reached on, in two queries (conversations/notify.py composes the messages)."""
    ids = set(ids)
    if not ids:
        return {}
    locales = dict(db.exec(select(Resident.id, Resident.locale).where(one_of(db, Resident.id, ids))).all())
    best: dict[int, tuple[str, str, str]] = {}
    for rid, channel, address in db.execute(
            select(ChannelIdentity.resident_id, ChannelIdentity.channel, ChannelIdentity.address)
            .where(one_of(db, ChannelIdentity.resident_id, ids), ChannelIdentity.unreachable == false())
            .order_by(ChannelIdentity.last_inbound_at.desc().nulls_last(), ChannelIdentity.id.desc())):
        if rid in locales:
            best.setdefault(rid, (channel, address, locales[rid]))
    return best


def pending_row(channel: str, address: str, resident_id: int | None, payload: dict, *, kind: str, priority: int,
                now: datetime) -> dict:
    """The values of one pending outbox row, for insert_rows."""
    return dict(channel=channel, address=address, resident_id=resident_id, kind=kind, priority=priority,
                payload=payload, status="pending", attempts=0, available_at=now, created_at=now, claimed_by="",
                error="", provider_id="")


def insert_rows(db: Session, values: list[dict]) -> None:
    """Outbox rows with the same keys, in one statement: on PostgreSQL one JSON parameter
    (json_populate_recordset), as a hundred pipelined INSERTs cost about twice as much; on SQLite,
    in process, executemany is already cheap."""
    if not is_postgres(db):
        db.execute(insert(OutboxMessage.__table__), values)
        return
    columns = ", ".join(values[0])
    rows = [{k: v.isoformat() if isinstance(v, datetime) else v for k, v in row.items()} for row in values]
    db.execute(text(f"INSERT INTO outbox ({columns}) SELECT {columns} "
                    f"FROM json_populate_recordset(NULL::outbox, CAST(:rows AS json))"), {"rows": json_text(rows)})


def claim(db: Session, worker_id: str, channel: str, limit: int, lease: timedelta,
          now: datetime | None = None, address: str | None = None) -> list[OutboxMessage]:
    """Claim up to `limit` due rows of a channel for this worker (pending, or whose lease ran out);
    `address` narrows it to one recipient (a terminal chat prints only its own messages).

    A pending row is due at `available_at`; one created after now (by more than CLOCK_SKEW) was
    written before the clock was set back and is due now: else every row queued before the step
    would wait as long as the step. (The index's range on available_at > now holds only the
    rows waiting for a retry, a chat's pace or a set time: few.)"""
    now = now or utcnow()
    pending_due = or_(OutboxMessage.available_at <= now,
                      and_(OutboxMessage.available_at > now, OutboxMessage.created_at > now + CLOCK_SKEW))
    due = or_(and_(OutboxMessage.status == "pending", pending_due),
              and_(OutboxMessage.status == "sending", OutboxMessage.claimed_until < now))
    query = (select(OutboxMessage).where(OutboxMessage.channel == channel, due)
             .order_by(OutboxMessage.priority, OutboxMessage.id).limit(limit))
    if address is not None:
        query = query.where(OutboxMessage.address == address)
    if is_postgres(db):
        query = query.with_for_update(skip_locked=True)
    rows = list(db.exec(query))
    for row in rows:
        row.status = "sending"
        row.claimed_by = worker_id
        row.claimed_until = now + lease
        row.attempts += 1
        db.add(row)
    return rows


def mark_sent(db: Session, ids: list[int], provider_ids: list[str] | None = None,
              forget: Iterable[int] = ()) -> None:
    """Record rows as sent. `forget`: the goodbyes of residents who erased their data (an Outbound
    with `forget` set): once sent, they keep neither the address nor the payload."""
    now = utcnow()
    forget = set(forget)
    for i, row_id in enumerate(ids):
        values = {"status": "sent", "sent_at": now, "claimed_until": None, "error": ""}
        if provider_ids and provider_ids[i]:
            values["provider_id"] = provider_ids[i][:64]
        if row_id in forget:
            values.update(address="", payload={})
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


# ---------------------------------------------------------------- dispatcher support (bot/dispatcher.py)
# Outcome bookkeeping, the shared pace of a channel (GCRA on ChannelRate), worker heartbeats and
# broadcast progress. Every status change below is guarded by status == "sending" (and, where a
# worker settles its own rows, claimed_by == worker): a row whose lease ran out and was claimed by
# another worker is never overwritten by a late answer for an older attempt, except mark_sent
# (a row that really went out is recorded as sent, whoever holds it now).

WAITING_STATUSES = ("pending", "sending")
# Channels no dispatcher delivers to: the terminal prints its resident's rows when they next chat
# (handlers/console.py). For a broadcast such a row is delivered once written (to the mailbox).
MAILBOX_CHANNELS = ("console",)
FAILED_STATUSES = ("failed", "unsendable")


def _mine(worker_id: str | None):
    cond = OutboxMessage.status == "sending"
    return and_(cond, OutboxMessage.claimed_by == worker_id) if worker_id else cond


def defer(db: Session, ids: list[int], *, until: datetime | None = None, worker_id: str | None = None,
          uncount: bool = True, error: str | None = None) -> int:
    """Put claimed rows back as pending (not sent yet, not a failure: the channel is paused, the
    chat's pace is used up, the worker is stopping). `uncount` gives back the attempt the claim took."""
    if not ids:
        return 0
    values: dict = {"status": "pending", "claimed_by": "", "claimed_until": None}
    if uncount:
        values["attempts"] = OutboxMessage.attempts - 1
    if until is not None:
        values["available_at"] = until
    if error is not None:
        values["error"] = error
    result = db.exec(update(OutboxMessage).where(OutboxMessage.id.in_(ids), _mine(worker_id)).values(**values))
    return result.rowcount or 0


def retry_later(db: Session, row_id: int, until: datetime, error: str, *, worker_id: str | None = None) -> int:
    """A transient failure: pending again at `until`, the attempt stays counted."""
    result = db.exec(update(OutboxMessage).where(OutboxMessage.id == row_id, _mine(worker_id))
                     .values(status="pending", claimed_by="", claimed_until=None, available_at=until,
                             error=error[:2000]))
    return result.rowcount or 0


def hold_back_after(db: Session, row: int, channel: str, address: str, until: datetime) -> int:
    """Keep one chat in order: the chat's later waiting rows wait until `until` too (the retry time
    of row `row`, which failed transiently), so the retried row is claimed again before them."""
    result = db.exec(update(OutboxMessage).where(
        OutboxMessage.channel == channel, OutboxMessage.address == address, OutboxMessage.id > row,
        OutboxMessage.status.in_(WAITING_STATUSES), OutboxMessage.available_at < until)
        .values(available_at=until))
    return result.rowcount or 0


def finish(db: Session, ids: list[int], status: str, error: str, *, worker_id: str | None = None) -> int:
    """End claimed rows without sending: failed, unsendable or cancelled, with the reason."""
    if not ids:
        return 0
    result = db.exec(update(OutboxMessage).where(OutboxMessage.id.in_(ids), _mine(worker_id))
                     .values(status=status, claimed_by="", claimed_until=None, error=error[:2000]))
    return result.rowcount or 0


def unreachable_addresses(db: Session, channel: str, addresses: Iterable[str]) -> set[str]:
    """Which of these addresses belong to an identity marked unreachable (blocked the bot)."""
    addresses = sorted(set(addresses))
    if not addresses:
        return set()
    return set(db.exec(select(ChannelIdentity.address).where(
        ChannelIdentity.channel == channel, ChannelIdentity.address.in_(addresses),
        ChannelIdentity.unreachable == true())))


def mark_unreachable(db: Session, channel: str, address: str, reason: str) -> int:
    """The resident blocked us (or unsubscribed): mark the identity unreachable and cancel its other
    waiting rows (status "unsendable" with the reason). Nothing is sent to it again until the
    resident writes again (the engine clears `unreachable` on inbound). Returns the rows cancelled."""
    reason = reason[:255]
    db.exec(update(ChannelIdentity).where(ChannelIdentity.channel == channel, ChannelIdentity.address == address)
            .values(unreachable=True, unreachable_reason=reason))
    result = db.exec(update(OutboxMessage).where(
        OutboxMessage.channel == channel, OutboxMessage.address == address,
        or_(OutboxMessage.status == "pending",
            and_(OutboxMessage.status == "sending", OutboxMessage.claimed_until < utcnow())))
        .values(status="unsendable", claimed_by="", claimed_until=None, error=f"blocked: {reason}"))
    return result.rowcount or 0


def release_dead_workers(db: Session, channels: Iterable[str], live_worker_ids: Iterable[str]) -> int:
    """Give back the 'sending' rows of these channels held by workers that are not alive (SQLite:
    the only dispatcher starting up need not wait for their leases to run out)."""
    channels = list(channels)
    if not channels:
        return 0
    live = list(live_worker_ids)
    live += [f"{worker}/direct" for worker in live]  # replies a live worker is sending right now
    result = db.exec(update(OutboxMessage).where(
        OutboxMessage.status == "sending", OutboxMessage.channel.in_(channels),
        OutboxMessage.claimed_by.not_in(live))
        .values(status="pending", claimed_until=None, claimed_by=""))
    return result.rowcount or 0


# ------------------------------------------------ the shared pace of a channel (GCRA on ChannelRate)
@dataclass
class Reservation:
    """k consecutive send slots: slot i is due `start_in + i * interval` seconds from now (relative
    to the database's clock on PostgreSQL, so workers on hosts with skewed clocks still agree)."""

    start_in: float
    interval: float
    paused_for: float = 0.0  # > 0: the channel is paused (a 429); nothing was reserved

    def at(self, i: int) -> float:
        return self.start_in + i * self.interval


def _ensure_rate_row(db: Session, channel: str) -> None:
    if is_postgres(db):
        db.exec(text("INSERT INTO channel_rate (channel, tat) VALUES (:c, clock_timestamp()) "
                     "ON CONFLICT (channel) DO NOTHING"), params={"c": channel})
    elif db.get(ChannelRate, channel) is None:
        db.add(ChannelRate(channel=channel, tat=utcnow()))
        db.flush()


_PG_RESERVE = text(
    "UPDATE channel_rate SET tat = CASE WHEN paused_until > clock_timestamp() THEN tat "
    "WHEN tat > clock_timestamp() + make_interval(secs => :horizon) "
    "THEN clock_timestamp() + make_interval(secs => :span) "
    "ELSE GREATEST(tat, clock_timestamp()) + make_interval(secs => :span) END "
    "WHERE channel = :c "
    "RETURNING tat, paused_until, pause_seconds, clock_timestamp() AS now")


def reserve_slots(db: Session, channel: str, k: int, rate: float, *, horizon: float = PACE_HORIZON) -> Reservation:
    """Reserve k send slots of a channel paced at `rate` messages per second, shared by every
    worker (GCRA): start = max(tat, now); tat = start + k/rate; one atomic UPDATE ... RETURNING on
    PostgreSQL (SQLite: the transaction's BEGIN IMMEDIATE already serialises it). While the
    channel is paused nothing is reserved and `paused_for` says for how long.

    The clock can move: a tat further than `horizon` seconds ahead of now (no dispatcher holds
    slots further ahead: it gives back a slot more than half a lease away) was left by a clock
    since set back, and is reset to now; so is a pause longer than the one asked for (_pause_left).
    Without it a reply would wait as long as the clock was set back, and every reservation made
    meanwhile would push the pace further ahead."""
    interval = 1.0 / rate
    span = k * interval
    if is_postgres(db):
        for _ in range(2):
            row = db.exec(_PG_RESERVE, params={"c": channel, "span": span, "horizon": horizon}).first()
            if row is not None:
                break
            _ensure_rate_row(db, channel)
        tat, paused_until, pause_seconds, now = row
        paused = _pause_left(db, channel, paused_until, pause_seconds, now)
        if paused > 0:
            return Reservation(0.0, interval, paused)
        return Reservation(max(0.0, (tat - now).total_seconds() - span), interval)
    _ensure_rate_row(db, channel)
    rate_row = db.get(ChannelRate, channel, with_for_update=True)
    now = utcnow()
    paused = _pause_left(db, channel, rate_row.paused_until, rate_row.pause_seconds, now)
    if paused > 0:
        return Reservation(0.0, interval, paused)
    start = now if rate_row.tat > now + timedelta(seconds=horizon) else max(rate_row.tat, now)
    rate_row.tat = start + timedelta(seconds=span)
    db.add(rate_row)
    db.flush()
    return Reservation((start - now).total_seconds(), interval)


def _pause_left(db: Session, channel: str, paused_until: datetime | None, pause_seconds: float | None,
                now: datetime) -> float:
    """Seconds a channel's pause has left, never more than the pause asked for (MAX_PAUSE for a
    pause recorded without its length): one left longer (the clock was set back) is cut to it,
    in the database too."""
    if paused_until is None or paused_until <= now:
        return 0.0
    longest = min(MAX_PAUSE, pause_seconds if pause_seconds is not None else MAX_PAUSE)
    left = (paused_until - now).total_seconds()
    if left > longest:
        db.exec(update(ChannelRate).where(ChannelRate.channel == channel)
                .values(paused_until=now + timedelta(seconds=longest)))
        left = longest
    return left


def channel_paused_for(db: Session, channel: str) -> float:
    """Seconds the channel stays paused (0 when it is not)."""
    row = db.get(ChannelRate, channel)
    if row is None:
        return 0.0
    return _pause_left(db, channel, row.paused_until, row.pause_seconds, utcnow())


def pause_channel(db: Session, channel: str, seconds: float) -> datetime:
    """A 429: every worker pauses the channel until then (the later pause wins), for MAX_PAUSE
    at most; the length is kept with it, so a clock set back cannot make the pause longer."""
    _ensure_rate_row(db, channel)
    seconds = min(max(seconds, 0.0), MAX_PAUSE)
    until = utcnow() + timedelta(seconds=seconds)
    db.exec(update(ChannelRate).where(ChannelRate.channel == channel,
                                      or_(ChannelRate.paused_until.is_(None),
                                          ChannelRate.paused_until < until))
            .values(paused_until=until, pause_seconds=seconds))
    return until


# ---------------------------------------------------------------- worker heartbeats
def beat(db: Session, worker_id: str, role: str, dispatching: bool) -> None:
    row = db.get(WorkerHeartbeat, worker_id)
    now = utcnow()
    if row is None:
        row = WorkerHeartbeat(worker_id=worker_id, role=role, dispatching=dispatching, started_at=now)
    row.dispatching = dispatching
    row.heartbeat_at = now
    db.add(row)
    db.flush()


def live_workers(db: Session, stale_after: timedelta) -> list[WorkerHeartbeat]:
    return list(db.exec(select(WorkerHeartbeat).where(WorkerHeartbeat.heartbeat_at > utcnow() - stale_after)))


def forget_worker(db: Session, worker_id: str) -> None:
    row = db.get(WorkerHeartbeat, worker_id)
    if row is not None:
        db.delete(row)


def forget_workers_except(db: Session, live_worker_ids: Iterable[str]) -> int:
    """Remove the heartbeat rows of workers that are gone (killed, crashed)."""
    result = db.exec(delete(WorkerHeartbeat).where(WorkerHeartbeat.worker_id.not_in(list(live_worker_ids))))
    return result.rowcount or 0


# ---------------------------------------------------------------- broadcast progress
@dataclass
class BroadcastProgress:
    sent: int = 0
    failed: int = 0      # failed + unsendable (blocked, outside the window)
    waiting: int = 0     # pending + sending
    cancelled: int = 0

    @property
    def total(self) -> int:
        return self.sent + self.failed + self.waiting + self.cancelled

    @property
    def done(self) -> bool:
        return self.waiting == 0


def broadcast_progress(db: Session, broadcast_id: int) -> BroadcastProgress:
    """A broadcast's rows counted by status, for progress reports (one grouped query)."""
    progress = BroadcastProgress()
    for status, channel, count in db.exec(select(OutboxMessage.status, OutboxMessage.channel, func.count()).where(
            OutboxMessage.broadcast_id == broadcast_id).group_by(OutboxMessage.status, OutboxMessage.channel)):
        if status == "sent" or (channel in MAILBOX_CHANNELS and status in WAITING_STATUSES):
            progress.sent += count
        elif status in FAILED_STATUSES:
            progress.failed += count
        elif status in WAITING_STATUSES:
            progress.waiting += count
        else:
            progress.cancelled += count
    return progress


def documents_of(db: Session, resident_id: int) -> list[dict[str, str]]:
    """The documents sent to a resident that are still on record (their data export, calendar
    files), as {"name", "sha256"} of the bytes a channel wrote for them."""
    found: list[dict[str, str]] = []
    for payload in db.exec(select(OutboxMessage.payload).where(OutboxMessage.resident_id == resident_id)):
        doc = (payload or {}).get("document") or {}
        if doc.get("data") and doc.get("filename"):
            item = {"name": Path(doc["filename"]).name,
                    "sha256": hashlib.sha256(doc["data"].encode("utf-8")).hexdigest()}
            if item not in found:
                found.append(item)
    return found


def erase_resident(db: Session, resident_id: int, keep_ids: Iterable[int] = ()) -> int:
    """Delete a resident's outbox rows (queued messages and the archive of sent ones, with their
    address and payloads) when they delete their data; `keep_ids` still go out."""
    query = delete(OutboxMessage).where(OutboxMessage.resident_id == resident_id)
    keep_ids = list(keep_ids)
    if keep_ids:
        query = query.where(OutboxMessage.id.not_in(keep_ids))
    return db.exec(query).rowcount or 0


MIN_QUOTE = 8  # shorter texts are not searched for in others' messages (they identify no one)
QUOTE_PREFIX = 60  # a long text is searched for by its beginning (a message may shorten it)


def forget_quotes(db: Session, words: Iterable[str], names: Iterable[str]) -> int:
    """Delete the messages to others (delivered, or still waiting) that quote an erased resident's
    words or show their files: staff's view of their report, a duplicate offered to a neighbour.
    Broadcasts are staff texts and never quote a resident. Returns the rows deleted."""
    needles = {json_text(w.strip()[:QUOTE_PREFIX])[1:-1] for w in words if len(w.strip()) >= MIN_QUOTE}
    needles |= {n for n in names if n}
    if not needles:
        return 0
    searched = cast(OutboxMessage.payload, Text)
    rows = db.exec(select(OutboxMessage.id, OutboxMessage.payload).where(
        OutboxMessage.broadcast_id.is_(None), or_(*[searched.contains(n, autoescape=True) for n in sorted(needles)])))
    ids = [row_id for row_id, payload in rows if any(n in json_text(payload) for n in needles)]
    if ids:
        db.exec(delete(OutboxMessage).where(OutboxMessage.id.in_(ids)))
    return len(ids)


def purge_erased(db: Session, stuck_after: timedelta = timedelta(days=1)) -> int:
    """Housekeeping: goodbyes to residents who erased their data that were not sent (failed, or
    still waiting after `stuck_after`) are deleted with their address; sent ones lost it already."""
    anonymised = select(Resident.id).where(Resident.anonymised_at.is_not(None))
    return db.exec(delete(OutboxMessage).where(
        OutboxMessage.resident_id.in_(anonymised), OutboxMessage.address != "",
        or_(OutboxMessage.status.not_in(WAITING_STATUSES), OutboxMessage.created_at < utcnow() - stuck_after))
    ).rowcount or 0


def withdraw_announcements(db: Session, resident_id: int) -> int:
    """The "announcements" consent withdrawn: broadcasts already queued for them are not sent."""
    return db.exec(update(OutboxMessage).where(
        OutboxMessage.resident_id == resident_id, OutboxMessage.broadcast_id.is_not(None),
        OutboxMessage.status == "pending").values(status="cancelled", error="consent withdrawn")).rowcount or 0


def purge_sent(db: Session, older_than: timedelta) -> int:
    """Data minimisation: delivered and finished rows are kept only for the retention period."""
    return db.exec(delete(OutboxMessage).where(
        OutboxMessage.status.in_(("sent", "failed", "unsendable", "cancelled")),
        OutboxMessage.created_at < utcnow() - older_than)).rowcount or 0


def messages_to(db: Session, resident_id: int) -> list[dict]:
    """For the resident's data export: the messages to them still on record (sent ones are kept
    for OUTBOX_RETENTION), with their texts and the names of the files they carried."""
    rows = db.exec(select(OutboxMessage).where(OutboxMessage.resident_id == resident_id).order_by(OutboxMessage.id))
    found = []
    for row in rows:
        payload = row.payload or {}
        item = {"id": row.id, "at": _iso(row.created_at), "channel": row.channel, "kind": row.kind,
                "status": row.status, "sent_at": _iso(row.sent_at), "text": payload.get("text", ""),
                "choices": [c.get("label", "") for c in payload.get("choices") or []]}
        if payload.get("photo_path"):
            item["photo"] = Path(payload["photo_path"]).name
        if payload.get("document"):
            item["document"] = Path(payload["document"].get("filename") or "").name
        found.append(item)
    return found


def _iso(dt: datetime | None) -> str | None:
    if dt is None:
        return None
    from datetime import timezone

    return (dt if dt.tzinfo else dt.replace(tzinfo=timezone.utc)).isoformat()
