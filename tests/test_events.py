"""Events through the real engine, the real CLI (subprocess) and the real PTB Application against
the fake Bot API server: listing in Turkish dates, RSVP with a calendar file, the waiting list and
its automatic promotion, notices when an event changes or is cancelled, deep links (/start ev_ID),
the QR code of the link, the venue check-in link, and feedback after the event."""
from __future__ import annotations

import subprocess
import sys
import threading
from datetime import datetime, time, timedelta
from zoneinfo import ZoneInfo

import pytest
from sqlmodel import Session, select

from conversations import attendance, calendar_files
from conversations.domain import events as event_ops
from conversations.i18n import t_in, translator
from conversations.permissions import Actor, Refused
from conversations.when import span_text
from storage.db import aware, transaction, utcnow
from storage.models import AuditLog
from storage.participation import Event, EventFeedback, Reminder, Rsvp
from tests.conftest import test_env as subprocess_env
from tests.fakes.telegram_api import FakeTelegramServer
from tests.participation_support import local_time, make_staff
from tests.support.chat import Chat

START = "2030-11-30 14:00"  # a Saturday, Istanbul time
IST = ZoneInfo("Europe/Istanbul")


def tomorrow_at(hour: int) -> datetime:
    """Tomorrow at hour:00, Istanbul time, as aware UTC."""
    day = utcnow().astimezone(IST).date() + timedelta(days=1)
    return datetime.combine(day, time(hour), tzinfo=IST).astimezone(ZoneInfo("UTC"))


def add_event(app, *, start: str = START, hours: float = 2, capacity: int | None = None, **kw) -> Event:
    tz = app.engine.config.timezone
    starts = local_time(start, tz) if isinstance(start, str) else start
    values = dict(title={"tr": "İklim Paneli", "en": "Climate Panel", "ar": "ندوة المناخ"},
                  description={"tr": "Buca'nın iklim eylem planı; soru-cevap.", "en": "Buca's climate plan; Q&A."},
                  type="panel", place="Buca Kent Konseyi, Salon A", latitude=38.3886, longitude=27.1751)
    values.update(kw)
    with transaction(app.db) as db:
        return event_ops.create_event(db, Actor.cli("test"), starts_at=starts,
                                      ends_at=starts + timedelta(hours=hours), capacity=capacity, **values)


def rsvps(app, event_id) -> dict[int, tuple[str, int | None]]:
    with Session(app.db) as db:
        return {r.resident_id: (r.status, r.position) for r in db.exec(select(Rsvp).where(Rsvp.event_id == event_id))}


def katilim(tmp_path, app, *args, **env):
    return subprocess.run([sys.executable, "-m", "bot.cli", *args], cwd=tmp_path, capture_output=True, text=True,
                          timeout=60, env=subprocess_env(DATABASE_URL=app.settings.database_url,
                                                         MEDIA_DIR=str(tmp_path / "media"), **env))


