"""Erasure erases and the export is complete, through the real channels: a resident uses the bot on
Telegram (the real PTB Application against tests/fakes/telegram_api.py) and on WhatsApp (signed
Twilio webhooks to the running HTTP server, tests/fakes/twilio_api.py), links the two, files
reports with photos, volunteers, registers for an event, rates it, asks for their data; then
/verilerimisil. A dump of every table and of every file under MEDIA_DIR is searched for every
value that identified them: nothing is left. On SQLite and PostgreSQL."""
from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import re
import time
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

from sqlalchemy import func, inspect, text
from sqlalchemy import select as sa_select
from sqlmodel import Session, select

from bot.dispatcher import Dispatcher
from conversations.domain import events as event_ops
from conversations.domain import volunteering as call_ops
from conversations.i18n import t_in
from conversations.permissions import Actor
from handlers.whatsapp import to_inbound
from storage import reports as rp
from storage.attachments import MediaUpload
from storage.db import make_engine, transaction, utcnow
from storage.linking import resident_columns
from storage.migrate import alembic_config, upgrade
from storage.models import AuditLog, Broadcast, ConversationSession, OutboxMessage, Resident, Staff
from tests.participation_support import local_time
from tests.privacy_support import dump, jpeg, strings_in
from tests.support.chat import Chat
from tests.support.telegram import TelegramChat
from tests.test_whatsapp import AYSE, MEHMET, numbered, twilio, wa  # noqa: F401  (fixtures)

CODE = re.compile(r"[A-Z]{2,5}-\d{4}-\d{6}")
TG_AYSE = 8123456789          # Ayşe's Telegram chat id
BOSS = 7301                   # a staff member on Telegram
NAME_TG, NAME_WA = "Ayşegül", "Ayşegül Yıldırımtepe"
DESCRIPTION = "Çınarlıdere sokağında derin çukur var, ben Ayşegül, tel 0555 111 22 33"
STREET = "Gülbahçe çıkmazı 17 önü"
DRAFT = "Taslakta kalan açıklama Zeytinlik"
SKILLS = "Arıcılık ve gönüllü ilk yardım"
COMMENT = "Panel çok verimliydi, Ayşegül teşekkür eder"
QUEUED = "Kuyrukta bekleyen mesajım Karabağlar"
SUPPORT = "Ayşegül burada düştü, lamba hâlâ yanmıyor Gülyalı"
OWN, SHARED, DRAFT_PHOTO, STRAY, SUPPORT_PHOTO = jpeg(11), jpeg(12), jpeg(13), jpeg(14), jpeg(15)
OURS = ("conversations", "storage", "bot", "handlers", "katilim")


def texts(calls) -> str:
    return "\n".join(c.text or c.params.get("caption") or "" for c in calls)


@dataclass
class Life:
    """What one resident did, and what identified them."""
    resident_id: int = 0
    code: str = ""
    other_code: str = ""
    export_url: str = ""
    own_files: set[str] = field(default_factory=set)      # stored names of files only she sent
    shared_file: str = ""                                 # a stored photo another report holds too
    needles: list[str] = field(default_factory=list)


