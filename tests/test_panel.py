"""The staff console's sign-in and security (issue 15), through the real FastAPI app on a real
database: every /panel route refuses without a session (enumerated from the app), sign-in links
work once, expire and cannot be forged, forms need their CSRF token, roles are enforced and
audited; the /panel bot command, the CLI, the migration."""
from __future__ import annotations

import re
import subprocess
import sys
from contextlib import asynccontextmanager
from datetime import timedelta
from pathlib import Path

import httpx
import pyotp
import pytest
from alembic import command
from fastapi import routing
from sqlalchemy import text
from sqlmodel import select

from bot.http import create_http_app
from conversations.i18n import t_in
from handlers.panel.web import PUBLIC_ROUTES
from storage import panel
from storage.db import make_engine, transaction, utcnow
from storage.migrate import alembic_config, upgrade
from storage.models import AuditLog, OutboxMessage, Staff
from tests.conftest import test_env as subprocess_env
from tests.support.chat import Chat
from tests.test_whatsapp import twilio, wa  # noqa: F401  (fixtures: the fake Twilio API, the running app)

ROOT = Path(__file__).resolve().parent.parent
BASE = "http://testserver"
LINK = re.compile(r"http://testserver(/panel/login/[A-Za-z0-9_-]+)")


# ---------------------------------------------------------------- helpers
@pytest.fixture
def console(make_app, db_url):
    app = make_app(database_url=db_url, public_base_url=BASE)
    return app


def add_staff(app, **fields) -> int:
    departments = fields.pop("departments", [])
    with transaction(app.db) as db:
        staff = Staff(**{"role": "staff", **fields})
        db.add(staff)
        db.flush()
        panel.set_departments(db, staff.id, departments)
        return staff.id


def link_for(app, staff_id: int, **kw) -> str:
    with transaction(app.db) as db:
        token = panel.issue_login_token(db, staff_id, "test", **kw)
    return f"/panel/login/{token}"


def client(app) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=create_http_app(app)), base_url=BASE)


def form_csrf(html: str) -> str:
    return re.search(r'name="csrf" value="([^"]+)"', html).group(1)


async def sign_in(c: httpx.AsyncClient, path: str) -> httpx.Response:
    page = await c.get(path)
    assert page.status_code == 200, page.text
    token = re.search(r'name="token" value="([^"]+)"', page.text).group(1)
    return await c.post("/panel/login", data={"token": token, "csrf": form_csrf(page.text)})


@asynccontextmanager
async def signed_in(app, staff_id: int):
    async with client(app) as c:
        done = await sign_in(c, link_for(app, staff_id))
        assert done.status_code == 303, done.text
        yield c


def audits(app, action: str) -> list[AuditLog]:
    with transaction(app.db) as db:
        return list(db.exec(select(AuditLog).where(AuditLog.action == action).order_by(AuditLog.id)))


def fill(path: str) -> str:
    return re.sub(r"\{\w+(:int)?\}", "1", re.sub(r"\{token\}", "x" * 43, path))


