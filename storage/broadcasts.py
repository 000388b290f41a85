"""Staff broadcasts: an announcement to thousands of residents, through the outbox.

A broadcast has texts per language (Turkish required; a resident whose language has no text gets
the Turkish one), an optional photo and an audience: {"mahalles": [...], "language": "en", ...}.
Each audience key is a named filter in AUDIENCE_FILTERS (an SQL condition on the resident table);
later features register theirs ("pools", "events") with `@audience_filter`.

Recipients: residents whose latest "announcements" consent is a grant, not anonymised, with a
reachable identity (the channel they used last; the terminal too: its rows wait for the
resident's next `katilim chat`, and count as delivered for the broadcast's progress). Fan-out is streamed: a few
`INSERT INTO outbox (...) SELECT ... FROM resident ...` statements per chunk of resident ids (one
per language, since texts differ), each chunk its own short transaction, so memory stays flat
and conversations are never blocked for long. Progress is kept on the broadcast row
(`fanout_cursor`), and the fan-out is leased (`fanout_by`, `fanout_until`): exactly one worker fans
a broadcast out; a crashed worker's fan-out is resumed from the cursor by another.

Status: draft → scheduled → sending → done | cancelled. A broadcast is done when its fan-out is
complete and no row is waiting; the staff member who created it (notify_address
"telegram:<chat id>") then gets a summary, and progress updates while it runs.

Storage holds no words: what a resident reads and what the staff member is told come from a
`Composer` (conversations/notify.py BroadcastWords) passed by the caller; the rows are written here,
in the transaction of the change that caused them."""
from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Callable, Protocol

from sqlalchemy import Integer, String, case, exists, false, func, insert, literal, or_, select, true
from sqlalchemy import update as sa_update
from sqlalchemy.engine import Engine as DbEngine
from sqlalchemy.sql.elements import ColumnElement
from sqlmodel import Session

from storage.audit import audit
from storage.db import is_postgres, transaction, utcnow
from storage.models import AuditLog, Broadcast, ChannelIdentity, ConsentRecord, OutboxMessage, Resident
from storage.outbox import PRIORITY_BROADCAST, PRIORITY_NOTIFICATION, broadcast_progress, enqueue_payload

log = logging.getLogger(__name__)

# The languages residents read (conversations.i18n.LANGUAGES; tests/test_architecture.py keeps them equal).
LANGUAGES = ("tr", "en", "ar")

PURPOSE = "announcements"
STATUSES = ("draft", "scheduled", "sending", "done", "cancelled")
ACTIVE = ("draft", "scheduled", "sending")
CHUNK = 50_000                      # resident ids per fan-out transaction
FANOUT_LEASE = timedelta(minutes=2)
PROGRESS_EVERY = timedelta(seconds=30)

R = Resident.__table__
CI = ChannelIdentity.__table__
CR = ConsentRecord.__table__
OUT = OutboxMessage.__table__
B = Broadcast.__table__


class BroadcastError(ValueError):
    """Invalid input (unknown audience filter, missing Turkish text...)."""


class Composer(Protocol):
    """The words of a broadcast's messages, as outbox payloads (JSON dicts)."""

    def message(self, texts: dict[str, str], photo_path: str, lang: str) -> dict[str, Any]:
        """What a resident reading `lang` gets."""

    def notice(self, event: str, lang: str, **params: Any) -> dict[str, Any]:
        """A notice to the staff member who created the broadcast: event "cancelled", "started",
        "done" or "progress"; params are numbers (and `when`, a datetime)."""


# ---------------------------------------------------------------- audience
AudienceFilter = Callable[[Any], "ColumnElement[bool] | None"]
AUDIENCE_FILTERS: dict[str, AudienceFilter] = {}


def audience_filter(name: str):
    """Register a named audience filter: value → SQL condition on the resident table (None: no filter).

    >>> @audience_filter("pools")
    ... def _pools(keys): return exists().where(pool_member.c.resident_id == R.c.id, pool_member.c.pool.in_(keys))
    """

    def deco(fn: AudienceFilter) -> AudienceFilter:
        AUDIENCE_FILTERS[name] = fn
        return fn

    return deco


def language_bucket(lang: str) -> ColumnElement[bool]:
    """Residents who read `lang` (Turkish takes everyone whose language is not another one we have)."""
    others = [x for x in LANGUAGES if x != "tr"]
    if lang == "tr":
        return or_(R.c.locale.is_(None), R.c.locale.not_in(others))
    return R.c.locale == lang


