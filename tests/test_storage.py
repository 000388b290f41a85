"""Storage on SQLite and PostgreSQL: migrations through the real CLI, SQLite's WAL and busy timeout,
concurrent steps for one resident, consent history, aware UTC datetimes, the outbox's claims; and
the errors a municipality sees for a broken catalog or a bad setting."""
from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from alembic.script import ScriptDirectory
from sqlalchemy import inspect
from sqlalchemy.exc import StatementError
from sqlmodel import Session, select

from bot.catalog import CatalogError, load_catalog
from bot.features import FEATURES, Feature
from bot.settings import SAMPLE_CATALOG, SettingsError, load_settings
from conversations.i18n import t_in
from conversations.messages import Choice, Inbound, Kind, Outbound
from conversations.notify import notify_residents
from conversations.registry import Router
from conversations.step import Stay
from storage import outbox
from storage.consents import current_consents
from storage.db import make_engine, transaction, utcnow
from storage.migrate import alembic_config, current, upgrade
from storage.models import OutboxMessage, Resident
from storage.residents import identity_for
from tests import conftest
from tests.support.chat import Chat

ROOT = Path(__file__).resolve().parent.parent


def katilim(*args: str, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bot.cli", *args], env=env, cwd=cwd, capture_output=True,
                          text=True, timeout=120)


# ---------------------------------------------------------------- migrations
def test_migrations_apply_from_empty_through_the_cli(db_url, tmp_path):
    env = conftest.test_env(DATABASE_URL=db_url, MEDIA_DIR=str(tmp_path / "media"))
    engine = make_engine(db_url)
    try:
        assert current(engine) is None
        done = katilim("db", "upgrade", env=env, cwd=tmp_path)
        assert done.returncode == 0, done.stderr
        shown = katilim("db", "current", env=env, cwd=tmp_path)
        assert shown.returncode == 0, shown.stderr
        at = shown.stdout.strip()
        assert done.stdout.strip() == f"database at revision {at}"
        # every revision of every branch is applied (the version table holds the heads reached)
        script = ScriptDirectory.from_config(alembic_config(db_url))
        applied = {r.revision for r in script.iterate_revisions(tuple(at.split(", ")), "base")}
        assert applied == {r.revision for r in script.walk_revisions()}
        assert {"0001", "0002"} <= applied
        tables = set(inspect(engine).get_table_names())
        assert {"resident", "channel_identity", "conversation_session", "consent_record", "outbox",
                "processed_inbound", "audit_log", "staff", "alembic_version"} <= tables
        upgrade(engine)   # applying again is a no-op
        assert current(engine) == at
    finally:
        engine.dispose()


def test_migration_0009_keeps_the_seen_inbound_ids_in_one_btree(db_url, make_settings):
    """0009 rebuilds processed_inbound (SQLite: WITHOUT ROWID) and drops its `at` index: the ids
    already seen survive the upgrade and the way back, a re-delivered update is still ignored,
    and the hourly purge still deletes week-old ids."""
    from alembic import command
    from sqlalchemy import text

    from bot.app import build_app
    from bot.scheduler import housekeeping
    from storage.models import ProcessedInbound

    engine = make_engine(db_url)
    old = utcnow() - timedelta(days=8)
    try:
        upgrade(engine, "0008")
        with transaction(engine) as db:
            db.add(ProcessedInbound(channel="telegram", external_id="u1", at=utcnow()))
            db.add(ProcessedInbound(channel="telegram", external_id="u0", at=old))
        upgrade(engine)
        names = {ix["name"] for ix in inspect(engine).get_indexes("processed_inbound")}
        assert "ix_processed_inbound_at" not in names
        if engine.dialect.name == "sqlite":
            with engine.connect() as conn:
                sql = conn.execute(text("SELECT sql FROM sqlite_master WHERE name = 'processed_inbound'")).scalar()
            assert sql.rstrip().upper().endswith("WITHOUT ROWID")
        with transaction(engine) as db:
            assert sorted(r.external_id for r in db.exec(select(ProcessedInbound))) == ["u0", "u1"]

        app = build_app(make_settings(database_url=db_url))
        try:
            seen = Inbound(channel="telegram", address="555", kind=Kind.TEXT, text="merhaba", external_id="u1")
            assert app.engine.handle(seen).duplicate
            fresh = Inbound(channel="telegram", address="555", kind=Kind.TEXT, text="merhaba", external_id="u2")
            assert not app.engine.handle(fresh).duplicate
            import asyncio

            asyncio.run(housekeeping(app).run())
            with transaction(engine) as db:
                assert sorted(r.external_id for r in db.exec(select(ProcessedInbound))) == ["u1", "u2"]
        finally:
            app.db.dispose()

        cfg = alembic_config(db_url)
        with engine.connect() as conn:
            cfg.attributes["connection"] = conn
            command.downgrade(cfg, "0008")
            conn.commit()
        names = {ix["name"] for ix in inspect(engine).get_indexes("processed_inbound")}
        assert "ix_processed_inbound_at" in names
        with transaction(engine) as db:
            assert sorted(r.external_id for r in db.exec(select(ProcessedInbound))) == ["u1", "u2"]
    finally:
        engine.dispose()