async def live_a_life(h, tg) -> Life:
    """Mehmet files a report with a photo on WhatsApp; Ayşe uses WhatsApp and Telegram (linked),
    files a report with two photos (one the same as Mehmet's), abandons a draft with a photo,
    sends a stray photo, follows Mehmet's report, joins a pool with free-text skills, accepts a
    call, registers for an event and comments on it, is refused a staff command, rates her
    resolved report, asks for her data on both channels and has a message waiting in the inbox."""
    app = h.app
    life = Life()
    telegram = app.channels["telegram"]
    boss = TelegramChat(tg, telegram, BOSS, first_name="Zabıta", timeout=15)
    with transaction(app.db) as db:
        db.add(Staff(telegram_id=str(BOSS), name="Zabıta Ekibi"))
    await boss.say("/start")
    await boss.tap("lang:tr")
    await boss.tap("all")
    await boss.tap("skip")

    # Mehmet, on WhatsApp, reports a broken lamp with a photo (the same photo Ayşe sends later)
    await h.say("Merhaba", MEHMET, profile_name="Mehmet Öztürkoğlu")
    for answer in ("1", "1", "1"):
        await h.say(answer, MEHMET, profile_name="Mehmet Öztürkoğlu")
    await h.say("/bildir", MEHMET)
    await h.say("2", MEHMET)                                   # lighting
    await h.say("", MEHMET, Latitude="38.3886", Longitude="27.1753", MessageType="location")
    await h.say("1", MEHMET)                                   # the pin's mahalle: yes
    url = h.twilio.add_media(SHARED, "image/jpeg")
    await h.say("Sokak lambası yanmıyor Mehmetçik", MEHMET, NumMedia="1", MediaUrl0=url,
                MediaContentType0="image/jpeg", MessageType="image")
    await h.say("1", MEHMET)                                   # photos: done
    sent = await h.say("1", MEHMET)                            # confirm
    life.other_code = CODE.search(sent[0].body).group(0)

    # Ayşe on WhatsApp, then on Telegram: a wrong link code, then her own contact links them
    await h.say("Merhaba", AYSE, profile_name=NAME_WA)
    for answer in ("1", "1", "1"):
        await h.say(answer, AYSE, profile_name=NAME_WA)
    ayse = TelegramChat(tg, telegram, TG_AYSE, first_name=NAME_TG, timeout=15)
    await ayse.say("/bagla")
    await ayse.say("00000 00000")  # a wrong code (codes are 10 digits)
    calls = await ayse.contact("+90 555 111 22 33")
    assert t_in("tr", "link.done") in texts(calls)

    # a staff command she may not use (audited)
    calls = await ayse.say("/etkinlikekle")
    assert t_in("tr", "staff.refused") in texts(calls)

    # a report: category, mahalle + street, description, two photos, confirm
    await ayse.say("/bildir")
    await ayse.tap("c:road")
    await ayse.say("Kozağaç")
    await ayse.say(STREET)
    await ayse.say(DESCRIPTION)
    await ayse.photo(OWN)
    await ayse.photo(SHARED)
    await ayse.tap("done")
    calls = await ayse.tap("confirm")
    life.code = CODE.search(texts(calls)).group(0)
    with Session(app.db) as db:
        report = rp.get_by_code(db, life.code)
        life.resident_id = report.resident_id
        stored = {Path(m.path).name for m in rp.media_of(db, report.id)}
        other = rp.get_by_code(db, life.other_code)
        life.shared_file = Path(rp.media_of(db, other.id)[0].path).name
    assert life.shared_file in stored and len(stored) == 2
    life.own_files |= stored - {life.shared_file}

    # a draft with a photo, abandoned; a photo where none is asked for
    await ayse.say("/bildir")
    await ayse.tap("c:water")
    await ayse.say("Kozağaç")
    await ayse.say(STREET)
    await ayse.say(DRAFT)
    await ayse.photo(DRAFT_PHOTO)
    with Session(app.db) as db:
        draft = db.get(ConversationSession, life.resident_id).data
        life.own_files |= {Path(p["path"]).name for p in draft.get("photos", [])}
    await ayse.say("/iptal")
    await ayse.photo(STRAY)

    # starts a report of the same lamp, is shown Mehmet's, follows it and adds a photo and a comment
    await ayse.say("/bildir")
    await ayse.tap("c:lighting")
    await ayse.pin(38.38865, 27.17535)
    calls = await ayse.tap("yes")
    assert f"f:{life.other_code}" in str([c.params.get("reply_markup") for c in calls])
    calls = await ayse.tap(f"f:{life.other_code}")
    assert t_in("tr", "report.followed", code=life.other_code) in texts(calls)
    await ayse.photo(SUPPORT_PHOTO)
    calls = await ayse.say(SUPPORT)
    assert t_in("tr", "report.support_saved", code=life.other_code) in texts(calls)
    with Session(app.db) as db:
        other = rp.get_by_code(db, life.other_code)
        added = [m for m in rp.media_of(db, other.id) if m.event_id is not None]
        assert len(added) == 1 and [e.note for e in rp.history_of(db, other.id)
                                    if e.kind == "supporter_comment"] == [SUPPORT]
        life.own_files.add(Path(added[0].path).name)

    # a volunteer pool with free-text skills, and a call she accepts
    await ayse.say("/gonullu")
    await ayse.tap("p:environment")
    await ayse.tap("join")
    await ayse.tap("s:first_aid")
    await ayse.tap("done")
    await ayse.say(SKILLS)
    await ayse.tap("a:weekends")
    await ayse.tap("done")
    await ayse.tap("keep")
    await ayse.tap("save")
    tz = app.engine.config.timezone
    start = local_time("2030-11-30 10:00", tz)
    with transaction(app.db) as db:
        call = call_ops.create_call(db, Actor.cli("staff:1"), pools=["environment"], what="Fidan dikimi",
                                    place="Buca Göleti", starts_at=start, ends_at=start + timedelta(hours=3),
                                    capacity=5, catalog=app.catalog, tz=tz)
        event = event_ops.create_event(db, Actor.cli("staff:1"), title={"tr": "İklim paneli"},
                                       starts_at=utcnow() + timedelta(days=3),
                                       ends_at=utcnow() + timedelta(days=3, hours=2), place="Buca Kent Konseyi")
    await ayse.tap(f"vc:{call.id}:y")

    # an event: registered, then a rating with a comment
    await ayse.say("/etkinlikler")
    await ayse.tap(f"e:{event.id}")
    calls = await ayse.tap("rsvp")
    assert any(c.method == "sendDocument" for c in calls), texts(calls)
    await ayse.tap(f"fb:{event.id}:5")
    await ayse.say(COMMENT)

    # staff open her report (its photos go to them) and resolve it; she rates it
    calls = await boss.say(f"/raporlar {life.code}")
    assert any(c.method == "sendPhoto" for c in calls)
    await boss.tap("to:resolved")
    await boss.tap("none")
    dispatcher = Dispatcher(app, app.senders, "test-erasure", app.settings)
    assert await dispatcher.start()
    try:
        await tg.async_wait_for(lambda s: any(f"rs:yes:{life.code}" in str(c.params.get("reply_markup"))
                                              for c in s.sent_messages()), timeout=15)
    finally:
        await dispatcher.stop()
    await ayse.tap(f"rs:yes:{life.code}")
    calls = await ayse.tap(f"rr:4:{life.code}")
    assert t_in("tr", "report.rated", rating=4, code=life.code) in texts(calls)

    # her data, on both channels (WhatsApp: a signed link Twilio fetches)
    calls = await ayse.say("/verilerim")
    assert any(c.method == "sendDocument" for c in calls)
    sent = await h.say("/verilerim", AYSE, profile_name=NAME_WA)
    life.export_url = next(m for m in sent if m.media_urls).media_urls[0]
    assert (await h.http.get(life.export_url.removeprefix(h.base))).status_code == 200

    # a message accepted by the webhook but not handled yet (its process died): in the inbox
    await app.accept(to_inbound(h.twilio.inbound(AYSE, QUEUED, profile_name=NAME_WA)))

    life.own_files |= {f"{hashlib.sha256(b).hexdigest()}" for b in (OWN, DRAFT_PHOTO, STRAY)}
    life.needles = [NAME_TG, "Yıldırımtepe", "5551112233", "555 111 22 33", str(TG_AYSE), DESCRIPTION,
                    "Çınarlıdere", STREET, DRAFT, SKILLS, COMMENT, QUEUED, SUPPORT, *sorted(life.own_files)]
    return life