def test_list_detail_rsvp_and_calendar_file(make_app):
    app = make_app()
    event = add_event(app, capacity=10)
    add_event(app, start="2030-12-01 18:30", title={"tr": "Kompost Atölyesi"}, type="atolye")
    ayse = Chat(app, "ayse").onboard()
    ayse.send("/etkinlikler")
    assert "İklim Paneli — 30 Kasım 2030 Cumartesi 14:00" in ayse.texts()
    assert "Kompost Atölyesi — 1 Aralık 2030 Pazar 18:30" in ayse.texts()
    ayse.tap(f"e:{event.id}")
    (detail,) = ayse.last
    assert "30 Kasım 2030 Cumartesi 14:00–16:00" in detail.text and "Panel" in detail.text
    assert t_in("tr", "event.places_free", free=10, capacity=10) in detail.text
    assert (detail.latitude, detail.longitude, detail.venue_title) == (38.3886, 27.1751, "Buca Kent Konseyi, Salon A")
    ayse.tap("rsvp")
    registered = ayse.last[0]
    assert registered.text == t_in("tr", "event.registered", title="İklim Paneli",
                                   when="30 Kasım 2030 Cumartesi 14:00–16:00")
    ics = registered.document
    assert (ics.filename, ics.content_type) == (f"etkinlik-{event.id}.ics", "text/calendar")
    assert f"UID:event-{event.id}@katilim.bca\r\n" in ics.data
    assert "DTSTART:20301130T110000Z\r\n" in ics.data and "DTEND:20301130T130000Z\r\n" in ics.data
    assert "SUMMARY:İklim Paneli\r\n" in ics.data
    assert "LOCATION:Buca Kent Konseyi\\, Salon A\r\n" in ics.data
    assert "DESCRIPTION:Buca'nın iklim eylem planı\\; soru-cevap.\r\n" in ics.data
    assert ics.data.startswith("BEGIN:VCALENDAR\r\nVERSION:2.0\r\n") and ics.data.endswith("END:VCALENDAR\r\n")
    assert t_in("tr", "event.status.going") in ayse.texts() and "ics" in ayse.keys()
    assert rsvps(app, event.id) == {ayse.resident_id: ("going", None)}
    ayse.tap("rsvp") if "rsvp" in ayse.keys() else None
    assert rsvps(app, event.id)[ayse.resident_id] == ("going", None)


def test_ics_escaping_and_folding():
    event = Event(id=7, title={"tr": "Panel; iklim, su\\enerji\nikinci satır " + "ç" * 80}, description={},
                  starts_at=local_time("2030-06-01 09:00", "Europe/Istanbul"),
                  ends_at=local_time("2030-06-01 10:30", "Europe/Istanbul"), place="A, B; C", checkin_token="x")
    text = calendar_files.event_ics(event, "tr")
    lines = text.split("\r\n")
    assert all(len(line.encode("utf-8")) <= 75 for line in lines)
    unfolded = text.replace("\r\n ", "")
    assert "SUMMARY:Panel\\; iklim\\, su\\\\enerji\\nikinci satır " + "ç" * 80 + "\r\n" in unfolded
    assert "LOCATION:A\\, B\\; C\r\n" in unfolded
    assert "DTSTART:20300601T060000Z" in unfolded and "DTEND:20300601T073000Z" in unfolded
    assert "\n" not in text.replace("\r\n", "")


def test_waitlist_and_automatic_promotion_with_a_message(make_app):
    app = make_app()
    event = add_event(app, capacity=1)
    ali, berk = Chat(app, "ali").onboard(), Chat(app, "berk").onboard(lang="en")
    ali.send(f"/start ev_{event.id}")
    ali.tap("rsvp")
    berk.send(f"/start ev_{event.id}")
    assert t_in("en", "event.places_full") in berk.texts() and "rsvp" in berk.keys()
    berk.tap("rsvp")
    assert berk.texts() == "\n".join([t_in("en", "event.waitlisted", title="Climate Panel", position=1),
                                  t_in("en", "event.status.waitlist", position=1)])
    assert rsvps(app, event.id) == {ali.resident_id: ("going", None), berk.resident_id: ("waitlist", 1)}

    ali.tap("cancel")
    ali.tap("yes")
    assert t_in("tr", "event.rsvp_cancelled") in ali.texts()
    assert rsvps(app, event.id)[berk.resident_id] == ("going", None)
    (promoted,) = berk.notifications()
    assert promoted.text == ("Good news! A place opened for Climate Panel and you are now registered: Saturday 30 "
                             "November 2030, 14:00–16:00, 📍 Buca Kent Konseyi, Salon A. "
                             "Your calendar file is attached.")
    assert promoted.document.content_type == "text/calendar"
    assert [c.key for c in promoted.choices] == [f"ev:{event.id}:c"]
    # the promoted resident can give the place back from the notice, whatever they are doing
    berk.send("/menu")
    berk.tap(f"ev:{event.id}:c")
    berk.tap(f"ev:{event.id}:cy")
    assert berk.texts() == t_in("en", "event.rsvp_cancelled")
    with Session(app.db) as db:
        assert db.get(Event, event.id).going == 0