def test_steps_keep_a_connection_per_thread_and_give_it_back_on_dispose(make_app, db_url):
    """Each thread that runs steps keeps one connection between steps (no pool checkout per
    message); disposing of the database engine closes them, so nothing stays connected."""
    app = make_app(database_url=db_url)
    threads = [threading.Thread(target=lambda n=n: [Chat(app, address=f"t{n}").cmd("start") for _ in range(3)])
               for n in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    held = list(app.engine._held.values())
    assert len(held) == 3 and all(not conn.closed for conn in held)
    app.db.dispose()
    assert all(conn.closed for conn in held) and app.engine._held == {}
    app.db.dispose()  # twice is harmless


def test_a_connection_the_server_dropped_is_replaced_by_the_next_step(make_app, pg_url):
    """PostgreSQL restarted (here: the backend of the held connection terminated): the step that
    meets the dead connection fails (the channel adapters run it again, storage.db.DB_RETRY), the
    next one runs on a fresh connection and nothing of the failed one was committed."""
    from sqlalchemy import text
    from sqlalchemy.exc import OperationalError

    app = make_app(database_url=pg_url)
    chat = Chat(app)
    chat.text("merhaba")
    held = app.engine._held[threading.get_ident()]
    pid = held.exec_driver_sql("SELECT pg_backend_pid()").scalar()
    held.rollback()
    with app.db.connect() as other:
        other.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
    with pytest.raises(OperationalError):
        chat.choose("lang:tr")
    assert chat.state == "onboarding.language"
    chat.choose("lang:tr")
    assert chat.state == "onboarding.notice"
    assert app.engine._held[threading.get_ident()] is not held


# ---------------------------------------------------------------- SQLite settings
def test_sqlite_runs_in_wal_mode_with_a_busy_timeout(sqlite_url):
    engine = make_engine(sqlite_url)
    try:
        with engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA journal_mode").scalar().lower() == "wal"
            assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() >= 5000
            assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
        assert Path(sqlite_url.removeprefix("sqlite:///") + "-wal").exists()
    finally:
        engine.dispose()


def test_a_second_sqlite_writer_waits_instead_of_failing(sqlite_url):
    engine = make_engine(sqlite_url)
    upgrade(engine)
    held = threading.Event()
    finished = []

    def slow_writer():
        with transaction(engine) as db:
            db.add(Resident(display_name="slow"))
            db.flush()
            held.set()
            time.sleep(0.5)

    def other_writer():
        held.wait(5)
        started = time.monotonic()
        with transaction(engine) as db:
            db.add(Resident(display_name="other"))
        finished.append(time.monotonic() - started)

    threads = [threading.Thread(target=slow_writer), threading.Thread(target=other_writer)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    with transaction(engine) as db:
        assert sorted(r.display_name for r in db.exec(select(Resident))) == ["other", "slow"]
    assert finished and finished[0] >= 0.3
    engine.dispose()


# ---------------------------------------------------------------- concurrent steps for one resident
COUNTER = Router("test.counter")


@COUNTER.state("test.storage_counter")
def counter(ctx):
    """A feature-like state whose step reads, waits, then writes: a lost update would show."""
    ctx.ask("count", [Choice("add", "add")])


@counter.on_input
def on_counter(ctx, msg):
    n = ctx.data.get("n", 0)
    time.sleep(0.15)
    ctx.data["n"] = n + 1
    ctx.say(f"n={n + 1}")
    return Stay()


@pytest.fixture
def counter_state():
    return "test.storage_counter"


def test_two_concurrent_steps_for_one_resident_serialise(make_app, db_url, counter_state):
    app = make_app(database_url=db_url, features=FEATURES + (Feature("test", routers=(COUNTER,)),))
    chat = Chat(app)
    chat.onboard(first="merhaba")
    chat.choose("privacy")
    chat.set_session(counter_state, {"_choices": [["add", "add"]]})
    version = chat.session.version
    barrier = threading.Barrier(2)
    results, errors = [], []

    def send(i):
        try:
            barrier.wait(5)
            results.append(app.engine.handle(Inbound(channel="console", address=chat.address, kind=Kind.TEXT,
                                                     text=f"message {i}")))
        except Exception as exc:  # noqa: BLE001 - the thread collects any error for the test to assert on
            errors.append(exc)

    threads = [threading.Thread(target=send, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not errors, errors
    session = chat.session
    assert session.version == version + 2
    assert session.data["n"] == 2, "an update was lost"
    assert sorted(out.text for h in results for _, out in h.replies if out.text.startswith("n=")) == ["n=1", "n=2"]


def test_two_concurrent_consent_changes_are_both_kept(make_app, db_url):
    app = make_app(database_url=db_url)
    chat = Chat(app)
    chat.onboard(first="merhaba")
    chat.choose("privacy")
    version = chat.session.version
    barrier = threading.Barrier(2)
    errors = []

    def tap(key):
        try:
            barrier.wait(5)
            app.engine.handle(Inbound(channel="console", address=chat.address, kind=Kind.CHOICE, choice=key))
        except Exception as exc:  # noqa: BLE001 - the thread collects any error for the test to assert on
            errors.append(exc)

    threads = [threading.Thread(target=tap, args=(k,)) for k in ("p:reports", "p:volunteering")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not errors, errors
    assert chat.session.version == version + 2
    with transaction(app.db) as db:
        now = current_consents(db, chat.resident.id)
    assert now == {"reports": False, "volunteering": False, "reminders": True, "announcements": True}


# ---------------------------------------------------------------- consent history
def test_consent_history_keeps_its_order(make_app, db_url):
    app = make_app(database_url=db_url)
    chat = Chat(app)
    chat.onboard([True, False, True, True], first="merhaba")
    chat.choose("privacy")
    for key in ("p:reports", "p:volunteering", "p:reports", "p:announcements"):
        chat.choose(key)
    records = chat.consents()
    assert [(r.purpose, r.granted) for r in records] == [
        ("reports", True), ("volunteering", False), ("reminders", True), ("announcements", True),
        ("reports", False), ("volunteering", True), ("reports", True), ("announcements", False)]
    times = [r.recorded_at for r in records]
    assert times == sorted(times)
    with transaction(app.db) as db:
        assert current_consents(db, chat.resident.id) == {
            "reports": True, "volunteering": True, "reminders": True, "announcements": False}
    replies = chat.cmd("verilerim")
    exported = json.loads(replies[0].document.data)["consents"]
    assert [(c["purpose"], c["granted"]) for c in exported] == [(r.purpose, r.granted) for r in records]


# ---------------------------------------------------------------- datetimes
def test_datetimes_round_trip_as_aware_utc(db_url):
    engine = make_engine(db_url)
    upgrade(engine)
    istanbul = datetime(2026, 11, 24, 18, 0, 30, 123456, tzinfo=ZoneInfo("Europe/Istanbul"))
    with transaction(engine) as db:
        resident = Resident(display_name="t", created_at=istanbul, onboarded_at=utcnow())
        db.add(resident)
        db.flush()
        resident_id = resident.id
    with Session(engine) as db:
        back = db.get(Resident, resident_id)
        assert back.created_at == istanbul
        assert back.created_at.utcoffset() == timedelta(0)
        assert back.created_at.replace(tzinfo=None) == datetime(2026, 11, 24, 15, 0, 30, 123456)
        assert back.onboarded_at.utcoffset() == timedelta(0)
        assert back.anonymised_at is None
        # comparisons in queries use the same instant, whatever the zone of the value
        found = db.exec(select(Resident).where(Resident.created_at >= datetime(2026, 11, 24, 15, 0, tzinfo=timezone.utc),
                                               Resident.created_at < istanbul + timedelta(seconds=1))).all()
        assert [r.id for r in found] == [resident_id]
    with pytest.raises(StatementError, match="timezone"):
        with transaction(engine) as db:
            db.add(Resident(display_name="naive", created_at=datetime(2026, 1, 1)))
    engine.dispose()


# ---------------------------------------------------------------- outbox
def _fill_outbox(engine, n: int = 6) -> None:
    with transaction(engine) as db:
        for i in range(n):
            outbox.enqueue(db, "telegram", str(100 + i), Outbound(text=f"m{i}"),
                           priority=outbox.PRIORITY_BROADCAST if i % 2 else outbox.PRIORITY_NOTIFICATION,
                           kind="broadcast" if i % 2 else "notification")
        outbox.enqueue(db, "whatsapp", "whatsapp:+905550000000", Outbound(text="other channel"))
        outbox.enqueue(db, "telegram", "999", Outbound(text="later"), available_at=utcnow() + timedelta(hours=1))


def test_outbox_enqueue_and_claim(db_url):
    engine = make_engine(db_url)
    upgrade(engine)
    _fill_outbox(engine)
    lease = timedelta(seconds=30)
    with transaction(engine) as db:
        first = outbox.claim(db, "w1", "telegram", 4, lease)
        claimed = [(r.payload["text"], r.priority) for r in first]
    # notifications (priority 3) before broadcasts (8); the row due in an hour waits
    assert claimed == [("m0", 3), ("m2", 3), ("m4", 3), ("m1", 8)]
    with transaction(engine) as db:
        second = outbox.claim(db, "w2", "telegram", 10, lease)
        assert [r.payload["text"] for r in second] == ["m3", "m5"]
        assert outbox.claim(db, "w3", "telegram", 10, lease) == []
    with transaction(engine) as db:
        rows = db.exec(select(OutboxMessage).where(OutboxMessage.channel == "telegram",
                                                   OutboxMessage.status == "sending")).all()
        assert {r.claimed_by for r in rows} == {"w1", "w2"}
        assert all(r.claimed_until.utcoffset() == timedelta(0) for r in rows)
        outbox.mark_sent(db, [r.id for r in first], ["p1", "p2", "p3", "p4"])
    # a crashed worker's lease runs out: its rows are claimed again
    later = utcnow() + timedelta(minutes=2)
    with transaction(engine) as db:
        again = outbox.claim(db, "w4", "telegram", 10, lease, now=later)
        assert sorted(r.payload["text"] for r in again) == ["m3", "m5"]
        assert all(r.attempts == 2 for r in again)
        assert outbox.release_worker(db, "w4") == 2
    with transaction(engine) as db:
        sent = db.exec(select(OutboxMessage).where(OutboxMessage.status == "sent")).all()
        assert sorted(r.provider_id for r in sent) == ["p1", "p2", "p3", "p4"]
    engine.dispose()


def test_notifications_for_many_residents_are_rows_the_dispatcher_reads_back(db_url):
    """notify.notify_residents (reminders, calls, notifications in batches) writes its rows in one
    statement (PostgreSQL: one JSON parameter): the dispatcher reads them back exactly, in each
    resident's language, on the identity they wrote from last; the unreachable are left out."""
    engine = make_engine(db_url)
    upgrade(engine)
    try:
        with transaction(engine) as db:
            ids = []
            for n, (locale, unreachable) in enumerate([("tr", False), ("ar", False), ("en", True)]):
                identity, resident = identity_for(db, "telegram", f"90{n}", default_locale=locale)
                identity.unreachable = unreachable
                ids.append(resident.id)
            db.flush()
            before = utcnow()

            def build(t, lang):
                return Outbound(f"{lang}: Kozağaç «{t('common.back')}»", [Choice("ev:1:c", t("common.back"))])

            reached = notify_residents(db, [(rid, build) for rid in ids], kind="reminder")
        assert reached == set(ids[:2])
        with transaction(engine) as db:
            rows = outbox.claim(db, "w1", "telegram", 10, timedelta(seconds=30))
            assert sorted((r.address, r.kind, r.status, r.attempts, r.resident_id) for r in rows) == [
                ("900", "reminder", "sending", 1, ids[0]), ("901", "reminder", "sending", 1, ids[1])]
            payloads = {r.address: r.payload for r in rows}
            assert payloads["900"]["text"] == f"tr: Kozağaç «{t_in('tr', 'common.back')}»"
            assert payloads["901"]["text"] == f"ar: Kozağaç «{t_in('ar', 'common.back')}»"
            assert payloads["900"]["choices"][0]["key"] == "ev:1:c"
            for r in rows:
                assert r.available_at.utcoffset() == timedelta(0) and abs(r.available_at - before) < timedelta(seconds=5)
                assert (r.priority, r.claimed_by, r.error, r.provider_id, r.delivery_status) == (3, "w1", "", "", "")
    finally:
        engine.dispose()


def test_outbox_claims_from_two_sessions_are_disjoint_on_postgres(pg_url):
    engine = make_engine(pg_url)
    upgrade(engine)
    _fill_outbox(engine)
    lease = timedelta(seconds=30)
    one, two = Session(engine, expire_on_commit=False), Session(engine, expire_on_commit=False)
    try:
        a = outbox.claim(one, "w1", "telegram", 3, lease)       # not committed: rows locked
        b = outbox.claim(two, "w2", "telegram", 10, lease)      # SKIP LOCKED: the others
        ids_a, ids_b = {r.id for r in a}, {r.id for r in b}
        assert len(ids_a) == 3 and len(ids_b) == 3 and not ids_a & ids_b
        one.commit()
        two.commit()
    finally:
        one.close()
        two.close()
    with transaction(engine) as db:
        rows = db.exec(select(OutboxMessage).where(OutboxMessage.channel == "telegram",
                                                   OutboxMessage.status == "sending")).all()
        assert {r.id: r.claimed_by for r in rows} == {**{i: "w1" for i in ids_a}, **{i: "w2" for i in ids_b}}
    engine.dispose()


def test_replies_of_a_step_are_in_the_outbox(make_app, db_url):
    app = make_app(database_url=db_url)
    handled = app.engine.handle(Inbound(channel="console", address="o1", kind=Kind.TEXT, text="merhaba"))
    with transaction(app.db) as db:
        rows = db.exec(select(OutboxMessage).where(OutboxMessage.address == "o1")).all()
    assert [r.id for r in rows] == [row_id for row_id, _ in handled.replies]
    assert all(r.kind == "reply" and r.status == "sending" and r.priority == 0 for r in rows)
    assert Outbound.from_dict(rows[0].payload).choices[0].key == "lang:tr"


# ---------------------------------------------------------------- catalog errors
SAMPLE = SAMPLE_CATALOG.read_text(encoding="utf-8")


def _broken(tmp_path: Path, old: str, new: str) -> tuple[Path, int]:
    """The sample catalog with one text replaced; returns the file and the line of the change."""
    assert SAMPLE.count(old) == 1, old
    path = tmp_path / "belediye.toml"
    path.write_text(SAMPLE.replace(old, new), encoding="utf-8")
    return path, SAMPLE[:SAMPLE.index(old)].count("\n") + 1


CATALOG_CASES = {
    "missing tr name": ('name = { tr = "Sokak aydınlatması", en = "Street lighting", ar = "إنارة الشوارع" }',
                        'name = { en = "Street lighting", ar = "إنارة الشوارع" }',
                        "categories[2].name", "the Turkish (tr) text is required"),
    "duplicate key": ('key = "water"', 'key = "road"', "categories[4].key", "duplicate key 'road'"),
    "bad sdg": ("sdg = [7, 11]", "sdg = [7, 18]", "categories[2].sdg", "1-17"),
    "bad tracking_prefix": ('tracking_prefix = "BCA"', 'tracking_prefix = "bca-1"',
                            "municipality.tracking_prefix", "capital letters"),
    "unknown language": ('name = { tr = "Diğer", en = "Other", ar = "أخرى" }', 'name = { tr = "Diğer", de = "Andere" }',
                         "categories[10].name", "unknown language 'de'"),
    "duplicate mahalle": ('name = "Zafer"', 'name = "KOZAĞAÇ"', "neighbourhoods[44].name", "duplicate mahalle"),
}


def assert_catalog_error(tmp_path: Path, old: str, new: str, field: str, message: str) -> None:
    """The sample with `old` replaced by `new` is refused in one line: FILE:LINE: FIELD: ...MESSAGE..."""
    path, line = _broken(tmp_path, old, new)
    with pytest.raises(CatalogError) as info:
        load_catalog(path)
    error = str(info.value)
    assert error.startswith(f"{path}:{line}: {field}: "), error
    assert message in error and "\n" not in error


@pytest.mark.parametrize("case", sorted(CATALOG_CASES))
def test_catalog_errors_name_file_line_and_field(tmp_path, case):
    assert_catalog_error(tmp_path, *CATALOG_CASES[case])


def test_catalog_syntax_error_names_file_and_line(tmp_path):
    path, line = _broken(tmp_path, 'name = "Göksu"', 'name = "Göksu')
    with pytest.raises(CatalogError) as info:
        load_catalog(path)
    error = str(info.value)
    assert error.startswith(f"{path}: ") and f"line {line}" in error
    assert "\n" not in error


def test_the_sample_catalog_loads():
    catalog = load_catalog(SAMPLE_CATALOG)
    assert catalog.municipality.tracking_prefix == "BCA" and len(catalog.neighbourhoods) == 44
    assert catalog.neighbourhood("kozagac").name == "Kozağaç"


def test_a_missing_catalog_file(tmp_path):
    with pytest.raises(CatalogError, match="cannot read the catalog"):
        load_catalog(tmp_path / "yok.toml")


# ---------------------------------------------------------------- settings errors
SETTINGS_CASES = {
    "DATABASE_URL": "mysql://localhost/katilim",
    "SESSION_EXPIRY": "soon",
    "HTTP_PORT": "70000",
    "DEFAULT_LOCALE": "fr",
    "TIMEZONE": "Mars/Olympus_Mons",
    "MAX_TEXT_LENGTH": "5",
    "LOG_LEVEL": "loud",
    "TELEGRAM_WEBHOOK_URL": "ftp://example.org",
}


@pytest.mark.parametrize("name", sorted(SETTINGS_CASES))
def test_settings_errors_name_the_setting_in_one_line(monkeypatch, name):
    monkeypatch.setenv(name, SETTINGS_CASES[name])
    with pytest.raises(SettingsError) as info:
        load_settings(_env_file=None)
    error = str(info.value)
    assert error.startswith(f"invalid setting {name}: ") and "\n" not in error, error


def test_a_bad_setting_stops_the_cli_with_one_line(tmp_path):
    done = katilim("db", "current", env=conftest.test_env(DATABASE_URL="mysql://localhost/x"), cwd=tmp_path)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("katilim: invalid setting DATABASE_URL: "), done.stderr


def test_settings_values_are_parsed():
    settings = load_settings(_env_file=None, session_expiry="90m", database_url="postgresql://u@h/db")
    assert settings.session_expiry == timedelta(minutes=90)
    assert settings.database_url == "postgresql+psycopg://u@h/db"
