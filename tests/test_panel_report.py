"""The console's report page (issue 15) through the real FastAPI app on a real database: what it
shows (never the resident's identity, the history in words), every action writing its audit row
and its outbox rows, a status change from the console queueing the same message as one from the
chat, a question answered in the chat landing in the history, merges guarded and undone, photos
hidden and blurred and never served without a session, staff kept to their departments, viewers
to reading, and a report filed on a resident's behalf with their WhatsApp number."""
from __future__ import annotations

import re
from datetime import timedelta

import httpx
import pytest
from sqlmodel import select

from conversations.domain.reports import routing
from conversations.i18n import format_when, t_in
from conversations.messages import Media
from storage import media as media_store
from storage import reports as rp
from storage.db import aware, transaction
from storage.models import ChannelIdentity, ConsentRecord, OutboxMessage, Resident, Staff
from tests.media_support import plain_jpeg
from tests.support.chat import Chat
from tests.test_panel import BASE, add_staff, audits, client, form_csrf, signed_in
from tests.test_reports import CODE, PIN

FAR = (38.39500, 27.19000)   # ~2 km from PIN


@pytest.fixture
def console(make_app, db_url):
    return make_app(database_url=db_url, public_base_url=BASE)


def stored_photo(app, colour=(90, 90, 80)) -> Media:
    stored = media_store.keep("photo", plain_jpeg(160, 120, colour), app.settings.media_dir)
    return Media(ref=str(stored.path), content_type=stored.content_type, size=stored.size)


def file_report(app, chat: Chat, *, category="yol", where=PIN, photo=True,
                description="Kaldırımda büyük bir çukur var.") -> str:
    from conversations.messages import Kind

    chat.text("/bildir")
    chat.text(category)
    chat.pin(*where)
    if chat.state == "report.pin":       # the pin's mahalle, in one tap
        chat.tap("yes")
    if chat.state == "report.duplicate":  # a similar report nearby: file anyway
        chat.tap("file")
    chat.text(description)
    if photo:
        chat.send(Kind.PHOTO, media=[stored_photo(app)])
    chat.tap("done")
    chat.tap("confirm")
    return CODE.search(chat.said).group(0)


def outbox_of(app, resident_id: int) -> list[OutboxMessage]:
    with transaction(app.db) as db:
        return list(db.exec(select(OutboxMessage).where(OutboxMessage.resident_id == resident_id,
                                                        OutboxMessage.kind == "notification")
                            .order_by(OutboxMessage.id)))


def report(app, code: str) -> rp.Report:
    with transaction(app.db) as db:
        found = rp.get_by_code(db, code)
        db.expunge(found)
        return found


def history(app, code: str) -> list[rp.ReportEvent]:
    with transaction(app.db) as db:
        events = rp.history_of(db, rp.get_by_code(db, code).id)
        for e in events:
            db.expunge(e)
        return events


async def post(c: httpx.AsyncClient, page_path: str, to: str, **data) -> httpx.Response:
    page = await c.get(page_path)
    return await c.post(to, data={"csrf": form_csrf(page.text), **data})


def media_paths(html: str) -> list[str]:
    return re.findall(r'src="(/panel/reports/[^"]+/media/[^"]+)"', html)


