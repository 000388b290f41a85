"""The admins' console pages (issue 15) through the real FastAPI app and database: API keys
(listed, created with the key shown once, revoked after a confirmation; a key made in the console
works against Open311 and a revoked one is refused; the CLI and the console write the same audit
rows), the audit log (filters, paging, CSV of exactly the filtered set, audited as audit.export),
the staff page's language and sign-in link; non-admins get 403 (audited) and every POST needs its
CSRF token."""
from __future__ import annotations

import csv
import io
import re
from datetime import datetime, timedelta, timezone

import httpx
import pytest
from sqlmodel import select

from conversations.audit_log import PAGE_SIZE
from storage import apikeys
from storage.db import transaction
from storage.models import AuditLog, Staff
from storage.reports import Report
from tests.test_panel import BASE, LINK, add_staff, audits, client, console, form_csrf, katilim, sign_in, signed_in  # noqa: F401

ADMIN_GETS = ("/panel/apikeys", "/panel/apikeys/1/revoke", "/panel/audit", "/panel/audit.csv")
ADMIN_POSTS = ("/panel/apikeys", "/panel/apikeys/1/revoke")
POINT = {"service_code": "road", "lat": "38.39", "long": "27.17"}


def rows(app, action: str | None = None) -> list[AuditLog]:
    with transaction(app.db) as db:
        query = select(AuditLog).order_by(AuditLog.id)
        if action:
            query = query.where(AuditLog.action == action)
        return list(db.exec(query))


def keys(app) -> list[tuple[str, str, bool]]:
    with transaction(app.db) as db:
        return [(k.name, k.scope, k.active) for k in apikeys.list_keys(db)]


def shown_key(html: str) -> str:
    return re.search(r'id="new-key" class="secret wide-input" readonly value="(k311_[^"]+)"', html).group(1)


async def create_key(c: httpx.AsyncClient, name: str, scope: str = "public") -> httpx.Response:
    page = await c.get("/panel/apikeys")
    return await c.post("/panel/apikeys", data={"csrf": form_csrf(page.text), "name": name, "scope": scope})


# ---------------------------------------------------------------- who may
@pytest.mark.parametrize("role", ["staff", "viewer"])
async def test_non_admins_get_403_on_every_admin_page_and_it_is_audited(console, role):
    admin = add_staff(console, name="Ayşe", console="ayse", role="admin")
    member = add_staff(console, name="Veli", console="veli", role=role, departments=["zabita"])
    with transaction(console.db) as db:
        apikeys.create_key(db, "crm")
    async with signed_in(console, member) as c:
        csrf = form_csrf((await c.get("/panel/account")).text)
        assert "/panel/apikeys" not in (await c.get("/panel/account")).text  # no link in the nav either
        assert "/panel/audit" not in (await c.get("/panel/account")).text
        for path in ADMIN_GETS:
            answer = await c.get(path)
            assert answer.status_code == 403, path
            assert "k311_" not in answer.text and "apikey." not in answer.text
        for path in ADMIN_POSTS:
            answer = await c.post(path, data={"csrf": csrf, "name": "mallory", "scope": "full"})
            assert answer.status_code == 403, path
    assert keys(console) == [("crm", "public", True)]
    refused = [(a.actor, a.target, a.details) for a in rows(console, "panel.refused")]
    assert refused == ([(f"staff:{member}", p, {"reason": "role", "method": "GET"}) for p in ADMIN_GETS]
                       + [(f"staff:{member}", p, {"reason": "role", "method": "POST"}) for p in ADMIN_POSTS])
    async with signed_in(console, admin) as c:
        page = (await c.get("/panel/account")).text
        assert 'href="/panel/apikeys"' in page and 'href="/panel/audit"' in page and 'href="/panel/staff"' in page


async def test_every_admin_post_needs_its_csrf_token(console):
    admin = add_staff(console, name="Ayşe", console="ayse", role="admin")
    with transaction(console.db) as db:
        key_id = apikeys.create_key(db, "crm")[0].id
    async with signed_in(console, admin) as c:
        for path in ("/panel/apikeys", f"/panel/apikeys/{key_id}/revoke", f"/panel/staff/{admin}/link"):
            for data in ({"name": "x"}, {"name": "x", "csrf": "0" * 64}):
                answer = await c.post(path, data=data)
                assert answer.status_code == 403, (path, data)
    assert keys(console) == [("crm", "public", True)]
    assert rows(console, "panel.link_issued") == []
    assert [a.details["reason"] for a in rows(console, "panel.refused")] == ["csrf"] * 6


