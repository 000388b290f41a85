"""Problem reports (issue 4) through Engine.handle on the console channel, the repository on a
real database (SQLite and PostgreSQL), and the `katilim reports` CLI as a subprocess."""
from __future__ import annotations

import csv
import io
import json
import re
import subprocess
import sys
import threading
from datetime import timedelta
from pathlib import Path

import pytest
from sqlmodel import select

from conversations.domain import reports as reports_domain
from conversations.i18n import t_in
from conversations.messages import Kind
from conversations.permissions import Actor
from storage import panel
from storage import reports as rp
from storage.db import make_engine, transaction, utcnow
from storage.migrate import upgrade
from storage.models import AuditLog, OutboxMessage, Resident, Staff
from tests.conftest import test_env as katilim_env
from tests.support.chat import Chat

ROOT = Path(__file__).resolve().parent.parent
CODE = re.compile(r"BCA-\d{4}-\d{6}")
PIN = (38.38500, 27.17500)         # in Buca
NEAR = (38.38530, 27.17520)        # ~38 m away
BUCA = {"lat": (38.30, 38.45), "lon": (27.10, 27.32)}


@pytest.fixture
def photo_file(tmp_path: Path) -> Path:
    path = tmp_path / "cukur.jpg"
    path.write_bytes(b"\xff\xd8\xff\xe0 fake jpeg of a pothole")
    return path


def _outbox(app, resident_id: int, kind: str = "notification") -> list[OutboxMessage]:
    with transaction(app.db) as db:
        return list(db.exec(select(OutboxMessage).where(OutboxMessage.resident_id == resident_id,
                                                        OutboxMessage.kind == kind).order_by(OutboxMessage.id)))


def _file(chat: Chat, *, category="yol", description="Kaldırımda büyük bir çukur var.", where=PIN,
          photos: list[Path] = (), anyway: bool = False) -> list:
    """To the summary; a similar report nearby stops it there (`anyway`: "a different problem")."""
    chat.text("/bildir")
    chat.text(category)
    chat.pin(*where)
    if chat.state == "report.pin":               # "it looks like <mahalle>: right?" one tap
        chat.tap("yes")
    if chat.state == "report.duplicate":         # a similar report nearby: the caller decides
        if not anyway:
            return chat.last
        chat.tap("file")
    chat.text(description)
    for p in photos:
        chat.photo(p)
    if len(photos) < rp_max():
        chat.tap("done")
    return chat.last


def _staff_at_reports(app, address: str = "boss", departments=()) -> Chat:
    """A staff member on the console, onboarded in Turkish, at /raporlar."""
    with transaction(app.db) as db:
        staff = Staff(console=address)
        db.add(staff)
        db.flush()
        panel.set_departments(db, staff.id, departments)
    staff = Chat(app, address)
    staff.onboard(lang="tr")
    staff.text("/raporlar")
    return staff


def rp_max() -> int:
    from conversations.reports import MAX_PHOTOS

    return MAX_PHOTOS