def test_last_place_race_exactly_one_is_going(make_app, db_url):
    app = make_app(database_url=db_url)
    event = add_event(app, capacity=1)
    people = [Chat(app, f"p{i}").onboard() for i in range(2)]
    for p in people:
        p.send(f"/start ev_{event.id}")
    barrier = threading.Barrier(2)

    def tap(p):
        barrier.wait()
        p.tap("rsvp")

    threads = [threading.Thread(target=tap, args=(p,)) for p in people]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert sorted(s for s, _ in rsvps(app, event.id).values()) == ["going", "waitlist"]
    with Session(app.db) as db:
        assert db.get(Event, event.id).going == 1


def test_edit_and_cancel_tell_attendees_and_waitlist_in_their_language(make_app, tmp_path):
    app = make_app()
    event = add_event(app, capacity=1)
    ali, berk = Chat(app, "ali").onboard(), Chat(app, "berk").onboard(lang="en")
    for p in (ali, berk):
        p.send(f"/start ev_{event.id}")
        p.tap("rsvp")
    with Session(app.db) as db:
        (before,) = db.exec(select(Reminder).where(Reminder.offset_seconds == 7200)).all()  # ali's (berk waits)

    moved = katilim(tmp_path, app, "events", "edit", str(event.id), "--start", "2030-12-02 10:00", "--end", "12:00",
                    "--place", "Buca Belediyesi Meclis Salonu", "--capacity", "2")
    assert moved.returncode == 0, moved.stderr
    assert "2 residents told" in moved.stdout
    (tr_notice,) = ali.notifications()
    assert tr_notice.text == ("📢 İklim Paneli değişti. Yeni bilgiler: 2 Aralık 2030 Pazartesi 10:00–12:00, "
                              "📍 Buca Belediyesi Meclis Salonu.")
    assert "2 Aralık 2030 Pazartesi 10:00–12:00" in tr_notice.text and "Meclis Salonu" in tr_notice.text
    assert "SEQUENCE:1" in tr_notice.document.data and "DTSTART:20301202T070000Z" in tr_notice.document.data
    en_notice, promoted = berk.notifications()
    assert en_notice.text == ("📢 Climate Panel has changed. Now: Monday 2 December 2030, 10:00–12:00, "
                              "📍 Buca Belediyesi Meclis Salonu.")
    assert en_notice.document is None  # still waiting when told: no calendar file
    assert promoted.text == ("Good news! A place opened for Climate Panel and you are now registered: Monday 2 "
                             "December 2030, 10:00–12:00, 📍 Buca Belediyesi Meclis Salonu. "
                             "Your calendar file is attached.")
    assert "DTSTART:20301202T070000Z" in promoted.document.data
    assert rsvps(app, event.id)[berk.resident_id] == ("going", None)  # the larger capacity promoted berk
    with Session(app.db) as db:
        after = {r.resident_id: r for r in db.exec(select(Reminder).where(Reminder.offset_seconds == 7200))}
    assert after[ali.resident_id].id == before.id  # the same reminder, moved with the event
    new_due = local_time("2030-12-02 08:00", "Europe/Istanbul")
    assert aware(after[ali.resident_id].due_at) == new_due == aware(after[berk.resident_id].due_at)

    listed = katilim(tmp_path, app, "events", "attendees", str(event.id))
    assert "going 2, waiting 0" in listed.stdout

    cancelled = katilim(tmp_path, app, "events", "cancel", str(event.id))
    assert cancelled.returncode == 0 and "2 residents told" in cancelled.stdout
    assert ali.notifications()[-1].text == ("❌ İklim Paneli (2 Aralık 2030 Pazartesi 10:00–12:00) iptal edildi. "
                                            "Üzgünüz; diğer etkinlikler için /etkinlikler yazabilirsiniz.")
    assert berk.notifications()[-1].text == ("❌ Climate Panel (Monday 2 December 2030, 10:00–12:00) is cancelled. We "
                                             "are sorry; type /events to see other events.")
    with Session(app.db) as db:
        assert {r.status for r in db.exec(select(Reminder))} == {"dropped"}


