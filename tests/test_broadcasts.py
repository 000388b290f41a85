"""Staff broadcasts (issue 3): audience counting, the streamed fan-out, scheduling exactly once,
cancel, progress and the summary (storage/broadcasts.py, the "broadcasts" job); the staff /duyuru
flow through the real PTB Application against the fake Bot API server up to delivered messages;
DUR / STOP / /abonelik; the time parser; `katilim broadcast` as a subprocess."""
from __future__ import annotations

import asyncio
import collections
import subprocess
import sys
import threading
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from sqlalchemy import update
from sqlmodel import select

from conversations.domain import broadcasts as dbc
from conversations.i18n import format_when, t_in
from conversations.notify import BroadcastWords
from conversations.permissions import Actor
from conversations.when import WhenError, parse_when
from storage import broadcasts as bc
from storage import outbox
from storage.db import make_engine, transaction, utcnow
from storage.models import (
    AuditLog,
    Broadcast,
    ChannelIdentity,
    ConsentRecord,
    OutboxMessage,
    Resident,
    Staff,
)
from tests.conftest import test_env as katilim_env
from tests.media_support import plain_jpeg, stored_as
from tests.support import chat as driver
from tests.support.telegram import TelegramChat

pytestmark = pytest.mark.filterwarnings("ignore:.*retry_after.*")
ROOT = Path(__file__).resolve().parent.parent
JPEG = plain_jpeg(96, 64, (10, 120, 200))
STORED_JPEG = stored_as(JPEG)[1]  # what MEDIA_DIR keeps of it: re-encoded, no metadata


# ---------------------------------------------------------------- the time parser
NOW = datetime(2026, 11, 24, 12, 0, tzinfo=timezone.utc)          # 15:00 in Istanbul (UTC+3)


def utc(day: int, hour: int, minute: int = 0, month: int = 11, year: int = 2026) -> datetime:
    return datetime(year, month, day, hour, minute, tzinfo=timezone.utc)


@pytest.mark.parametrize("typed, expected", [
    ("25.11.2026 18:00", utc(25, 15)),
    ("25/11/2026 18:00", utc(25, 15)),
    ("2026-11-25 18:00", utc(25, 15)),
    ("2026-11-25T18:00", utc(25, 15)),
    ("5.1.2027 8:05", utc(5, 5, 5, month=1, year=2027)),
    ("25.11 18:00", utc(25, 15)),
    ("24.11 14:00", utc(24, 11, year=2027)),                         # passed this year: next year
    ("yarın 09:00", utc(25, 6)),
    ("YARIN 9:00", utc(25, 6)),
    ("yarin 9:00", utc(25, 6)),
    ("Yarın saat 9", utc(25, 6)),
    ("tomorrow 09:00", utc(25, 6)),
    ("غداً 09:00", utc(25, 6)),
    ("bugün 18:30", utc(24, 15, 30)),
    ("BUGÜN 18.30", utc(24, 15, 30)),
    ("bugun 18:30", utc(24, 15, 30)),
    ("today 18:30", utc(24, 15, 30)),
    ("اليوم ١٨:٣٠", utc(24, 15, 30)),
    ("18:00", utc(24, 15)),                                          # later today
    ("14:00", utc(25, 11)),                                          # passed: tomorrow
    ("15:00", utc(25, 12)),                                          # exactly now: tomorrow
    ("saat 18.00", utc(24, 15)),
    ("  23:59 ", utc(24, 20, 59)),
])
def test_parse_when(typed, expected):
    assert parse_when(typed, NOW, "Europe/Istanbul") == expected


@pytest.mark.parametrize("typed, code", [
    ("bugün 14:00", "past"),
    ("24.11.2026 14:59", "past"),
    ("2025-12-01 10:00", "past"),
    ("31.02.2027 10:00", "invalid"),
    ("25:00", "invalid"),
    ("12:60", "invalid"),
    ("yarın", "format"),
    ("yarın bugün 10:00", "format"),
    ("18:0", "format"),
    ("öğlen", "format"),
    ("", "format"),
    ("25.11.26 18:00", "format"),
    ("2026-11-25 18:00:00 extra", "format"),
    ("2030-01-01 10:00", "far"),
])
def test_parse_when_refuses(typed, code):
    with pytest.raises(WhenError) as err:
        parse_when(typed, NOW, "Europe/Istanbul")
    assert err.value.code == code