# ---------------------------------------------------------------- the resident flow
def test_resident_flow_console(make_app, db_url, photo_file):
    app = make_app(database_url=db_url)
    ayse = Chat(app, "ayse")
    ayse.onboard(lang="tr", mahalle="kozagac")
    ayse.text("/bildir")
    assert ayse.state == "report.category"
    assert "c:road" in ayse.keys()
    ayse.text("kaldirim")                       # Turkish-aware: "Yol ve kaldırım"
    assert ayse.state == "report.location"    # where first: similar reports before the resident writes
    assert "m:kozagac" in ayse.keys()          # "my mahalle" shortcut
    ayse.pin(*PIN)
    assert ayse.state == "report.pin" and ayse.keys() == ["yes", "list"]
    ayse.tap("yes")                            # "it looks like Dumlupınar: right?" in one tap
    assert ayse.state == "report.describe"
    ayse.send(Kind.STICKER)                    # a sticker is re-prompted
    assert ayse.state == "report.describe" and "Çıkartma" in ayse.said
    ayse.text("Ç" * 1500)                      # trimmed with a note
    assert "1000" in ayse.said and ayse.state == "report.photos"
    ayse.photo(photo_file)
    assert "1/3" in ayse.said
    ayse.tap("done")
    assert ayse.state == "report.summary"
    assert "Yol ve kaldırım" in ayse.said and "38.38500" in ayse.said
    # edit the category from the summary, come back to the summary
    ayse.tap("e:category")
    ayse.tap("c:lighting")
    assert ayse.state == "report.summary" and "Sokak aydınlatması" in ayse.said
    ayse.tap("confirm")
    assert ayse.state == "menu"
    code = CODE.search(ayse.said).group(0)
    assert code.startswith(f"BCA-{utcnow().year}-") and len(code) == len("BCA-2026-000001")
    with transaction(app.db) as db:
        report = rp.get_by_code(db, code)
        assert report.category == "lighting" and report.status == "new"
        assert len(report.description) == 1000 and report.latitude == PIN[0] and report.mahalle == "dumlupinar"
        assert [m.path for m in rp.media_of(db, report.id)] == [str(photo_file)]
        assert [e.kind for e in rp.history_of(db, report.id)] == ["created"]
    # my reports: the list, a detail by button, a detail by typed code
    ayse.text("/raporlarim")
    assert ayse.state == "report.mine" and f"r:{code}" in ayse.keys()
    ayse.tap(f"r:{code}")
    assert ayse.state == "report.detail"
    assert any(o.photo_path == str(photo_file) for o in ayse.last)
    assert "Yeni" in ayse.said and code in ayse.said
    ayse.tap("list")
    ayse.text(code.lower())
    assert ayse.state == "report.detail" and code in ayse.said
    ayse.text(f"/raporlarim {code}")
    assert ayse.state == "report.detail"


def test_voice_mahalle_photos_limit_and_english(make_app, photo_file, tmp_path):
    app = make_app()
    john = Chat(app, "john")
    john.onboard(lang="en")
    john.text("/report")
    john.text("rubbish")                       # English category name
    assert john.state == "report.location"
    john.text("vali rahmi")                    # typed mahalle, Turkish-aware
    assert john.state == "report.street"
    john.text("In front of the primary school")
    assert john.state == "report.describe"
    voice = tmp_path / "voice.ogg"
    voice.write_bytes(b"OggS fake voice")
    john.voice(voice)
    assert john.state == "report.photos" and "voice" in john.said.lower()
    for _ in range(3):
        john.photo(photo_file)
    assert john.state == "report.summary"    # the third photo moves on
    john.photo(photo_file)                     # a fourth is refused politely
    assert "at most 3" in john.said and john.state == "report.summary"
    assert "Vali Rahmi Bey" in john.said and "voice" in john.said
    john.tap("confirm")
    code = CODE.search(john.said).group(0)
    assert "/myreports" in john.said
    with transaction(app.db) as db:
        report = rp.get_by_code(db, code)
        assert report.mahalle == "vali_rahmi_bey" and report.latitude is None
        assert report.address == "In front of the primary school"
        kinds = sorted(m.kind for m in rp.media_of(db, report.id))
        assert kinds == ["photo", "photo", "photo", "voice"]


def test_consent_is_asked_just_in_time(make_app):
    app = make_app()
    ali = Chat(app, "ali")
    ali.text("/start")
    ali.tap("lang:tr")
    ali.tap("none")                             # no consent at onboarding
    ali.text("/bildir")
    assert ali.state == "consent.ask"
    ali.tap("yes")
    assert ali.state == "report.category"
    ali.text("/iptal")
    with transaction(app.db) as db:
        assert rp.count_reports(db) == 0