# ---------------------------------------------------------------- no session, no access
async def test_every_panel_route_refuses_without_a_session(console):
    admin = add_staff(console, name="Ayşe", console="ayse", role="admin")
    http_app = create_http_app(console)
    walk = getattr(routing, "iter_route_contexts", lambda routes: routes)  # included routers too
    routes = [(method, route.path) for route in walk(http_app.routes) if (route.path or "").startswith("/panel")
              for method in sorted(route.methods or ()) if method != "HEAD"]
    guarded = [(m, p) for m, p in routes if (m, p) not in PUBLIC_ROUTES]
    assert len(guarded) >= 15 and {("GET", "/panel/staff"), ("POST", "/panel/staff/{sid}")} <= set(guarded)
    assert {("GET", "/panel/apikeys"), ("POST", "/panel/apikeys"), ("GET", "/panel/apikeys/{kid}/revoke"),
            ("POST", "/panel/apikeys/{kid}/revoke"), ("GET", "/panel/audit"), ("GET", "/panel/audit.csv"),
            ("POST", "/panel/staff/{sid}/link")} <= set(guarded)
    assert set(routes) - set(guarded) == set(PUBLIC_ROUTES)
    before = _staff_rows(console)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=http_app), base_url=BASE) as c:
        for method, path in guarded:
            answer = await c.request(method, fill(path), data={"csrf": "x", "role": "admin", "name": "Mallory",
                                                               "console": "mallory", "active": "0"})
            if method == "GET":
                assert answer.status_code == 303 and answer.headers["location"] == "/panel/login", (method, path)
            else:
                assert answer.status_code == 403, (method, path, answer.status_code)
            assert answer.headers["cache-control"] == "no-store", path
            assert "script-src 'self'" in answer.headers["content-security-policy"], path
        # a cookie that names no session is no better
        c.cookies.set("katilim_panel", "forged-session-value")
        assert (await c.get("/panel/account")).status_code == 303
    assert _staff_rows(console) == before and admin


def _staff_rows(app):
    with transaction(app.db) as db:
        return [(s.id, s.name, s.role, s.active) for s in db.exec(select(Staff).order_by(Staff.id))]


# ---------------------------------------------------------------- sign-in links
async def test_a_link_signs_in_once_and_the_session_is_a_revocable_row(console):
    sid = add_staff(console, name="Ayşe", console="ayse", role="admin")
    path = link_for(console, sid)
    async with client(console) as c:
        for _ in range(2):  # a link preview (GET) spends nothing
            assert (await c.get(path)).status_code == 200
        done = await sign_in(c, path)
        assert done.status_code == 303 and done.headers["location"] == "/panel/"
        cookie = done.headers["set-cookie"]
        assert "katilim_panel=" in cookie and "HttpOnly" in cookie and "SameSite=lax" in cookie
        assert "Secure" not in cookie  # http://: a Secure cookie would never come back
        home = await c.get("/panel/", follow_redirects=True)
        assert home.status_code == 200 and "Hesabım" in home.text and "Ayşe" in home.text
        again = await c.get(path)
        assert again.status_code == 400 and t_in("tr", "panel.login.refused_used") in again.text
        logout = await c.post("/panel/logout", data={"csrf": form_csrf(home.text)})
        assert logout.status_code == 303 and logout.headers["location"] == "/panel/login?notice=signed_out"
        assert (await c.get("/panel/account")).status_code == 303
    assert [a.actor for a in audits(console, "panel.signin")] == [f"staff:{sid}"]
    assert [a.actor for a in audits(console, "panel.signout")] == [f"staff:{sid}"]
    with transaction(console.db) as db:
        rows = db.exec(select(panel.PanelSession)).all()
        assert len(rows) == 1 and rows[0].revoked_at is not None and len(rows[0].token_hash) == 64
        assert db.exec(select(panel.PanelLoginToken)).one().used_at is not None