def erased_check(h, life: Life, figure, what: str) -> None:
    found = dump(h.app.db, h.app.settings.media_dir)
    left = found.hits(life.needles)
    figure(f"erasure ({what}): rows and files left identifying the resident after /verilerimisil = {len(left)} "
           f"({found.tables} tables, {len(found.rows)} rows, {len(found.files)} files scanned)")
    assert left == [], "\n".join(left)
    # the dump does see what it must: Mehmet's data and the photo his report shares are still there
    assert "Öztürkoğlu" in found.text() and "5554445566" in found.text()
    assert any(life.shared_file == Path(name).name for name, _ in found.files)
    with Session(h.app.db) as db:
        report = rp.get_by_code(db, life.code)
        assert report.resident_id is None and report.erased_at is not None
        assert (report.category, report.status, report.mahalle) == ("road", "resolved", "kozagac")
        assert report.description == "" and report.address == "" and rp.media_of(db, report.id) == []
        assert db.get(Resident, life.resident_id).anonymised_at is not None
        other = rp.get_by_code(db, life.other_code)            # what she added to Mehmet's report went
        assert [m.event_id for m in rp.media_of(db, other.id)] == [None]
        assert [e.note for e in rp.history_of(db, other.id) if e.kind == "supporter_comment"] == [""]