# ---------------------------------------------------------------- API keys
async def test_a_key_made_in_the_console_is_shown_once_works_and_once_revoked_is_refused(console):
    admin = add_staff(console, name="Ayşe", console="ayse", role="admin")
    async with signed_in(console, admin) as c:
        created = await create_key(c, "crm", "full")
        assert created.status_code == 201
        assert created.headers["cache-control"] == "no-store"
        plain = shown_key(created.text)
        assert "Anahtarı şimdi kopyalayın ve istemcide saklayın: yalnızca bir kez gösterilir." in created.text
        listing = await c.get("/panel/apikeys")
        assert plain not in listing.text and plain[:12] in listing.text  # the prefix only, from now on
        assert ">crm<" in listing.text and ">Tam<" in listing.text and ">hiç<" in listing.text
        with transaction(console.db) as db:
            stored = apikeys.find_key(db, "crm")
            assert stored.key_hash == apikeys.hash_key(plain) and plain not in (stored.prefix, stored.key_hash)
        # it works against Open311
        filed = await c.post("/open311/v2/requests.json", data={**POINT, "api_key": plain})
        assert filed.status_code == 201, filed.text
        used = await c.get("/panel/apikeys")
        assert ">hiç<" not in used.text
        # a name in use is refused politely; a bad name too
        again = await create_key(c, "crm")
        assert again.status_code == 400
        assert "“crm” adında etkin bir anahtar var: önce onu iptal edin." in again.text
        bad = await create_key(c, "two words")
        assert bad.status_code == 400
        assert "Ad 1-64 karakter olmalı, boşluk içermemeli ve yalnızca rakamlardan oluşmamalı." in bad.text
        # revoke: a confirmation page, then the POST
        confirm = await c.get(f"/panel/apikeys/{stored.id}/revoke")
        assert confirm.status_code == 200 and "“crm” anahtarını iptal et" in confirm.text
        assert keys(console) == [("crm", "full", True)]
        revoked = await c.post(f"/panel/apikeys/{stored.id}/revoke", data={"csrf": form_csrf(confirm.text)})
        assert revoked.status_code == 303 and revoked.headers["location"] == "/panel/apikeys?notice=key_revoked"
        assert (await c.get(f"/panel/apikeys/{stored.id}/revoke")).status_code == 404
        refused = await c.post("/open311/v2/requests.json", data={**POINT, "api_key": plain})
        assert refused.status_code == 403
    assert keys(console) == [("crm", "full", False)]
    with transaction(console.db) as db:
        assert len(db.exec(select(Report)).all()) == 1
    assert [(a.actor, a.action, a.target, a.details) for a in rows(console) if a.action.startswith("apikey.a")
            or a.action == "apikey.revoked"] == [
        (f"staff:{admin}", "apikey.added", f"apikey:{stored.id}",
         {"name": "crm", "prefix": plain[:12], "scope": "full"}),
        (f"staff:{admin}", "apikey.revoked", f"apikey:{stored.id}", {"name": "crm", "prefix": plain[:12]})]


async def test_the_cli_and_the_console_write_the_same_audit_rows(console, db_url, tmp_path):
    admin = add_staff(console, name="Ayşe", console="ayse", role="admin")
    added = katilim(tmp_path, "apikey", "add", "crm", "--scope", "full", db_url=db_url)
    assert added.returncode == 0, added.stderr
    cli_plain = added.stdout.splitlines()[1]
    assert katilim(tmp_path, "apikey", "revoke", "crm", db_url=db_url).returncode == 0
    taken = katilim(tmp_path, "apikey", "add", "bad name", db_url=db_url)
    assert taken.returncode == 1
    assert taken.stderr == "katilim: The name must be 1-64 characters without spaces, and not only digits.\n"
    async with signed_in(console, admin) as c:
        plain = shown_key((await create_key(c, "crm", "full")).text)
        with transaction(console.db) as db:
            kid = apikeys.find_key(db, "crm").id
        page = await c.get(f"/panel/apikeys/{kid}/revoke")
        await c.post(f"/panel/apikeys/{kid}/revoke", data={"csrf": form_csrf(page.text)})
    made = [a for a in rows(console) if a.action in ("apikey.added", "apikey.revoked")]
    assert [(a.actor.split(":")[0], a.action, a.target, a.details) for a in made] == [
        ("cli", "apikey.added", "apikey:1", {"name": "crm", "prefix": cli_plain[:12], "scope": "full"}),
        ("cli", "apikey.revoked", "apikey:1", {"name": "crm", "prefix": cli_plain[:12]}),
        ("staff", "apikey.added", "apikey:2", {"name": "crm", "prefix": plain[:12], "scope": "full"}),
        ("staff", "apikey.revoked", "apikey:2", {"name": "crm", "prefix": plain[:12]})]
    # the CLI sees the console's key and the other way round
    listed = katilim(tmp_path, "apikey", "list", db_url=db_url)
    assert [line.split()[:3] for line in listed.stdout.splitlines()[1:]] == [["1", "crm", "full"], ["2", "crm", "full"]]


