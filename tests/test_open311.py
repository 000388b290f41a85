"""Open311 GeoReport v2 through the real FastAPI app (httpx ASGI transport) on a real database
(SQLite and PostgreSQL), the `katilim apikey` CLI as a subprocess, and schemathesis against the
app's own OpenAPI document."""
from __future__ import annotations

import asyncio
import re
import subprocess
import sys
import zlib
from datetime import timedelta
from xml.etree import ElementTree as ET

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.generation import GenerationMode
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_schema_conformance,
    status_code_conformance,
)
from sqlmodel import select

from bot.features import FEATURES
from bot.http import create_http_app
from storage import apikeys
from storage.db import transaction, utcnow
from storage.models import AuditLog
from storage.reports import Report, ReportMedia, create_report, get_by_code, merge, set_status
from tests.conftest import test_env as katilim_env

BASE = "/open311/v2"
SERVICE_FIELDS = {"service_code", "service_name", "description", "metadata", "type", "keywords", "group"}
REQUEST_FIELDS = {"service_request_id", "status", "status_notes", "service_name", "service_code", "description",
                  "agency_responsible", "service_notice", "requested_datetime", "updated_datetime",
                  "expected_datetime", "address", "address_id", "zipcode", "lat", "long", "media_url"}


@pytest.fixture
def api(make_app, db_url, tmp_path):
    app = make_app(database_url=db_url, public_base_url="https://katilim.example.org/")
    return app, create_http_app(app)


def client(http_app) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=http_app), base_url="http://test")


def new_key(app, name: str = "crm", scope: str = "public") -> str:
    with transaction(app.db) as db:
        return apikeys.create_key(db, name, scope=scope)[1]


def is_error(response: httpx.Response, status: int) -> str:
    assert response.status_code == status, response.text
    body = response.json()
    assert isinstance(body, list) and len(body) == 1 and body[0]["code"] == status
    assert isinstance(body[0]["description"], str) and body[0]["description"]
    return body[0]["description"]


def add_report(app, category="road", *, days_ago: float = 0, status: str | None = None, note: str = "",
               media=()) -> str:
    with transaction(app.db) as db:
        report = create_report(db, prefix="BCA", resident_id=None, category=category, description="x",
                               now=utcnow() - timedelta(days=days_ago), media=media)
        if status:
            set_status(db, report.code, status, "staff:1", note=note)
        return report.code


def katilim(db_url: str, tmp_path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bot.cli", *args], capture_output=True, text=True, timeout=60,
                          cwd=tmp_path, env=katilim_env(DATABASE_URL=db_url, MEDIA_DIR=str(tmp_path / "media")))


# ---------------------------------------------------------------- services
async def test_services_follow_the_spec_and_the_language(api):
    app, http_app = api
    async with client(http_app) as c:
        services = (await c.get(f"{BASE}/services.json")).json()
        english = (await c.get(f"{BASE}/services.json", headers={"Accept-Language": "en-GB,en;q=0.9"})).json()
        arabic = (await c.get(f"{BASE}/services.json", params={"locale": "ar"})).json()
        xml = await c.get(f"{BASE}/services.xml", params={"locale": "en"})
        definition = await c.get(f"{BASE}/services/road.json")
        unknown = await c.get(f"{BASE}/services/nope.json")
    assert [s["service_code"] for s in services] == [c.key for c in app.catalog.categories]
    for service in services:
        assert set(service) == SERVICE_FIELDS
        assert service["metadata"] is False and service["type"] == "realtime"
        assert service["description"] and service["group"]
    road = services[0]
    assert road["service_name"] == "Yol ve kaldırım"  # Turkish by default
    assert "Roads and pavements" in road["keywords"] and "Yol ve kaldırım" in road["keywords"]
    assert english[0]["service_name"] == "Roads and pavements" and "Buca Municipality" in english[0]["description"]
    assert arabic[0]["service_name"] == "الطرق والأرصفة"
    assert xml.status_code == 200 and xml.headers["content-type"].startswith("application/xml")
    root = ET.fromstring(xml.content)
    assert root.tag == "services" and root[0].findtext("service_name") == "Roads and pavements"
    assert root[0].findtext("metadata") == "false"
    assert definition.json() == {"service_code": "road", "attributes": []}
    is_error(unknown, 404)