@audience_filter("mahalles")
def _by_mahalles(keys) -> ColumnElement[bool] | None:
    if not keys:
        return None
    if isinstance(keys, str) or not all(isinstance(k, str) for k in keys):
        raise BroadcastError("mahalles must be a list of mahalle keys")
    return R.c.mahalle.in_(list(keys))


@audience_filter("language")
def _by_language(lang) -> ColumnElement[bool] | None:
    if not lang:
        return None
    if lang not in LANGUAGES:
        raise BroadcastError(f"unknown language {lang!r} (use {', '.join(LANGUAGES)})")
    return language_bucket(lang)


def audience_conditions(audience: dict[str, Any] | None) -> list[ColumnElement[bool]]:
    """Who may receive a broadcast at all, narrowed by the audience's filters."""
    conditions: list[ColumnElement[bool]] = [R.c.anonymised_at.is_(None), _consented()]
    for name, value in (audience or {}).items():
        fn = AUDIENCE_FILTERS.get(name)
        if fn is None:
            raise BroadcastError(f"unknown audience filter {name!r} (known: {', '.join(sorted(AUDIENCE_FILTERS))})")
        condition = fn(value)
        if condition is not None:
            conditions.append(condition)
    return conditions


def _consented() -> ColumnElement[bool]:
    """The latest announcements consent record of the resident is a grant."""
    latest = (select(CR.c.granted).where(CR.c.resident_id == R.c.id, CR.c.purpose == PURPOSE)
              .order_by(CR.c.id.desc()).limit(1).correlate(R).scalar_subquery())
    return latest == true()


def _reachable():
    return CI.c.unreachable == false()


def _best_identity_id():
    """The identity used last (and still reachable) of the resident in the outer query."""
    ci = CI.alias("ci_best")
    return (select(ci.c.id)
            .where(ci.c.resident_id == R.c.id, ci.c.unreachable == false())
            .order_by(ci.c.last_inbound_at.desc().nulls_last(), ci.c.id.desc())
            .limit(1).correlate(R).scalar_subquery())


def _has_identity() -> ColumnElement[bool]:
    return exists().where(CI.c.resident_id == R.c.id, _reachable())


def count_recipients(db: Session, audience: dict[str, Any] | None) -> int:
    query = select(func.count()).select_from(R).where(*audience_conditions(audience), _has_identity())
    return int(db.exec(query).scalar_one())


def count_by_language(db: Session, audience: dict[str, Any] | None) -> dict[str, int]:
    """Recipients per language bucket (tr, en, ar): whose rendering they get."""
    bucket = case(*[(R.c.locale == lang, lang) for lang in LANGUAGES if lang != "tr"], else_="tr")
    query = (select(bucket.label("lang"), func.count()).select_from(R)
             .where(*audience_conditions(audience), _has_identity()).group_by(bucket))
    counts = {lang: 0 for lang in LANGUAGES}
    for lang, n in db.exec(query):
        counts[lang] = int(n)
    return counts


# ---------------------------------------------------------------- texts
def normalise_texts(texts: dict[str, str | None]) -> dict[str, str]:
    unknown = set(texts) - set(LANGUAGES)
    if unknown:
        raise BroadcastError(f"unknown language {sorted(unknown)[0]!r} (use {', '.join(LANGUAGES)})")
    clean = {lang: (text or "").strip() for lang, text in texts.items() if (text or "").strip()}
    if not clean.get("tr"):
        raise BroadcastError("the Turkish (tr) text is required")
    return clean


# ---------------------------------------------------------------- create, schedule, cancel
def create(db: Session, *, texts: dict[str, str | None], audience: dict[str, Any] | None, created_by: str,
           notify_address: str = "", photo_path: str = "", scheduled_at: datetime | None = None,
           draft: bool = False, now: datetime | None = None) -> Broadcast:
    """A new broadcast: scheduled for `scheduled_at` (now when None) unless `draft`."""
    now = now or utcnow()
    texts = normalise_texts(texts)
    audience = {k: v for k, v in (audience or {}).items() if v}
    audience_conditions(audience)  # validates every filter
    b = Broadcast(created_by=created_by[:64], created_at=now, texts=texts, photo_path=photo_path or "",
                  audience=audience, notify_address=notify_address[:96], status="draft")
    db.add(b)
    db.flush()
    audit(db, created_by, "broadcast.created", f"broadcast:{b.id}", audience=audience,
               languages=sorted(texts), photo=bool(photo_path))
    if not draft:
        schedule(db, b, scheduled_at or now, created_by, now=now)
    return b


