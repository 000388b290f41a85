"""The console's report triage (issue 15) over HTTP through the real app on a real database
(SQLite and PostgreSQL): the list's filters (status, category, mahalle, department, assignee,
dates, overdue, Turkish-aware free text and codes), sorting and paging; CSV and GeoJSON exports of
exactly the filtered set; a staff member's department preset; bulk assign and bulk status (the
chat's status change: the resident is told through the outbox), refused for a viewer, for
another department's report and without the CSRF token; the map's data; the live updates; the
dashboard."""
from __future__ import annotations

import csv
import io
import re
from datetime import timedelta, timezone

import pytest
from sqlmodel import select

from conversations.domain import reports as domain
from conversations.i18n import t_in
from conversations.permissions import Actor
from storage import reports as rp
from storage.db import transaction, utcnow
from storage.models import AuditLog, OutboxMessage
from tests.support.chat import Chat
from tests.test_panel import add_staff, audits, client, form_csrf, signed_in
from tests.test_reports import CODE, _file

ROW = re.compile(r'<tr data-code="([A-Z]+-\d{4}-\d{6})"')
UTC = timezone.utc
ISTANBUL = timezone(timedelta(hours=3))


@pytest.fixture
def console(make_app, db_url):
    return make_app(database_url=db_url, public_base_url="http://testserver")


def codes(html: str) -> list[str]:
    return ROW.findall(html)


def seed(app) -> dict[str, str]:
    """Six reports of known categories, mahalleler, dates and states; name → code."""
    at = utcnow()
    made = {}
    with transaction(app.db) as db:
        def new(name, category, description, *, mahalle=None, pin=None, days_ago=0.0):
            report = domain.file(db, Actor.system(), prefix="BCA", category=category, description=description,
                                      mahalle=mahalle, latitude=pin[0] if pin else None,
                                      longitude=pin[1] if pin else None, catalog=app.catalog,
                                      now=at - timedelta(days=days_ago))
            made[name] = report.code
            return report

        new("pothole", "road", "Kaldırımda büyük bir ÇUKUR var", mahalle="kozagac", pin=(38.3815, 27.1690),
            days_ago=1)
        new("lamp", "lighting", "Sokak lambası yanmıyor", mahalle="adatepe", pin=(38.3776, 27.2060), days_ago=2)
        new("bins", "waste", "Konteyner taşıyor", mahalle="adatepe", days_ago=3)       # no pin
        new("dog", "animals", "Yaralı KÖPEK parkta", mahalle="kozagac", pin=(38.3820, 27.1700), days_ago=0.1)
        old = new("old_road", "road", "Asfalt bozuk", mahalle="kozagac", pin=(38.3800, 27.1650), days_ago=40)
        new("nowhere", "noise", "=HYPERLINK(\"x\") gece müzik", days_ago=0.2)  # no pin, no mahalle
        rp.set_status(db, made["lamp"], "resolved", "staff:0", now=at - timedelta(days=1))
        assert old.due_at < at            # 40 days ago, 40 working hours: overdue
        for name in ("pothole", "bins", "dog", "nowhere"):   # due later, whatever today's weekday
            report = rp.get_by_code(db, made[name])
            report.due_at = at + timedelta(days=2)
            db.add(report)
    return made


def listed(html: str) -> set[str]:
    return set(codes(html))


