"""Inbound path: a parsed update → a committed state change with its reply ready (Engine.handle),
with N residents mid-conversation; beside it the floor: one durable insert + commit per update on
the same database, measured in alternating blocks with the path (the same machine load for both)."""
from __future__ import annotations

import random
import statistics
import tempfile
import time
from pathlib import Path

from sqlalchemy import Column, Integer, MetaData, String, Table, insert

from bench.common import Result, percentile, pg_url_or_none


def _prepare(url: str, residents: int):
    from bot.catalog import load_catalog
    from bot.features import build_registry
    from bot.settings import SAMPLE_CATALOG
    from conversations.runtime import Engine
    from conversations.step import EngineConfig
    from storage.db import make_engine, transaction, utcnow
    from storage.migrate import upgrade
    from storage.models import ChannelIdentity, ConversationSession, Resident

    db = make_engine(url)
    upgrade(db)
    now = utcnow()
    with transaction(db) as s:
        # residents mid-conversation: onboarded, waiting at the mahalle question
        s.execute(insert(Resident), [dict(id=i, locale="tr", display_name=f"r{i}", onboarded_at=now,
                                          created_at=now, updated_at=now) for i in range(1, residents + 1)])
        s.execute(insert(ChannelIdentity), [dict(resident_id=i, channel="telegram", address=str(100000 + i),
                                                 unreachable=False, unreachable_reason="", created_at=now,
                                                 last_inbound_at=now) for i in range(1, residents + 1)])
        s.execute(insert(ConversationSession), [dict(resident_id=i, state="mahalle.pick", data={}, updated_at=now,
                                                     version=0) for i in range(1, residents + 1)])
    config = EngineConfig(catalog=load_catalog(SAMPLE_CATALOG), registry=build_registry())
    engine = Engine(db, config, worker_id="bench")
    return db, engine


def _messages(count: int, residents: int):
    from conversations.messages import Inbound, Kind

    words = ["kozagac", "menu", "2", "/yardim", "vali rahmi", "çaldıran", "iptal", "x"]
    rnd = random.Random(7)
    for n in range(count):
        r = rnd.randint(1, residents)
        word = words[n % len(words)]
        kind = Kind.COMMAND if word.startswith("/") else Kind.TEXT
        yield Inbound(channel="telegram", address=str(100000 + r), kind=kind, text=word,
                      command=word[1:] if kind == Kind.COMMAND else "", external_id=f"u{n}")


def _floor_table(db) -> Table:
    meta = MetaData()
    table = Table("bench_floor", meta, Column("id", Integer, primary_key=True), Column("body", String(200)))
    meta.drop_all(db)
    meta.create_all(db)
    return table


def _interleaved(db, engine, messages: list, block: int = 25) -> tuple[list[float], list[float], float]:
    """The path and the floor measured in alternating blocks of `block` updates, so both see the
    same machine (other processes come and go on a shared machine); returns both latency lists
    and the wall time of the path alone."""
    table = _floor_table(db)
    lat: list[float] = []
    floor: list[float] = []
    path_wall = 0.0
    with db.connect() as conn:
        for start in range(0, len(messages), block):
            t0 = time.perf_counter()
            for msg in messages[start:start + block]:
                t1 = time.perf_counter()
                engine.handle(msg)
                lat.append(time.perf_counter() - t1)
            path_wall += time.perf_counter() - t0
            for n in range(start, min(start + block, len(messages))):
                t1 = time.perf_counter()
                conn.execute(insert(table).values(body=f"update {n}"))
                conn.commit()
                floor.append(time.perf_counter() - t1)
    table.drop(db)
    return lat, floor, path_wall


def run(quick: bool) -> list[Result]:
    residents = 1_000 if quick else 10_000
    count = 300 if quick else 5_000
    results = []
    targets = [("SQLite", None)]
    pg = pg_url_or_none()
    if pg:
        targets.append(("PostgreSQL", pg))
    for name, url in targets:
        tmp = tempfile.TemporaryDirectory()
        cleanup = db = None
        if url is None:
            url = f"sqlite:///{Path(tmp.name) / 'bench.db'}"
        else:
            url, cleanup = url
        try:
            db, engine = _prepare(url, residents)
            for msg in _messages(50, residents):  # warm up
                msg.external_id = "w" + msg.external_id
                engine.handle(msg)
            lat, floor, total = _interleaved(db, engine, list(_messages(count, residents)))
            ratio = statistics.mean(lat) / statistics.mean(floor)
            results.append(Result(
                f"inbound path, {name}, {residents:,} residents mid-conversation",
                f"{count / total:,.0f} updates/s; p50 {percentile(lat, 50) * 1000:.2f} ms, "
                f"p99 {percentile(lat, 99) * 1000:.2f} ms",
                f"floor (insert+commit), interleaved: {1 / statistics.mean(floor):,.0f}/s, "
                f"p50 {percentile(floor, 50) * 1000:.2f} ms; full path = {ratio:.1f}x floor (mean)",
                "≤ 3x floor", ratio <= 3.0))
        except Exception as exc:  # noqa: BLE001 - a failing scenario is a row of the table, not the end of the run
            results.append(Result(f"inbound path, {name}", f"failed: {type(exc).__name__}: {exc}"[:200], "—",
                                  "≤ 3x floor", None))
        finally:
            if db is not None:
                db.dispose()
            if cleanup:
                cleanup()
            tmp.cleanup()
    return results