async def test_erasure_leaves_nothing_that_identifies_the_resident(wa, tg, db_url, figure, caplog):
    caplog.set_level(logging.INFO)
    h = await wa(database_url=db_url, telegram_bot_token=tg.token, telegram_api_url=tg.root,
                 flood_messages=1000)
    life = await live_a_life(h, tg)
    before = dump(h.app.db, h.app.settings.media_dir)
    assert len(before.hits(life.needles)) > 20          # the search does find her while she is there

    sent = await h.say("/verilerimisil", AYSE, profile_name=NAME_WA)
    assert numbered(sent[-1].body)[0][1] == t_in("tr", "data.delete_yes")
    sent = await h.say("1", AYSE, profile_name=NAME_WA)
    assert t_in("tr", "data.deleted") in sent[0].body      # the goodbye went out (and left no address)

    # the export's link is dead, the export file gone
    assert (await h.http.get(life.export_url.removeprefix(h.base))).status_code == 404
    # the scheduler's housekeeping leaves nothing behind either
    from bot.scheduler import housekeeping

    await housekeeping(h.app).run()
    erased_check(h, life, figure, f"Telegram + WhatsApp, {h.app.db.dialect.name}")
    # the logs named her only as resident:ID
    ours = [r.getMessage() for r in caplog.records if r.name.split(".")[0] in OURS]
    assert not [m for m in ours if any(n in m for n in ("5551112233", str(TG_AYSE), NAME_TG))]
    # writing again starts afresh
    sent = await h.say("Merhaba", AYSE)
    assert t_in("tr", "onboarding.choose_language") in sent[-1].body


async def test_a_goodbye_that_cannot_be_delivered_leaves_no_address(wa, tg, figure):
    """The goodbye goes out after the erasure; when it cannot (the resident blocked the bot), the
    dispatcher gives it up and the housekeeping job deletes it: no row keeps the address."""
    h = await wa(telegram_bot_token=tg.token, telegram_api_url=tg.root,
                 flood_messages=1000)
    chat = TelegramChat(tg, h.app.channels["telegram"], 8200000001, first_name="Bloklu", timeout=15)
    await chat.say("/start")
    await chat.tap("lang:tr")
    await chat.tap("all")
    await chat.tap("skip")
    await chat.say("/verilerimisil")
    tg.block_chat(chat.id)
    await chat.tap("yes")
    dispatcher = Dispatcher(h.app, h.app.senders, "test-goodbye", h.app.settings)
    assert await dispatcher.start()
    try:
        def settled() -> bool:
            with Session(h.app.db) as db:
                return not db.exec(select(OutboxMessage).where(OutboxMessage.status.in_(("pending", "sending")))).all()
        for _ in range(300):
            if settled():
                break
            await asyncio.sleep(0.05)
    finally:
        await dispatcher.stop()
    from bot.scheduler import housekeeping

    await housekeeping(h.app).run()
    with Session(h.app.db) as db:
        left = [r for r in db.exec(select(OutboxMessage)) if r.address == str(chat.id)]
    figure(f"erasure: outbox rows left with the address of an undeliverable goodbye = {len(left)}")
    assert left == []