# ---------------------------------------------------------------- filters, sorting, paging
async def test_the_list_filters_sorts_and_pages(console):
    made = seed(console)
    admin = add_staff(console, name="Ayşe Admin", console="ayse", role="admin")
    clerk = add_staff(console, name="Mehmet", console="mehmet", departments=["fen_isleri"])
    with transaction(console.db) as db:
        report = rp.get_by_code(db, made["pothole"])
        report.assignee_id = clerk
        db.add(report)
    async with signed_in(console, admin) as c:
        async def get(**params):
            page = await c.get("/panel/reports", params={"f": "1", **params})
            assert page.status_code == 200, page.text
            return page.text

        everything = await get()
        assert listed(everything) == set(made.values())
        # newest first by default
        assert codes(everything)[:3] == [made["dog"], made["nowhere"], made["pothole"]]
        assert listed(await get(status="resolved")) == {made["lamp"]}
        assert listed(await get(status="open")) == set(made.values()) - {made["lamp"]}
        assert listed(await get(category="road")) == {made["pothole"], made["old_road"]}
        assert listed(await get(mahalle="adatepe")) == {made["lamp"], made["bins"]}
        assert listed(await get(department="fen_isleri")) == {made["pothole"], made["old_road"], made["lamp"]}
        assert listed(await get(department="veteriner_isleri")) == {made["dog"]}
        assert listed(await get(assignee=str(clerk))) == {made["pothole"]}
        assert listed(await get(assignee="none")) == set(made.values()) - {made["pothole"]}
        assert listed(await get(overdue="1")) == {made["old_road"]}
        today = utcnow().astimezone(ISTANBUL).date()
        week_ago = (today - timedelta(days=7)).isoformat()
        assert listed(await get(**{"from": week_ago})) == set(made.values()) - {made["old_road"]}
        assert listed(await get(to=(today - timedelta(days=30)).isoformat())) == {made["old_road"]}
        # free text, Turkish-aware: "kopek" finds "KÖPEK", "çukur" finds "ÇUKUR"; a category's
        # or a mahalle's name in any language; a code, whole or in part
        assert listed(await get(q="kopek")) == {made["dog"]}
        assert listed(await get(q="çukur kaldirim")) == {made["pothole"]}
        assert listed(await get(q="Stray animals")) == {made["dog"]}
        assert listed(await get(q="KOZAĞAÇ asfalt")) == {made["old_road"]}
        assert listed(await get(q=made["bins"].lower())) == {made["bins"]}
        assert listed(await get(q=made["bins"][-6:])) == {made["bins"]}
        assert listed(await get(q="yok böyle bir şey")) == set()
        # filters combine
        assert listed(await get(category="road", overdue="1", mahalle="kozagac")) == {made["old_road"]}
        # sorting by a column, both ways
        by_code = codes(await get(sort="code", dir="asc"))
        assert by_code == sorted(made.values())
        assert codes(await get(sort="code", dir="desc")) == sorted(made.values(), reverse=True)
        # the overdue row is highlighted, with its due time
        page = await get(overdue="1")
        assert f'<tr data-code="{made["old_road"]}" data-created=' in page and 'class="overdue"' in page
        assert "Süresi geçti:" in page
        # a link to each report's page
        assert f'href="/panel/reports/{made["dog"]}"' in everything
    # paging with counts: 30 more reports, 25 a page
    with transaction(console.db) as db:
        for i in range(30):
            domain.file(db, Actor.system(), prefix="BCA", category="parks", description=f"bank {i}",
                             catalog=console.catalog, now=utcnow() - timedelta(days=5, minutes=i))
    async with signed_in(console, admin) as c:
        first = await c.get("/panel/reports", params={"f": "1", "category": "parks", "size": "25"})
        assert len(codes(first.text)) == 25 and "30 bildirimden 1–25 arası" in first.text
        nxt = re.search(r'href="([^"]+)" rel="next"', first.text).group(1).replace("&amp;", "&")
        second = await c.get(nxt)
        assert len(codes(second.text)) == 5 and "30 bildirimden 26–30 arası" in second.text
        assert not set(codes(first.text)) & set(codes(second.text))
        assert 'rel="next"' not in second.text and 'rel="prev"' in second.text