async def test_a_link_used_twice_expired_or_tampered_with_is_refused(console):
    sid = add_staff(console, name="Ayşe", console="ayse", role="admin")
    async with client(console) as c:
        used = link_for(console, sid)
        page = await c.get(used)
        token = re.search(r'name="token" value="([^"]+)"', page.text).group(1)
        csrf = form_csrf(page.text)
        assert (await c.post("/panel/login", data={"token": token, "csrf": csrf})).status_code == 303
        second = await c.post("/panel/login", data={"token": token, "csrf": csrf})
        assert second.status_code == 403 and t_in("tr", "panel.login.refused_used") in second.text
        expired = link_for(console, sid, now=utcnow() - timedelta(minutes=11))
        answer = await c.get(expired)
        assert answer.status_code == 400 and t_in("tr", "panel.login.refused_expired") in answer.text
        fresh = link_for(console, sid)
        tampered = fresh[:-1] + ("A" if fresh[-1] != "A" else "B")
        answer = await c.get(tampered)
        assert answer.status_code == 400 and t_in("tr", "panel.login.refused_unknown") in answer.text
        answer = await c.post("/panel/login", data={"token": tampered.rsplit("/", 1)[1], "csrf": csrf})
        assert answer.status_code == 403 and t_in("tr", "panel.login.refused_unknown") in answer.text
    async with client(console) as other:  # without the page's own cookie the button's form is refused
        answer = await other.post("/panel/login", data={"token": fresh.rsplit("/", 1)[1], "csrf": csrf})
        assert answer.status_code == 403 and t_in("tr", "panel.login.refused_form") in answer.text
        assert (await sign_in(other, fresh)).status_code == 303  # the link itself was not spent by that
    reasons = [a.details["reason"] for a in audits(console, "panel.signin_refused")]
    assert reasons == ["used", "unknown", "form"]
    assert audits(console, "panel.signin_refused")[0].actor == f"staff:{sid}"


async def test_a_deactivated_member_cannot_sign_in_and_loses_their_sessions(console):
    admin = add_staff(console, name="Ayşe", console="ayse", role="admin")
    other = add_staff(console, name="Can", console="can", role="staff")
    pending = link_for(console, other)
    async with signed_in(console, other) as can_client, signed_in(console, admin) as c:
        page = await c.get(f"/panel/staff/{other}")
        done = await c.post(f"/panel/staff/{other}/active", data={"csrf": form_csrf(page.text), "active": "0"})
        assert done.status_code == 303
        assert (await can_client.get("/panel/account")).status_code == 303
    async with client(console) as c:
        answer = await c.get(pending)
        assert answer.status_code == 400 and t_in("tr", "panel.login.refused_inactive") in answer.text
    assert [a.target for a in audits(console, "staff.deactivated")] == [f"staff:{other}"]


async def test_an_idle_session_ends(console):
    sid = add_staff(console, name="Ayşe", console="ayse", role="staff")
    async with signed_in(console, sid) as c:
        assert (await c.get("/panel/account")).status_code == 200
        with transaction(console.db) as db:
            row = db.exec(select(panel.PanelSession)).one()
            row.last_seen_at = utcnow() - timedelta(minutes=31)
            db.add(row)
        assert (await c.get("/panel/account")).status_code == 303


# ---------------------------------------------------------------- CSRF, origin, roles
async def test_a_form_without_its_csrf_token_or_from_another_site_is_refused(console):
    sid = add_staff(console, name="Ayşe", console="ayse", role="staff")
    async with signed_in(console, sid) as c:
        page = await c.get("/panel/account")
        csrf = form_csrf(page.text)
        for data, headers in (({"language": "en"}, {}), ({"language": "en", "csrf": "0" * 64}, {}),
                              ({"language": "en", "csrf": csrf}, {"origin": "https://evil.example"}),
                              ({"language": "en", "csrf": csrf}, {"sec-fetch-site": "cross-site"})):
            answer = await c.post("/panel/account/language", data=data, headers=headers)
            assert answer.status_code == 403, (data, headers)
        with transaction(console.db) as db:
            assert db.get(Staff, sid).panel_locale == "tr"
        done = await c.post("/panel/account/language", data={"language": "en", "csrf": csrf},
                            headers={"origin": BASE})
        assert done.status_code == 303
        assert "My account" in (await c.get("/panel/account")).text
    refused = [(a.actor, a.details["reason"]) for a in audits(console, "panel.refused")]
    assert refused == [(f"staff:{sid}", "csrf")] * 2 + [(f"staff:{sid}", "origin")] * 2


