"""The staff console's report triage at scale (issue 15): with N reports stored (100,000; 10,000
with --quick), the server time of the list's first page (/panel/reports, an admin's, every
report), a filtered page (open reports of one department in one mahalle; and a free-text search),
and the map's data for the district (/panel/map.json, the filtered set's pins), each through the
real FastAPI app (in-process ASGI, a signed-in session: guard, query, rendering) on SQLite and
PostgreSQL. Beside each, in the same run: the same request with only 1,000 reports stored, so
any growth with N shows. The median of several requests after one warm-up."""
from __future__ import annotations

import asyncio
import statistics
import tempfile
import time
from datetime import timedelta
from pathlib import Path

from bench.common import Result, pg_url_or_none

SMALL = 1_000
TARGET = "< 200 ms server time"
REQUESTS = (
    ("list, first page", "/panel/reports?f=1"),
    ("list, filtered page", "/panel/reports?f=1&status=open&department=fen_isleri&mahalle=kozagac"),
    ("list, free-text search", "/panel/reports?f=1&q=cukur+kaldirim"),
    ("map data, the district", "/panel/map.json?f=1"),
)
WORDS = ("Kaldırımda büyük bir çukur var", "Sokak lambası yanmıyor", "Konteyner taşmış", "Yaralı köpek",
         "Salıncak kırık", "Rögar kapağı açık", "Gece yüksek müzik", "Asfalt çökmüş")


def _settings(url: str, media: Path):
    from bot.settings import load_settings

    return load_settings(database_url=url, media_dir=media, http_port=0, telegram_bot_token="", _env_file=None)


def _seed(url: str, n: int) -> None:
    """n reports over the catalog's categories, mahalleler and statuses, the last year, 9 in 10
    with a pin; routed and searchable as create_report makes them (department, due time, words)."""
    import random

    from sqlalchemy import insert

    from bot.catalog import load_catalog
    from conversations.text import fold
    from storage import reports as rp
    from storage.db import make_engine, utcnow
    from storage.migrate import upgrade

    catalog = load_catalog(Path(__file__).resolve().parent.parent / "bot" / "catalogs" / "buca.toml")
    db = make_engine(url)
    upgrade(db)
    rng = random.Random(15)
    now = utcnow()
    hoods = [h for h in catalog.neighbourhoods if h.centre]
    statuses = ("new", "new", "seen", "in_progress", "resolved", "resolved", "resolved", "rejected")
    table = rp.Report.__table__
    rows = []
    for i in range(1, n + 1):
        cat = catalog.categories[i % len(catalog.categories)]
        hood = hoods[rng.randrange(len(hoods))]
        created = now - timedelta(minutes=(n - i) * 525_600 / n)
        status = statuses[rng.randrange(len(statuses))]
        pin = rng.random() < 0.9
        text = WORDS[rng.randrange(len(WORDS))]
        code = f"BCA-{created.year}-{i:06d}"
        report = rp.Report(code=code, category=cat.key, mahalle=hood.key, description=text)
        rows.append(dict(code=code, category=cat.key, description=text, mahalle=hood.key, address="",
                         latitude=hood.centre[0] + rng.uniform(-0.004, 0.004) if pin else None,
                         longitude=hood.centre[1] + rng.uniform(-0.004, 0.004) if pin else None,
                         status=status, reject_reason="", channel="telegram", created_at=created,
                         updated_at=created, reopened_count=0, supporters=rng.randrange(4),
                         department=cat.department, due_at=created + timedelta(hours=(cat.sla_hours or 40) * 3),
                         closed_at=created + timedelta(days=2) if status in rp.CLOSED_STATUSES else None,
                         first_response_at=created + timedelta(hours=5) if status != "new" else None,
                         search_text=rp.search_words(report, catalog)))
    assert fold("Çukur") == "cukur"
    with db.begin() as conn:
        for start in range(0, len(rows), 10_000):
            conn.execute(insert(table), rows[start:start + 10_000])
    if db.dialect.name == "postgresql":
        with db.connect() as conn:
            conn.exec_driver_sql("ANALYZE")
            conn.commit()
    db.dispose()


def _measure(url: str, media: Path, repeats: int) -> dict[str, tuple[float, int]]:
    """Median milliseconds per request, and the response's size in bytes."""
    import httpx

    from bot.app import build_app
    from bot.http import create_http_app
    from storage import panel
    from storage.db import transaction
    from storage.models import Staff

    app = build_app(_settings(url, media))
    with transaction(app.db) as db:
        staff = Staff(name="Bench", console="bench", role="admin")
        db.add(staff)
        db.flush()
        _, secret = panel.open_session(db, staff.id, lifetime=timedelta(hours=1), mfa_ok=True)
    http_app = create_http_app(app)

    async def go():
        found = {}
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=http_app), base_url="http://bench",
                                     cookies={"katilim_panel": secret}) as c:
            for name, path in REQUESTS:
                answer = await c.get(path)
                assert answer.status_code == 200, (path, answer.status_code, answer.text[:300])
                took = []
                for _ in range(repeats):
                    t0 = time.perf_counter()
                    answer = await c.get(path)
                    took.append(time.perf_counter() - t0)
                found[name] = (statistics.median(took) * 1000, len(answer.content))
        return found

    try:
        return asyncio.run(go())
    finally:
        app.db.dispose()


def run(quick: bool) -> list[Result]:
    n = 10_000 if quick else 100_000
    repeats = 3 if quick else 7
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        media = Path(tmp) / "media"
        targets = [("SQLite", lambda size: (f"sqlite:///{Path(tmp) / f'console-{size}.db'}", None)),
                   ("PostgreSQL", lambda size: pg_url_or_none())]
        for backend, fresh in targets:
            measured = {}
            try:
                for size in (SMALL, n):
                    got = fresh(size)
                    if got is None:
                        raise LookupError(f"{backend} not reachable")
                    url, cleanup = got
                    try:
                        _seed(url, size)
                        measured[size] = _measure(url, media, repeats)
                    finally:
                        if cleanup:
                            cleanup()
            except LookupError as exc:
                results.append(Result(f"console, {backend}", f"not measured: {exc}", "—", TARGET, None))
                continue
            except Exception as exc:  # noqa: BLE001 - a failing scenario is a row of the table, not the end of the run
                results.append(Result(f"console, {backend}", f"failed: {type(exc).__name__}: {exc}"[:200], "—",
                                      TARGET, None))
                continue
            for name, _ in REQUESTS:
                ms, size = measured[n][name]
                ref_ms, ref_size = measured[SMALL][name]
                results.append(Result(f"console, {backend}: {name}, {n:,} reports",
                                      f"{ms:.1f} ms ({size / 1024:.0f} KiB)",
                                      f"{ref_ms:.1f} ms with {SMALL:,} reports ({ref_size / 1024:.0f} KiB)",
                                      TARGET, ms < 200))
    return results
