"""Engine and transactions. SQLite runs in WAL mode with a busy timeout and BEGIN IMMEDIATE;
PostgreSQL (postgresql+psycopg://) is the scale-out path with several workers on one database."""
from __future__ import annotations

import json
import time
from contextlib import contextmanager
from datetime import datetime, timezone
from typing import Iterator

from sqlalchemy import any_, bindparam, create_engine, event
from sqlalchemy.types import ARRAY
from sqlalchemy.engine import Engine
from sqlalchemy.exc import OperationalError
from sqlmodel import Session

from storage.fastsql import begin_immediate

SQLITE_BUSY_TIMEOUT_MS = 30_000
PG_CONNECT_TIMEOUT = 10  # seconds: an unreachable host stops start-up (or fails a step) instead of hanging


def json_text(value) -> str:
    """JSON columns as compact UTF-8 text ("Kozağaç", not "Koza\\u011fa\\u00e7"): a conversation's
    stored choices take about half the bytes, so fewer pages are written per step."""
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def utcnow() -> datetime:
    """Aware UTC. The database holds UTC (SQLModel's UTCDateTime), the same on SQLite and PostgreSQL."""
    return datetime.now(timezone.utc)


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


def retrying(fn, *, attempts: int = 5, delay: float = 0.2):
    """Run fn() again when the database is briefly unavailable (locked, restarting)."""
    for attempt in range(attempts):
        try:
            return fn()
        except OperationalError:
            if attempt == attempts - 1:
                raise
            time.sleep(delay * (2 ** attempt))