@pytest.mark.parametrize("role", ["viewer", "staff"])
async def test_only_an_admin_opens_or_changes_the_staff_page(console, role):
    admin = add_staff(console, name="Ayşe", console="ayse", role="admin")
    sid = add_staff(console, name="Veli", console="veli", role=role, departments=["zabita"])
    before = _staff_rows(console)
    async with signed_in(console, sid) as c:
        csrf = form_csrf((await c.get("/panel/account")).text)
        assert (await c.get("/panel/staff")).status_code == 403
        assert (await c.get(f"/panel/staff/{admin}")).status_code == 403
        assert (await c.get("/panel/staff/new")).status_code == 403
        for path, data in (("/panel/staff/new", {"name": "Mallory", "console": "mallory", "role": "admin"}),
                           (f"/panel/staff/{sid}", {"name": "Veli", "console": "veli", "role": "admin"}),
                           (f"/panel/staff/{admin}", {"role": "viewer"}),
                           (f"/panel/staff/{admin}/active", {"active": "0"})):
            answer = await c.post(path, data={**data, "csrf": csrf})
            assert answer.status_code == 403 and t_in("tr", "panel.refused.role") in answer.text, path
        page = await c.get("/panel/account")
        assert "/panel/staff" not in page.text  # not in the navigation either
    assert _staff_rows(console) == before
    assert len([a for a in audits(console, "panel.refused") if a.actor == f"staff:{sid}"]) == 7


async def test_an_admin_adds_and_edits_staff_with_roles_and_departments(console):
    admin = add_staff(console, name="Ayşe", console="ayse", role="admin")
    async with signed_in(console, admin) as c:
        page = await c.get("/panel/staff/new")
        assert page.status_code == 200 and "Zabıta Müdürlüğü" in page.text
        csrf = form_csrf(page.text)
        bad = await c.post("/panel/staff/new", data={"csrf": csrf, "name": "Mehmet", "role": "viewer"})
        assert bad.status_code == 400 and t_in("tr", "panel.staff.no_address") in bad.text
        done = await c.post("/panel/staff/new", data={"csrf": csrf, "name": "Mehmet Kaya", "role": "staff",
                                                      "departments": ["zabita", "fen_isleri"], "console": "mehmet"})
        assert done.status_code == 303
        new_id = int(re.search(r"/panel/staff/(\d+)", done.headers["location"]).group(1))
        listing = await c.get("/panel/staff")
        assert "Mehmet Kaya" in listing.text and "Fen İşleri Müdürlüğü, Zabıta Müdürlüğü" in listing.text
        edit = await c.post(f"/panel/staff/{new_id}", data={"csrf": csrf, "name": "Mehmet Kaya", "role": "viewer",
                                                            "departments": ["zabita"], "console": "mehmet"})
        assert edit.status_code == 303
        last = await c.post(f"/panel/staff/{admin}", data={"csrf": csrf, "name": "Ayşe", "role": "staff",
                                                          "console": "ayse"})
        assert last.status_code == 400 and t_in("tr", "panel.staff.last_admin") in last.text
    with transaction(console.db) as db:
        mehmet = db.get(Staff, new_id)
        assert (mehmet.name, mehmet.role, mehmet.console) == ("Mehmet Kaya", "viewer", "mehmet")
        assert panel.departments_of(db, new_id) == ["zabita"]
    added, changed = audits(console, "staff.added"), audits(console, "staff.changed")
    assert [(a.actor, a.target, a.details["departments"]) for a in added] == \
        [(f"staff:{admin}", f"staff:{new_id}", ["fen_isleri", "zabita"])]
    assert changed[0].details["changed"] == ["role", "departments"]