def test_cli_add_validates_and_lists(make_app, tmp_path):
    app = make_app()
    bad = katilim(tmp_path, app, "events", "add", "--title", "X", "--start", "2030-11-30 14:00", "--end", "13:00")
    assert bad.returncode == 1 and t_in("tr", "event.end_before_start") in bad.stderr
    ok = katilim(tmp_path, app, "events", "add", "--title", "Odak Grubu: Parklar", "--title-en", "Focus group: parks",
                 "--type", "odak_grup", "--start", "30.11.2030 14:00", "--end", "15:30", "--place", "Kent Konseyi",
                 "--capacity", "12", "--deadline", "2030-11-29 18:00", TELEGRAM_BOT_USERNAME="buca_katilim_bot")
    assert ok.returncode == 0, ok.stderr
    assert "https://t.me/buca_katilim_bot?start=ev_1" in ok.stdout
    assert "Odak Grubu: Parklar · odak_grup · 30 Kasım 2030 Cumartesi 14:00–15:30" in ok.stdout
    with Session(app.db) as db:
        event = db.get(Event, 1)
    assert (event.title, event.capacity) == ({"tr": "Odak Grubu: Parklar", "en": "Focus group: parks"}, 12)
    assert aware(event.registration_deadline) == local_time("2030-11-29 18:00", "Europe/Istanbul")


def test_staff_add_and_edit_an_event_on_the_chat(make_app):
    app = make_app(telegram_bot_username="buca_katilim_bot")
    resident = Chat(app, "resident").onboard()
    resident.send("/etkinlikekle")
    assert resident.messages() == [t_in("tr", "staff.refused"), t_in("tr", "menu.title")]
    staff = make_staff(app, Chat(app, "memur").onboard())
    staff.send("/etkinlikekle")
    assert staff.keys() == []  # the Turkish title cannot be skipped
    staff.send("Gençlik Atölyesi")
    staff.send("Youth Workshop")
    staff.tap("skip")
    staff.send("Dijital beceriler atölyesi")
    staff.tap("skip")
    staff.tap("skip")
    staff.tap("t:atolye")
    staff.send("01.12.2020 10:00")
    assert t_in("tr", "event.in_past") in staff.texts()
    staff.send("01.12.2030 10:00")
    staff.send("12:00")
    staff.send("Gençlik Merkezi")
    staff.location(38.39, 27.16)
    staff.send("20")
    staff.tap("skip")
    assert "Gençlik Atölyesi / Youth Workshop" in staff.texts() and "1 Aralık 2030 Pazar 10:00–12:00" in staff.texts()
    staff.tap("save")
    assert "https://t.me/buca_katilim_bot?start=ev_1" in staff.texts()
    assert "edit" in staff.keys()
    with Session(app.db) as db:
        event = db.get(Event, 1)
    assert (event.type, event.capacity, event.latitude, event.title["en"]) == ("atolye", 20, 38.39, "Youth Workshop")

    resident.send("/start ev_1")
    assert "edit" not in resident.keys()
    resident.tap("rsvp")
    staff.tap("edit")
    staff.tap("time")
    staff.send("01.12.2030 11:00")
    staff.tap("same")
    assert translator("tr").n("event.edit.saved", 1, told=1) in staff.texts()
    assert "11:00–13:00" in resident.notifications()[-1].text
    staff.tap("edit")
    staff.tap("cancel_event")
    staff.tap("yes")
    assert translator("tr").n("event.edit.cancelled", 1, told=1) in staff.texts()


