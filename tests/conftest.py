"""Shared fixtures: a real database per test (SQLite file, or a fresh PostgreSQL schema),
Settings built for tests, and the application wired as `katilim run` wires it.

PostgreSQL: KATILIM_TEST_POSTGRES_URL (default postgresql+psycopg://postgres@127.0.0.1:5432/test).
Without a server the PostgreSQL variants are skipped with the reason shown in the summary;
with CI=true a missing server is an error.
"""
from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from tests.support.telegram import tg  # noqa: F401  (the fake Telegram Bot API server, a fixture for every test)

PG_URL = os.environ.get("KATILIM_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
_pg_state: dict[str, object] = {}


def postgres_available() -> tuple[bool, str]:
    if "ok" not in _pg_state:
        try:
            engine = create_engine(PG_URL, connect_args={"connect_timeout": 3})
            with engine.connect() as conn:
                conn.execute(text("SELECT 1"))
            engine.dispose()
            _pg_state.update(ok=True, why="")
        except Exception as exc:  # noqa: BLE001 - any failure to connect means no PostgreSQL; its name is the skip reason
            _pg_state.update(ok=False, why=f"PostgreSQL not reachable at {PG_URL}: {type(exc).__name__}")
    return bool(_pg_state["ok"]), str(_pg_state["why"])


def require_postgres() -> None:
    ok, why = postgres_available()
    if not ok:
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI=true requires PostgreSQL: {why}")
        pytest.skip(why)


def new_pg_schema_url() -> tuple[str, str]:
    """A fresh schema, reached through search_path: the test sees an empty database."""
    require_postgres()
    schema = "t_" + uuid.uuid4().hex[:12]
    engine = create_engine(PG_URL)
    with engine.begin() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    engine.dispose()
    sep = "&" if "?" in PG_URL else "?"
    return f"{PG_URL}{sep}options=-csearch_path%3D{schema}", schema


def drop_pg_schema(schema: str) -> None:
    engine = create_engine(PG_URL)
    with engine.begin() as conn:
        conn.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
    engine.dispose()


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'katilim.db'}"


@pytest.fixture
def pg_url():
    url, schema = new_pg_schema_url()
    yield url
    drop_pg_schema(schema)


@pytest.fixture(params=["sqlite", "postgres"])
def db_url(request, tmp_path: Path):
    """Run the test on SQLite and on PostgreSQL."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'katilim.db'}"
        return
    url, schema = new_pg_schema_url()
    yield url
    drop_pg_schema(schema)


@pytest.fixture
def make_settings(tmp_path: Path, sqlite_url: str):
    """Settings for a test: no .env, a temporary media folder, HTTP on a free port."""
    from bot.settings import load_settings

    def factory(**overrides):
        values = dict(database_url=sqlite_url, media_dir=tmp_path / "media", http_port=0, http_host="127.0.0.1",
                      telegram_bot_token="", _env_file=None)
        values.update(overrides)
        return load_settings(**values)

    return factory


@pytest.fixture
def make_app(make_settings):
    """The application as `katilim run` builds it (migrations applied), of bot/features.py's
    features or of `features`. A state entered by an unknown name from a conversation's data is
    an error here (`strict_targets`), not the menu as in production."""
    from bot.app import build_app

    built = []

    def factory(features=None, strict_targets=True, **overrides):
        app = build_app(make_settings(**overrides), features=features, strict_targets=strict_targets)
        built.append(app)
        return app

    yield factory
    for app in built:
        app.db.dispose()


def test_env(**extra: str) -> dict[str, str]:
    """Environment for a `katilim` subprocess: no inherited channel settings, no .env surprises."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("TELEGRAM_", "TWILIO_", "KATILIM_", "DATABASE_URL", "PUBLIC_BASE_URL"))}
    env.update({k: str(v) for k, v in extra.items()})
    return env


# ---------------------------------------------------------------- figures
_FIGURES: list[tuple[str, str]] = []


@pytest.fixture
def figure(request):
    """Record a figure this test measured (repeats after a kill -9 against their bound, seconds to
    recover, the rate achieved...); the run prints them all at its end, passed or not, so the
    fault suite says what it survived in numbers (also without -s)."""
    return lambda line: record_figure(request.node.name, line)


def record_figure(name: str, line: str) -> None:
    _FIGURES.append((name, " ".join(line.split())))


def pytest_terminal_summary(terminalreporter) -> None:
    if _FIGURES:
        terminalreporter.section("figures measured by the tests")
        for name, line in _FIGURES:
            terminalreporter.write_line(f"{line}  [{name}]")