# ---------------------------------------------------------------- second factor
async def test_totp_enrolment_then_a_code_at_sign_in_that_works_once(console):
    sid = add_staff(console, name="Ayşe", console="ayse", role="admin")
    async with signed_in(console, sid) as c:
        page = await c.get("/panel/account/totp")
        assert page.status_code == 200 and "<svg" in page.text
        secret = re.search(r'class="secret">([A-Z2-7 ]+)<', page.text).group(1).replace(" ", "")
        csrf = form_csrf(page.text)
        wrong = await c.post("/panel/account/totp", data={"csrf": csrf, "code": "000000"})
        assert wrong.status_code == 400
        totp = pyotp.TOTP(secret)
        assert (await c.post("/panel/account/totp", data={"csrf": csrf, "code": totp.now()})).status_code == 303
    async with client(console) as c:
        done = await sign_in(c, link_for(console, sid))
        assert done.headers["location"] == "/panel/login/totp"
        assert (await c.get("/panel/account")).headers["location"] == "/panel/login/totp"
        page = await c.get("/panel/login/totp")
        csrf = form_csrf(page.text)
        replay = await c.post("/panel/login/totp", data={"csrf": csrf, "code": totp.now()})
        assert replay.status_code == 400  # the enrolment used this time step's code already
        later = totp.at(utcnow() + timedelta(seconds=30))
        assert (await c.post("/panel/login/totp", data={"csrf": csrf, "code": later})).status_code == 303
        assert (await c.get("/panel/account")).status_code == 200
    reasons = [a.details["reason"] for a in audits(console, "panel.totp_failed")]
    assert reasons == ["wrong", "replayed"]
    assert len(audits(console, "panel.totp_enrolled")) == 1


async def test_admins_must_enrol_first_when_totp_is_required(make_app, db_url):
    app = make_app(database_url=db_url, public_base_url=BASE, panel_require_totp=True)
    sid = add_staff(app, name="Ayşe", console="ayse", role="admin")
    viewer = add_staff(app, name="Veli", console="veli", role="viewer")
    async with signed_in(app, sid) as c:
        for path in ("/panel/", "/panel/account", "/panel/staff"):
            answer = await c.get(path)
            assert answer.status_code == 303 and answer.headers["location"] == "/panel/account/totp", path
        assert (await c.get("/panel/account/totp")).status_code == 200
    async with signed_in(app, viewer) as c:
        assert (await c.get("/panel/account")).status_code == 200


async def test_secure_cookie_with_an_https_public_url(make_app, db_url):
    app = make_app(database_url=db_url, public_base_url="https://katilim.example.org")
    sid = add_staff(app, name="Ayşe", console="ayse", role="admin")
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=create_http_app(app)),
                                 base_url="https://katilim.example.org") as c:
        done = await sign_in(c, link_for(app, sid))
        cookie = done.headers["set-cookie"]
        assert cookie.startswith("__Host-katilim_panel=") and "Secure" in cookie and "Path=/" in cookie


# ---------------------------------------------------------------- the bot's /panel and the CLI
def _chat(app, address: str, command: str = "panel") -> list:
    return Chat(app, address).command(command)


async def test_the_panel_command_sends_staff_a_link_and_refuses_others(console):
    sid = add_staff(console, name="Ayşe", console="ayse", role="viewer")
    replies = _chat(console, "ayse")
    assert len(replies) == 1 and replies[0].link_preview is False
    path = LINK.search(replies[0].text).group(1)
    assert replies[0].text == t_in("tr", "staff.panel_link", minutes=10, url=f"{BASE}{path}")
    with transaction(console.db) as db:
        row = db.exec(select(OutboxMessage).where(OutboxMessage.address == "ayse")).one()
        assert row.payload["link_preview"] is False and path in row.payload["text"]
    async with client(console) as c:
        assert (await sign_in(c, path)).status_code == 303
    assert [(a.actor, a.details["via"]) for a in audits(console, "panel.link_issued")] == [(f"staff:{sid}", "console")]
    refused = _chat(console, "mallory")
    assert [r.text for r in refused] == [t_in("tr", "staff.refused")]
    with transaction(console.db) as db:
        row = db.exec(select(AuditLog).where(AuditLog.action == "staff.refused")).one()
        assert row.target == "panel" and row.actor.startswith("resident:")
        db.get(Staff, sid).active = False
    assert [r.text for r in _chat(console, "ayse")] == [t_in("tr", "staff.refused")]


