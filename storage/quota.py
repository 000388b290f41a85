"""Request budgets kept in the database (a token bucket per named bucket, as GCRA), shared by
every worker: Open311 POSTs per API key and across all keys (handlers/open311.py).

A bucket of `per_minute` requests with a `burst` holds one row: `tat`, the theoretical arrival
time of the next request (seconds since the epoch). A request at `now` is allowed when
max(tat, now) + interval stays within now + burst * interval (interval = 60 / per_minute); it then
moves tat by one interval. A refused request changes nothing and is told how long to wait.

One conditional UPDATE per bucket and request: the row lock orders concurrent workers on
PostgreSQL, where `now` is the database's clock (workers with skewed clocks agree); SQLite's
BEGIN IMMEDIATE serialises writers anyway. A tat that only a clock stepped back can explain (more
than CLOCK_SLACK beyond a full burst ahead of now) starts the bucket afresh, so a clock that moves
never holds requests back for longer than a burst's time and CLOCK_SLACK.
"""
from __future__ import annotations

import time
from typing import NamedTuple

from sqlalchemy import TextClause, text
from sqlmodel import Field, Session, SQLModel

from storage.db import is_postgres
from storage.fastsql import Prepared, connection_of, run_all

CLOCK_SLACK = 60.0  # seconds; far more than a statement waits for a row lock


class RequestQuota(SQLModel, table=True):
    __tablename__ = "request_quota"
    bucket: str = Field(max_length=80, primary_key=True)
    tat: float  # seconds since the epoch (UTC)


class _Statements(NamedTuple):
    fast_take: Prepared  # `take`, on the DBAPI cursor (storage.fastsql: pipelined on PostgreSQL)
    take: TextClause
    read: TextClause
    create: TextClause


def _statements(now: str, greatest: str, clock: str) -> _Statements:
    """The take / read / create statements, with `now` an expression of the clock, from `clock`
    (a FROM item; empty: a parameter)."""
    start = f"(CASE WHEN tat > {now} + :limit + {CLOCK_SLACK} THEN {now} ELSE {greatest}(tat, {now}) END)"
    take = text(f"UPDATE request_quota SET tat = {start} + :interval{' FROM ' + clock if clock else ''} "
                f"WHERE bucket = :b AND {start} + :interval <= {now} + :limit")
    read = text(f"SELECT tat, {now} FROM request_quota{', ' + clock if clock else ''} WHERE bucket = :b")
    create = text(f"INSERT INTO request_quota (bucket, tat) SELECT :b, {now} + :interval"
                  f"{' FROM ' + clock if clock else ''} ON CONFLICT (bucket) DO NOTHING")
    return _Statements(Prepared(take), take, read, create)


# PostgreSQL: the database's clock, constant within a statement (or a given :now). SQLite: :now.
_PG = _statements("n.t", "GREATEST", "(SELECT extract(epoch FROM statement_timestamp())::float8 AS t) AS n")
_PG_AT = _statements(":now", "GREATEST", "")
_SQLITE = _statements(":now", "max", "")


def spend(db: Session, buckets: list[tuple[str, float, int]], *, now: float | None = None) -> tuple[int, float] | None:
    """Spend one request of each (bucket, per_minute, burst) in the caller's transaction: None when
    every bucket allows it, else (index of the first bucket that refuses, seconds to wait). After a
    refusal the caller rolls its transaction back (the buckets before it were spent).
    per_minute <= 0: that bucket has no limit. On PostgreSQL the updates go in one round trip,
    in the order given (every request locks the rows in the same order)."""
    pg = is_postgres(db)
    sql = (_PG if now is None else _PG_AT) if pg else _SQLITE
    clock = {} if pg and now is None else {"now": time.time() if now is None else now}
    wanted = [(i, {"b": name[:80], "interval": 60.0 / per_minute, "limit": max(1, burst) * 60.0 / per_minute, **clock})
              for i, (name, per_minute, burst) in enumerate(buckets) if per_minute > 0]
    if not wanted:
        return None
    taken = run_all(connection_of(db), [(sql.fast_take, params) for _, params in wanted])
    for (i, params), (_, count) in zip(wanted, taken):
        if count:
            continue
        wait = _missing_or_refused(db, sql, params)
        if wait:
            return i, wait
    return None


def _missing_or_refused(db: Session, sql: _Statements, params: dict) -> float:
    """The bucket's row was missing or refused: create it (allowed), or say how long to wait."""
    for _ in range(2):
        row = db.exec(sql.read, params=params).first()
        if row is not None:
            tat, at = row
            start = at if tat > at + params["limit"] + CLOCK_SLACK else max(tat, at)
            wait = start + params["interval"] - at - params["limit"]
            if wait > 0:
                return wait
            if db.exec(sql.take, params=params).rowcount:  # the time moved on since
                return 0.0
            continue
        if db.exec(sql.create, params=params).rowcount:
            return 0.0
        # another worker created the row at that moment: take from it
    raise RuntimeError(f"request_quota row {params['b']!r} could not be read")