# ---------------------------------------------------------------- helpers
_addresses = iter(range(10_000, 10**9))


def add_resident(db, *, locale: str = "tr", mahalle: str | None = None, consents=(True,), channels=("telegram",),
                 anonymised: bool = False, unreachable: bool = False, address: str | None = None) -> Resident:
    """A resident; `consents` are announcements grants/withdrawals in order (the latest decides);
    `channels` in order of use (the last one was used last)."""
    now = utcnow()
    resident = Resident(locale=locale, mahalle=mahalle, onboarded_at=now,
                        anonymised_at=now if anonymised else None)
    db.add(resident)
    db.flush()
    for i, channel in enumerate(channels):
        db.add(ChannelIdentity(resident_id=resident.id, channel=channel,
                               address=address if address and i == len(channels) - 1 else str(next(_addresses)),
                               unreachable=unreachable, last_inbound_at=now - timedelta(hours=len(channels) - i)))
    for granted in consents:
        db.add(ConsentRecord(resident_id=resident.id, purpose="announcements", granted=granted, notice_version="t"))
    db.flush()
    return resident


def population(db) -> dict[str, Resident]:
    """The residents the audience tests count (see the comments: who is in, who is out)."""
    r = {
        "tr": add_resident(db, mahalle="kozagac"),                                         # in
        "en": add_resident(db, locale="en", mahalle="adatepe"),                            # in
        "withdrawn": add_resident(db, locale="ar", mahalle="kozagac", consents=(True, False)),
        "regranted": add_resident(db, mahalle="kozagac", consents=(False, True)),          # in
        "anonymised": add_resident(db, mahalle="kozagac", anonymised=True),
        "no_identity": add_resident(db, channels=()),
        "unreachable": add_resident(db, unreachable=True),
        "console_only": add_resident(db, channels=("console",)),                          # in (the terminal)
        "never_asked": add_resident(db, consents=()),
        "two_channels": add_resident(db, locale="ar", mahalle="adatepe", channels=("telegram", "whatsapp")),  # in
        "odd_locale": add_resident(db, locale="de"),                                       # in (reads Turkish)
    }
    db.add(ConsentRecord(resident_id=r["odd_locale"].id, purpose="reports", granted=False, notice_version="t"))
    return r


def rows_of(app, broadcast_id: int) -> list[OutboxMessage]:
    with transaction(app.db) as db:
        return list(db.exec(select(OutboxMessage).where(OutboxMessage.broadcast_id == broadcast_id)
                            .order_by(OutboxMessage.id)))


def audit_actions(app, broadcast_id: int) -> list[str]:
    with transaction(app.db) as db:
        return [a.action for a in bc.audit_rows(db, broadcast_id)]


def new_broadcast(app, *, texts=None, audience=None, at=None, notify: str = "", photo: str = "") -> int:
    with transaction(app.db) as db:
        b = bc.create(db, texts=texts or {"tr": "Su kesintisi", "en": "Water cut"}, audience=audience or {},
                      created_by="staff:1", notify_address=notify, scheduled_at=at, photo_path=photo)
        return b.id


def get(app, broadcast_id: int) -> Broadcast:
    with transaction(app.db) as db:
        return db.get(Broadcast, broadcast_id)


# ---------------------------------------------------------------- audience and fan-out
def test_audience_counting(make_app, db_url):
    app = make_app(database_url=db_url)
    with transaction(app.db) as db:
        population(db)
        assert bc.count_recipients(db, {}) == 6
        assert bc.count_by_language(db, {}) == {"tr": 4, "en": 1, "ar": 1}
        assert bc.count_recipients(db, {"mahalles": ["kozagac"]}) == 2
        assert bc.count_recipients(db, {"mahalles": ["kozagac", "adatepe"]}) == 4
        assert bc.count_recipients(db, {"language": "en"}) == 1
        assert bc.count_recipients(db, {"language": "tr"}) == 4
        assert bc.count_recipients(db, {"mahalles": ["kozagac", "adatepe"], "language": "ar"}) == 1
        assert bc.count_recipients(db, {"mahalles": [], "language": None}) == 6
        with pytest.raises(bc.BroadcastError, match="unknown audience filter 'nonsense'"):
            bc.count_recipients(db, {"nonsense": ["parks"]})
        with pytest.raises(bc.BroadcastError):
            bc.count_recipients(db, {"language": "de"})