# ---------------------------------------------------------------- the page and every action
async def test_the_report_page_and_its_actions(console):
    app = console
    ayse, john = Chat(app, "ayse"), Chat(app, "john")
    ayse.onboard(lang="tr")
    john.onboard(lang="en")
    code = file_report(app, ayse)
    with transaction(app.db) as db:
        rp.follow(db, code, john.resident_id)
    staff = add_staff(app, name="Mehmet Usta", console="mehmet", departments=["fen_isleri"])
    path = f"/panel/reports/{code}"
    async with signed_in(app, staff) as c:
        page = await c.get(path)
        assert page.status_code == 200
        html = page.text
        for shown in ("Kaldırımda büyük bir çukur var.", "Yol ve kaldırım", "Fen İşleri Müdürlüğü",
                      "Bildirim sahibinin dili", "Türkçe", "Bildirim alındı",
                      "<dd>Dumlupınar</dd>", "Bir vatandaş takip etmeye başladı",   # confirmed by the resident
                      "Bildirim sahibi", 'id="report-map"', 'data-lat="38.385"', "/static/leaflet/leaflet.js"):
            assert shown in html, shown
        assert "resident:" not in html and "ayse" not in html     # never an id or an address
        assert ("Alıcıların dili: Türkçe (1), English (1). Her kişi kendi dilindeki notu alır; not yazdığınız "
                "gibi gönderilir, çevrilmez.") in html
        [photo_path] = media_paths(html)
        got = await c.get(photo_path)
        assert got.status_code == 200 and got.headers["content-type"] == "image/jpeg"
        assert got.headers["x-content-type-options"] == "nosniff"

        # -- a template per status, one note per language, each resident gets theirs
        chosen = await c.get(path, params={"status": "in_progress", "template": "in_progress_team"})
        t_tr = f"{code} numaralı bildiriminiz için ekibimizi yönlendirdik ve çalışmaya başladık. " \
                         "İş tamamlandığında size haber vereceğiz."
        assert 'name="note_tr"' in chosen.text and t_tr in chosen.text
        en_text = f"We have sent our team for your report {code} and the work has started. " \
                  "We will let you know when it is done."
        assert en_text in chosen.text
        done = await c.post(f"{path}/status", data={"csrf": form_csrf(chosen.text), "status": "in_progress",
                                                     "note_tr": t_tr, "note_en": en_text + " Thanks!"})
        assert done.status_code == 303 and done.headers["location"] == f"{path}?notice=status_changed"
        assert report(app, code).status == "in_progress"
        [row] = [a for a in audits(app, "report.status") if a.target == code]
        assert row.actor == f"staff:{staff}" and row.details["to_status"] == "in_progress"
        tr_msg, en_msg = outbox_of(app, ayse.resident_id)[-1], outbox_of(app, john.resident_id)[-1]
        assert tr_msg.payload["text"] == "\n".join([
            t_in("tr", "report.notify.in_progress", code=code, category="Yol ve kaldırım"),
            t_in("tr", "report.notify.note", note=t_tr)])
        assert en_msg.payload["text"] == "\n".join([
            t_in("en", "report.notify.in_progress", code=code, category="Roads and pavements"),
            t_in("en", "report.notify.note", note=en_text + " Thanks!")])

        # -- an internal note: in the history for staff, sent to nobody
        before = len(outbox_of(app, ayse.resident_id))
        done = await post(c, path, f"{path}/note", text="Asfalt ekibi perşembe gelecek.")
        assert done.status_code == 303
        assert len(outbox_of(app, ayse.resident_id)) == before
        note = history(app, code)[-1]
        assert note.kind == "note" and note.internal and note.actor == f"staff:{staff}"
        assert [a.actor for a in audits(app, "report.internal_note")] == [f"staff:{staff}"]
        page = await c.get(path)
        assert "Asfalt ekibi perşembe gelecek." in page.text and "İç not" in page.text
        with transaction(app.db) as db:
            exported = rp.export_resident(db, ayse.resident_id)
        assert "Asfalt ekibi" not in str(exported)                  # not in the resident's own data

        # -- a question to the reporter, answered in the chat at the menu
        done = await post(c, path, f"{path}/ask", question="Çukur tam olarak hangi binanın önünde?")
        assert done.status_code == 303
        asked = outbox_of(app, ayse.resident_id)[-1]
        assert asked.payload["text"] == t_in("tr", "report.question.asked", code=code,
                                             question="Çukur tam olarak hangi binanın önünde?")
        assert [c_["key"] for c_ in asked.payload["choices"]] == [f"rq:{code}"]
        assert [a.actor for a in audits(app, "report.question")] == [f"staff:{staff}"]
        assert ayse.state == "menu"
        ayse.text("12 numaralı apartmanın önünde")
        assert ayse.said == t_in("tr", "report.question.thanks", code=code) + "\n" + t_in("tr", "menu.title")
        answer = history(app, code)[-1]
        assert answer.kind == "answer" and answer.note == "12 numaralı apartmanın önünde"
        assert answer.actor == f"resident:{ayse.resident_id}"
        page = await c.get(path)
        assert "Soruya yanıt verildi" in page.text and "12 numaralı apartmanın önünde" in page.text
        ayse.text("merhaba")                                           # answered: the menu again
        assert ayse.said == t_in("tr", "menu.choose") + "\n" + t_in("tr", "menu.title")

        # -- the pin moves, the mahalle follows
        done = await post(c, path, f"{path}/pin", lat="38,38600", lon="27.17600")
        assert done.status_code == 303
        moved = report(app, code)
        assert (moved.latitude, moved.longitude) == (38.386, 27.176)
        assert [a.details["after"] for a in audits(app, "report.moved")] == [[38.386, 27.176]]

        # -- a photo hidden, then blurred
        with transaction(app.db) as db:
            [media] = rp.media_of(db, rp.get_by_code(db, code).id)
            media_id = media.id
        done = await post(c, path, f"{path}/photo/{media_id}", action="blur")
        assert done.status_code == 303
        with transaction(app.db) as db:
            blurred = db.get(rp.ReportMedia, media_id)
            assert blurred.blurred_path and blurred.blurred_path != blurred.path
            original_bytes = open(blurred.path, "rb").read()
            assert open(blurred.blurred_path, "rb").read() != original_bytes
        done = await post(c, path, f"{path}/photo/{media_id}", action="hide")
        assert done.status_code == 303
        assert [a.actor for a in audits(app, "report.photo_hide")] == [f"staff:{staff}"]
        assert (await c.get(photo_path)).content == original_bytes     # staff still see the photo
    viewer = add_staff(app, name="İzleyici", console="izleyici", role="viewer")
    async with signed_in(app, viewer) as v:
        page = await v.get(path)
        assert page.status_code == 200 and media_paths(page.text) == []  # hidden: not even its address
        assert (await v.get(photo_path)).status_code == 404
    async with signed_in(app, staff) as c:
        await post(c, path, f"{path}/photo/{media_id}", action="show")
    async with signed_in(app, viewer) as v:
        got = await v.get(photo_path)                                 # shown again, blurred for viewers
        assert got.status_code == 200 and got.content != original_bytes