def test_deep_link_through_the_engine_for_new_and_known_residents(make_app):
    app = make_app()
    event = add_event(app)
    newcomer = Chat(app, "newcomer")
    newcomer.send(f"/start ev_{event.id}")
    newcomer.tap("lang:tr")
    newcomer.tap("all")
    newcomer.tap("skip")  # mahalle
    assert "İklim Paneli" in newcomer.texts() and "rsvp" in newcomer.keys()
    known = Chat(app, "known").onboard()
    known.send(f"/start ev_{event.id}")
    assert "İklim Paneli" in known.texts() and "rsvp" in known.keys()
    known.send("/start ev_999")
    assert t_in("tr", "event.not_found") in known.texts()
    # ids no record can have: past 64 bits (SQLite refused them with an OverflowError), and digits
    # that str.isdigit() takes but int() does not
    for arg in ("99999999999999999999", "²", "١٢"):
        known.send(f"/start ev_{arg}")
        assert known.texts() == t_in("tr", "event.not_found") + "\n" + t_in("tr", "menu.title")
    for key in ("ev:99999999999999999999:c", "fb:99999999999999999999:5", "fb:1:99999999999999999999",
                "vc:99999999999999999999:y", "ev:²:c"):
        assert known.texts(known.tap(key)) == t_in("tr", "engine.stale_choice")


async def test_deep_link_through_the_real_telegram_application(make_app):
    from bot.app import add_configured_channels

    with FakeTelegramServer() as tg:
        app = make_app(telegram_bot_token=tg.token, telegram_api_url=tg.root)
        event = add_event(app)
        add_configured_channels(app)
        channel = app.channels["telegram"]
        await channel.start()
        try:
            chat = 5151

            async def push(fn):
                uid = fn()["update_id"]
                await tg.async_wait_for(lambda s: uid in channel.completed, timeout=10)

            await push(lambda: tg.push_text(chat, f"/start ev_{event.id}"))
            await push(lambda: tg.push_callback(chat, "lang:tr"))
            await push(lambda: tg.push_callback(chat, "all"))
            await push(lambda: tg.push_callback(chat, "skip"))
            venue = tg.calls_of("sendVenue")[-1]
            assert venue.params["title"] == "Buca Kent Konseyi, Salon A" and venue.params["latitude"] == 38.3886
            assert any("İklim Paneli" in t and "30 Kasım 2030 Cumartesi 14:00" in t for t in tg.delivered_texts(chat))
            buttons = {b["callback_data"] for row in venue.params["reply_markup"]["inline_keyboard"] for b in row}
            assert "rsvp" in buttons
            await push(lambda: tg.push_callback(chat, "rsvp"))
            document = tg.calls_of("sendDocument")[-1]
            assert document.params["document"]["filename"] == f"etkinlik-{event.id}.ics"
            assert b"BEGIN:VEVENT" in document.params["document"]["content"]
        finally:
            await channel.stop()


def test_qr_code_of_the_deep_link_decodes_back(make_app, tmp_path):
    zxingcpp = pytest.importorskip("zxingcpp")
    from PIL import Image

    app = make_app()
    event = add_event(app)
    with FakeTelegramServer(bot_username="buca_test_bot") as tg:  # no TELEGRAM_BOT_USERNAME: getMe
        result = katilim(tmp_path, app, "events", "qr", str(event.id), "-o", str(tmp_path / "qr.png"),
                         TELEGRAM_BOT_TOKEN=tg.token, TELEGRAM_API_URL=tg.root)
    assert result.returncode == 0, result.stderr
    decoded = [r.text for r in zxingcpp.read_barcodes(Image.open(tmp_path / "qr.png"))]
    assert decoded == [f"https://t.me/buca_test_bot?start=ev_{event.id}"]

    result = katilim(tmp_path, app, "events", "qr", str(event.id), "--checkin", "-o", str(tmp_path / "ci.png"),
                     TELEGRAM_BOT_USERNAME="buca_katilim_bot")
    assert result.returncode == 0, result.stderr
    decoded = [r.text for r in zxingcpp.read_barcodes(Image.open(tmp_path / "ci.png"))]
    assert decoded == [f"https://t.me/buca_katilim_bot?start=ci_{event.checkin_token}"]