def test_audience_filters_are_an_extension_point(make_app):
    """A later feature registers a named filter (an SQL condition on the resident table)."""
    app = make_app()
    try:
        @bc.audience_filter("ids")
        def _ids(values):
            return bc.R.c.id.in_(values) if values else None

        with transaction(app.db) as db:
            r = population(db)
            assert bc.count_recipients(db, {"ids": [r["tr"].id, r["withdrawn"].id, r["en"].id]}) == 2
    finally:
        bc.AUDIENCE_FILTERS.pop("ids", None)


def test_fan_out_rows_and_payload_languages(make_app, db_url):
    app = make_app(database_url=db_url)
    with transaction(app.db) as db:
        r = population(db)
        for _ in range(7):  # residents outside the audience between the others: several chunks
            add_resident(db, consents=(False,))
    bid = new_broadcast(app, photo="/media/afis.jpg")
    assert bc.claim_due(app.db, "w1") == [bid]
    assert dbc.fan_out(app.db, bid, "w1", chunk=3) == 6
    assert dbc.fan_out(app.db, bid, "w1", chunk=3) == 0            # done: nothing written twice
    assert bc.claim_due(app.db, "w2") == []
    rows = rows_of(app, bid)
    by_resident = {row.resident_id: row for row in rows}
    assert len(rows) == len(by_resident) == 6
    assert set(by_resident) == {r[k].id for k in ("tr", "en", "regranted", "console_only", "two_channels",
                                                  "odd_locale")}
    assert by_resident[r["console_only"].id].channel == "console"
    for row in rows:
        assert (row.kind, row.priority, row.status, row.attempts) == ("broadcast", outbox.PRIORITY_BROADCAST,
                                                                        "pending", 0)
        assert row.payload["photo_path"] == "/media/afis.jpg"
    tr_text = by_resident[r["tr"].id].payload["text"]
    assert "Su kesintisi" in tr_text and t_in("tr", "broadcast.footer") in tr_text
    en_text = by_resident[r["en"].id].payload["text"]
    assert "Water cut" in en_text and t_in("en", "broadcast.header") in en_text
    ar_row = by_resident[r["two_channels"].id]  # no Arabic text: the Turkish one, in an Arabic frame
    assert "Su kesintisi" in ar_row.payload["text"] and t_in("ar", "broadcast.footer") in ar_row.payload["text"]
    assert ar_row.channel == "whatsapp"            # the channel used last
    assert "Su kesintisi" in by_resident[r["odd_locale"].id].payload["text"]
    b = get(app, bid)
    assert (b.status, b.total) == ("sending", 6) and b.fanout_done_at is not None
    assert audit_actions(app, bid) == ["broadcast.created", "broadcast.scheduled", "broadcast.started",
                                       "broadcast.queued"]


def test_draft_then_schedule_and_validation(make_app):
    app = make_app()
    with transaction(app.db) as db:
        with pytest.raises(bc.BroadcastError, match="Turkish"):
            bc.create(db, texts={"tr": "  ", "en": "Hello"}, audience={}, created_by="x")
        with pytest.raises(bc.BroadcastError, match="unknown language"):
            bc.create(db, texts={"tr": "Merhaba", "de": "Hallo"}, audience={}, created_by="x")
        b = bc.create(db, texts={"tr": " Merhaba ", "en": "", "ar": None}, audience={"mahalles": []},
                      created_by="x", draft=True)
        assert (b.status, b.texts, b.audience) == ("draft", {"tr": "Merhaba"}, {})
        at = utcnow() + timedelta(minutes=5)
        bc.schedule(db, b, at, "x")
        assert (b.status, b.scheduled_at) == ("scheduled", at)
        with pytest.raises(bc.BroadcastError):
            bc.schedule(db, b, at, "x")
        assert bc.active_for(db, "x") == [b] and bc.active_for(db, "y") == []


def test_fan_out_resumes_a_crashed_workers_fan_out(make_app):
    app = make_app()
    with transaction(app.db) as db:
        ids = [add_resident(db).id for _ in range(10)]
    bid = new_broadcast(app)
    assert bc.claim_due(app.db, "dead") == [bid]
    with transaction(app.db) as db:  # the dead worker wrote the first chunk, then stopped
        b = db.get(Broadcast, bid)
        b.total = bc._insert_chunk(db, b, 0, ids[4], utcnow(), BroadcastWords())
        b.fanout_cursor = ids[4]
        b.fanout_until = utcnow() - timedelta(seconds=1)
        db.add(b)
    dbc.tick(app.db, "alive")
    rows = rows_of(app, bid)
    assert sorted(r.resident_id for r in rows) == ids
    assert get(app, bid).total == 10