# ---------------------------------------------------------------- exports
async def test_exports_hold_exactly_the_filtered_set(console):
    made = seed(console)
    admin = add_staff(console, name="Ayşe Admin", console="ayse", role="admin")
    async with signed_in(console, admin) as c:
        for params, expected in (({"category": "road"}, {made["pothole"], made["old_road"]}),
                                 ({"mahalle": "adatepe"}, {made["lamp"], made["bins"]}),
                                 ({"q": "kopek"}, {made["dog"]}),
                                 ({}, set(made.values()))):
            query = {"f": "1", **params}
            page = await c.get("/panel/reports", params=query)
            exported = await c.get("/panel/reports.csv", params=query)
            assert exported.status_code == 200 and exported.headers["content-type"] == "text/csv; charset=utf-8"
            assert exported.headers["content-disposition"].startswith('attachment; filename="reports-')
            rows = list(csv.DictReader(io.StringIO(exported.text.lstrip("\ufeff"))))
            assert {r["code"] for r in rows} == listed(page.text) == expected, params
            geo = await c.get("/panel/reports.geojson", params=query)
            assert geo.headers["content-type"] == "application/geo+json"
            features = geo.json()["features"]
            assert {f["properties"]["code"] for f in features} == expected, params
        # GeoJSON: exact pins (staff only); no pin, no geometry
        geo = (await c.get("/panel/reports.geojson", params={"f": "1", "mahalle": "adatepe"})).json()
        by_code = {f["id"]: f for f in geo["features"]}
        assert by_code[made["lamp"]]["geometry"] == {"type": "Point", "coordinates": [27.2060, 38.3776]}
        assert by_code[made["bins"]]["geometry"] is None
        assert by_code[made["lamp"]]["properties"]["department"] == "fen_isleri"
        # the CSV's columns, and the description for staff
        rows = list(csv.DictReader(io.StringIO((await c.get("/panel/reports.csv", params={
            "f": "1", "q": "kopek"})).text.lstrip("\ufeff"))))
        assert rows[0]["description"] == "Yaralı KÖPEK parkta" and rows[0]["department"] == "veteriner_isleri"
        assert rows[0]["overdue"] == "0" and rows[0]["due_at"]
        # a description a spreadsheet would run as a formula is exported as text
        rows = list(csv.DictReader(io.StringIO((await c.get("/panel/reports.csv", params={
            "f": "1", "q": "gece muzik"})).text.lstrip("\ufeff"))))
        assert [r["description"] for r in rows] == ["'=HYPERLINK(\"x\") gece müzik"]
    exports = audits(console, "panel.export")
    assert {a.target for a in exports} == {"reports.csv", "reports.geojson"}
    assert all(a.actor == f"staff:{admin}" for a in exports)
    # without a session: no export
    async with client(console) as c:
        assert (await c.get("/panel/reports.csv")).status_code == 303
        assert (await c.get("/panel/reports.geojson")).status_code == 303
        assert (await c.get("/panel/map.json")).status_code == 303


# ---------------------------------------------------------------- departments and roles
async def test_staff_see_their_departments_by_default_and_admins_everything(console):
    made = seed(console)
    admin = add_staff(console, name="Ayşe Admin", console="ayse", role="admin")
    clerk = add_staff(console, name="Mehmet", console="mehmet", departments=["fen_isleri"])
    async with signed_in(console, clerk) as c:
        preset = await c.get("/panel/reports")
        assert listed(preset.text) == {made["pothole"], made["old_road"], made["lamp"]}
        assert '<option value="mine" selected>Birimlerim</option>' in preset.text
        # the preset also holds for the exports and the map of the same page
        assert {r["code"] for r in csv.DictReader(io.StringIO(
            (await c.get("/panel/reports.csv")).text.lstrip("\ufeff")))} == listed(preset.text)
        assert {p[0] for p in (await c.get("/panel/map.json")).json()["points"]} == {
            made["pothole"], made["old_road"], made["lamp"]}
        # they may look wider: every department
        assert listed((await c.get("/panel/reports", params={"f": "1", "department": ""})).text) == set(made.values())
    async with signed_in(console, admin) as c:
        assert listed((await c.get("/panel/reports")).text) == set(made.values())