# ---------------------------------------------------------------- POST and GET
async def test_post_creates_a_report_without_the_residents_identity(api, db_url, tmp_path):
    app, http_app = api
    key = new_key(app, scope="full")
    async with client(http_app) as c:
        created = await c.post(f"{BASE}/requests.json", data={
            "api_key": key, "service_code": "lighting", "lat": "38.3889", "long": "27.1750",
            "address_string": "Uzundere Cd. 12", "description": "Sokak lambası yanmıyor",
            "first_name": "Ayşe", "last_name": "Yılmaz", "email": "ayse@example.org", "phone": "+905551112233",
            "media_url": "https://crm.example.org/photos/1.jpg"})
        assert created.status_code == 201, created.text
        [body] = created.json()
        code = body["service_request_id"]
        assert code.startswith(f"BCA-{utcnow().year}-") and code in body["service_notice"]
        listed = (await c.get(f"{BASE}/requests.json")).json()
        # every detail for the full key (as the api_key parameter or the X-Api-Key header)
        one = await c.get(f"{BASE}/requests/{code}.json", params={"locale": "en", "api_key": key})
        one_lower = await c.get(f"{BASE}/requests/{code.lower()}.json", headers={"X-Api-Key": key})
        xml = await c.get(f"{BASE}/requests/{code}.xml", params={"api_key": key})
        public = (await c.get(f"{BASE}/requests/{code}.json")).json()
    assert [r["service_request_id"] for r in listed] == [code]
    # the public view: no description, no street, the pin to 3 decimals, no photo link
    assert listed == public
    assert public[0]["description"] is None and public[0]["address"] is None and public[0]["media_url"] is None
    assert (public[0]["lat"], public[0]["long"]) == (38.389, 27.175)
    [item] = one.json()
    assert set(item) == REQUEST_FIELDS
    assert item["status"] == "open" and item["service_code"] == "lighting" and item["service_name"] == "Street lighting"
    assert item["description"] == "Sokak lambası yanmıyor" and item["address"] == "Uzundere Cd. 12"
    assert item["lat"] == pytest.approx(38.3889) and item["long"] == pytest.approx(27.1750)
    assert item["agency_responsible"] == "Buca Municipality"
    assert item["requested_datetime"].endswith("+03:00")  # the municipality's time zone
    assert item["media_url"] == "https://crm.example.org/photos/1.jpg"  # kept as a link, not downloaded
    assert one_lower.json() == [{**item, "service_name": "Sokak aydınlatması", "agency_responsible": "Buca Belediyesi"}]
    assert ET.fromstring(xml.content)[0].findtext("service_request_id") == code

    with transaction(app.db) as db:
        report = get_by_code(db, code)
        assert report.resident_id is None and report.channel == "open311" and report.status == "new"
        audit = db.exec(select(AuditLog).where(AuditLog.action == "report.created")).one()
        assert audit.actor == "open311:crm" and audit.target == code
    # KVKK: the contact details the client sent are stored nowhere.
    dump = _dump(app)
    for personal in ("Ayşe", "Yılmaz", "ayse@example.org", "5551112233"):
        assert personal not in dump

    # The report is in staff's view: `katilim reports list` (when that feature is installed).
    if any(feature.name == "reports" for feature in FEATURES):
        out = katilim(db_url, tmp_path, "reports", "list", "--status", "new")
        assert out.returncode == 0, out.stderr
        assert code in out.stdout


def _dump(app) -> str:
    """Every row of every table, as text."""
    from sqlmodel import SQLModel

    rows = []
    with app.db.connect() as conn:
        for table in SQLModel.metadata.sorted_tables:
            try:
                rows += [repr(tuple(r)) for r in conn.execute(table.select())]
            except Exception:  # noqa: BLE001  (a table of a feature whose migration is not applied)
                conn.rollback()
    return "\n".join(rows)


async def test_post_accepts_json_and_mahalle_address_ids(api):
    app, http_app = api
    key = new_key(app)
    async with client(http_app) as c:
        created = await c.post(f"{BASE}/requests.json", json={
            "api_key": key, "service_code": "waste", "address_id": "adatepe", "description": "Konteyner taştı"})
        assert created.status_code == 201, created.text
        code = created.json()[0]["service_request_id"]
        [item] = (await c.get(f"{BASE}/requests/{code}.json")).json()
        numbers = await c.post(f"{BASE}/requests.json", json={"api_key": key, "service_code": "road",
                                                             "lat": 38.39, "long": 27.17})
        multipart = await c.post(f"{BASE}/requests.json", data={"api_key": key, "service_code": "noise",
                                                                "address_string": "Dokuz Eylül Cd."},
                                 files={"media": ("a.jpg", b"\xff\xd8\xff", "image/jpeg")})
        wrong_type = await c.post(f"{BASE}/requests.json", json={"api_key": key, "service_code": "road",
                                                                 "lat": "38.39", "long": 27.17})
        too_large = await c.post(f"{BASE}/requests.json", data={"api_key": key, "description": "x" * 300_000})
    assert item["address_id"] == "adatepe" and item["address"] == "Adatepe" and item["lat"] is None
    assert numbers.status_code == 201 and numbers.json()[0]["service_request_id"] != code
    assert multipart.status_code == 201, multipart.text
    assert "lat" in is_error(wrong_type, 400)  # JSON types are the documented ones
    assert "larger" in is_error(too_large, 400)