def test_check_in_link_records_attendance(make_app):
    app = make_app()
    later = add_event(app)
    now_event = add_event(app, start=utcnow() + timedelta(minutes=30), capacity=1)
    ali, walk_in = Chat(app, "ali").onboard(), Chat(app, "walkin").onboard()
    ali.send(f"/start ev_{now_event.id}")
    ali.tap("rsvp")
    ali.send(f"/start ci_{later.checkin_token}")
    assert ali.messages() == [t_in("tr", "event.checkin.not_now", title="İklim Paneli"), t_in("tr", "menu.title")]
    ali.send("/start ci_nonsense")
    assert t_in("tr", "event.checkin.invalid") in ali.texts()
    ali.send(f"/start ci_{now_event.checkin_token}")
    assert ali.messages() == [t_in("tr", "event.checkin.done", title="İklim Paneli"), t_in("tr", "menu.title")]
    ali.send(f"/start ci_{now_event.checkin_token}")
    assert ali.messages() == [t_in("tr", "event.checkin.already", title="İklim Paneli"), t_in("tr", "menu.title")]
    walk_in.send(f"/start ci_{now_event.checkin_token}")  # full on paper, but there: counted
    assert walk_in.messages() == [t_in("tr", "event.checkin.done", title="İklim Paneli"), t_in("tr", "menu.title")]
    with Session(app.db) as db:
        rows = db.exec(select(Rsvp).where(Rsvp.event_id == now_event.id)).all()
        assert [(r.status, r.checked_in_at is not None) for r in rows] == [("going", True), ("going", True)]
        assert db.get(Event, now_event.id).going == 2


def test_feedback_after_the_event(make_app, tmp_path):
    app = make_app()
    event = add_event(app, start=utcnow() + timedelta(minutes=1))
    ali, berk, cem = (Chat(app, n).onboard() for n in ("ali", "berk", "cem"))
    for p in (ali, berk):
        p.send(f"/start ev_{event.id}")
        p.tap("rsvp")
    ended = utcnow() + timedelta(hours=3)
    with transaction(app.db) as db:
        assert attendance.request_feedback(db, ended, tz="Europe/Istanbul") == 2
    with transaction(app.db) as db:
        assert attendance.request_feedback(db, ended, tz="Europe/Istanbul") == 0  # asked once
    (ask,) = ali.notifications()
    assert ask.text == t_in("tr", "event.feedback.ask", title="İklim Paneli")
    assert [c.key for c in ask.choices] == [f"fb:{event.id}:{n}" for n in range(1, 6)]

    ali.send("/gonullu")  # elsewhere: the rating still works, then ali is back where they were
    ali.tap(f"fb:{event.id}:4")
    assert ali.keys() == ["skip"]
    ali.send("Çok verimliydi, teşekkürler")
    assert t_in("tr", "event.feedback.thanks") in ali.texts() and "p:environment" in ali.keys()
    berk.tap(f"fb:{event.id}:2")
    berk.tap("skip")
    cem.tap(f"fb:{event.id}:5")
    assert cem.texts() == t_in("tr", "event.feedback.not_attended")
    with Session(app.db) as db:
        assert sorted(f.rating for f in db.exec(select(EventFeedback))) == [2, 4]

    shown = katilim(tmp_path, app, "events", "feedback", str(event.id))
    assert shown.returncode == 0, shown.stderr
    assert "ratings: 2, average 3.00" in shown.stdout and "Çok verimliydi, teşekkürler" in shown.stdout


def test_erasing_a_resident_frees_the_place_and_keeps_anonymous_ratings(make_app):
    app = make_app()
    event = add_event(app, capacity=1)
    ali, berk = Chat(app, "ali").onboard(), Chat(app, "berk").onboard()
    for p in (ali, berk):
        p.send(f"/start ev_{event.id}")
        p.tap("rsvp")
    with transaction(app.db) as db:
        db.add(EventFeedback(event_id=event.id, resident_id=ali.resident_id, rating=5, comment="adım soyadım"))
    ali.send("/verilerimisil")
    ali.tap("yes")
    with Session(app.db) as db:
        assert db.get(Event, event.id).going == 1  # ali's place went to berk, who was waiting
        (feedback,) = db.exec(select(EventFeedback)).all()
        assert (feedback.resident_id, feedback.rating, feedback.comment) == (None, 5, "")
    assert list(rsvps(app, event.id).values()) == [("going", None)]
    assert berk.notifications()[-1].text == ("Müjde! İklim Paneli için yer açıldı ve kaydınızı yaptık: 30 Kasım 2030 "
                                             "Cumartesi 14:00–16:00, 📍 Buca Kent Konseyi, Salon A. "
                                             "Takvim dosyanız ekte.")