async def test_bulk_status_tells_the_resident_and_skips_another_department(console):
    ayse = Chat(console, "ayse")
    ayse.onboard(lang="tr")
    _file(ayse)                          # "yol": fen_isleri
    ayse.tap("confirm")
    filed = CODE.search(ayse.said).group(0)
    made = seed(console)
    clerk = add_staff(console, name="Mehmet", console="mehmet", departments=["fen_isleri"])
    async with signed_in(console, clerk) as c:
        page = await c.get("/panel/reports", params={"f": "1", "department": ""})
        assert 'action="/panel/bulk"' in page.text
        done = await c.post("/panel/bulk", data={
            "csrf": form_csrf(page.text), "action": "status", "status": "in_progress",
            "note": "Ekip yola çıktı.", "code": [filed, made["dog"]], "back": "/panel/reports?f=1"})
        assert done.status_code == 303
        assert done.headers["location"] == "/panel/reports?f=1&notice=bulk_partial"
        shown = await c.get(done.headers["location"])
        assert "Bazı bildirimler değişmedi" in shown.text
    with transaction(console.db) as db:
        mine, other = rp.get_by_code(db, filed), rp.get_by_code(db, made["dog"])
        assert (mine.status, other.status) == ("in_progress", "new")
        assert mine.first_response_at is not None and other.first_response_at is None
        told = list(db.exec(select(OutboxMessage).where(OutboxMessage.resident_id == mine.resident_id,
                                                        OutboxMessage.kind == "notification")))
        category = console.catalog.category("road").name.get("tr")
        assert [m.payload["text"] for m in told] == [
            t_in("tr", "report.notify.in_progress", code=filed, category=category) + "\n"
            + t_in("tr", "report.notify.note", note="Ekip yola çıktı.")]
        [event] = [e for e in rp.history_of(db, mine.id) if e.kind == "status"]
        assert event.actor == f"staff:{clerk}"
    [refused] = [a for a in audits(console, "panel.refused") if a.target == "report.bulk"]
    assert refused.actor == f"staff:{clerk}" and refused.details["codes"] == [made["dog"]]


async def test_bulk_assign_and_its_history(console):
    made = seed(console)
    admin = add_staff(console, name="Ayşe Admin", console="ayse", role="admin")
    clerk = add_staff(console, name="Mehmet Kaya", console="mehmet", departments=["fen_isleri"])
    async with signed_in(console, admin) as c:
        page = await c.get("/panel/reports", params={"f": "1"})
        assert f'<option value="{clerk}">Mehmet Kaya</option>' in page.text
        done = await c.post("/panel/bulk", data={"csrf": form_csrf(page.text), "action": "assign",
                                                 "assignee": str(clerk), "code": [made["pothole"], made["dog"]],
                                                 "back": "/panel/reports?f=1&assignee=me"})
        assert done.headers["location"] == "/panel/reports?f=1&assignee=me&notice=bulk_done"
    async with signed_in(console, clerk) as c:
        mine = await c.get("/panel/reports", params={"f": "1", "assignee": "me"})
        assert listed(mine.text) == {made["pothole"], made["dog"]}
        assert "Atanan: Mehmet Kaya" in mine.text
        # the clerk may change the animal report assigned to them (not their department)
        done = await c.post("/panel/bulk", data={"csrf": form_csrf(mine.text), "action": "status", "status": "seen",
                                                 "code": [made["dog"]], "back": "/panel/reports"})
        assert done.headers["location"] == "/panel/reports?notice=bulk_done"
    with transaction(console.db) as db:
        dog = rp.get_by_code(db, made["dog"])
        assert dog.assignee_id == clerk and dog.status == "seen"
        assert [(e.kind, e.actor, e.note) for e in rp.history_of(db, dog.id)][1] == (
            "assigned", f"staff:{admin}", f"staff:{clerk}")
    assert [a.target for a in audits(console, "report.assigned")] == [made["pothole"], made["dog"]]