def test_duplicate_follow_status_notifications_reopen_and_rating(make_app, db_url, photo_file):
    app = make_app(database_url=db_url)
    ayse, john = Chat(app, "ayse"), Chat(app, "john")
    ayse.onboard(lang="tr")
    john.onboard(lang="en")
    _file(ayse, photos=[photo_file])
    ayse.tap("confirm")
    code = CODE.search(ayse.said).group(0)
    # John reports the same pothole 38 m away: he is shown Ayşe's report, with its photo
    _file(john, category="roads", description="Big hole in the pavement", where=NEAR)
    assert john.state == "report.duplicate"   # shown before he writes anything
    assert any(o.photo_path == str(photo_file) for o in john.last)
    assert code in john.said and "m away" in john.said
    john.tap(f"f:{code}")
    assert john.state == "report.support" and "You now follow" in john.said
    john.tap("done")                            # nothing to add
    assert john.state == "menu"
    with transaction(app.db) as db:
        assert rp.count_reports(db) == 1
        assert rp.get_by_code(db, code).supporters == 1
    # staff triage through the chat
    with transaction(app.db) as db:
        db.add(Staff(console="boss", telegram_id="900"))
    boss = Chat(app, "boss")
    boss.onboard(lang="tr")
    boss.text("/raporlar")
    assert boss.state == "staffreport.home"
    boss.tap("st:new")
    assert f"r:{code}" in boss.keys()
    boss.tap(f"r:{code}")
    assert any(o.photo_path == str(photo_file) for o in boss.last)
    assert any(o.latitude == PIN[0] and o.longitude == PIN[1] for o in boss.last)
    boss.tap("to:in_progress")
    boss.text("Ekip yarın sabah gelecek")
    assert "2" in boss.said and boss.state == "staffreport.view"
    a_id, j_id = ayse.resident_id, john.resident_id
    a_msgs, j_msgs = _outbox(app, a_id), _outbox(app, j_id)
    assert "üzerinde çalışılıyor" in a_msgs[-1].payload["text"] and "Ekip yarın" in a_msgs[-1].payload["text"]
    assert "is being worked on" in j_msgs[-1].payload["text"]
    boss.tap("to:resolved")
    boss.tap("none")
    a_last, j_last = _outbox(app, a_id)[-1].payload, _outbox(app, j_id)[-1].payload
    assert "Sorun çözüldü mü?" in a_last["text"] and "Is the problem solved?" in j_last["text"]
    assert [c["key"] for c in a_last["choices"]] == [f"rs:yes:{code}", f"rs:no:{code}"]
    # Ayşe is in the middle of something else: "no" still works, reopens, tells staff
    ayse.text("/bildir")
    assert ayse.state == "report.category"
    ayse.tap(f"rs:no:{code}")
    assert "yeniden açtık" in ayse.said and ayse.state == "report.category"
    with transaction(app.db) as db:
        report = rp.get_by_code(db, code)
        assert report.status == "in_progress" and report.reopened_count == 1
        staff_rows = db.exec(select(OutboxMessage).where(OutboxMessage.address == "900")).all()
        assert staff_rows and code in staff_rows[-1].payload["text"]
        assert db.exec(select(AuditLog).where(AuditLog.action == "report.reopened")).first()
    ayse.text("/iptal")
    # resolved again; John (idle) says yes and rates by typing a number
    with transaction(app.db) as db:
        reports_domain.change_status(db, Actor(who="staff:1", role="admin"), code, "resolved")
    john.tap(f"rs:yes:{code}")
    assert john.state == "report.rate"
    john.text("4")
    assert john.state == "menu" and "4/5" in john.said
    # Ayşe answers while elsewhere: the rating buttons come with the answer
    ayse.text("/raporlarim")
    ayse.tap(f"rs:yes:{code}")
    assert ayse.state == "report.mine" and f"rr:5:{code}" in ayse.keys()
    ayse.tap(f"rr:5:{code}")
    assert "5/5" in ayse.said and ayse.state == "report.mine"
    with transaction(app.db) as db:
        assert rp.get_by_code(db, code).rating == 5    # the reporter's rating is the report's
    # a resident who has nothing to do with the report cannot answer for it
    eve = Chat(app, "eve")
    eve.onboard(lang="tr")
    eve.tap(f"rs:no:{code}")
    assert "size ait değil" in eve.said
    # after 14 days a "no" is answered with a polite note
    with transaction(app.db) as db:
        report = rp.get_by_code(db, code)
        report.resolved_at = utcnow() - timedelta(days=15)
        db.add(report)
    ayse.tap(f"rs:no:{code}")
    assert "14" in ayse.said
    with transaction(app.db) as db:
        assert rp.get_by_code(db, code).status == "resolved"