async def test_api_key_required_and_revocable(api):
    app, http_app = api
    key = new_key(app)
    form = {"service_code": "road", "lat": "38.39", "long": "27.17"}
    async with client(http_app) as c:
        assert "api_key" in is_error(await c.post(f"{BASE}/requests.json", data=form), 403)
        is_error(await c.post(f"{BASE}/requests.json", data={**form, "api_key": key + "x"}), 403)
        assert (await c.post(f"{BASE}/requests.json", data={**form, "api_key": key})).status_code == 201
        with transaction(app.db) as db:
            assert apikeys.revoke(db, apikeys.find_key(db, "crm"))
        is_error(await c.post(f"{BASE}/requests.json", data={**form, "api_key": key}), 403)
        # an unauthenticated client learns nothing else (here: that the service does not exist)
        is_error(await c.post(f"{BASE}/requests.json", data={"service_code": "nope", "api_key": "k"}), 403)
    with transaction(app.db) as db:
        assert len(db.exec(select(Report)).all()) == 1
        assert apikeys.find_key(db, "crm").last_used_at is not None


async def test_invalid_posts_are_400_or_404(api):
    app, http_app = api
    key = new_key(app)
    cases = [
        ({"lat": "38.39", "long": "27.17"}, 400, "service_code"),
        ({"service_code": "road"}, 400, "location"),
        ({"service_code": "road", "lat": "38.39"}, 400, "long"),
        ({"service_code": "road", "lat": "north", "long": "27"}, 400, "lat"),
        ({"service_code": "road", "lat": "91", "long": "27"}, 400, "lat"),
        ({"service_code": "road", "address_id": "atlantis"}, 400, "address_id"),
        ({"service_code": "road", "address_string": "x", "description": "y" * 4001}, 400, "description"),
        ({"service_code": "road", "address_string": "x", "media_url": "file:///etc/passwd"}, 400, "media_url"),
        ({"service_code": "nope", "address_string": "x"}, 404, "service_code"),
    ]
    async with client(http_app) as c:
        for fields, status, word in cases:
            description = is_error(await c.post(f"{BASE}/requests.json", data={"api_key": key, **fields}), status)
            assert word in description, (fields, description)
        is_error(await c.post(f"{BASE}/requests.json", content=b"[1]", headers={"content-type": "application/json"}),
                 400)
        is_error(await c.post(f"{BASE}/requests.json", content=b"{", headers={"content-type": "application/json"}),
                 400)
        is_error(await c.post(f"{BASE}/requests.json", content=b"x", headers={"content-type": "text/plain"}), 400)
        is_error(await c.get(f"{BASE}/requests/BCA-2026-999999.json"), 404)
        is_error(await c.get(f"{BASE}/requests/nonsense.json"), 404)
        xml_error = await c.get(f"{BASE}/requests/BCA-2026-999999.xml")
    assert xml_error.status_code == 404 and ET.fromstring(xml_error.content).findtext("error/code") == "404"
    with transaction(app.db) as db:
        assert db.exec(select(Report)).all() == []


# ---------------------------------------------------------------- filters
async def test_request_filters(api):
    app, http_app = api
    new = add_report(app, "road", days_ago=1)
    seen = add_report(app, "water", days_ago=2, status="in_progress", note="Ekip yönlendirildi")
    resolved = add_report(app, "road", days_ago=3, status="resolved")
    rejected = add_report(app, "waste", days_ago=4, status="rejected")
    merged = add_report(app, "road", days_ago=5)
    old = add_report(app, "road", days_ago=120)
    with transaction(app.db) as db:
        merge(db, merged, new, "staff:1")

    async def codes(**params):
        response = await c.get(f"{BASE}/requests.json", params=params)
        assert response.status_code == 200, response.text
        return [r["service_request_id"] for r in response.json()]

    now = utcnow()
    async with client(http_app) as c:
        assert await codes() == [new, seen, resolved, rejected, merged]  # last 90 days, newest first
        assert await codes(status="open") == [new, seen]
        assert await codes(status="closed") == [resolved, rejected, merged]
        assert await codes(status="open,closed") == [new, seen, resolved, rejected, merged]
        assert await codes(service_code="road") == [new, resolved, merged]
        assert await codes(service_code="road,waste", status="closed") == [resolved, rejected, merged]
        assert await codes(start_date=(now - timedelta(days=3, hours=12)).isoformat(),
                           end_date=(now - timedelta(days=1, hours=12)).isoformat()) == [seen, resolved]
        # no offset: the municipality's time; only a start: 90 days from it; only an end: 90 days before it
        assert await codes(start_date=(now - timedelta(days=121)).strftime("%Y-%m-%dT%H:%M:%S"),
                           status="open") == [old]
        assert await codes(end_date=(now - timedelta(days=100)).isoformat()) == [old]
        assert await codes(service_request_id=f"{old},{new.lower()},BCA-2026-999999", status="closed") == [new, old]
        assert await codes(page_size=2) == [new, seen]
        assert await codes(page_size=2, page=3) == [merged]
        by_code = {r["service_request_id"]: r for r in (await c.get(f"{BASE}/requests.json")).json()}
        is_error(await c.get(f"{BASE}/requests.json", params={"status": "pending"}), 400)
        is_error(await c.get(f"{BASE}/requests.json", params={"start_date": "yesterday"}), 400)
        is_error(await c.get(f"{BASE}/requests.json", params={"start_date": (now - timedelta(days=200)).isoformat(),
                                                              "end_date": now.isoformat()}), 400)
        is_error(await c.get(f"{BASE}/requests.json", params={"start_date": now.isoformat(),
                                                              "end_date": (now - timedelta(days=1)).isoformat()}), 400)
        is_error(await c.get(f"{BASE}/requests.json", params={"page_size": 5000}), 400)
        is_error(await c.get(f"{BASE}/requests.json", params={"service_code": "nope"}), 404)
        xml = await c.get(f"{BASE}/requests.xml", params={"status": "open"})
    assert by_code[seen]["status_notes"] == "Ekip yönlendirildi" and by_code[seen]["status"] == "open"
    assert by_code[merged]["status"] == "closed" and new in by_code[merged]["status_notes"]
    assert by_code[new]["status_notes"] is None
    assert [r.findtext("service_request_id") for r in ET.fromstring(xml.content)] == [new, seen]


