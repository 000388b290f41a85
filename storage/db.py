"""Engine and transactions. SQLite runs in WAL mode with a busy timeout and BEGIN IMMEDIATE;
PostgreSQL (postgresql+psycopg://) is the scale-out path with several workers on one database."""
from __future__ import annotations

import asyncio
import json
import logging
import time
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Awaitable, Callable, Iterator, TypeVar

from sqlalchemy import any_, bindparam, create_engine, event
from sqlalchemy.engine import Engine
from sqlalchemy.exc import OperationalError
from sqlalchemy.types import ARRAY
from sqlmodel import Session

from storage.fastsql import begin_immediate

log = logging.getLogger(__name__)
T = TypeVar("T")

SQLITE_BUSY_TIMEOUT_MS = 30_000
PG_CONNECT_TIMEOUT = 10  # seconds: an unreachable host stops start-up (or fails a step) instead of hanging


def json_text(value) -> str:
    """JSON columns as compact UTF-8 text ("Kozağaç", not "Koza\\u011fa\\u00e7"): a conversation's
    stored choices take about half the bytes, so fewer pages are written per step."""
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def utcnow() -> datetime:
    """Aware UTC. The database holds UTC (SQLModel's UTCDateTime), the same on SQLite and PostgreSQL."""
    return datetime.now(timezone.utc)


def aware(dt: datetime | None) -> datetime | None:
    """A datetime read back from the database as UTC (SQLite returns naive values; None stays None)."""
    if dt is None:
        return None
    return dt if dt.tzinfo else dt.replace(tzinfo=timezone.utc)


def is_sqlite(engine: Engine) -> bool:
    return engine.dialect.name == "sqlite"


def is_postgres(db: Session) -> bool:
    """The session's database is PostgreSQL (statements with a PostgreSQL form of their own)."""
    return db.get_bind().dialect.name == "postgresql"


def one_of(db: Session, column, values):
    """`column IN (values)` for a batch of ids; on PostgreSQL `column = ANY(:array)`, one parameter
    whatever the batch's size, so the statement's text is the same for every batch (psycopg
    converts it once, the server plans a short statement)."""
    values = list(values)
    if is_postgres(db):
        return column == any_(bindparam(None, values, type_=ARRAY(column.type)))
    return column.in_(values)


def make_engine(url: str, *, pool_size: int = 5, sqlite_synchronous: str = "FULL") -> Engine:
    """sqlite_synchronous FULL: every commit is on disk before the step answers (survives a power
    loss, not only a crash of the process); NORMAL: faster, survives a crash of the process."""
    synchronous = sqlite_synchronous.upper()
    if synchronous not in ("FULL", "NORMAL"):
        raise ValueError("sqlite_synchronous must be FULL or NORMAL")
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url[len("postgresql://"):]
    if url.startswith("sqlite"):
        engine = create_engine(url, json_serializer=json_text,
                               connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000, "check_same_thread": False})

        @event.listens_for(engine, "connect")
        def _on_connect(dbapi_conn, _record):
            dbapi_conn.isolation_level = None  # we issue BEGIN ourselves
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
            cur.execute(f"PRAGMA synchronous={synchronous}")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.close()

        @event.listens_for(engine, "begin")
        def _on_begin(conn):
            # Take the write lock at the start: no deadlock when a reader later wants to write.
            begin_immediate(conn)

        return engine
    connect_args = {} if "connect_timeout" in url else {"connect_timeout": PG_CONNECT_TIMEOUT}
    return create_engine(url, json_serializer=json_text, pool_size=pool_size, max_overflow=10, pool_pre_ping=True,
                         connect_args=connect_args)


@contextmanager
def transaction(engine: Engine) -> Iterator[Session]:
    """One unit of work: commit on success, roll back on error."""
    with Session(engine, expire_on_commit=False) as session:
        try:
            yield session
            session.commit()
        except BaseException:
            session.rollback()
            raise


@dataclass(frozen=True)
class RetryPolicy:
    """How work that meets an unavailable database is tried again: SQLite locked past its busy
    timeout, PostgreSQL restarting or failing over (a dropped connection). The work runs again
    after each of `delays` (its transaction rolled back, so nothing of a failed try stays); after
    the last one the error goes to the caller. Only OperationalError counts: a bug or a refused
    constraint is not made better by waiting."""

    delays: tuple[float, ...]

    def call(self, fn: Callable[[], T], *, what: str = "the work") -> T:
        """fn() in this thread, retried (time.sleep between tries)."""
        for delay in self.delays:
            try:
                return fn()
            except OperationalError as exc:
                self._waiting(what, delay, exc)
            time.sleep(delay)
        return fn()

    async def call_async(self, fn: Callable[[], Awaitable[T]], *, what: str = "the work") -> T:
        """await fn(), retried (asyncio.sleep between tries: the event loop goes on)."""
        for delay in self.delays:
            try:
                return await fn()
            except OperationalError as exc:
                self._waiting(what, delay, exc)
            await asyncio.sleep(delay)
        return await fn()

    @staticmethod
    def _waiting(what: str, delay: float, exc: OperationalError) -> None:
        # The driver's message only (never the statement's parameters: they can hold a resident's words).
        reason = (str(getattr(exc, "orig", None) or type(exc).__name__).strip().splitlines() or [""])[0][:200]
        log.warning("database busy or unreachable (%s); %s again in %.1fs", reason, what, delay)


# The one retry policy: a conversation step on every channel, and the scheduler's scans, meet an
# unavailable database (a PostgreSQL restart takes seconds, a failover up to a minute) by trying
# again after 0.5, 1, 2, then every 3 seconds, for about a minute in all.
DB_RETRY = RetryPolicy((0.5, 1.0, 2.0) + (3.0,) * 18)


def retrying(fn: Callable[[], T], *, what: str = "the work") -> T:
    """fn() in this thread, run again by DB_RETRY while the database is unavailable."""
    return DB_RETRY.call(fn, what=what)