def katilim(tmp_path: Path, *args: str, db_url: str) -> subprocess.CompletedProcess:
    env = subprocess_env(DATABASE_URL=db_url, MEDIA_DIR=str(tmp_path / "media"), PUBLIC_BASE_URL=BASE)
    return subprocess.run([sys.executable, "-m", "bot.cli", *args], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=120)


async def test_cli_staff_add_keeps_the_name_sets_departments_and_prints_a_login_link(console, db_url, tmp_path):
    added = katilim(tmp_path, "staff", "add", "--console", "ayse", "--name", "Ayşe Yılmaz", "--role", "viewer",
                    "--department", "zabita", "--department", "fen_isleri", db_url=db_url)
    assert added.returncode == 0, added.stderr
    assert added.stdout.strip() == ("staff 1 saved: name=Ayşe Yılmaz telegram=- whatsapp=- console=ayse role=viewer "
                                    "departments=fen_isleri,zabita")
    again = katilim(tmp_path, "staff", "add", "--console", "ayse", "--role", "staff", db_url=db_url)
    assert "name=Ayşe Yılmaz" in again.stdout and "role=staff" in again.stdout and "fen_isleri,zabita" in again.stdout
    listed = katilim(tmp_path, "staff", "list", db_url=db_url)
    assert listed.stdout.splitlines()[1].split() == ["1", "staff", "yes", "-", "-", "ayse", "fen_isleri,zabita",
                                                     "Ayşe", "Yılmaz"]
    bad = katilim(tmp_path, "staff", "add", "--console", "ayse", "--department", "itfaiye", db_url=db_url)
    assert bad.returncode == 1 and "itfaiye" in bad.stderr
    link = katilim(tmp_path, "staff", "login-link", "1", db_url=db_url)
    assert link.returncode == 0, link.stderr
    path = LINK.fullmatch(link.stdout.strip()).group(1)
    async with client(console) as c:
        assert (await sign_in(c, path)).status_code == 303
    missing = katilim(tmp_path, "staff", "login-link", "9", db_url=db_url)
    assert missing.returncode == 1 and "no active staff member 9" in missing.stderr
    assert audits(console, "panel.link_issued")[0].actor.startswith("cli:")


def test_a_viewer_cannot_use_the_chat_s_staff_screens(make_app):
    app = make_app()
    add_staff(app, name="Veli", console="veli", role="viewer")
    replies = _chat(app, "veli", "raporlar")
    assert t_in("tr", "staff.refused") in [r.text for r in replies]


# ---------------------------------------------------------------- the migration, both ways
def test_migration_0016_moves_console_names_both_ways(db_url):
    engine = make_engine(db_url)
    cfg = alembic_config(db_url)
    try:
        with engine.connect() as conn:
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "0015_erasure")
            command.upgrade(cfg, "heads")  # the other branches, without 0016 first
            command.downgrade(cfg, "0015_erasure")
            conn.execute(text("INSERT INTO staff (id, name, role, created_at) VALUES "
                              "(1, 'console:ayse', 'admin', '2026-11-01 10:00:00'),"
                              "(2, 'Can Demir', 'staff', '2026-11-01 10:00:00')"))
            conn.commit()
            command.upgrade(cfg, "0016_panel")
            conn.commit()
            rows = conn.execute(text("SELECT id, name, console, active, panel_locale FROM staff ORDER BY id")).all()
            assert [tuple(r) for r in rows] == [(1, "ayse", "ayse", True, "tr"), (2, "Can Demir", None, True, "tr")]
            command.downgrade(cfg, "0015_erasure")
            conn.commit()
            rows = conn.execute(text("SELECT id, name FROM staff ORDER BY id")).all()
            assert [tuple(r) for r in rows] == [(1, "console:ayse"), (2, "Can Demir")]
        upgrade(engine)
    finally:
        engine.dispose()