async def test_a_status_change_from_the_console_is_the_chats(console):
    app = console
    ayse = Chat(app, "ayse")
    ayse.onboard(lang="tr")
    first = file_report(app, ayse, photo=False)
    second = file_report(app, ayse, category="lamba", where=FAR, photo=False, description="Sokak lambası yanmıyor.")
    with transaction(app.db) as db:
        db.add(Staff(console="boss", name="Ayşe Başkan"))
    boss = Chat(app, "boss")
    boss.onboard(lang="tr")
    boss.text(f"/raporlar {second}")
    boss.tap("to:in_progress")
    assert "Bu not yazdığınız gibi gönderilir" not in boss.said
    assert t_in("tr", "staffreport.note_languages", languages="Türkçe (1)") in boss.said
    boss.text("Ekip yarın sabah gelecek")
    from_chat = outbox_of(app, ayse.resident_id)[-1]
    admin = add_staff(app, name="Admin", console="admin", role="admin")
    async with signed_in(app, admin) as c:
        done = await post(c, f"/panel/reports/{first}", f"/panel/reports/{first}/status", status="in_progress",
                          note_tr="Ekip yarın sabah gelecek")
        assert done.status_code == 303
    from_console = outbox_of(app, ayse.resident_id)[-1]
    assert from_console.id != from_chat.id
    same = {k: getattr(from_chat, k) for k in ("channel", "address", "kind", "priority", "status")}
    assert {k: getattr(from_console, k) for k in same} == same
    assert from_console.payload["text"] == from_chat.payload["text"].replace(second, first).replace(
        "Sokak aydınlatması", "Yol ve kaldırım")
    assert from_console.payload == {**from_chat.payload, "text": from_console.payload["text"]}