async def test_served_by_the_http_server(make_app, sqlite_url):
    """`katilim run` serves the API: bot.http.serve_http (uvicorn) on a free port."""
    from bot.http import serve_http

    app = make_app(database_url=sqlite_url)
    server = await serve_http(app)
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{server.port}") as c:
            services = await c.get(f"{BASE}/services.json")
            missing = await c.get(f"{BASE}/requests/BCA-2026-000001.json")
            document = (await c.get("/openapi.json")).json()
    finally:
        server.should_exit = True
        await server.wait_closed()
    assert services.status_code == 200 and services.json()[0]["service_code"] == "road"
    is_error(missing, 404)
    assert f"{BASE}/requests.json" in document["paths"]


# ---------------------------------------------------------------- media
def media_tokens(app, code: str) -> dict[str, str]:
    """kind → the random token of a report's attachment."""
    with transaction(app.db) as db:
        report = get_by_code(db, code)
        return {m.kind: m.token for m in db.exec(select(ReportMedia).where(ReportMedia.report_id == report.id))}


async def test_photos_are_served_voice_notes_and_other_files_are_not(api, tmp_path):
    """Photos go only to a key of scope full, by a random token, typed from their bytes and with
    the headers of every stored file; voice notes, files outside MEDIA_DIR and files that are not
    images (an SVG stored as a "photo") are never served."""
    app, http_app = api
    full = new_key(app, "crm-full", scope="full")
    public = new_key(app, "open-data")
    media_dir = app.settings.media_dir
    media_dir.mkdir(parents=True, exist_ok=True)
    (media_dir / "ph.jpg").write_bytes(b"\xff\xd8\xff photo")
    (media_dir / "vo.ogg").write_bytes(b"OggS voice")
    (media_dir / "sv.jpg").write_bytes(b'<svg xmlns="http://www.w3.org/2000/svg"><script>alert(1)</script></svg>')
    outside = tmp_path / "secret.jpg"
    outside.write_bytes(b"\xff\xd8\xff not yours")
    code = add_report(app, media=[{"path": str(media_dir / "ph.jpg"), "content_type": "image/png", "kind": "photo"},
                                  {"path": str(media_dir / "vo.ogg"), "content_type": "audio/ogg", "kind": "voice"}])
    other = add_report(app, media=[{"path": str(outside), "content_type": "image/jpeg", "kind": "photo"}])
    svg = add_report(app, media=[{"path": str(media_dir / "sv.jpg"), "content_type": "image/jpeg", "kind": "photo"}])
    tokens = media_tokens(app, code)
    async with client(http_app) as c:
        [item] = (await c.get(f"{BASE}/requests/{code}.json", params={"api_key": full})).json()
        url = item["media_url"]
        assert url == f"https://katilim.example.org{BASE}/media/{code}/{tokens['photo']}"
        path = url.removeprefix("https://katilim.example.org")
        photo = await c.get(path, headers={"X-Api-Key": full})
        as_param = await c.get(path, params={"api_key": full})
        without_key = await c.get(path)
        with_public_key = await c.get(path, params={"api_key": public})
        voice = await c.get(f"{BASE}/media/{code}/{tokens['voice']}", params={"api_key": full})
        wrong_report = await c.get(f"{BASE}/media/{other}/{tokens['photo']}", params={"api_key": full})
        [other_item] = (await c.get(f"{BASE}/requests/{other}.json", params={"api_key": full})).json()
        escaped = await c.get(other_item["media_url"].removeprefix("https://katilim.example.org"),
                              params={"api_key": full})
        [svg_item] = (await c.get(f"{BASE}/requests/{svg}.json", params={"api_key": full})).json()
        script = await c.get(svg_item["media_url"].removeprefix("https://katilim.example.org"),
                             params={"api_key": full})
    assert photo.status_code == 200 and photo.content == b"\xff\xd8\xff photo" and as_param.content == photo.content
    assert photo.headers["content-type"] == "image/jpeg"  # from the bytes, not the stored image/png
    assert photo.headers["x-content-type-options"] == "nosniff"
    assert photo.headers["content-security-policy"] == "default-src 'none'; sandbox"
    assert photo.headers["cache-control"] == "private, no-store"
    assert "full" in is_error(without_key, 403) and "full" in is_error(with_public_key, 403)
    is_error(voice, 404)
    is_error(wrong_report, 404)
    is_error(escaped, 404)  # a path outside MEDIA_DIR is never served
    is_error(script, 404)  # not an image: never served as one
    with transaction(app.db) as db:
        reads = db.exec(select(AuditLog).where(AuditLog.action == "open311.media_read")).all()
    assert [(a.actor, a.target) for a in reads] == [("open311:crm-full", code)] * 2  # the two photos served