# ---------------------------------------------------------------- the export is complete
def _appears(table: str, row: dict, export: dict) -> bool:
    """Whether a row of a table with a resident column shows in the export, in some form."""
    text = json.dumps(export, ensure_ascii=False, default=str)
    checks = {
        "channel_identity": lambda: any(c["address"] == row["address"] for c in export["channels"]),
        "consent_record": lambda: any(c["purpose"] == row["purpose"] and c["at"][:19] == str(row["recorded_at"])[:19]
                                      .replace(" ", "T") for c in export["consents"]),
        "outbox": lambda: any(m["id"] == row["id"] for m in export["messages"]["sent_to_you"]),
        "report": lambda: any(r["code"] == row["code"] for r in export["reports"]),
        "report_follower": lambda: bool(export["followed_reports"]),
        "pool_membership": lambda: any(m["pool"] == row["pool"] and m["skills"] == row["skills"]
                                       for m in export["volunteer_pools"]),
        "call_response": lambda: any(c["call"] == row["call_id"] for c in export["volunteer_calls"]),
        "rsvp": lambda: any(r["event"] == row["event_id"] for r in export["event_registrations"]),
        "event_feedback": lambda: any(f["comment"] == row["comment"] for f in export["event_feedback"]),
        "reminder": lambda: any(r["about"] == f"{row['subject_kind']}:{row['subject_id']}" for r in export["reminders"]),
        "link_code": lambda: bool(export["link_codes"]),
        "media_upload": lambda: row["name"] in [a["name"] for a in export["attachments"]],
    }
    assert table in checks, f"table {table} holds rows of a resident but the export test does not know it"
    return checks[table]() and bool(text)


async def test_the_export_holds_everything_and_no_server_path(wa, tg, db_url):
    h = await wa(database_url=db_url, telegram_bot_token=tg.token, telegram_api_url=tg.root,
                 flood_messages=1000)
    life = await live_a_life(h, tg)
    ayse = TelegramChat(tg, h.app.channels["telegram"], TG_AYSE, first_name=NAME_TG, timeout=15)
    await ayse.say("/bagla")   # a live code on WhatsApp too
    await h.say("/bagla", AYSE, profile_name=NAME_WA)
    with Session(h.app.db) as db:
        last_row = db.exec(select(func.max(OutboxMessage.id))).one()   # the export's own reply comes after
    calls = await ayse.say("/verilerim")
    doc = next(c for c in calls if c.method == "sendDocument")
    export = json.loads(doc.params["document"]["content"])
    rid = life.resident_id

    # every row of every table that points at her appears
    with h.app.db.connect() as conn:
        tables = {t.name: (t, c) for t, c in resident_columns()}
        assert {"channel_identity", "report", "pool_membership", "rsvp", "media_upload"} <= set(tables)
        seen = 0
        for name, (table, column) in tables.items():
            query = sa_select(table).where(column == rid)
            if name == "outbox":
                query = query.where(table.c.id <= last_row)
            for row in conn.execute(query).mappings():
                assert _appears(name, dict(row), export), f"{name} row {dict(row)} missing from the export"
                seen += 1
        assert seen > 20
        # the audit rows about her, the inbox row waiting, her attachments by name
        audit = conn.execute(sa_select(AuditLog.__table__).where(
            (AuditLog.__table__.c.actor == f"resident:{rid}") | (AuditLog.__table__.c.target == f"resident:{rid}"))).all()
    assert len(export["audit"]) == len(audit) and {"staff.refused", "link.code_wrong"} <= {a["action"] for a in export["audit"]}
    assert [m["text"] for m in export["messages"]["waiting_from_you"]] == [QUEUED]
    names = {a["name"] for a in export["attachments"]}
    assert {n for n in life.own_files if "." in n} <= names
    assert export["reports"][0]["history"] and export["reports"][0]["media"][0]["name"] in names
    # no server path: no string starts with "/" or holds MEDIA_DIR
    media_dir = str(h.app.settings.media_dir)
    for value in strings_in(export):
        assert not value.startswith("/") and media_dir not in value, value