def test_scheduled_broadcast_fires_at_its_time_exactly_once(make_app, db_url):
    """Two workers (two engines, as two processes) run the job side by side."""
    app = make_app(database_url=db_url)
    with transaction(app.db) as db:
        for _ in range(20):
            add_resident(db)
    at = utcnow() + timedelta(seconds=2)
    bid = new_broadcast(app, at=at)
    engines = [make_engine(db_url), make_engine(db_url)]
    stop = threading.Event()
    errors = []

    def worker(engine, name):
        while not stop.is_set():
            try:
                dbc.tick(engine, name)
            except Exception as exc:  # noqa: BLE001 - the thread collects any error for the test to assert on
                errors.append(exc)
            time.sleep(0.05)

    threads = [threading.Thread(target=worker, args=(e, f"w{i}")) for i, e in enumerate(engines)]
    for t in threads:
        t.start()
    try:
        time.sleep(1.0)
        assert rows_of(app, bid) == [] and get(app, bid).status == "scheduled"
        deadline = time.monotonic() + 10
        while get(app, bid).fanout_done_at is None and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(0.5)  # both workers keep ticking: nothing more may be written
    finally:
        stop.set()
        for t in threads:
            t.join()
        for e in engines:
            e.dispose()
    assert not errors
    b = get(app, bid)
    assert b.started_at >= at and b.status == "sending"
    rows = rows_of(app, bid)
    assert len(rows) == len({r.resident_id for r in rows}) == 20 == b.total
    assert audit_actions(app, bid).count("broadcast.started") == 1


def test_cancel_a_scheduled_broadcast(make_app):
    app = make_app()
    with transaction(app.db) as db:
        add_resident(db)
    bid = new_broadcast(app, at=utcnow() + timedelta(hours=1))
    with transaction(app.db) as db:
        done = dbc.cancel(db, Actor.cli("cli:ayse"), bid)
        assert (done.withdrawn, done.already) == (0, 0)
        assert dbc.cancel(db, Actor.cli("cli:ayse"), bid) is None       # once
    assert bc.claim_due(app.db, "w", now=utcnow() + timedelta(hours=2)) == []
    b = get(app, bid)
    assert (b.status, b.cancelled_by) == ("cancelled", "cli:ayse") and rows_of(app, bid) == []
    with transaction(app.db) as db:
        cancelled = [a for a in bc.audit_rows(db, bid) if a.action == "broadcast.cancelled"]
    assert [(a.actor, a.at is not None) for a in cancelled] == [("cli:ayse", True)]


def test_cancel_a_running_broadcast(make_app, db_url):
    app = make_app(database_url=db_url)
    with transaction(app.db) as db:
        add_resident(db, locale="en", address="900")  # the staff member who gets the notices
        for _ in range(6):
            add_resident(db)
    bid = new_broadcast(app, notify="telegram:900", audience={"language": "tr"})
    dbc.tick(app.db, "w")
    with transaction(app.db) as db:
        claimed = outbox.claim(db, "dispatcher", "telegram", 2, timedelta(seconds=30))
        assert len(claimed) == 2
    with transaction(app.db) as db:
        done = dbc.cancel(db, Actor(who="staff:7", role="admin"), bid)
    assert (done.withdrawn, done.already) == (4, 2)
    statuses = collections.Counter(r.status for r in rows_of(app, bid))
    assert statuses == {"cancelled": 4, "sending": 2}            # claimed rows may still go
    with transaction(app.db) as db:
        outbox.mark_sent(db, [r.id for r in claimed])
    dbc.check_running(app.db)
    assert get(app, bid).status == "cancelled"
    with transaction(app.db) as db:
        notices = db.exec(select(OutboxMessage).where(OutboxMessage.address == "900")).all()
    assert len(notices) == 1                                        # in the staff member's language:
    assert notices[0].payload["text"] == t_in("en", "broadcast.notice_cancelled", id=bid, by="staff:7", withdrawn="4",
                                              sent="2")