# ---------------------------------------------------------------- merges: guarded, confirmed, undone
async def test_merge_needs_confirmation_an_override_when_far_and_can_be_undone(console):
    app = console
    ayse, john = Chat(app, "ayse"), Chat(app, "john")
    ayse.onboard(lang="tr")
    john.onboard(lang="en")
    target = file_report(app, ayse, photo=False)
    source = file_report(app, john, category="roads", where=FAR, photo=False, description="A hole in the road")
    admin = add_staff(app, name="Admin", console="admin", role="admin")
    path = f"/panel/reports/{source}"
    async with signed_in(app, admin) as c:
        asked = await post(c, path, f"{path}/merge", into=target)
        assert asked.status_code == 200 and f"<h1>{source} birleştirilsin mi?</h1>" in asked.text
        assert "İki bildirim" in asked.text and "m uzakta; sınır 300 m." in asked.text
        assert report(app, source).status == "new"                     # nothing yet: a confirmation page
        refused = await c.post(f"{path}/merge", data={"csrf": form_csrf(asked.text), "into": target, "confirm": "1"})
        assert refused.status_code == 400 and report(app, source).status == "new"
        assert "birleştirmek için açıkça onaylayın" in refused.text
        done = await c.post(f"{path}/merge", data={"csrf": form_csrf(asked.text), "into": target, "confirm": "1",
                                                  "override": "1"})
        assert done.status_code == 303
        merged = report(app, source)
        assert merged.status == "merged" and report(app, target).supporters == 1
        assert [a.actor for a in audits(app, "report.merge_override")] == [f"staff:{admin}"]
        told = outbox_of(app, john.resident_id)[-1]
        assert told.payload["text"].startswith(t_in("en", "report.notify.merged", code=source, into=target,
                                                    category="Roads and pavements").split("\n")[0])
        page = await c.get(path)
        assert "Birleştirmeyi geri al" in page.text
        done = await post(c, path, f"{path}/unmerge")
        assert done.status_code == 303
        back = report(app, source)
        assert back.status == "new" and back.merged_into_id is None and report(app, target).supporters == 0
        assert [a.actor for a in audits(app, "report.unmerged")] == [f"staff:{admin}"]
        assert outbox_of(app, john.resident_id)[-1].payload["text"] == t_in("en", "report.notify.unmerged",
                                                                              code=source)
        page = await c.get(f"/panel/reports/{target}")
        assert f"{source} bu bildirimle birleştirildi" in page.text
        assert f"Birleştirme geri alındı ({source})" in page.text


# ---------------------------------------------------------------- who may do what
async def test_staff_of_another_department_and_viewers_change_nothing(console):
    app = console
    ayse = Chat(app, "ayse")
    ayse.onboard(lang="tr")
    code = file_report(app, ayse)                                     # a road: fen_isleri
    path = f"/panel/reports/{code}"
    police = add_staff(app, name="Zabıta", console="zabita", departments=["zabita"])
    viewer = add_staff(app, name="İzleyici", console="izleyici", role="viewer")
    for who in (police, viewer):
        async with signed_in(app, who) as c:
            page = await c.get(path)
            assert page.status_code == 200 and "Kaldırımda büyük bir çukur var." in page.text
            assert "Durumu değiştir ve bildir" not in page.text and f'action="{path}/status"' not in page.text
            csrf = form_csrf(page.text)
            for action, data in (("status", {"status": "resolved", "note_tr": "x"}), ("note", {"text": "x"}),
                                 ("ask", {"question": "Neresi?"}), ("pin", {"lat": "38.3", "lon": "27.1"}),
                                 ("category", {"category": "waste"}), ("unmerge", {})):
                answer = await c.post(f"{path}/{action}", data={"csrf": csrf, **data})
                assert answer.status_code == 403, (who, action, answer.status_code)
            expected = t_in("tr", "panel.refused.department" if who == police else "panel.refused.role")
            assert expected in answer.text
    assert report(app, code).status == "new" and [e.kind for e in history(app, code)] == ["created"]
    refused = [a for a in audits(app, "panel.refused") if a.target.startswith(path)]
    assert {a.actor for a in refused} == {f"staff:{police}", f"staff:{viewer}"} and len(refused) == 12
    # without a session: the page, the photo and every action
    async with client(app) as anon:
        page = await anon.get(path)
        assert page.status_code == 303 and page.headers["location"] == "/panel/login"
        async with signed_in(app, police) as c:
            [photo_path] = media_paths((await c.get(path)).text)
        got = await anon.get(photo_path)
        assert got.status_code == 303 and got.headers["location"] == "/panel/login" and not got.content
        assert (await anon.post(f"{path}/status", data={"status": "resolved"})).status_code == 403