async def test_relative_media_url_without_public_base_url(make_app, sqlite_url):
    app = make_app(database_url=sqlite_url)
    key = new_key(app, scope="full")
    app.settings.media_dir.mkdir(parents=True, exist_ok=True)
    (app.settings.media_dir / "p.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    code = add_report(app, media=[{"path": str(app.settings.media_dir / "p.png"), "content_type": "image/png"}])
    async with client(create_http_app(app)) as c:
        [item] = (await c.get(f"{BASE}/requests/{code}.json", params={"api_key": key})).json()
        assert item["media_url"].startswith(f"{BASE}/media/{code}/")
        served = await c.get(item["media_url"], params={"api_key": key})
        assert served.content == b"\x89PNG\r\n\x1a\n" and served.headers["content-type"] == "image/png"


# ---------------------------------------------------------------- CLI
async def test_apikey_cli_add_list_revoke(make_app, db_url, tmp_path):
    added = katilim(db_url, tmp_path, "apikey", "add", "crm")
    assert added.returncode == 0, added.stderr
    plain = added.stdout.strip().splitlines()[-1]
    assert plain.startswith(apikeys.KEY_PREFIX)

    listed = katilim(db_url, tmp_path, "apikey", "list")
    assert listed.returncode == 0 and "crm" in listed.stdout and plain[:12] in listed.stdout
    assert plain not in listed.stdout  # the key itself is shown only once

    app = make_app(database_url=db_url)
    form = {"api_key": plain, "service_code": "parks", "address_string": "Hasanağa Bahçesi"}
    async with client(create_http_app(app)) as c:
        assert (await c.post(f"{BASE}/requests.json", data=form)).status_code == 201
        revoked = katilim(db_url, tmp_path, "apikey", "revoke", "crm")
        assert revoked.returncode == 0 and "revoked" in revoked.stdout, revoked.stderr
        is_error(await c.post(f"{BASE}/requests.json", data=form), 403)
    with transaction(app.db) as db:
        assert apikeys.create_key(db, "crm")[1] != plain  # the name is free again: a rotation
        with pytest.raises(apikeys.ApiKeyError, match="revoke it first"):
            apikeys.create_key(db, "crm")
        actions = [a.action for a in db.exec(select(AuditLog).where(AuditLog.action.startswith("apikey."))
                                             .order_by(AuditLog.id))]
        keys = apikeys.list_keys(db)
        assert all(k.key_hash != plain and len(k.key_hash) == 64 for k in keys)
        assert keys[0].revoked_at is not None and keys[1].revoked_at is None
        actors = {a.actor for a in db.exec(select(AuditLog).where(AuditLog.action.startswith("apikey.")))}
    assert actions == ["apikey.added", "apikey.listed", "apikey.revoked"]
    assert all(a.startswith("cli:") for a in actors)


# ---------------------------------------------------------------- schemathesis
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance,
          negative_data_rejection]


def test_openapi_conformance(make_app, db_url, tmp_path):
    """Every Open311 operation of the app's own OpenAPI document, with valid and invalid data: never a
    5xx, and every response (status, content type, body) as documented. Half of the valid POSTs carry
    a valid key, so creation is exercised too. (schemathesis.pytest.from_fixture does not run on
    pytest 9, hence the explicit loop.)"""
    app = make_app(database_url=db_url)
    media = app.settings.media_dir
    media.mkdir(parents=True, exist_ok=True)
    (media / "a.jpg").write_bytes(b"\xff\xd8\xff")
    add_report(app, "road", media=[{"path": str(media / "a.jpg"), "content_type": "image/jpeg"}])
    add_report(app, "water", status="resolved")
    key = new_key(app)
    schema = schemathesis.openapi.from_asgi("/openapi.json", create_http_app(app)).include(path_regex="^/open311/")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) == 9
    for operation in operations:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            _fuzz(operation, mode, key)


