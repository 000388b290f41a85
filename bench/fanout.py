"""Broadcast fan-out: one broadcast to every resident turned into outbox rows (storage/broadcasts.py:
claim + chunked INSERT ... SELECT), timed, with the peak resident memory it took measured in a fresh
subprocess at two sizes (flat in the number of recipients when it is streamed). Beside it, in the
same run: the floor, one plain INSERT ... SELECT writing the same number of outbox rows with no
audience rules, and the memory at the smaller size.

`python -m bench.fanout --child URL` is the measuring subprocess (prints one JSON line)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time

from bench.common import Result, mb, proc_status, seed_residents

TARGET = "< 30 s on SQLite; memory flat"


def _child(url: str) -> None:
    """Fan out the one scheduled broadcast of the database at `url`; print time and memory."""
    from sqlalchemy import func, select

    from conversations.domain import broadcasts as domain_broadcasts
    from storage import broadcasts
    from storage.db import make_engine, transaction
    from storage.models import OutboxMessage

    db = make_engine(url)
    with transaction(db) as s:
        broadcast_id = s.exec(select(func.max(broadcasts.B.c.id))).scalar_one()
    base = proc_status()["VmRSS"]
    try:  # reset the high-water mark to the current RSS (Linux >= 4.0)
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        reset = True
    except OSError:
        reset = False
    t0 = time.perf_counter()
    ok = domain_broadcasts.start_now(db, broadcast_id, "bench-fanout")
    took = time.perf_counter() - t0
    peak = proc_status()["VmHWM"]
    with transaction(db) as s:
        rows = s.exec(select(func.count()).select_from(OutboxMessage.__table__)
                      .where(OutboxMessage.__table__.c.broadcast_id == broadcast_id)).scalar_one()
    print(json.dumps(dict(ok=ok, seconds=took, rows=rows, base_kb=base, peak_kb=peak, reset=reset)))


def _prepare(url: str, n: int) -> float:
    """Migrated database with n consenting residents and one broadcast scheduled now."""
    from storage import broadcasts
    from storage.db import make_engine, transaction
    from storage.migrate import upgrade

    db = make_engine(url)
    upgrade(db)
    t0 = time.perf_counter()
    with db.begin() as conn:
        seed_residents(conn, n)
    if db.dialect.name == "postgresql":
        with db.connect() as conn:
            conn.exec_driver_sql("ANALYZE")
            conn.commit()
    with transaction(db) as s:
        broadcasts.create(s, texts={"tr": "Pazar günü Kozağaç parkında fidan dikimi var.",
                                    "en": "Tree planting in Kozağaç park on Sunday."},
                          audience={}, created_by="bench")
    db.dispose()
    return time.perf_counter() - t0


def _floor(url: str, n: int) -> float:
    """One INSERT ... SELECT of n outbox rows straight from channel_identity (no rules, one payload)."""
    from sqlalchemy import Integer, String, insert, literal, select

    from conversations.messages import Outbound
    from storage.db import make_engine, utcnow
    from storage.models import ChannelIdentity, OutboxMessage

    OUT, CI = OutboxMessage.__table__, ChannelIdentity.__table__
    db = make_engine(url)
    now = utcnow()
    payload = Outbound(text="Pazar günü Kozağaç parkında fidan dikimi var.").to_dict()
    query = select(CI.c.channel, CI.c.address, CI.c.resident_id, literal("broadcast", String), literal(8, Integer),
                   literal(payload, OUT.c.payload.type), literal("pending", String), literal(0, Integer),
                   literal(now, OUT.c.available_at.type), literal("", String), literal("", String),
                   literal("", String), literal(-1, Integer), literal(now, OUT.c.created_at.type))
    columns = ["channel", "address", "resident_id", "kind", "priority", "payload", "status", "attempts",
               "available_at", "claimed_by", "error", "provider_id", "broadcast_id", "created_at"]
    t0 = time.perf_counter()
    with db.begin() as conn:
        conn.execute(insert(OUT).from_select(columns, query))
    took = time.perf_counter() - t0
    db.dispose()
    return took


def _measure(url: str, n: int) -> dict:
    _prepare(url, n)
    proc = subprocess.run([sys.executable, "-m", "bench.fanout", "--child", url], capture_output=True, text=True,
                          timeout=1800, cwd=os.getcwd())
    if proc.returncode != 0:
        raise RuntimeError((proc.stderr.strip().splitlines() or ["child failed"])[-1])
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    out["floor"] = _floor(url, n)
    return out


def _fresh(name: str, tmp: str, n: int):
    """(url, cleanup) of an empty database of kind `name` for size n; None when unavailable."""
    if name == "SQLite":
        return f"sqlite:///{os.path.join(tmp, f'fanout-{n}.db')}", None
    from bench.common import pg_url_or_none

    return pg_url_or_none()


def run(quick: bool) -> list[Result]:
    small, large = (10_000, 50_000) if quick else (100_000, 500_000)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in ("SQLite", "PostgreSQL"):
            measured = {}
            try:
                for n in (small, large):
                    fresh = _fresh(name, tmp, n)
                    if fresh is None:
                        raise LookupError(f"{name} not reachable")
                    url, cleanup = fresh
                    try:
                        measured[n] = _measure(url, n)
                    finally:
                        if cleanup:
                            cleanup()
            except LookupError as exc:
                results.append(Result(f"fan-out, {name}", f"not measured: {exc}", "—", TARGET, None))
                continue
            except Exception as exc:  # noqa: BLE001 - a failing scenario is a row of the table, not the end of the run
                results.append(Result(f"fan-out, {name}", f"failed: {type(exc).__name__}: {exc}"[:200], "—",
                                      TARGET, None))
                continue
            s, big = measured[small], measured[large]
            grow_s, grow_l = s["peak_kb"] - s["base_kb"], big["peak_kb"] - big["base_kb"]
            complete = s["rows"] == small and big["rows"] == large and s["ok"] and big["ok"]
            flat = grow_l <= grow_s + 8 * 1024  # within 8 MB of the size with 5x fewer recipients
            fast = big["seconds"] < 30 if name == "SQLite" else True
            results.append(Result(
                f"fan-out, {name}: one broadcast → {large:,} outbox rows",
                f"{big['seconds']:.1f} s ({large / big['seconds']:,.0f} rows/s), {big['rows']:,} rows; "
                f"peak RSS growth {mb(grow_l)}",
                f"floor (one plain INSERT…SELECT of {large:,} rows): {big['floor']:.1f} s, "
                f"fan-out = {big['seconds'] / big['floor']:.1f}x floor; at {small:,} recipients: {s['seconds']:.1f} s, "
                f"peak RSS growth {mb(grow_s)}",
                TARGET if name == "SQLite" else "memory flat (time target: SQLite)",
                complete and flat and fast))
    return results


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--child":
        _child(sys.argv[2])
    else:
        print("usage: python -m bench.fanout --child URL", file=sys.stderr)
        sys.exit(2)
