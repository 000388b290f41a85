"""The daily overdue summary (issue 15) on a real database (SQLite and PostgreSQL): reports filed
through the domain operation at chosen past times (so their due times come from the catalog's
working hours), staff records with their departments and chat addresses, and the job's scan run at
chosen instants; what it queues is read back from the outbox, whole texts per staff member and
language."""
from __future__ import annotations

import threading
from datetime import datetime
from zoneinfo import ZoneInfo

from sqlmodel import select

from bot.report_jobs import scan_overdue
from conversations.domain import reports as domain
from conversations.domain import triage
from conversations.permissions import Actor
from storage import panel
from storage import reports as rp
from storage.db import transaction
from storage.models import OutboxMessage, Staff
from tests.support.chat import Chat

TZ = ZoneInfo("Europe/Istanbul")
BASE = "https://katilim.example.org"


def local(day: int, hour: int, minute: int = 0) -> datetime:
    """An instant of November 2026 in Buca's time."""
    return datetime(2026, 11, day, hour, minute, tzinfo=TZ)


def filed(app, category: str, day: int, *, mahalle: str = "adatepe", status: str = "new") -> str:
    """A report filed on `day` (November) at 08:30 local: its due time follows its category's target."""
    with transaction(app.db) as db:
        report = domain.file(db, Actor.system(), prefix="BCA", category=category, description="Bir sorun var",
                             mahalle=mahalle, catalog=app.catalog, now=local(day, 8, 30))
        if status != "new":
            rp.set_status(db, report.code, status, "staff:0", now=local(day, 9))
        return report.code


def staff(app, *, departments=(), **fields) -> int:
    with transaction(app.db) as db:
        member = Staff(**fields)
        db.add(member)
        db.flush()
        panel.set_departments(db, member.id, departments)
        return member.id


def summaries(app) -> dict[tuple[str, str], list[str]]:
    """(channel, address) → the texts of the overdue summaries queued to it, oldest first."""
    found: dict[tuple[str, str], list[str]] = {}
    with transaction(app.db) as db:
        for row in db.exec(select(OutboxMessage).where(OutboxMessage.kind == "notification")
                           .order_by(OutboxMessage.id)):
            found.setdefault((row.channel, row.address), []).append(row.payload["text"])
            assert row.payload.get("link_preview") is False
    return found


TR_LINE = "• {} · {} · {} · {} tarihinden beri gecikmede"
EN_LINE = "• {} · {} · {} · overdue since {}"
AR_LINE = "• {} · {} · {} · متأخر منذ {}"