def test_progress_and_summary_to_the_creator(make_app, db_url):
    app = make_app(database_url=db_url)
    with transaction(app.db) as db:
        add_resident(db, locale="en", address="900", consents=())
        for _ in range(10):
            add_resident(db)
    bid = new_broadcast(app, notify="telegram:900")
    dbc.tick(app.db, "w")

    def notices():
        with transaction(app.db) as db:
            return [r.payload["text"] for r in db.exec(select(OutboxMessage).where(OutboxMessage.address == "900")
                                                       .order_by(OutboxMessage.id))]

    ids = [r.id for r in rows_of(app, bid)]
    with transaction(app.db) as db:
        db.exec(update(OutboxMessage).where(OutboxMessage.id.in_(ids[:5])).values(status="sent"))
    dbc.check_running(app.db)                                         # half done, but only just started
    assert notices() == []
    later = utcnow() + timedelta(seconds=31)
    dbc.check_running(app.db, now=later)
    dbc.check_running(app.db, now=later + timedelta(seconds=1))       # same decile: once
    assert len(notices()) == 1 and "50%" in notices()[0]
    with transaction(app.db) as db:
        db.exec(update(OutboxMessage).where(OutboxMessage.id.in_(ids[5:9])).values(status="sent"))
        db.exec(update(OutboxMessage).where(OutboxMessage.id == ids[9]).values(status="failed"))
    assert dbc.check_running(app.db) == [bid]
    assert dbc.check_running(app.db) == []
    b = get(app, bid)
    assert (b.status, b.sent, b.failed) == ("done", 9, 1) and b.finished_at is not None
    summary = notices()[-1]
    assert len(notices()) == 2 and "Sent: 9" in summary and "Failed: 1" in summary and "Total: 10" in summary
    assert audit_actions(app, bid)[-1] == "broadcast.finished"
    with transaction(app.db) as db:
        p = bc.progress(db, b)
    assert (p.sent, p.failed, p.waiting, p.total) == (9, 1, 0, 10)


def test_fan_out_of_50000_residents_is_streamed(make_app, figure):
    """The speed and the flat memory of the INSERT ... SELECT fan-out (SQLite)."""
    from sqlalchemy import insert

    app = make_app()
    n = 50_000
    now = utcnow()
    with app.db.begin() as conn:
        conn.execute(insert(Resident.__table__), [dict(id=i, locale=("tr", "en", "ar")[i % 3], display_name="",
                                                       created_at=now, updated_at=now, onboarded_at=now)
                                                  for i in range(1, n + 1)])
        conn.execute(insert(ChannelIdentity.__table__), [dict(resident_id=i, channel="telegram", address=str(i),
                                                              unreachable=False, unreachable_reason="",
                                                              created_at=now) for i in range(1, n + 1)])
        conn.execute(insert(ConsentRecord.__table__), [dict(resident_id=i, purpose="announcements",
                                                            granted=i % 10 != 0, notice_version="t", channel="",
                                                            recorded_at=now) for i in range(1, n + 1)])
    bid = new_broadcast(app, texts={"tr": "Merhaba", "en": "Hello", "ar": "مرحبا"})
    started = time.perf_counter()
    bc.claim_due(app.db, "w")
    written = dbc.fan_out(app.db, bid, "w")
    elapsed = time.perf_counter() - started
    assert written == 45_000
    figure(f"fan-out: {written} rows in {elapsed:.2f}s = {written / elapsed:,.0f} rows/s")
    assert elapsed < 6
    with transaction(app.db) as db:
        texts = collections.Counter(p["text"].split("\n\n")[1] for p in db.exec(
            select(OutboxMessage.payload).where(OutboxMessage.broadcast_id == bid)))
    assert texts == {"Merhaba": 15_000, "Hello": 15_000, "مرحبا": 15_000}


# ---------------------------------------------------------------- residents: DUR / STOP / abonelik
def announcements_on(app, address: str) -> bool:
    with transaction(app.db) as db:
        identity = db.exec(select(ChannelIdentity).where(ChannelIdentity.address == address)).first()
        rows = db.exec(select(ConsentRecord).where(ConsentRecord.resident_id == identity.resident_id,
                                                   ConsentRecord.purpose == "announcements")
                       .order_by(ConsentRecord.id)).all()
        return rows[-1].granted


@pytest.mark.parametrize("word, lang", [("DUR", "tr"), ("dur", "tr"), ("Stop", "en"), ("STOP", "tr"),
                                        ("توقف", "ar")])