async def test_a_viewer_cannot_bulk_change_and_a_form_needs_its_csrf_token(console):
    made = seed(console)
    viewer = add_staff(console, name="Gözlemci", console="viewer", role="viewer")
    admin = add_staff(console, name="Ayşe Admin", console="ayse", role="admin")
    async with signed_in(console, viewer) as c:
        page = await c.get("/panel/reports")
        assert listed(page.text) == set(made.values())
        assert 'action="/panel/bulk"' not in page.text and 'name="code"' not in page.text
        refused = await c.post("/panel/bulk", data={"csrf": form_csrf(page.text), "action": "status",
                                                    "status": "resolved", "code": [made["dog"]]})
        assert refused.status_code == 403
        assert t_in("tr", "panel.refused.role") in refused.text
        refused = await c.post("/panel/bulk", data={"csrf": form_csrf(page.text), "action": "assign",
                                                    "assignee": str(admin), "code": [made["dog"]]})
        assert refused.status_code == 403
    async with signed_in(console, admin) as c:
        await c.get("/panel/reports")
        no_token = await c.post("/panel/bulk", data={"action": "status", "status": "resolved", "code": [made["dog"]]})
        assert no_token.status_code == 403 and t_in("tr", "panel.refused.csrf") in no_token.text
        page = await c.get("/panel/reports")
        other_site = await c.post("/panel/bulk", headers={"origin": "https://evil.example"}, data={
            "csrf": form_csrf(page.text), "action": "status", "status": "resolved", "code": [made["dog"]]})
        assert other_site.status_code == 403
    with transaction(console.db) as db:
        dog = rp.get_by_code(db, made["dog"])
        assert (dog.status, dog.assignee_id) == ("new", None)
    with transaction(console.db) as db:
        reasons = [(a.actor, a.details.get("reason") or a.details.get("attempted"))
                   for a in db.exec(select(AuditLog).where(AuditLog.action == "panel.refused").order_by(AuditLog.id))]
    assert reasons == [(f"staff:{viewer}", "report.change"), (f"staff:{viewer}", "report.change"),
                       (f"staff:{admin}", "csrf"), (f"staff:{admin}", "origin")]


# ---------------------------------------------------------------- the map, live updates, dashboard
async def test_the_map_data_is_the_filtered_set_with_mahalle_centres(console):
    made = seed(console)
    admin = add_staff(console, name="Ayşe Admin", console="ayse", role="admin")
    async with signed_in(console, admin) as c:
        page = await c.get("/panel/map", params={"f": "1", "mahalle": "adatepe"})
        assert page.status_code == 200
        assert 'data-src="/panel/map.json?f=1&amp;mahalle=adatepe"' in page.text
        assert 'data-tiles="https://tile.openstreetmap.org/{z}/{x}/{y}.png"' in page.text
        assert "img-src 'self' data: https://tile.openstreetmap.org" in page.headers["content-security-policy"]
        assert 'src="/static/leaflet/leaflet.js"' in page.text
        data = (await c.get("/panel/map.json", params={"f": "1", "mahalle": "adatepe"})).json()
        points = {p[0]: p for p in data["points"]}
        assert set(points) == {made["lamp"], made["bins"]} and data["total"] == 2
        assert points[made["lamp"]][1:6] == ["resolved", 38.3776, 27.206, 0, 0]
        centre = console.catalog.neighbourhood("adatepe").centre
        assert points[made["bins"]][1:6] == ["new", centre[0], centre[1], 1, 0]     # at the mahalle's centre
        assert data["summary"] == "Haritada 2 bildirim (süzgece uyan: 2)."
        everything = (await c.get("/panel/map.json", params={"f": "1"})).json()
        assert everything["total"] == 6 and everything["unplaced"] == 1 and everything["shown"] == 5
        assert everything["summary"] == ("Haritada 5 bildirim (süzgece uyan: 6). "
                                         "Konumu bilinmeyen 1 bildirim haritada yok.")
        assert {p[0]: p[5] for p in everything["points"]}[made["old_road"]] == 1    # overdue
        for asset in ("/static/leaflet/leaflet.js", "/static/markercluster/leaflet.markercluster.js",
                      "/static/panel/map.js", "/static/panel/live.js"):
            assert (await c.get(asset)).status_code == 200, asset