def test_one_summary_a_day_per_staff_member_in_their_language(make_app, db_url):
    app = make_app(database_url=db_url, public_base_url=BASE)
    road = filed(app, "road", 16, mahalle="kozagac")         # due Fri 20 Nov 17:30: overdue
    waste = filed(app, "waste", 23)                          # due Mon 23 Nov 17:30: overdue
    animals = filed(app, "animals", 23)                      # 24 calendar hours: Tue 24 Nov 08:30, overdue
    lighting = filed(app, "lighting", 23)                    # due Wed 25 Nov 17:30: overdue
    filed(app, "road", 25)                                   # due Tue 1 Dec: not yet
    filed(app, "waste", 16, status="resolved")               # closed: never overdue
    filed(app, "parks", 16, status="rejected")
    with transaction(app.db) as db:
        assert rp.get_by_code(db, road).due_at == local(20, 17, 30)
        assert rp.get_by_code(db, animals).due_at == local(24, 8, 30)

    ali = staff(app, departments=["fen_isleri"], telegram_id="1001", name="Ali Kaya")   # no chat resident: tr
    cem = staff(app, departments=["fen_isleri"], whatsapp="+905551112233", panel_locale="en")
    ben = staff(app, departments=["temizlik_isleri"], console="ben", name="Ben Smith")
    staff(app, departments=["park_bahceler"], telegram_id="1002")       # nothing overdue there
    staff(app, role="admin", console="dana")                            # every department
    staff(app, role="viewer", telegram_id="1003")                       # reads only, in the console
    staff(app, departments=["fen_isleri"], telegram_id="1004", active=False)
    staff(app, departments=["fen_isleri"], name="no chat address")
    Chat(app, "ben").onboard(lang="en")                     # Ben uses the bot in English, Dana in Arabic
    Chat(app, "dana").onboard(lang="ar")
    with transaction(app.db) as db:                    # plus what is assigned to him elsewhere
        triage.assign(db, Actor.cli("cli:test"), animals, assignee_id=ben, catalog=app.catalog, now=local(23, 10))

    before = scan_overdue(app, now=local(26, 7, 59))    # Thursday, before OVERDUE_SUMMARY_HOUR (8)
    assert (before.sent, before.quiet) == (0, 0) and summaries(app) == {}
    first = scan_overdue(app, now=local(26, 8, 0))
    assert (first.sent, first.quiet, first.reports) == (4, 1, 2 + 2 + 2 + 4)

    fen_tr = [TR_LINE.format(road, "Yol ve kaldırım", "Kozağaç", "20 Kasım 2026 Cuma 17:30"),
              TR_LINE.format(lighting, "Sokak aydınlatması", "Adatepe", "25 Kasım 2026 Çarşamba 17:30")]
    fen_en = [EN_LINE.format(road, "Roads and pavements", "Kozağaç", "Friday 20 November 2026, 17:30"),
              EN_LINE.format(lighting, "Street lighting", "Adatepe", "Wednesday 25 November 2026, 17:30")]
    ali_text = "\n".join(["⏰ Hedef süresi geçmiş 2 açık bildirim var:", *fen_tr,
                          "Hepsi sohbette: /raporlar → ⏰ Gecikenler",
                          f"Konsolda: {BASE}/panel/reports?overdue=1"])
    cem_text = "\n".join(["⏰ 2 open reports are past their target time:", *fen_en,
                          "All of them in the chat: /reports → ⏰ Overdue",
                          f"In the console: {BASE}/panel/reports?overdue=1"])
    ben_text = "\n".join([
        "⏰ 2 open reports are past their target time:",
        EN_LINE.format(waste, "Rubbish and cleaning", "Adatepe", "Monday 23 November 2026, 17:30"),
        EN_LINE.format(animals, "Stray animals", "Adatepe", "Tuesday 24 November 2026, 08:30"),
        "All of them in the chat: /reports → ⏰ Overdue",
        f"In the console: {BASE}/panel/reports?overdue=1"])
    dana_text = "\n".join([
        "⏰ 4 بلاغات مفتوحة تجاوزت موعدها المستهدف:",
        AR_LINE.format(road, "الطرق والأرصفة", "Kozağaç", "الجمعة 20 نوفمبر 2026، 17:30"),
        AR_LINE.format(waste, "النفايات والنظافة", "Adatepe", "الاثنين 23 نوفمبر 2026، 17:30"),
        AR_LINE.format(animals, "الحيوانات الشاردة", "Adatepe", "الثلاثاء 24 نوفمبر 2026، 08:30"),
        AR_LINE.format(lighting, "إنارة الشوارع", "Adatepe", "الأربعاء 25 نوفمبر 2026، 17:30"),
        "جميعها في المحادثة: \u200e/reports ← ⏰ المتأخرة",
        f"في لوحة الموظفين: {BASE}/panel/reports?overdue=1"])
    assert summaries(app) == {("telegram", "1001"): [ali_text], ("whatsapp", "whatsapp:+905551112233"): [cem_text],
                              ("console", "ben"): [ben_text], ("console", "dana"): [dana_text]}
    with transaction(app.db) as db:                # the resident record they use the bot as
        rows = {row.address: row.resident_id for row in db.exec(select(OutboxMessage))}
    assert rows["1001"] is None and rows["ben"] == Chat(app, "ben").resident_id

    # later the same day (another worker, a restart): nothing more, even with a new overdue report
    more = [filed(app, "waste", 25) for _ in range(11)]          # due Wed 25 Nov 17:30: overdue
    again = scan_overdue(app, now=local(26, 15, 0))
    assert (again.sent, again.quiet) == (0, 0)
    assert sum(len(texts) for texts in summaries(app).values()) == 4

    # the next day: again, and at most ten lines with the count of the rest
    assert scan_overdue(app, now=local(27, 7, 0)).sent == 0
    second = scan_overdue(app, now=local(27, 8, 30))
    assert (second.sent, second.quiet) == (4, 1)
    sent = summaries(app)
    assert sent[("telegram", "1001")] == [ali_text, ali_text]
    assert sent[("console", "ben")][1] == "\n".join([
        "⏰ 13 open reports are past their target time:",
        EN_LINE.format(waste, "Rubbish and cleaning", "Adatepe", "Monday 23 November 2026, 17:30"),
        EN_LINE.format(animals, "Stray animals", "Adatepe", "Tuesday 24 November 2026, 08:30"),
        *[EN_LINE.format(code, "Rubbish and cleaning", "Adatepe", "Wednesday 25 November 2026, 17:30")
          for code in more[:8]],
        "… and 3 more",
        "All of them in the chat: /reports → ⏰ Overdue",
        f"In the console: {BASE}/panel/reports?overdue=1"])
    assert sent[("console", "dana")][1].splitlines()[0] == "⏰ 15 بلاغًا مفتوحًا تجاوز موعده المستهدف:"
    assert sent[("console", "dana")][1].splitlines()[-3] == "… و5 بلاغات أخرى"
    with transaction(app.db) as db:
        days = db.exec(select(panel.OverdueSummary).where(panel.OverdueSummary.staff_id == ali)
                       .order_by(panel.OverdueSummary.day)).all()
    assert [(d.day.isoformat(), d.overdue) for d in days] == [("2026-11-26", 2), ("2026-11-27", 2)]
    assert cem


def test_without_a_public_address_no_console_link_and_workers_race(make_app, db_url):
    """Several workers scanning at the same instant: each staff member is told once."""
    app = make_app(database_url=db_url, public_base_url="")
    waste = filed(app, "waste", 23)
    staff(app, departments=["temizlik_isleri"], telegram_id="2001")
    results, errors = [], []
    barrier = threading.Barrier(3)

    def worker():
        try:
            barrier.wait()
            results.append(scan_overdue(app, now=local(26, 9)))
        except Exception as exc:  # noqa: BLE001  (reported below)
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors and sorted(r.sent for r in results) == [0, 0, 1]
    assert summaries(app) == {("telegram", "2001"): ["\n".join([
        "⏰ Hedef süresi geçmiş 1 açık bildirim var:",
        TR_LINE.format(waste, "Çöp ve temizlik", "Adatepe", "23 Kasım 2026 Pazartesi 17:30"),
        "Hepsi sohbette: /raporlar → ⏰ Gecikenler"])]}