# ---------------------------------------------------------------- on a resident's behalf
async def test_a_clerk_files_a_report_for_a_caller_with_their_whatsapp_number(console):
    app = console
    clerk = add_staff(app, name="Masa Görevlisi", console="masa", departments=["fen_isleri"])
    async with signed_in(app, clerk) as c:
        form = await c.get("/panel/reports/new")
        assert form.status_code == 200 and 'enctype="multipart/form-data"' in form.text
        csrf = form_csrf(form.text)
        fields = {"csrf": csrf, "category": "road", "description": "Telefonla bildirildi: kaldırım taşları kırık.",
                  "mahalle": "kozagac", "street": "Menderes Caddesi 12", "whatsapp": "0555 123 45 67"}
        refused = await c.post("/panel/reports/new", data=fields)
        assert refused.status_code == 400 and t_in("tr", "panel.new.consent_missing") in refused.text
        photo = plain_jpeg(200, 150, (120, 100, 90))
        done = await c.post("/panel/reports/new", data={**fields, "consent": "1"},
                            files={"photo": ("kaldirim.jpg", photo, "image/jpeg")})
        assert done.status_code == 303, done.text
        code = re.search(r"/panel/reports/([A-Z]+-\d{4}-\d{6})\?notice=filed", done.headers["location"]).group(1)
        page = await c.get(f"/panel/reports/{code}")
        assert "personel tarafından vatandaş adına kaydedildi" in page.text and len(media_paths(page.text)) == 1
    with transaction(app.db) as db:
        filed = rp.get_by_code(db, code)
        assert filed.channel == "panel" and filed.mahalle == "kozagac" and filed.category == "road"
        identity = db.exec(select(ChannelIdentity).where(ChannelIdentity.channel == "whatsapp")).one()
        assert identity.address == "whatsapp:+905551234567" and filed.resident_id == identity.resident_id
        [consent] = db.exec(select(ConsentRecord).where(ConsentRecord.resident_id == identity.resident_id)).all()
        assert (consent.purpose, consent.granted, consent.channel) == ("reports", True, "panel")
        [event] = rp.history_of(db, filed.id)
        assert event.actor == f"staff:{clerk}"
        resident = db.get(Resident, identity.resident_id)
    assert [a.target for a in audits(app, "consent.recorded_on_behalf")] == [f"resident:{resident.id}"]
    assert [a.actor for a in audits(app, "report.filed_on_behalf")] == [f"staff:{clerk}"]
    [told] = outbox_of(app, resident.id)
    assert (told.channel, told.address) == ("whatsapp", "whatsapp:+905551234567")
    assert told.payload["text"] == t_in("tr", "report.filed_for_you", code=code, category="Yol ve kaldırım",
                                        municipality="Buca Belediyesi")
    viewer = add_staff(app, name="İzleyici", console="izleyici", role="viewer")
    async with signed_in(app, viewer) as v:
        form = await v.get("/panel/reports/new")
        assert t_in("tr", "panel.new.viewer") in form.text
        answer = await v.post("/panel/reports/new", data={"csrf": form_csrf(form.text), "category": "road",
                                                          "description": "Bir şey", "mahalle": "kozagac"})
        assert answer.status_code == 403


