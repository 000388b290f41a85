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
    except Exception:  # noqa: BLE001
        return None

    def cleanup():
        with engine.begin() as conn:
            conn.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
        engine.dispose()

    sep = "&" if "?" in PG_URL else "?"
    return f"{PG_URL}{sep}options=-csearch_path%3D{schema}", cleanup