def _fuzz(operation, mode, key: str) -> None:
    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(max_examples=15, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True,
              database=None)
    def check(case):
        # Half of the valid POSTs carry a real key (never an invalid one: it would stop being invalid).
        if (mode is GenerationMode.POSITIVE and case.method == "POST" and isinstance(case.body, dict)
                and zlib.crc32(repr(case.body).encode()) % 2 == 0):
            case.body["api_key"] = key
        case.call_and_validate(checks=CHECKS)

    check()


# ---------------------------------------------------------------- scopes and the audit of full reads
async def test_full_reads_are_audited_public_reads_are_not(api):
    """One audit row per request of a full key (not per report), naming the codes read and no
    personal data; public reads and reads without a key write none; a wrong key is refused."""
    app, http_app = api
    full = new_key(app, "crm-full", scope="full")
    public = new_key(app, "open-data")
    first, second = add_report(app, "road"), add_report(app, "water")
    async with client(http_app) as c:
        for params in ({}, {"api_key": public}):
            for path in ("requests.json", f"requests/{first}.xml"):
                read = await c.get(f"{BASE}/{path}", params=params)
                assert read.status_code == 200 and "cache-control" not in read.headers
        listed = await c.get(f"{BASE}/requests.json", params={"status": "open"}, headers={"X-Api-Key": full})
        one = await c.get(f"{BASE}/requests/{first}.xml", params={"api_key": full})
        nothing = await c.get(f"{BASE}/requests.json", params={"api_key": full, "service_request_id": "BCA-2026-9"})
        wrong = await c.get(f"{BASE}/requests.json", params={"api_key": full + "x"})
        wrong_xml = await c.get(f"{BASE}/requests/{first}.xml", headers={"X-Api-Key": "k311_nope"})
    assert listed.status_code == one.status_code == nothing.status_code == 200
    # personal data: no cache may keep a full read
    assert listed.headers["cache-control"] == one.headers["cache-control"] == "private, no-store"
    assert [r["description"] for r in listed.json()] == ["x", "x"]
    assert ET.fromstring(one.content)[0].findtext("description") == "x"
    assert "api_key" in is_error(wrong, 403)
    assert wrong_xml.status_code == 403 and ET.fromstring(wrong_xml.content).findtext("error/code") == "403"
    with transaction(app.db) as db:
        rows = db.exec(select(AuditLog).where(AuditLog.action == "open311.full_read").order_by(AuditLog.id)).all()
    assert [(a.actor, a.target, a.details["count"], a.details["codes"]) for a in rows] == [
        ("open311:crm-full", f"{BASE}/requests.json", 2, [second, first]),
        ("open311:crm-full", f"{BASE}/requests/{first}.xml", 1, [first]),
        ("open311:crm-full", f"{BASE}/requests.json", 0, [])]
    assert rows[0].details["status"] == "open"


async def test_apikey_cli_scopes(make_app, db_url, tmp_path):
    """`katilim apikey add NAME --scope full`: the key reads every detail; the default is public;
    `list` shows the scope; a scope that does not exist is refused."""
    public = katilim(db_url, tmp_path, "apikey", "add", "open-data")
    full = katilim(db_url, tmp_path, "apikey", "add", "crm", "--scope", "full")
    wrong = katilim(db_url, tmp_path, "apikey", "add", "x", "--scope", "admin")
    listed = katilim(db_url, tmp_path, "apikey", "list")
    assert public.returncode == full.returncode == listed.returncode == 0, (public.stderr, full.stderr)
    assert "scope public" in public.stdout and "scope full" in full.stdout
    assert wrong.returncode != 0 and "scope" in wrong.stderr
    rows = {line.split()[1]: line.split()[2] for line in listed.stdout.splitlines()[1:]}
    assert rows == {"open-data": "public", "crm": "full"}
    app = make_app(database_url=db_url)
    code = add_report(app)
    async with client(create_http_app(app)) as c:
        as_public = (await c.get(f"{BASE}/requests/{code}.json",
                                 params={"api_key": public.stdout.split()[-1]})).json()[0]
        as_full = (await c.get(f"{BASE}/requests/{code}.json", params={"api_key": full.stdout.split()[-1]})).json()[0]
    assert as_public["description"] is None and as_full["description"] == "x"
    with transaction(app.db) as db:
        added = db.exec(select(AuditLog).where(AuditLog.action == "apikey.added").order_by(AuditLog.id)).all()
    assert [a.details["scope"] for a in added] == ["public", "full"]