def test_staff_are_told_who_hears_of_a_status_change(make_app):
    """Only the reporter: "Bildirim sahibine haber veriliyor."; otherwise how many people, counting
    only those whose consent stands (who set_status really tells)."""
    app = make_app()
    ayse, john, eve = Chat(app, "ayse"), Chat(app, "john"), Chat(app, "eve")
    for resident in (ayse, john, eve):
        resident.onboard(lang="tr")
    _file(ayse)
    ayse.tap("confirm")
    code = CODE.search(ayse.said).group(0)
    boss = _staff_at_reports(app)
    boss.text(code)

    def move(status: str) -> str:
        boss.tap(f"to:{status}")
        boss.tap("none")
        return boss.said

    assert f"✔ {code}: İşlemde. Bildirim sahibine haber veriliyor." in move("in_progress")
    john_id, eve_id = john.resident_id, eve.resident_id
    with transaction(app.db) as db:
        rp.follow(db, code, john_id)
        rp.follow(db, code, eve_id)
    assert f"✔ {code}: Çözüldü. 3 kişiye haber veriliyor." in move("resolved")
    for resident in (ayse, eve):                      # they withdraw: only John hears of the next change
        resident.text("/menu")
        resident.tap("privacy")
        resident.tap("p:reports")
    assert f"✔ {code}: İşlemde. 1 kişiye haber veriliyor." in move("in_progress")
    assert len(_outbox(app, john_id)) == 2 and len(_outbox(app, eve_id)) == 1


def test_staff_reject_merge_and_filters(make_app, photo_file):
    app = make_app()
    ayse, john = Chat(app, "ayse"), Chat(app, "john")
    ayse.onboard(lang="tr")
    john.onboard(lang="en")
    _file(ayse, category="cop", where=PIN)
    ayse.tap("confirm")
    first = CODE.search(ayse.said).group(0)
    _file(john, category="rubbish", where=(38.3900, 27.1900))
    john.tap("confirm")
    second = CODE.search(john.said).group(0)
    boss = _staff_at_reports(app, departments=["temizlik_isleri"])
    boss.tap("cat")
    boss.tap("c:waste")
    assert "Çöp ve temizlik" in boss.said
    boss.tap("st:open")
    assert {f"r:{first}", f"r:{second}"} <= set(boss.keys())
    boss.text(second)                            # open by typed code
    boss.tap("merge")
    boss.text(first)
    # asked first; ~1.4 km apart: a warning, and only "merge anyway" merges (issue 14, item 18)
    with transaction(app.db) as db:
        metres = int(rp.haversine_m(38.3900, 27.1900, *PIN))
    assert boss.state == "staffreport.merge_confirm" and boss.keys() == ["force", "cancel"]
    assert boss.said == "\n".join([
        t_in("tr", "staffreport.merge_confirm", code=second, into=first, category="Çöp ve temizlik"),
        t_in("tr", "staffreport.merge_far", metres=metres, limit=300)])
    with transaction(app.db) as db:
        assert rp.get_by_code(db, second).status == "new"
    boss.tap("force")
    assert first in boss.said and boss.state == "staffreport.view"
    with transaction(app.db) as db:
        merged = rp.get_by_code(db, second)
        assert merged.status == "merged" and rp.get_by_code(db, first).supporters == 1
    assert "merged into" in _outbox(app, john.resident_id)[-1].payload["text"]
    # undone: a report of its own again, the follow the merge made is gone
    assert "unmerge" in boss.keys()
    boss.tap("unmerge")
    assert t_in("tr", "staffreport.unmerged", code=second, status="Yeni") in boss.said
    with transaction(app.db) as db:
        assert rp.get_by_code(db, second).status == "new" and rp.get_by_code(db, first).supporters == 0
    assert _outbox(app, john.resident_id)[-1].payload["text"] == t_in("en", "report.notify.unmerged", code=second)
    # the history in words: who did what, never an internal id (issue 14, item 21)
    assert "• " in boss.said and "resident:" not in boss.said and "staff:" not in boss.said
    assert "Bildirim alındı · Bildirim sahibi" in boss.said
    assert f"{first} ile birleştirildi" in boss.said and f"Birleştirme geri alındı ({first})" in boss.said
    boss.text(second)                            # merged again, then the target rejected
    boss.tap("merge")
    boss.text(first)
    boss.tap("force")
    boss.text(first)
    boss.tap("to:rejected")
    boss.text("Özel mülk")
    with transaction(app.db) as db:
        assert rp.get_by_code(db, first).reject_reason == "Özel mülk"
    assert "Gerekçe: Özel mülk" in _outbox(app, ayse.resident_id)[-1].payload["text"]
    assert "Reason: Özel mülk" in _outbox(app, john.resident_id)[-1].payload["text"]