async def test_live_updates_return_what_changed_since_the_cursor(console):
    made = seed(console)
    admin = add_staff(console, name="Ayşe Admin", console="ayse", role="admin")
    async with signed_in(console, admin) as c:
        page = await c.get("/panel/reports", params={"f": "1", "category": "road"})
        since = re.search(r'data-since="([^"]+)"', page.text).group(1)
        quiet = await c.get("/panel/live.json", params={"f": "1", "category": "road", "since": since})
        assert quiet.json()["rows"] == []
        with transaction(console.db) as db:
            fresh = domain.file(db, Actor.system(), prefix="BCA", category="road", description="Yeni çukur",
                                     catalog=console.catalog)
            domain.file(db, Actor.system(), prefix="BCA", category="waste", description="başka",
                             catalog=console.catalog)
            rp.set_status(db, made["pothole"], "seen", f"staff:{admin}")
        live = (await c.get("/panel/live.json", params={"f": "1", "category": "road", "since": since})).json()
        # oldest change first: the new report, then the status change; not the other category
        assert [r["code"] for r in live["rows"]] == [fresh.code, made["pothole"]]
        assert live["rows"][1]["html"].startswith(f'<tr data-code="{made["pothole"]}"')
        assert '<span class="status st-seen">Görüldü</span>' in live["rows"][1]["html"]
        again = (await c.get("/panel/live.json", params={"f": "1", "category": "road", "since": live["cursor"]})).json()
        assert again["rows"] == []


async def test_the_dashboard_counts(console):
    made = seed(console)
    admin = add_staff(console, name="Ayşe Admin", console="ayse", role="admin")
    clerk = add_staff(console, name="Mehmet", console="mehmet", departments=["veteriner_isleri"])
    with transaction(console.db) as db:
        dog = rp.get_by_code(db, made["dog"])
        rp.set_status(db, dog.code, "seen", f"staff:{clerk}", now=dog.created_at + timedelta(hours=2))
        bins = rp.get_by_code(db, made["bins"])
        rp.set_status(db, bins.code, "seen", f"staff:{admin}", now=bins.created_at + timedelta(hours=5))
    async with signed_in(console, admin) as c:
        home = await c.get("/panel/")
        assert home.status_code == 200
        text = re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", home.text))
        assert "Pano" in text
        assert "Yeni 3" in text and "Görüldü 2" in text and "Çözüldü 1" in text
        assert "1 süresi geçmiş açık bildirim" in text and "Fen İşleri Müdürlüğü 1" in text
        # median of 2 h (dog) and 5 h (bins; the lamp's "staff:0" answer counts too: 24 h)
        assert "5 sa ortanca ilk yanıt süresi" in text
        assert 'href="/panel/" aria-current="page">Pano</a>' in home.text
    async with signed_in(console, clerk) as c:
        text = re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", (await c.get("/panel/")).text))
        assert "Birimlerinizin bildirimleri gösteriliyor." in text and "Görüldü 1" in text
        assert "2 sa ortanca ilk yanıt süresi" in text


async def test_the_tile_server_is_a_setting(make_app, db_url):
    from bot.settings import SettingsError, load_settings
    from handlers.panel.web import CSP

    app = make_app(database_url=db_url, public_base_url="http://testserver",
                   panel_tile_url="https://{s}.tiles.example.org/{z}/{x}/{y}.png", panel_tile_attribution="© Örnek")
    admin = add_staff(app, name="Ayşe Admin", console="ayse", role="admin")
    async with signed_in(app, admin) as c:
        page = await c.get("/panel/map")
        assert 'data-tiles="https://{s}.tiles.example.org/{z}/{x}/{y}.png"' in page.text
        assert 'data-attribution="© Örnek"' in page.text
        assert "img-src 'self' data: https://*.tiles.example.org;" in page.headers["content-security-policy"]
    none = make_app(database_url=db_url, public_base_url="http://testserver", panel_tile_url="")
    async with signed_in(none, admin) as c:
        page = await c.get("/panel/map")
        assert 'data-tiles=""' in page.text and page.headers["content-security-policy"] == CSP
    with pytest.raises(SettingsError) as refused:
        load_settings(panel_tile_url="https://tiles.example.org/tile.png", _env_file=None)
    assert str(refused.value) == ("invalid setting PANEL_TILE_URL: expected an http(s) URL with {z}, {x} and {y}, "
                                  "or nothing (no tiles)")