def test_migration_0010_gives_old_keys_the_public_scope_and_old_media_a_token(db_url):
    """0010: keys made before it get the public scope; every attachment stored before it gets a
    random token of its own; both ways."""
    from alembic import command
    from sqlalchemy import inspect, text

    from storage.db import make_engine
    from storage.migrate import alembic_config, upgrade

    engine = make_engine(db_url)
    try:
        upgrade(engine, "0006")
        upgrade(engine, "0009")
        now = utcnow()
        with engine.begin() as conn:
            conn.execute(text("INSERT INTO api_key (name, key_hash, prefix, created_at) VALUES "
                              "('crm', :h, 'k311_abc', :now)"), {"h": "a" * 64, "now": now})
            conn.execute(text(
                "INSERT INTO report (code, category, description, address, status, reject_reason, channel, "
                "created_at, updated_at, reopened_count, supporters) VALUES ('BCA-2025-000001', 'road', 'x', '', "
                "'new', '', 'telegram', :now, :now, 0, 0)"), {"now": now})
            report_id = conn.execute(text("SELECT id FROM report")).scalar()
            for n in range(3):
                conn.execute(text("INSERT INTO report_media (report_id, path, content_type, kind, created_at) "
                                  "VALUES (:r, :p, 'image/jpeg', 'photo', :now)"),
                             {"r": report_id, "p": f"media/{n}.jpg", "now": now})
        upgrade(engine)
        with engine.connect() as conn:
            assert conn.execute(text("SELECT scope FROM api_key")).scalars().all() == ["public"]
            tokens = conn.execute(text("SELECT token FROM report_media ORDER BY id")).scalars().all()
        assert len(set(tokens)) == 3 and all(re.fullmatch(r"[A-Za-z0-9_-]{22}", t) for t in tokens)
        with transaction(engine) as db:  # a new attachment gets one from the model
            report = create_report(db, prefix="BCA", resident_id=None, category="road", description="y",
                                   media=[{"path": "media/new.jpg", "content_type": "image/jpeg"}])
            assert re.fullmatch(r"[A-Za-z0-9_-]{22}", media_tokens_of(db, report.id)[0])

        cfg = alembic_config(db_url)
        with engine.connect() as conn:
            cfg.attributes["connection"] = conn
            command.downgrade(cfg, "0009")
            conn.commit()
        assert "scope" not in {c["name"] for c in inspect(engine).get_columns("api_key")}
        assert "token" not in {c["name"] for c in inspect(engine).get_columns("report_media")}
        assert "request_quota" not in inspect(engine).get_table_names()
        with engine.connect() as conn:
            assert conn.execute(text("SELECT count(*) FROM report_media")).scalar() == 4
        upgrade(engine)
        assert "token" in {c["name"] for c in inspect(engine).get_columns("report_media")}
    finally:
        engine.dispose()


def media_tokens_of(db, report_id: int) -> list[str]:
    return [m.token for m in db.exec(select(ReportMedia).where(ReportMedia.report_id == report_id))]


# ---------------------------------------------------------------- POST budgets
def _count_reports(app) -> int:
    with transaction(app.db) as db:
        return len(db.exec(select(Report)).all())


async def test_posts_beyond_the_keys_budget_get_429_and_create_nothing(make_app, db_url, figure):
    """The review's 300 reports in 1.9 s with one key, again, with the default budgets (30 per
    minute per key, bursts of 10): the burst is created, every other POST gets 429 in the Open311
    format with Retry-After, and nothing of it is stored. Another key is not held back."""
    import time

    app = make_app(database_url=db_url)
    key, other = new_key(app), new_key(app, "mobile-app")
    form = {"api_key": key, "service_code": "road", "lat": "38.39", "long": "27.17"}
    statuses, retry_after = [], set()
    async with client(create_http_app(app)) as c:
        started = time.perf_counter()
        for _ in range(300):
            response = await c.post(f"{BASE}/requests.json", data=form)
            statuses.append(response.status_code)
            if response.status_code == 429:
                assert "this api_key" in is_error(response, 429)
                retry_after.add(int(response.headers["Retry-After"]))
        elapsed = time.perf_counter() - started
        assert (await c.post(f"{BASE}/requests.json", data={**form, "api_key": other})).status_code == 201
    created, refused = statuses.count(201), statuses.count(429)
    assert created + refused == 300 and statuses[:10] == [201] * 10
    assert created <= 10 + elapsed / 2 + 1  # the burst, and one more every 2 s at 30 per minute
    assert retry_after and min(retry_after) >= 1 and max(retry_after) <= 2
    assert _count_reports(app) == created + 1
    figure(f"Open311 POST, {app.db.dialect.name}, one key, defaults (30/min, burst 10): 300 posted in "
           f"{elapsed:.1f} s, {created} created, {refused} refused with 429 (Retry-After {sorted(retry_after)} s)")