# ---------------------------------------------------------------- housekeeping: files nothing needs
def test_housekeeping_deletes_stored_files_nothing_points_at(make_app, db_url, figure):
    from bot.scheduler import housekeeping

    app = make_app(database_url=db_url)
    media = app.settings.media_dir
    ayse = Chat(app, "ayse").onboard()

    def stored(seed: int, age_days: float = 2) -> Path:
        from storage.media import store

        path = store(media, jpeg(seed), ".jpg")
        old = time.time() - age_days * 86400
        os.utime(path, (old, old))
        return path

    orphan, in_report, in_draft, in_broadcast = stored(1), stored(2), stored(3), stored(4)
    young = stored(5, age_days=0.1)
    not_ours = media / "README.txt"
    not_ours.write_text("kept")
    os.utime(not_ours, (time.time() - 5 * 86400,) * 2)
    (media / "whatsapp-out").mkdir(exist_ok=True)
    published = media / "whatsapp-out" / orphan.name
    published.write_bytes(orphan.read_bytes())
    ayse_id = ayse.resident_id
    with transaction(app.db) as db:
        rp.create_report(db, prefix="BCA", resident_id=None, category="road", description="x",
                         media=[{"path": str(in_report), "kind": "photo"}])
        db.add(Broadcast(created_by="staff:1", texts={"tr": "x"}, photo_path=str(in_broadcast)))
        db.add(MediaUpload(resident_id=ayse_id, name=orphan.name))
    ayse.send("/bildir")
    ayse.tap("c:road")
    with transaction(app.db) as db:        # a draft in progress holds a photo
        session = db.get(ConversationSession, ayse_id)
        session.data = {**session.data, "photos": [{"path": str(in_draft), "content_type": "image/jpeg"}]}
        db.add(session)
    asyncio.run(housekeeping(app).run())
    assert not orphan.exists()
    assert in_report.exists() and in_draft.exists() and in_broadcast.exists() and young.exists()
    assert not_ours.exists() and published.exists()       # other names and subfolders: not this sweep's
    with Session(app.db) as db:
        assert db.exec(select(MediaUpload)).all() == []
    figure("housekeeping: 1 of 5 stored files deleted (the one older than a day nothing points at)")


# ---------------------------------------------------------------- migration 0015
def test_migration_0015_pseudonymises_old_audit_actors_both_ways(db_url):
    from alembic import command

    engine = make_engine(db_url)
    try:
        upgrade(engine)
        cfg = alembic_config(db_url)

        def downgrade():
            with engine.connect() as conn:
                cfg.attributes["connection"] = conn
                command.downgrade(cfg, "0009")
                conn.commit()

        downgrade()
        assert "media_upload" not in inspect(engine).get_table_names()
        with engine.begin() as conn:
            conn.execute(text("INSERT INTO resident (id, locale, display_name, created_at, updated_at) "
                              "VALUES (7, 'tr', '', :t, :t)"), {"t": utcnow()})
            conn.execute(text("INSERT INTO channel_identity (resident_id, channel, address, unreachable, "
                              "unreachable_reason, created_at) VALUES (7, 'telegram', '555', false, '', :t)"),
                         {"t": utcnow()})
            conn.execute(text("INSERT INTO staff (id, telegram_id, name, role, created_at) "
                              "VALUES (3, '42', 'Zabıta', 'staff', :t)"), {"t": utcnow()})
            conn.execute(text("INSERT INTO staff (id, name, role, created_at) VALUES (4, 'console:ops', 'staff', :t)"),
                         {"t": utcnow()})
            for actor in ("telegram:555", "telegram:42", "console:ops", "whatsapp:whatsapp:+905551112233",
                          "staff:3", "open311:crm", "system"):
                conn.execute(text("INSERT INTO audit_log (at, actor, action, target, details) "
                                  "VALUES (:t, :a, 'x', '', '{}')"), {"t": utcnow(), "a": actor})
        upgrade(engine)
        expected = ["resident:7", "staff:3", "staff:4", "erased", "staff:3", "open311:crm", "system"]
        with engine.connect() as conn:
            assert [a for (a,) in conn.execute(text("SELECT actor FROM audit_log ORDER BY id"))] == expected
        assert "media_upload" in inspect(engine).get_table_names()
        assert "erased_at" in {c["name"] for c in inspect(engine).get_columns("report")}
        downgrade()   # the way back: the tables go, the pseudonyms stay
        assert "erased_at" not in {c["name"] for c in inspect(engine).get_columns("report")}
        with engine.connect() as conn:
            assert [a for (a,) in conn.execute(text("SELECT actor FROM audit_log ORDER BY id"))] == expected
        upgrade(engine)
    finally:
        engine.dispose()