def test_staff_view_shows_department_assignee_due_and_an_overdue_filter(make_app, db_url):
    """/raporlar (issue 15): the home offers the overdue reports (open, past their due time) with
    their count; the list marks them; a report shows its department, assignee and due time, marked
    when it has passed."""
    from conversations.domain import triage
    from conversations.i18n import format_when

    app = make_app(database_url=db_url)
    at = utcnow()
    with transaction(app.db) as db:
        def new(category, days_ago, mahalle="kozagac"):
            return reports_domain.file(db, Actor.system(), prefix="BCA", category=category, description="Asfalt bozuk",
                                       mahalle=mahalle, catalog=app.catalog, now=at - timedelta(days=days_ago)).code

        late_road, late_bins, fresh, closed = new("road", 30), new("waste", 20), new("road", 0), new("waste", 25)
        rp.set_status(db, closed, "resolved", "staff:0", now=at - timedelta(days=24))
        ayse = Staff(name="Ayşe Yılmaz", console="ayse-staff")
        db.add(ayse)
        db.flush()
        triage.assign(db, Actor.cli("cli:test"), late_road, assignee_id=ayse.id, catalog=app.catalog, now=at)
        due = {code: rp.get_by_code(db, code).due_at for code in (late_road, fresh)}
    boss = _staff_at_reports(app, departments=["fen_isleri"])
    od = next(c for o in boss.last for c in o.choices if c.key == "od")
    assert od.label == "⏰ Gecikenler (2)"
    boss.tap("od")
    assert boss.said == "2 bildirim (⏰ Gecikenler). Açmak için birini seçin."
    assert [(c.key, c.label) for o in boss.last for c in o.choices] == [
        (f"r:{late_bins}", f"⏰ {late_bins} · Çöp ve temizlik · Yeni · Kozağaç"),
        (f"r:{late_road}", f"⏰ {late_road} · Yol ve kaldırım · Yeni · Kozağaç"),
        ("filter", "🔎 Filtreyi değiştir")]

    def head(code: str) -> list[str]:
        boss.text(code)
        lines = boss.said.splitlines()
        return lines[6:lines.index(t_in("tr", "report.detail_history"))]

    assert head(late_road) == ["🏢 Birim: Fen İşleri Müdürlüğü", "👤 Sorumlu: Ayşe Yılmaz",
                               f"⏰ Hedef: {format_when(due[late_road], 'tr')} — süresi geçti"]
    assert head(fresh) == ["🏢 Birim: Fen İşleri Müdürlüğü", "👤 Sorumlu: atanmadı",
                           f"🎯 Hedef: {format_when(due[fresh], 'tr')}"]
    assert head(closed) == ["🏢 Birim: Temizlik İşleri Müdürlüğü", "👤 Sorumlu: atanmadı"]   # closed: no target
    boss.tap("back")                                 # the filter holds; "clear" takes it away
    boss.tap("filter")
    assert "clear" in boss.keys() and "Filtre: ⏰ Gecikenler" in boss.said.splitlines()
    boss.tap("clear")
    assert "clear" not in boss.keys() and "Filtre: yok" in boss.said.splitlines()


def test_non_staff_is_refused_and_audited(make_app):
    app = make_app()
    eve = Chat(app, "eve")
    eve.onboard(lang="tr")
    eve.text("/raporlar")
    assert eve.state == "menu" and "yalnızca belediye personeli" in eve.said
    assert "staffreport" not in " ".join(eve.keys())
    eve_id = eve.resident_id
    with transaction(app.db) as db:
        rows = db.exec(select(AuditLog).where(AuditLog.action == "staff.refused")).all()
        assert rows and rows[-1].actor == f"resident:{eve_id}"   # pseudonymous, never the address