def test_stop_words_turn_announcements_off(make_app, word, lang):
    app = make_app()
    chat = driver.Chat(app, "77", "telegram")
    chat.command("start")
    chat.tap(f"lang:{lang}")
    chat.tap("all")
    chat.tap("skip")      # the mahalle, later: at the menu
    assert announcements_on(app, "77")
    replies = chat.say(word)
    assert replies[-1].text == t_in(lang, "subscription.off")
    assert not announcements_on(app, "77")
    with transaction(app.db) as db:
        assert bc.count_recipients(db, {}) == 0
        reports = db.exec(select(ConsentRecord).where(ConsentRecord.purpose == "reports")).all()
    assert [r.granted for r in reports] == [True]                    # what they asked for still arrives
    assert chat.say(word)[-1].text == t_in(lang, "subscription.status_off")   # already off
    assert chat.tap("toggle")[-1].text == t_in(lang, "subscription.on")     # the button
    assert announcements_on(app, "77")


def test_abonelik_asks_before_changing_anything(make_app):
    app = make_app()
    chat = driver.Chat(app, "78", "telegram")
    chat.command("start")
    chat.tap("lang:tr")
    chat.tap("all")
    assert chat.command("abonelik")[-1].text == t_in("tr", "subscription.status_on")   # asked, not changed
    assert announcements_on(app, "78")
    assert chat.tap("toggle")[-1].text == t_in("tr", "subscription.off")
    assert not announcements_on(app, "78")
    assert chat.command("ABONELIK")[-1].text == t_in("tr", "subscription.status_off")  # still off
    assert not announcements_on(app, "78")
    assert chat.tap("toggle")[-1].text == t_in("tr", "subscription.on")
    assert announcements_on(app, "78")
    assert chat.command("subscription")[-1].text == t_in("tr", "subscription.status_on")
    assert chat.tap("back")[-1].text == t_in("tr", "menu.title")
    assert "abonelik" in app.registry.command_menu["tr"] and "subscription" in app.registry.command_menu["en"]


# ---------------------------------------------------------------- the staff flow through Telegram
@pytest.fixture
async def running(make_app, tg):
    """The application as `katilim run` starts it: the Telegram channel and the scheduler (the
    "outbox" dispatcher and the "broadcasts" job)."""
    from bot.app import add_configured_channels
    from bot.scheduler import start_scheduler, stop_jobs

    app = make_app(telegram_bot_token=tg.token, telegram_api_url=tg.root)
    add_configured_channels(app)
    channel = app.channels["telegram"]
    await channel.start()
    scheduler = start_scheduler(app)
    yield app, channel
    scheduler.shutdown(wait=False)
    await stop_jobs(app)
    await channel.stop()




def buttons(call) -> dict[str, str]:
    markup = call.params.get("reply_markup") or {}
    return {b["callback_data"]: b["text"] for row in markup.get("inline_keyboard", []) for b in row}


def hood(app, name: str) -> str:
    return next(n.key for n in app.catalog.neighbourhoods if n.name == name)