def schedule(db: Session, b: Broadcast, at: datetime, actor: str, *, now: datetime | None = None) -> None:
    now = now or utcnow()
    if b.status != "draft":
        raise BroadcastError(f"broadcast {b.id} is {b.status}, not a draft")
    b.status = "scheduled"
    b.scheduled_at = max(at, now)
    db.add(b)
    db.flush()
    audit(db, actor, "broadcast.scheduled", f"broadcast:{b.id}", at=b.scheduled_at.isoformat(),
               now=at <= now)


@dataclass
class Cancelled:
    broadcast: Broadcast
    withdrawn: int          # pending rows that will not go
    already: int            # rows sent or on their way


def cancel(db: Session, broadcast_id: int, actor: str, *, compose: Composer,
           now: datetime | None = None) -> Cancelled | None:
    """Cancel a draft, scheduled or running broadcast; None if it cannot be (done, cancelled, unknown).
    Pending rows become "cancelled"; rows a dispatcher already claimed may still go."""
    now = now or utcnow()
    result = db.exec(sa_update(B).where(B.c.id == broadcast_id, B.c.status.in_(ACTIVE))
                        .values(status="cancelled", cancelled_by=actor[:64], finished_at=now))
    if (result.rowcount or 0) != 1:
        return None
    withdrawn = db.exec(sa_update(OUT).where(OUT.c.broadcast_id == broadcast_id, OUT.c.status == "pending")
                           .values(status="cancelled")).rowcount or 0
    b = db.get(Broadcast, broadcast_id)
    db.refresh(b)
    counts = broadcast_progress(db, broadcast_id)
    already = counts.sent + counts.failed + counts.waiting
    b.sent, b.failed = counts.sent, counts.failed
    db.add(b)
    audit(db, actor, "broadcast.cancelled", f"broadcast:{broadcast_id}", withdrawn=withdrawn, already=already)
    if b.notify_address and b.notify_address != actor:
        _notify_staff(db, b, lambda lang: compose.notice("cancelled", lang, id=b.id, by=actor, withdrawn=withdrawn,
                                                         sent=already))
    return Cancelled(b, withdrawn, already)