# ---------------------------------------------------------------- the audit log
def seed_log(app, admin: int) -> None:
    base = datetime(2026, 11, 20, 9, 0, tzinfo=timezone.utc)
    with transaction(app.db) as db:
        for i in range(60):
            db.add(AuditLog(actor=f"staff:{admin}" if i % 2 else "resident:7", action="report.status" if i % 3 else
                            "report.note", target=f"report:{i % 5}", details={"n": i}, at=base + timedelta(hours=i)))


async def test_the_audit_log_filters_pages_and_exports_exactly_the_filtered_set(console):
    admin = add_staff(console, name="Ayşe Yılmaz", console="ayse", role="admin", telegram_id="5550001")
    seed_log(console, admin)
    async with signed_in(console, admin) as c:
        first = await c.get("/panel/audit")
        assert first.status_code == 200
        total = len(rows(console))
        assert f"{total} kayıt · sayfa 1/{-(-total // PAGE_SIZE)}" in first.text
        assert first.text.count("<tr>") == 1 + PAGE_SIZE
        assert f"<code>staff:{admin}</code> Ayşe Yılmaz" in first.text and "<code>resident:7</code>" in first.text
        assert "5550001" not in first.text  # never a chat id
        second = await c.get("/panel/audit", params={"page": "2"})
        assert second.text.count("<tr>") == 1 + total - PAGE_SIZE
        # by name (Turkish-aware), action, target prefix and local dates (Europe/Istanbul)
        params = {"actor": "ayse", "action": "report.status", "target": "report:1", "from": "2026-11-20",
                  "to": "2026-11-21"}
        filtered = await c.get("/panel/audit", params=params)
        # 09:00 UTC + i hours is before 22 November 00:00 in Istanbul (21:00 UTC) for i < 36
        expected = [i for i in range(36) if i % 2 and i % 3 and i % 5 == 1]
        assert expected == [1, 11, 31]
        assert f"{len(expected)} kayıt · sayfa 1/1" in filtered.text
        shown = [int(n) for n in re.findall(r'class="details">n=(\d+)<', filtered.text)]
        assert shown == sorted(expected, reverse=True)
        # the CSV: exactly the filtered set, newest first, and the export itself audited
        exported = await c.get("/panel/audit.csv", params=params)
        assert exported.status_code == 200 and exported.headers["content-type"] == "text/csv; charset=utf-8"
        table = list(csv.reader(io.StringIO(exported.text.lstrip("\ufeff"))))
        assert table[0] == ["id", "at_utc", "actor", "actor_name", "action", "target", "details"]
        assert [row[6] for row in table[1:]] == [f"n={i}" for i in sorted(expected, reverse=True)]
        assert {tuple(row[2:6]) for row in table[1:]} == {(f"staff:{admin}", "Ayşe Yılmaz", "report.status",
                                                            "report:1")}
        assert 'href="/panel/audit.csv?actor=ayse&amp;action=report.status' in filtered.text
        none = await c.get("/panel/audit", params={"actor": "nobody"})
        assert "Bu süzgeçlere uyan kayıt yok." in none.text
    export = rows(console, "audit.export")
    assert [(a.actor, a.target, a.details) for a in export] == [
        (f"staff:{admin}", "audit", {"count": len(expected), "filter": params})]


# ---------------------------------------------------------------- the staff page
async def test_an_admin_sets_a_member_s_language_and_issues_them_a_sign_in_link(console):
    admin = add_staff(console, name="Ayşe", console="ayse", role="admin")
    async with signed_in(console, admin) as c:
        page = await c.get("/panel/staff/new")
        saved = await c.post("/panel/staff/new", data={"csrf": form_csrf(page.text), "name": "John", "role": "viewer",
                                                       "console": "john", "language": "en",
                                                       "departments": ["zabita"]})
        assert saved.status_code == 303
        with transaction(console.db) as db:
            john = db.exec(select(Staff).where(Staff.console == "john")).one()
            assert (john.role, john.panel_locale) == ("viewer", "en")
        edit = await c.get(f"/panel/staff/{john.id}")
        assert '<option value="en" lang="en" selected>English</option>' in edit.text
        issued = await c.post(f"/panel/staff/{john.id}/link", data={"csrf": form_csrf(edit.text)})
        assert issued.status_code == 200
        path = LINK.search(issued.text).group(1)
    async with client(console) as other:
        assert (await sign_in(other, path)).status_code == 303
        assert "Sign out" in (await other.get("/panel/account")).text  # in their language
    assert [(a.actor, a.target, a.details) for a in rows(console, "panel.link_issued")] == [
        (f"staff:{admin}", f"staff:{john.id}", {"via": "panel"})]