async def test_staff_duyuru_flow_to_delivered_messages(running, tg):
    app, channel = running
    kozagac, adatepe = hood(app, "Kozağaç"), hood(app, "Adatepe")
    with transaction(app.db) as db:
        db.add(Staff(telegram_id="900", name="Ayşe Yılmaz"))
        add_resident(db, mahalle=kozagac, address="1001")
        add_resident(db, mahalle=adatepe, locale="en", address="1002")
        add_resident(db, mahalle=adatepe, locale="ar", address="1003")
        add_resident(db, mahalle=hood(app, "Yıldız"), address="1004")              # another mahalle
        add_resident(db, mahalle=kozagac, consents=(True, False), address="1005")  # withdrew
    staff = TelegramChat(tg, channel, 900)
    replies = await staff.say("/duyuru")
    assert replies[-1].text == t_in("tr", "broadcast.ask_text_tr")
    replies = await staff.say("Yarın 09:00-12:00 arası su kesintisi olacaktır.")
    assert "skip" in buttons(replies[-1])
    await staff.say("Water cut tomorrow 09:00-12:00.")
    await staff.tap("skip")                                                         # no Arabic text
    replies = await staff.photo(JPEG)
    assert "mahalles" in buttons(replies[-1])
    await staff.tap("mahalles")
    replies = await staff.say("kozagac, ADATEPE, Hiçbiryer")
    assert t_in("tr", "broadcast.mahalle_unknown", names="Hiçbiryer") in [c.text for c in replies]
    assert "Kozağaç, Adatepe" in replies[-1].text and "done" in buttons(replies[-1])
    await staff.tap("done")
    replies = await staff.tap("go")
    photos = [c for c in replies if c.method == "sendPhoto"]
    assert len(photos) == 3                                                  # a preview per language
    assert "su kesintisi" in photos[0].text and "Water cut" in photos[1].text
    assert "su kesintisi" in photos[2].text and t_in("ar", "broadcast.footer") in photos[2].text
    assert "3" in replies[-1].text and set(buttons(replies[-1])) >= {"now", "later", "discard"}
    replies = await staff.tap("now")
    with transaction(app.db) as db:
        b = db.exec(select(Broadcast)).one()
    assert replies[0].text == t_in("tr", "broadcast.started", id=b.id, count="3")
    assert (b.created_by, b.notify_address, b.audience) == ("staff:1", "telegram:900",
                                                            {"mahalles": [kozagac, adatepe]})
    assert Path(b.photo_path).read_bytes() == STORED_JPEG
    await tg.async_wait_for(lambda s: all(s.delivered_texts(c) for c in (1001, 1002, 1003)), timeout=15)
    assert "su kesintisi" in tg.delivered_texts(1001)[0] and "Water cut" in tg.delivered_texts(1002)[0]
    assert "su kesintisi" in tg.delivered_texts(1003)[0]
    assert [c.method for c in tg.sent_messages(1001)] == ["sendPhoto"]
    assert tg.calls_of("sendPhoto")[-1].params["photo"]["content"] == STORED_JPEG
    summary = t_in("tr", "broadcast.notice_done", id=b.id, sent="3", failed="0", total="3", when="").split("(")[0]
    await tg.async_wait_for(lambda s: any(t.startswith(summary) for t in s.delivered_texts(900)), timeout=15)
    assert tg.delivered_texts(1004) == [] and tg.delivered_texts(1005) == []
    assert get(app, b.id).status == "done"
    with transaction(app.db) as db:
        audit = [(a.action, a.actor) for a in bc.audit_rows(db, b.id)]
    assert audit == [("broadcast.created", "staff:1"), ("broadcast.scheduled", "staff:1"),
                     ("broadcast.started", "staff:1"), ("broadcast.queued", "staff:1"),
                     ("broadcast.finished", "staff:1")]


async def test_non_staff_is_refused_and_audited(running, tg):
    app, channel = running
    resident = TelegramChat(tg, channel, 555)
    replies = await resident.say("/duyuru")
    assert replies[0].text == t_in("tr", "staff.refused")
    replies = await resident.say("/duyurular")
    assert replies[0].text == t_in("tr", "staff.refused")
    with transaction(app.db) as db:
        refused = db.exec(select(AuditLog).where(AuditLog.action == "staff.refused")).all()
        who = db.exec(select(ChannelIdentity.resident_id).where(ChannelIdentity.address == "555")).one()
        assert [(a.actor, a.target) for a in refused] == [(f"resident:{who}", "broadcast.text"),   # never the chat id
                                                          (f"resident:{who}", "broadcast.list")]
        assert db.exec(select(Broadcast)).all() == []


async def test_staff_schedules_lists_and_cancels(running, tg):
    app, channel = running
    with transaction(app.db) as db:
        db.add(Staff(telegram_id="901"))
        add_resident(db, address="1101")
    staff = TelegramChat(tg, channel, 901)
    await staff.say("/duyuru")
    await staff.say("Pazar günü pazar yeri kurulmayacak.")
    await staff.tap("skip")
    await staff.tap("skip")
    await staff.tap("skip")
    await staff.tap("all")
    await staff.tap("later")
    replies = await staff.say("dün 10:00")
    assert replies[0].text == t_in("tr", "broadcast.when_format")
    replies = await staff.say("bugün 00:00")
    assert replies[0].text == t_in("tr", "broadcast.when_past")
    replies = await staff.say("yarın 09:00")
    with transaction(app.db) as db:
        b = db.exec(select(Broadcast)).one()
    assert b.status == "scheduled" and b.scheduled_at > utcnow() + timedelta(hours=1)
    assert replies[0].text == t_in("tr", "broadcast.scheduled", id=b.id, when=format_when(b.scheduled_at, "tr"),
                                   count="1")
    replies = await staff.say("/duyurular")
    assert f"c:{b.id}" in buttons(replies[-1]) and "Pazar günü" in replies[-1].text
    await staff.tap(f"c:{b.id}")
    replies = await staff.tap("yes")
    assert replies[0].text == t_in("tr", "broadcast.cancelled", id=b.id, withdrawn="0", sent="0")
    assert replies[-1].text.startswith(t_in("tr", "broadcast.list_all_title") + "\n#%d · " % b.id)
    assert list(buttons(replies[-1])) == ["new", "back"]  # every announcement shown; a cancelled one has no button
    assert get(app, b.id).status == "cancelled"
    assert audit_actions(app, b.id) == ["broadcast.created", "broadcast.scheduled", "broadcast.cancelled"]
    await asyncio.sleep(0.5)
    assert tg.delivered_texts(1101) == []