def test_rate_limit_per_hour(make_app):
    app = make_app(reports_per_hour=2)
    ayse = Chat(app, "ayse")
    ayse.onboard(lang="tr")
    for i in range(2):
        _file(ayse, where=(38.38 + i / 100, 27.17))
        ayse.tap("confirm")
        assert CODE.search(ayse.said)
    ayse.text("/bildir")
    assert ayse.state == "menu" and "en fazla 2 bildirim" in ayse.said
    with transaction(app.db) as db:
        assert rp.count_reports(db) == 2


def test_export_and_erase(make_app, photo_file, tmp_path):
    app = make_app()
    ayse, john = Chat(app, "ayse"), Chat(app, "john")
    ayse.onboard(lang="tr")
    john.onboard(lang="en")
    voice = tmp_path / "v.ogg"
    voice.write_bytes(b"OggS")
    ayse.text("/bildir")
    ayse.text("yol")
    ayse.pin(*PIN)
    ayse.tap("yes")
    ayse.voice(voice)
    ayse.tap("done")
    ayse.tap("confirm")
    code = CODE.search(ayse.said).group(0)
    with transaction(app.db) as db:
        rp.follow(db, code, john.resident_id)
    john.text("/verilerim")
    exported = json.loads(next(o for o in john.last if o.document).document.data)
    assert exported["followed_reports"] == [{"code": code, "status": "new"}]
    ayse.text("/verilerim")
    exported = json.loads(next(o for o in ayse.last if o.document).document.data)
    assert exported["reports"][0]["code"] == code
    a_id = ayse.resident_id
    ayse.text("/verilerimisil")
    ayse.tap("yes")
    john.text("/verilerimisil")
    john.tap("yes")
    with transaction(app.db) as db:
        report = rp.get_by_code(db, code)
        assert report is not None and report.resident_id is None      # kept, anonymised
        assert rp.followers_of(db, report.id) == []
        assert rp.media_of(db, report.id, kind="voice") == [] and not voice.exists()
        assert db.get(Resident, a_id).anonymised_at is not None


# ---------------------------------------------------------------- repository
def test_nearby_uses_distance_and_mahalle(db_url):
    engine = make_engine(db_url)
    upgrade(engine)
    with transaction(engine) as db:
        a = rp.create_report(db, prefix="BCA", resident_id=None, category="road", description="x",
                             latitude=PIN[0], longitude=PIN[1])
        rp.create_report(db, prefix="BCA", resident_id=None, category="road", description="far",
                         latitude=PIN[0] + 0.002, longitude=PIN[1])          # ~220 m
        rp.create_report(db, prefix="BCA", resident_id=None, category="water", description="other category",
                         latitude=PIN[0], longitude=PIN[1])
        old = rp.create_report(db, prefix="BCA", resident_id=None, category="road", description="old",
                               latitude=PIN[0], longitude=PIN[1], now=utcnow() - timedelta(days=40))
        m = rp.create_report(db, prefix="BCA", resident_id=None, category="road", description="m",
                             mahalle="kozagac")
        found = rp.find_nearby_open(db, "road", *NEAR, None)
        assert [r.code for r in found] == [a.code]
        assert old.code not in [r.code for r in found]
        assert [r.code for r in rp.find_nearby_open(db, "road", None, None, "kozagac")] == [m.code]
        rp.set_status(db, a.code, "resolved", "t")
        assert rp.find_nearby_open(db, "road", *NEAR, None) == []
    engine.dispose()


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_tracking_codes_unique_under_concurrency(backend, sqlite_url, request):
    url = sqlite_url if backend == "sqlite" else request.getfixturevalue("pg_url")
    engine = make_engine(url)
    upgrade(engine)
    barrier = threading.Barrier(2)
    codes: list[str] = []
    errors: list[BaseException] = []

    def worker():
        try:
            barrier.wait()
            for _ in range(15):
                with transaction(engine) as db:
                    codes.append(rp.create_report(db, prefix="BCA", resident_id=None, category="road",
                                                  description="race").code)
        except BaseException as exc:  # noqa: BLE001 - the thread collects any error for the test to assert on
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    year = utcnow().year
    assert sorted(codes) == [f"BCA-{year}-{n:06d}" for n in range(1, 31)]
    engine.dispose()