# ---------------------------------------------------------------- routing: department, person, category
async def test_assign_to_a_department_or_a_person_and_change_the_category(console):
    app = console
    ayse = Chat(app, "ayse")
    ayse.onboard(lang="tr")
    code = file_report(app, ayse, photo=False)
    path = f"/panel/reports/{code}"
    works = add_staff(app, name="Mehmet Usta", console="mehmet", departments=["fen_isleri"])
    admin = add_staff(app, name="Admin", console="admin", role="admin")
    filed = report(app, code)
    assert filed.department == "fen_isleri" and filed.due_at is not None
    async with signed_in(app, works) as c:
        page = await c.get(path)
        due = format_when(filed.due_at, "tr", "Europe/Istanbul")
        assert f"<dd>{due}</dd>" in page.text and "Gecikmiş" not in page.text
        done = await post(c, path, f"{path}/assign", department="zabita", assignee="0")
        assert done.status_code == 303
        assert report(app, code).department == "zabita"
        [row] = audits(app, "report.assigned")
        assert row.actor == f"staff:{works}" and row.details == {"department": "zabita"}
        page = await c.get(path)                                      # no longer theirs: read only
        assert "Zabıta Müdürlüğü birimine yönlendirildi</strong> · Mehmet Usta" in page.text
        assert f'action="{path}/status"' not in page.text
        refused = await c.post(f"{path}/status", data={"csrf": form_csrf(page.text), "status": "seen"})
        assert refused.status_code == 403
    async with signed_in(app, admin) as c:
        done = await post(c, path, f"{path}/assign", department="zabita", assignee=str(works))
        assert done.status_code == 303 and report(app, code).assignee_id == works
        done = await post(c, path, f"{path}/category", category="waste")
        assert done.status_code == 303
    moved = report(app, code)
    assert moved.category == "waste" and moved.department == "temizlik_isleri"
    assert moved.due_at == routing(app.catalog, "waste", aware(moved.created_at))[1] != filed.due_at
    assert [a.details["to_category"] for a in audits(app, "report.category")] == ["waste"]
    async with signed_in(app, works) as c:                           # assigned to them: theirs again
        page = await c.get(path)
        assert "Mehmet Usta kişisine atandı</strong> · Admin" in page.text
        assert "Kategori değiştirildi: Çöp ve temizlik" in page.text
        done = await post(c, path, f"{path}/status", status="seen", note_tr="")
        assert done.status_code == 303 and report(app, code).status == "seen"
    with transaction(app.db) as db:
        late = rp.get_by_code(db, code)
        late.due_at = late.created_at - timedelta(hours=1)
        db.add(late)
    async with signed_in(app, works) as c:
        assert "Gecikmiş" in (await c.get(path)).text


async def test_a_question_is_answered_with_its_button_from_anywhere_in_the_chat(console):
    app = console
    ayse = Chat(app, "ayse")
    ayse.onboard(lang="tr")
    code = file_report(app, ayse, photo=False)
    admin = add_staff(app, name="Admin", console="admin", role="admin")
    async with signed_in(app, admin) as c:
        done = await post(c, f"/panel/reports/{code}", f"/panel/reports/{code}/ask", question="Çukur ne kadar derin?")
        assert done.status_code == 303
    ayse.text("/raporlarim")                                 # busy elsewhere when the question comes
    assert ayse.state == "report.mine"
    ayse.tap(f"rq:{code}")
    assert ayse.state == "report.answer" and ayse.said == t_in("tr", "report.question.prompt", code=code)
    ayse.text("Yaklaşık bir karış")
    assert ayse.state == "menu"
    assert ayse.said == t_in("tr", "report.question.thanks", code=code) + "\n" + t_in("tr", "menu.title")
    assert [(e.kind, e.note) for e in history(app, code)][-2:] == [("question", "Çukur ne kadar derin?"),
                                                                   ("answer", "Yaklaşık bir karış")]
    ayse.tap(f"rq:{code}")                                   # answered: the button says so
    assert ayse.said.startswith(t_in("tr", "report.question.closed", code=code))


async def test_a_hidden_photo_leaves_open311_and_a_blurred_one_is_served_blurred(console):
    from tests.test_open311 import new_key

    app = console
    ayse = Chat(app, "ayse")
    ayse.onboard(lang="tr")
    code = file_report(app, ayse)
    full = new_key(app, "crm", scope="full")
    admin = add_staff(app, name="Admin", console="admin", role="admin")
    with transaction(app.db) as db:
        [media] = rp.media_of(db, rp.get_by_code(db, code).id)
        media_id, original = media.id, open(media.path, "rb").read()
    async with client(app) as c:
        async def open311():
            [item] = (await c.get(f"/open311/v2/requests/{code}.json", params={"api_key": full})).json()
            return item["media_url"]

        url = await open311()
        photo_path = url.removeprefix(BASE)
        assert (await c.get(photo_path, params={"api_key": full})).content == original
        async with signed_in(app, admin) as s:
            await post(s, f"/panel/reports/{code}", f"/panel/reports/{code}/photo/{media_id}", action="blur")
        blurred = await c.get(photo_path, params={"api_key": full})
        assert blurred.status_code == 200 and blurred.headers["content-type"] == "image/jpeg"
        assert blurred.content != original
        async with signed_in(app, admin) as s:
            await post(s, f"/panel/reports/{code}", f"/panel/reports/{code}/photo/{media_id}", action="hide")
        assert await open311() is None
        assert (await c.get(photo_path, params={"api_key": full})).status_code == 404