def test_merging_two_residents_keeps_one_place(make_app):
    from conversations.linking import merge

    app = make_app()
    event = add_event(app, capacity=2)
    phone, laptop, waiting = (Chat(app, n).onboard() for n in ("phone", "laptop", "waiting"))
    for p in (phone, laptop, waiting):
        p.send(f"/start ev_{event.id}")
        p.tap("rsvp")
    keep, gone, waiting_id = phone.resident_id, laptop.resident_id, waiting.resident_id
    with transaction(app.db) as db:
        merge(db, keep, gone, app.engine.config)
    assert rsvps(app, event.id) == {keep: ("going", None), waiting_id: ("going", None)}
    with Session(app.db) as db:
        assert db.get(Event, event.id).going == 2


# ---------------------------------------------------------------- /etkinlikekle: times and numbers (issue 14, item 17)
def _to_the_start_step(staff: Chat) -> None:
    staff.send("/etkinlikekle")
    staff.send("Mahalle Buluşması")
    for _ in range(5):  # the other titles and descriptions
        staff.tap("skip")
    staff.tap("t:panel")


def test_add_event_shows_a_future_example_reads_tomorrow_and_one_place(make_app):
    app = make_app()
    staff = make_staff(app, Chat(app, "memur").onboard())
    _to_the_start_step(staff)
    in_two_days = (utcnow().astimezone(IST) + timedelta(days=2)).strftime("%d.%m.%Y")
    assert staff.texts() == f"Başlangıç tarihi ve saati (İstanbul saati)? Örneğin {in_two_days} 14:00 ya da yarın 18:00"
    staff.send("yarın 18:00")
    assert staff.texts() == "Bitiş saati (örneğin 16:00) ya da tarih ve saat"
    staff.send("20:00")
    staff.send("Buca Kent Konseyi")
    staff.tap("skip")  # no pin
    assert staff.texts() == "Kaç kişilik yer var? (1 ile 10.000 arasında bir sayı yazın)"
    for too_many_or_few in ("10001", "0", "99999"):
        staff.send(too_many_or_few)
        assert staff.texts() == ("Lütfen 1 ile 10.000 arasında bir sayı yazın.\n"
                                 "Kaç kişilik yer var? (1 ile 10.000 arasında bir sayı yazın)")
    staff.send("1")  # one place, not the first button ("Sınır yok")
    assert staff.texts() == t_in("tr", "event.add.deadline")
    staff.send("17:00")  # the day of the start
    staff.tap("save")
    with Session(app.db) as db:
        event = db.get(Event, 1)
    assert (event.capacity, aware(event.starts_at), aware(event.ends_at), aware(event.registration_deadline)) == (
        1, tomorrow_at(18), tomorrow_at(20), tomorrow_at(17))

    staff.tap("edit")  # the edit menu's number step reads numbers the same way
    staff.tap("capacity")
    staff.send("10.000")
    staff.tap("edit")
    staff.tap("capacity")
    staff.send("1")
    with Session(app.db) as db:
        assert db.get(Event, 1).capacity == 1


def test_add_event_explains_a_date_it_cannot_read_in_english(make_app):
    app = make_app()
    staff = make_staff(app, Chat(app, "memur").onboard(lang="en"))
    _to_the_start_step(staff)
    in_two_days = (utcnow().astimezone(IST) + timedelta(days=2)).strftime("%d.%m.%Y")
    prompt = f"Start date and time (Istanbul time)? For example {in_two_days} 14:00 or tomorrow 18:00"
    assert staff.texts() == prompt
    staff.send("next friday")
    assert staff.texts() == ("We could not read this date. Write the date and time as DD.MM.YYYY HH:MM, "
                             "or like “tomorrow 18:00”.\n" + prompt)
    staff.send("tomorrow 9:00")
    assert staff.texts() == "End time (e.g. 16:00), or a date and time"