# ---------------------------------------------------------------- `katilim broadcast` (subprocess)
def katilim(*args: str, db_url: str, tmp_path: Path) -> subprocess.CompletedProcess:
    env = katilim_env(DATABASE_URL=db_url, MEDIA_DIR=str(tmp_path / "media"), LOG_LEVEL="WARNING")
    return subprocess.run([sys.executable, "-m", "bot.cli", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=60)


def test_cli_send_list_status_cancel(make_app, tmp_path):
    app = make_app()
    url = app.settings.database_url
    kozagac = hood(app, "Kozağaç")
    with transaction(app.db) as db:
        add_resident(db, mahalle=kozagac)
        add_resident(db, mahalle=kozagac, locale="en")
        add_resident(db, mahalle=hood(app, "Adatepe"))
    (tmp_path / "tr.txt").write_text("Kozağaç'ta yol çalışması var.\n", encoding="utf-8")
    (tmp_path / "en.txt").write_text("Road works in Kozağaç.\n", encoding="utf-8")
    (tmp_path / "afis.jpg").write_bytes(JPEG)

    done = katilim("broadcast", "send", "--text-file", str(tmp_path / "tr.txt"), "--text-file-en",
                   str(tmp_path / "en.txt"), "--mahalle", "KOZAGAC", "--photo", str(tmp_path / "afis.jpg"),
                   db_url=url, tmp_path=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "broadcast 1 sending: 2 recipients"
    rows = rows_of(app, 1)
    assert len(rows) == 2 and {"Road works" in r.payload["text"] for r in rows} == {True, False}
    assert Path(rows[0].payload["photo_path"]).read_bytes() == STORED_JPEG

    done = katilim("broadcast", "send", "--text-file", str(tmp_path / "tr.txt"), "--mahalle", "Nerede",
                   db_url=url, tmp_path=tmp_path)
    assert done.returncode == 2 and "unknown mahalle 'Nerede'" in done.stderr

    at = (utcnow() + timedelta(days=2)).astimezone(app.settings.tz).strftime("%Y-%m-%d %H:%M")
    done = katilim("broadcast", "send", "--text-file", str(tmp_path / "tr.txt"), "--language", "tr",
                   "--at", at, db_url=url, tmp_path=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("broadcast 2 scheduled for ") and "2 recipients now" in done.stdout

    listed = katilim("broadcast", "list", db_url=url, tmp_path=tmp_path)
    assert listed.returncode == 0, listed.stderr
    lines = listed.stdout.splitlines()
    assert lines[1].split()[:2] == ["2", "scheduled"] and at in lines[1]
    assert lines[2].split()[:2] == ["1", "sending"]

    status = katilim("broadcast", "status", "1", db_url=url, tmp_path=tmp_path)
    assert status.returncode == 0, status.stderr
    assert "broadcast 1: sending" in status.stdout
    assert "sent 0  failed 0  waiting 2  cancelled 0  total 2" in status.stdout

    cancel = katilim("broadcast", "cancel", "1", db_url=url, tmp_path=tmp_path)
    assert cancel.returncode == 0, cancel.stderr
    assert "2 messages withdrawn" in cancel.stdout
    with transaction(app.db) as db:
        audit = [(a.action, a.actor.split(":")[0]) for a in bc.audit_rows(db, 1)]
    assert audit[-1] == ("broadcast.cancelled", "cli")
    assert {r.status for r in rows_of(app, 1)} == {"cancelled"}
