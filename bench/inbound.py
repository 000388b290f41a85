"""Inbound path: a parsed update → a committed state change with its reply ready (Engine.handle),
with N residents mid-conversation; beside it the floor: one durable insert + commit per update on
the same database."""
from __future__ import annotations

import random
import statistics
import tempfile
import time
from pathlib import Path

from sqlalchemy import Column, Integer, MetaData, String, Table, insert, text

from bench.common import Result, pg_url_or_none, percentile


def _prepare(url: str, residents: int):
    import conversations.flows  # noqa: F401
    from bot.catalog import load_catalog
    from bot.settings import SAMPLE_CATALOG
    from conversations.engine import Engine, EngineConfig
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
    engine = Engine(db, EngineConfig(catalog=load_catalog(SAMPLE_CATALOG)), worker_id="bench")
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


def _floor(db, count: int) -> list[float]:
    meta = MetaData()
    table = Table("bench_floor", meta, Column("id", Integer, primary_key=True), Column("body", String(200)))
    meta.drop_all(db)
    meta.create_all(db)
    lat = []
    with db.connect() as conn:
        for n in range(count):
            t0 = time.perf_counter()
            conn.execute(insert(table).values(body=f"update {n}"))
            conn.commit()
            lat.append(time.perf_counter() - t0)
    meta.drop_all(db)
    return lat


def run(quick: bool) -> list[Result]:
    residents = 1_000 if quick else 10_000
    count = 500 if quick else 5_000
    results = []
    targets = [("SQLite", None)]
    pg = pg_url_or_none()
    if pg:
        targets.append(("PostgreSQL", pg))
    for name, url in targets:
        tmp = tempfile.TemporaryDirectory()
        cleanup = None
        if url is None:
            url = f"sqlite:///{Path(tmp.name) / 'bench.db'}"
        else:
            url, cleanup = url
        db, engine = _prepare(url, residents)
        for msg in _messages(50, residents):  # warm up
            msg.external_id = "w" + msg.external_id
            engine.handle(msg)
        lat = []
        t0 = time.perf_counter()
        for msg in _messages(count, residents):
            t1 = time.perf_counter()
            engine.handle(msg)
            lat.append(time.perf_counter() - t1)
        total = time.perf_counter() - t0
        floor = _floor(db, count)
        ratio = statistics.mean(lat) / statistics.mean(floor)
        results.append(Result(
            f"inbound path, {name}, {residents:,} residents mid-conversation",
            f"{count / total:,.0f} updates/s; p50 {percentile(lat, 50) * 1000:.2f} ms, p99 {percentile(lat, 99) * 1000:.2f} ms",
            f"floor (insert+commit): {1 / statistics.mean(floor):,.0f}/s, p50 {percentile(floor, 50) * 1000:.2f} ms; "
            f"full path = {ratio:.1f}x floor",
            "≤ 3x floor", ratio <= 3.0))
        db.dispose()
        if cleanup:
            cleanup()
        tmp.cleanup()
    return results