def test_housekeeping_deletes_sessions_and_links_ended_a_week_ago(make_app):
    app = make_app()
    sid = add_staff(app, name="Ayşe", console="ayse", role="admin")
    old = utcnow() - timedelta(days=8)
    with transaction(app.db) as db:
        panel.issue_login_token(db, sid, "test", now=old)
        panel.issue_login_token(db, sid, "test")
        gone, _ = panel.open_session(db, sid, lifetime=timedelta(hours=12), mfa_ok=True, now=old)
        live, _ = panel.open_session(db, sid, lifetime=timedelta(hours=12), mfa_ok=True)
    with transaction(app.db) as db:
        assert panel.purge(db) == 2
        assert [s.id for s in db.exec(select(panel.PanelSession))] == [live.id]
        assert len(db.exec(select(panel.PanelLoginToken)).all()) == 1


async def test_an_admin_resets_a_lost_second_factor_in_the_console_and_the_cli(console, db_url, tmp_path):
    admin = add_staff(console, name="Ayşe", console="ayse", role="admin")
    other = add_staff(console, name="Can", console="can", role="staff")
    with transaction(console.db) as db:
        for sid in (admin, other):
            staff = db.get(Staff, sid)
            staff.totp_secret, staff.totp_enabled_at = pyotp.random_base32(), utcnow()
        panel.open_session(db, other, lifetime=timedelta(hours=1), mfa_ok=True)
    async with client(console) as c:
        done = await sign_in(c, link_for(console, admin))
        page = await c.get("/panel/login/totp")
        with transaction(console.db) as db:
            code = pyotp.TOTP(db.get(Staff, admin).totp_secret).now()
        assert (await c.post("/panel/login/totp", data={"csrf": form_csrf(page.text), "code": code})).status_code == 303
        edit = await c.get(f"/panel/staff/{other}")
        assert t_in("tr", "panel.staff.reset_totp") in edit.text and done.status_code == 303
        reset = await c.post(f"/panel/staff/{other}/reset-totp", data={"csrf": form_csrf(edit.text)})
        assert reset.status_code == 303 and reset.headers["location"].endswith("notice=totp_reset")
    with transaction(console.db) as db:
        assert db.get(Staff, other).totp_enabled_at is None and not db.get(Staff, other).totp_secret
        assert panel.live_sessions(db, other, idle=timedelta(minutes=30)) == []
    cli = katilim(tmp_path, "staff", "reset-totp", str(admin), db_url=db_url)
    assert cli.returncode == 0 and "turned off" in cli.stdout, cli.stderr
    with transaction(console.db) as db:
        assert db.get(Staff, admin).totp_enabled_at is None
    assert [a.actor.split(":")[0] for a in audits(console, "panel.totp_reset")] == ["staff", "cli"]


async def test_the_panel_command_over_whatsapp_gives_a_link_that_signs_in(wa):
    from tests.test_whatsapp import AYSE

    h = await wa()
    add_staff(h.app, name="Ayşe", whatsapp=AYSE.removeprefix("whatsapp:"), role="staff", departments=["zabita"])
    sent = await h.say("/panel")
    found = re.search(re.escape(h.base) + r"(/panel/login/[A-Za-z0-9_-]+)", sent[-1].body)
    assert found, [m.body for m in sent]
    async with httpx.AsyncClient(base_url=h.base, timeout=10) as browser_like:
        done = await sign_in(browser_like, found.group(1))
        assert done.status_code == 303
        account = await browser_like.get("/panel/account")
        assert account.status_code == 200 and "Zabıta Müdürlüğü" in account.text
    with transaction(h.app.db) as db:
        assert db.exec(select(AuditLog.details).where(AuditLog.action == "panel.link_issued")).one() == {"via": "whatsapp"}
