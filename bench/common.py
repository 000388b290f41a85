from __future__ import annotations

import os
import uuid
from dataclasses import dataclass


@dataclass
class Result:
    scenario: str
    measured: str
    reference: str
    target: str
    ok: bool | None


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return 0.0
    k = min(len(ordered) - 1, max(0, round(p / 100 * (len(ordered) - 1))))
    return ordered[k]


PG_URL = os.environ.get("KATILIM_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


def pg_url_or_none():
    """(url with a fresh schema, cleanup) or None when no PostgreSQL is reachable."""
    from sqlalchemy import create_engine, text

    try:
        engine = create_engine(PG_URL, connect_args={"connect_timeout": 3})
        schema = "bench_" + uuid.uuid4().hex[:8]
        with engine.begin() as conn:
            conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    except Exception:  # noqa: BLE001 - no PostgreSQL, for any reason: its rows say 'not measured'
        return None

    def cleanup():
        with engine.begin() as conn:
            conn.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
        engine.dispose()

    sep = "&" if "?" in PG_URL else "?"
    return f"{PG_URL}{sep}options=-csearch_path%3D{schema}", cleanup


# ---------------------------------------------------------------- helpers shared by the scenarios
def numbers(lo: int, hi: int, name: str = "seq"):
    """A CTE of the integers lo..hi (column x), generated inside the database (SQLite and
    PostgreSQL): setup inserts millions of rows with one INSERT ... SELECT, nothing built in Python."""
    from sqlalchemy import Integer, literal, select

    seq = select(literal(lo, Integer).label("x")).cte(name, recursive=True)
    return seq.union_all(select((seq.c.x + 1).label("x")).where(seq.c.x < hi))


def seed_residents(conn, n: int, *, purposes=("announcements",), first_chat: int = 10_000_000,
                   chunk: int = 100_000) -> None:
    """n onboarded residents (ids 1..n; a tenth English, a tenth Arabic) with a Telegram identity
    (chat first_chat + id) and a granted consent per purpose, in chunks of INSERT ... SELECT."""
    from sqlalchemy import Boolean, String, case, cast, insert, literal, select

    from storage.db import utcnow
    from storage.models import ChannelIdentity, ConsentRecord, Resident

    R, CI, CR = Resident.__table__, ChannelIdentity.__table__, ConsentRecord.__table__
    now = utcnow()
    for lo in range(1, n + 1, chunk):
        hi = min(n, lo + chunk - 1)
        s = numbers(lo, hi)
        when = literal(now, R.c.created_at.type)
        locale = case((s.c.x % 10 == 1, "en"), (s.c.x % 10 == 2, "ar"), else_="tr")
        conn.execute(insert(R).from_select(
            ["id", "locale", "mahalle", "display_name", "onboarded_at", "created_at", "updated_at"],
            select(s.c.x, locale, literal("kozagac", String), literal("r", String), when, when, when)))
        s = numbers(lo, hi)
        conn.execute(insert(CI).from_select(
            ["id", "resident_id", "channel", "address", "unreachable", "unreachable_reason", "last_inbound_at",
             "created_at"],
            select(s.c.x, s.c.x, literal("telegram", String), cast(s.c.x + first_chat, String),
                   literal(False, Boolean), literal("", String), literal(now, CI.c.last_inbound_at.type),
                   literal(now, CI.c.created_at.type))))
        for purpose in purposes:
            s = numbers(lo, hi)
            conn.execute(insert(CR).from_select(
                ["resident_id", "purpose", "granted", "notice_version", "channel", "recorded_at"],
                select(s.c.x, literal(purpose, String), literal(True, Boolean), literal("bench", String),
                       literal("telegram", String), literal(now, CR.c.recorded_at.type))))


def proc_status(pid: int | str = "self") -> dict[str, int]:
    """VmRSS, VmHWM... of a process in kB, from /proc/<pid>/status."""
    values = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("Vm"):
                key, _, rest = line.partition(":")
                values[key] = int(rest.split()[0])
    return values


def mb(kb: float) -> str:
    return f"{kb / 1024:.1f} MB"