# ---------------------------------------------------------------- CLI
def _katilim(url: str, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, "-m", "bot.cli", "reports", *args], cwd=ROOT, capture_output=True,
                            text=True, env=katilim_env(DATABASE_URL=url, LOG_LEVEL="WARNING"), timeout=60)
    if check:
        assert result.returncode == 0, result.stderr
    return result


def test_cli_list_show_set_status_export(make_app, sqlite_url, tmp_path):
    """The CLI as a subprocess (SQLite only: each run pays the interpreter's start-up; the same
    repository functions run on PostgreSQL in the tests above)."""
    db_url = sqlite_url
    app = make_app(database_url=db_url)
    ayse = Chat(app, "ayse")
    ayse.onboard(lang="en")
    _file(ayse, description="Lamp is off at night", category="lighting")
    ayse.tap("confirm")
    code = CODE.search(ayse.said).group(0)
    with transaction(app.db) as db:
        other = rp.create_report(db, prefix="BCA", resident_id=None, category="waste", description="bins",
                                 mahalle="kozagac", address="Market önü").code
    listed = _katilim(db_url, "list", "--status", "new").stdout
    assert code in listed and other in listed
    assert other in _katilim(db_url, "list", "--mahalle", "Kozağaç").stdout
    assert code not in _katilim(db_url, "list", "--category", "waste").stdout
    shown = _katilim(db_url, "show", code).stdout
    assert "Lamp is off at night" in shown and "lighting" in shown and "created" in shown
    assert _katilim(db_url, "show", "BCA-1999-000001", check=False).returncode == 1
    out = _katilim(db_url, "set-status", code, "resolved", "--note", "Lamba değişti").stdout
    assert "new -> resolved" in out
    with transaction(app.db) as db:
        report = rp.get_by_code(db, code)
        assert report.status == "resolved"
        event = rp.history_of(db, report.id)[-1]
        assert event.actor.startswith("cli:") and event.note == "Lamba değişti"
        assert db.exec(select(AuditLog).where(AuditLog.action == "report.status")).first().actor.startswith("cli:")
    note = _outbox(app, ayse.resident_id)[-1].payload
    assert "resolved" in note["text"] and "Lamba değişti" in note["text"]
    assert f"rs:no:{code}" in [c["key"] for c in note["choices"]]
    assert _katilim(db_url, "set-status", code, "rejected", check=False).returncode == 2
    # CSV
    csv_file = tmp_path / "r.csv"
    _katilim(db_url, "export", "--format", "csv", "-o", str(csv_file))
    rows = list(csv.DictReader(io.StringIO(csv_file.read_text(encoding="utf-8"))))
    assert [r["code"] for r in rows] == [code, other]
    assert set(rows[0]) == set(rp.EXPORT_FIELDS)
    assert rows[0]["status"] == "resolved" and float(rows[0]["latitude"]) == PIN[0]
    assert rows[1]["mahalle"] == "kozagac" and rows[1]["latitude"] == ""
    text = csv_file.read_text(encoding="utf-8")
    assert "ayse" not in text and "Lamp is off" not in text and str(ayse.resident_id) not in rows[0].values()
    # GeoJSON
    geo = json.loads(_katilim(db_url, "export", "--format", "geojson").stdout)
    assert geo["type"] == "FeatureCollection" and len(geo["features"]) == 2
    pinned, unpinned = geo["features"]
    assert pinned["type"] == "Feature" and pinned["geometry"]["type"] == "Point"
    lon, lat = pinned["geometry"]["coordinates"]
    assert BUCA["lat"][0] < lat < BUCA["lat"][1] and BUCA["lon"][0] < lon < BUCA["lon"][1]
    assert (lat, lon) == PIN
    assert pinned["properties"]["code"] == code and pinned["properties"]["status"] == "resolved"
    assert unpinned["geometry"] is None and unpinned["properties"]["mahalle"] == "kozagac"
    assert "resident_id" not in pinned["properties"] and "description" not in pinned["properties"]
    tomorrow = (utcnow() + timedelta(days=2)).strftime("%Y-%m-%d")
    assert json.loads(_katilim(db_url, "export", "--format", "geojson", "--since", tomorrow).stdout)["features"] == []