# ---------------------------------------------------------------- progress
@dataclass
class Progress:
    status: str
    total: int
    sent: int
    failed: int
    waiting: int
    cancelled: int
    fanned_out: bool

    @property
    def handled(self) -> int:
        return self.sent + self.failed + self.cancelled

    @property
    def percent(self) -> int:
        return 100 if not self.total else min(100, self.handled * 100 // self.total)


def progress(db: Session, b: Broadcast) -> Progress:
    counts = broadcast_progress(db, b.id)
    return Progress(status=b.status, total=max(b.total, counts.total), sent=counts.sent, failed=counts.failed,
                    waiting=counts.waiting, cancelled=counts.cancelled, fanned_out=b.fanout_done_at is not None)


def recent(db: Session, limit: int = 10) -> list[Broadcast]:
    """Every announcement, whoever made it (the chat, the CLI, the staff console) and whatever its
    status, newest first."""
    return list(db.exec(select(Broadcast).order_by(Broadcast.id.desc()).limit(limit)).scalars())


def active_for(db: Session, created_by: str | None) -> list[Broadcast]:
    """Scheduled and running broadcasts (of one staff member, or of everyone when None)."""
    query = select(Broadcast).where(Broadcast.status.in_(ACTIVE)).order_by(Broadcast.id)
    if created_by is not None:
        query = query.where(Broadcast.created_by == created_by)
    return list(db.exec(query).scalars())


# ---------------------------------------------------------------- fan-out
def claim_due(db_engine: DbEngine, worker_id: str, now: datetime | None = None) -> list[int]:
    """Claim the due scheduled broadcasts, and fan-outs whose worker stopped, for this worker.
    The claim is an UPDATE checked by its row count: exactly one worker wins each broadcast."""
    now = now or utcnow()
    claimed = []
    with transaction(db_engine) as db:
        due = db.exec(select(B.c.id).where(B.c.status == "scheduled", B.c.scheduled_at <= now)
                         .order_by(B.c.scheduled_at, B.c.id).limit(20)).scalars().all()
        stale = db.exec(select(B.c.id).where(B.c.status == "sending", B.c.fanout_done_at.is_(None),
                                                or_(B.c.fanout_until.is_(None), B.c.fanout_until < now))
                           .order_by(B.c.id).limit(20)).scalars().all()
    for broadcast_id in due:
        with transaction(db_engine) as db:
            won = db.exec(sa_update(B).where(B.c.id == broadcast_id, B.c.status == "scheduled",
                                                B.c.scheduled_at <= now)
                             .values(status="sending", started_at=now, fanout_by=worker_id,
                                     fanout_until=now + FANOUT_LEASE)).rowcount == 1
            if won:
                b = db.get(Broadcast, broadcast_id)
                audit(db, b.created_by, "broadcast.started", f"broadcast:{b.id}", worker=worker_id)
                claimed.append(broadcast_id)
    for broadcast_id in stale:
        with transaction(db_engine) as db:
            won = db.exec(sa_update(B).where(B.c.id == broadcast_id, B.c.status == "sending",
                                                B.c.fanout_done_at.is_(None),
                                                or_(B.c.fanout_until.is_(None), B.c.fanout_until < now))
                             .values(fanout_by=worker_id, fanout_until=now + FANOUT_LEASE)).rowcount == 1
            if won:
                log.warning("broadcast %s: resuming a fan-out its worker left", broadcast_id)
                claimed.append(broadcast_id)
    return claimed


def fan_out(db_engine: DbEngine, broadcast_id: int, worker_id: str, *, compose: Composer, chunk: int = CHUNK) -> int:
    """Write the outbox rows of a claimed broadcast, chunk by chunk of resident ids; returns the
    rows written by this call. Stops when the broadcast is cancelled or another worker took it."""
    with transaction(db_engine) as db:
        max_id = db.exec(select(func.max(R.c.id))).scalar() or 0
    written = 0
    while True:
        with transaction(db_engine) as db:
            b = _lock(db, broadcast_id)
            if b is None or b.status != "sending" or b.fanout_by != worker_id or b.fanout_done_at is not None:
                return written
            now = utcnow()
            if b.fanout_cursor >= max_id:
                b.fanout_done_at = now
                b.fanout_until = None
                db.add(b)
                audit(db, b.created_by, "broadcast.queued", f"broadcast:{b.id}", total=b.total)
                if b.scheduled_at and b.scheduled_at - b.created_at > timedelta(minutes=1):
                    _notify_staff(db, b, lambda lang, b=b: compose.notice("started", lang, id=b.id, total=b.total))
                return written
            lo, hi = b.fanout_cursor, min(b.fanout_cursor + chunk, max_id)
            n = _insert_chunk(db, b, lo, hi, now, compose)
            written += n
            b.fanout_cursor = hi
            b.total += n
            b.fanout_until = now + FANOUT_LEASE
            db.add(b)


def _lock(db: Session, broadcast_id: int) -> Broadcast | None:
    query = select(Broadcast).where(Broadcast.id == broadcast_id).execution_options(populate_existing=True)
    if is_postgres(db):
        query = query.with_for_update()
    return db.exec(query).scalars().first()


def _insert_chunk(db: Session, b: Broadcast, lo: int, hi: int, now: datetime, compose: Composer) -> int:
    """One INSERT ... SELECT per language for the residents lo < id <= hi."""
    conditions = audience_conditions(b.audience)
    columns = ["channel", "address", "resident_id", "kind", "priority", "payload", "status", "attempts",
               "available_at", "claimed_by", "error", "provider_id", "broadcast_id", "created_at"]
    total = 0
    for lang in LANGUAGES:
        payload = compose.message(b.texts, b.photo_path, lang)
        picked = (select(R.c.id.label("rid"), _best_identity_id().label("iid"))
                  .where(R.c.id > lo, R.c.id <= hi, language_bucket(lang), *conditions).subquery("picked"))
        query = (select(CI.c.channel, CI.c.address, picked.c.rid,
                        literal("broadcast", String), literal(PRIORITY_BROADCAST, Integer),
                        literal(payload, OUT.c.payload.type), literal("pending", String), literal(0, Integer),
                        literal(now, OUT.c.available_at.type), literal("", String), literal("", String),
                        literal("", String), literal(b.id, Integer), literal(now, OUT.c.created_at.type))
                 .select_from(picked.join(CI, CI.c.id == picked.c.iid)))
        statement = insert(OUT).from_select(columns, query).execution_options(preserve_rowcount=True)
        total += max(0, db.connection().execute(statement).rowcount or 0)
    return total


# ---------------------------------------------------------------- completion and progress notices
def check_running(db_engine: DbEngine, compose: Composer, now: datetime | None = None) -> list[int]:
    """Broadcasts whose rows are all handled become done (and their creator gets a summary);
    the others may send a progress update. Returns the ids that finished."""
    now = now or utcnow()
    finished = []
    with transaction(db_engine) as db:
        running = db.exec(select(B.c.id).where(B.c.status == "sending", B.c.fanout_done_at.is_not(None))
                             ).scalars().all()
    for broadcast_id in running:
        with transaction(db_engine) as db:
            b = db.get(Broadcast, broadcast_id)
            p = progress(db, b)
            if p.waiting == 0:
                won = db.exec(sa_update(B).where(B.c.id == b.id, B.c.status == "sending")
                                 .values(status="done", finished_at=now, sent=p.sent, failed=p.failed)).rowcount
                if won != 1:
                    continue
                db.refresh(b)
                audit(db, b.created_by, "broadcast.finished", f"broadcast:{b.id}", sent=p.sent,
                           failed=p.failed, cancelled=p.cancelled, total=p.total)
                _notify_staff(db, b, lambda lang, b=b, p=p: compose.notice("done", lang, id=b.id, sent=p.sent, failed=p.failed,
                                                                 total=p.total, when=now))
                finished.append(b.id)
                continue
            decile = p.percent // 10 * 10
            last = b.progress_at or b.started_at or now
            if 0 < decile < 100 and decile > b.progress_pct and now - last >= PROGRESS_EVERY:
                won = db.exec(sa_update(B).where(B.c.id == b.id, B.c.progress_pct < decile)
                                 .values(progress_pct=decile, progress_at=now)).rowcount
                if won == 1:
                    _notify_staff(db, b, lambda lang, b=b, p=p, decile=decile: compose.notice(
                        "progress", lang, id=b.id, percent=decile, sent=p.sent, failed=p.failed, waiting=p.waiting,
                        total=p.total))
    return finished


def tick(db_engine: DbEngine, worker_id: str, compose: Composer) -> None:
    """One run of the scheduler's "broadcasts" job."""
    for broadcast_id in claim_due(db_engine, worker_id):
        written = fan_out(db_engine, broadcast_id, worker_id, compose=compose)
        log.info("broadcast %s: %s outbox rows written", broadcast_id, written)
    check_running(db_engine, compose)


def start_now(db_engine: DbEngine, broadcast_id: int, worker_id: str, compose: Composer) -> bool:
    """Claim and fan out one due broadcast right away (the CLI's send without --at)."""
    if broadcast_id not in claim_due(db_engine, worker_id):
        return False
    fan_out(db_engine, broadcast_id, worker_id, compose=compose)
    return True


# ---------------------------------------------------------------- staff notices
def _notify_staff(db: Session, b: Broadcast, build: Callable[[str], dict[str, Any]]) -> None:
    """A notice to the address that created the broadcast ("telegram:<chat id>"), in the language
    of the resident behind it (Turkish when none)."""
    channel, _, address = (b.notify_address or "").partition(":")
    if not channel or not address:
        return
    lang = "tr"
    identity = db.exec(select(ChannelIdentity).where(ChannelIdentity.channel == channel,
                                                        ChannelIdentity.address == address)).scalars().first()
    if identity is not None:
        resident = db.get(Resident, identity.resident_id)
        if resident is not None and resident.locale in LANGUAGES:
            lang = resident.locale
    enqueue_payload(db, channel, address, build(lang), resident_id=identity.resident_id if identity else None,
                    kind="notification", priority=PRIORITY_NOTIFICATION)


def audit_rows(db: Session, broadcast_id: int) -> list[AuditLog]:
    return list(db.exec(select(AuditLog).where(AuditLog.target == f"broadcast:{broadcast_id}")
                           .order_by(AuditLog.id)).scalars())