def test_cli_add_reads_tomorrow_as_the_chat_does(make_app, tmp_path):
    app = make_app()
    ok = katilim(tmp_path, app, "events", "add", "--title", "Yarın Paneli", "--start", "yarın 18:00", "--end", "20:00")
    assert ok.returncode == 0, ok.stderr
    when = span_text(tomorrow_at(18), tomorrow_at(20), "tr", "Europe/Istanbul")
    assert ok.stdout == f"event 1 [active] Yarın Paneli · other · {when} · - · places unlimited\n"
    past = katilim(tmp_path, app, "events", "add", "--title", "Dün", "--start", "01.12.2020 10:00", "--end", "12:00")
    assert (past.returncode, past.stdout, past.stderr) == (1, "", "katilim: Bu zaman geçmişte kalıyor.\n")


# ---------------------------------------------------------------- the staff operations (conversations/domain/events.py)
def test_event_operations_refuse_a_viewer_and_a_resident_and_audit_it(make_app):
    app = make_app()
    event = add_event(app)
    viewer, resident = Actor(who="staff:7", role="viewer", staff_id=7), Actor(who="resident:3", role="resident")
    tz = app.engine.config.timezone
    for actor in (viewer, resident):
        with transaction(app.db) as db:  # the front end catches Refused and commits: the audit row stays
            with pytest.raises(Refused) as refused:
                event_ops.create_event(db, actor, title={"tr": "Yeni"}, starts_at=utcnow() + timedelta(days=1),
                                       ends_at=utcnow() + timedelta(days=1, hours=1))
            assert t_in("tr", refused.value.key) == "Bu işlem için yetkiniz yok."
            with pytest.raises(Refused):
                event_ops.update_event(db, actor, event.id, event_ops.EventChange(capacity=3), now=utcnow(),
                                       offsets=(), tz=tz)
            with pytest.raises(Refused):
                event_ops.cancel_event(db, actor, event.id, now=utcnow(), tz=tz)
    with Session(app.db) as db:
        rows = [(a.actor, a.action, a.target, a.details) for a in db.exec(
            select(AuditLog).where(AuditLog.action == "refused").order_by(AuditLog.id))]
        assert rows == [(actor.who, "refused", target, {"attempted": "event.manage", "role": actor.role})
                        for actor in (viewer, resident) for target in ("event:new", f"event:{event.id}",
                                                                       f"event:{event.id}")]
        assert [e.id for e in db.exec(select(Event))] == [event.id]
        assert (db.get(Event, event.id).status, db.get(Event, event.id).capacity) == ("active", None)


def test_cancelling_an_event_tells_the_attendees_in_the_same_transaction(make_app):
    app = make_app()
    event = add_event(app)
    ayse = Chat(app, "ayse").onboard()
    ayse.send(f"/start ev_{event.id}")
    ayse.tap("rsvp")
    staff = Actor(who="staff:1", role="staff", staff_id=1)
    with transaction(app.db) as db:
        done = event_ops.cancel_event(db, staff, event.id, now=utcnow(), tz=app.engine.config.timezone)
        again = event_ops.cancel_event(db, staff, event.id, now=utcnow(), tz=app.engine.config.timezone)
    assert (done.id, done.told, done.already) == (event.id, 1, False)
    assert (again.told, again.already) == (0, True)
    assert [n.text for n in ayse.notifications()] == [
        f"❌ İklim Paneli ({span_text(event.starts_at, event.ends_at, 'tr', 'Europe/Istanbul')}) iptal edildi. "
        "Üzgünüz; diğer etkinlikler için /etkinlikler yazabilirsiniz."]
    with Session(app.db) as db:
        assert [(a.actor, a.action) for a in db.exec(select(AuditLog).where(AuditLog.target == f"event:{event.id}"))
                ] == [("test", "event.created"), ("staff:1", "event.cancelled")]