async def test_all_keys_together_are_capped_and_retry_after_is_right(make_app, sqlite_url):
    app = make_app(database_url=sqlite_url, open311_posts_per_minute=60, open311_posts_burst=2,
                   open311_posts_per_minute_total=600, open311_posts_burst_total=5)
    keys = [new_key(app, f"client{n}") for n in range(4)]
    async with client(create_http_app(app)) as c:
        async def post(key):
            return await c.post(f"{BASE}/requests.json", json={"api_key": key, "service_code": "road",
                                                               "address_id": "adatepe"})

        answers = [await post(keys[n % 4]) for n in range(8)]
        assert [a.status_code for a in answers] == [201] * 5 + [429] * 3
        assert all("all clients" in is_error(a, 429) for a in answers[5:])
        # one key alone: its burst of 2, then 429 until Retry-After has passed
        await asyncio.sleep(1.0)
        solo = new_key(app, "solo")
        assert [(await post(solo)).status_code for _ in range(2)] == [201, 201]
        refused = await post(solo)
        assert "this api_key" in is_error(refused, 429)
        await asyncio.sleep(int(refused.headers["Retry-After"]))
        assert (await post(solo)).status_code == 201
        # an invalid POST counts too (a client cannot probe without spending its budget)
        invalid = [await c.post(f"{BASE}/requests.json", data={"api_key": keys[3], "service_code": "nope"})
                   for _ in range(3)]
    assert [a.status_code for a in invalid][:1] == [404] and invalid[-1].status_code == 429
    assert _count_reports(app) == 8


async def test_the_budget_holds_across_workers(make_app, db_url):
    """Two workers (two apps, two connection pools, one database) posting at once with the same
    key: together they get the one burst, because the bucket is a row in the database."""
    settings = dict(database_url=db_url, open311_posts_per_minute=1, open311_posts_burst=10)
    first, second = make_app(**settings), make_app(**settings)
    key = new_key(first)
    form = {"api_key": key, "service_code": "road", "lat": "38.39", "long": "27.17"}
    async with client(create_http_app(first)) as a, client(create_http_app(second)) as b:
        answers = await asyncio.gather(*[(a if n % 2 else b).post(f"{BASE}/requests.json", data=form)
                                         for n in range(30)])
    assert sorted(r.status_code for r in answers) == [201] * 10 + [429] * 20
    assert _count_reports(first) == 10


async def test_the_budget_costs_little(make_app, db_url, figure):
    """Time per POST with the budget checked (limits high enough never to refuse) and without
    (0: off), in alternating blocks on the same database."""
    import statistics
    import time

    on = make_app(database_url=db_url, open311_posts_per_minute=100_000, open311_posts_burst=100_000,
                  open311_posts_per_minute_total=1_000_000, open311_posts_burst_total=1_000_000)
    off = make_app(database_url=db_url, open311_posts_per_minute=0, open311_posts_per_minute_total=0)
    key = new_key(on)
    form = {"api_key": key, "service_code": "road", "lat": "38.39", "long": "27.17"}
    times: dict[str, list[float]] = {"on": [], "off": []}
    async with client(create_http_app(on)) as c_on, client(create_http_app(off)) as c_off:
        for block in range(10):
            for name, c in (("on", c_on), ("off", c_off)) if block % 2 else (("off", c_off), ("on", c_on)):
                for _ in range(10):
                    started = time.perf_counter()
                    assert (await c.post(f"{BASE}/requests.json", data=form)).status_code == 201
                    times[name].append(time.perf_counter() - started)
    median = {name: statistics.median(values) * 1000 for name, values in times.items()}
    figure(f"Open311 POST, {on.db.dialect.name}: median {median['on']:.2f} ms with the budget checked, "
           f"{median['off']:.2f} ms without ({len(times['on'])} each, alternating blocks)")
    assert _count_reports(on) == 200


def test_a_clock_stepped_back_holds_posts_back_for_a_burst_at_most(make_app, db_url):
    """storage.quota with the clock given: a bucket emptied, then the clock an hour back and
    forward again. The bucket never refuses for longer than its burst's time and CLOCK_SLACK."""
    from storage import quota

    app = make_app(database_url=db_url)
    bucket = [("clock-test", 60, 3)]  # one a second, bursts of 3

    def spend(at: float):
        with transaction(app.db) as db:
            refused = quota.spend(db, bucket, now=at)
            if refused:
                db.rollback()
            return refused

    t = 1_000_000.0
    assert [spend(t) for _ in range(3)] == [None] * 3
    assert spend(t) == (0, pytest.approx(1.0))
    assert spend(t - 3600) is None  # an hour back: the bucket starts afresh, not refused for an hour
    assert [spend(t - 3600) for _ in range(2)] == [None, None]
    assert spend(t - 3600)[1] == pytest.approx(1.0)
    assert spend(t - 3600 + 1) is None  # and refills at its rate
    # the clock forward again: nothing was lost or owed
    assert [spend(t + 10) for _ in range(3)] == [None] * 3 and spend(t + 10)[1] == pytest.approx(1.0)
    assert spend(t + 30 + 3 + quota.CLOCK_SLACK / 2) is None
