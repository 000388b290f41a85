"""The staff console's pages: sign-in (link → button → optional code), sign-out, "Hesabım"
(language, second factor, sessions) and, for admins, "Personel" (staff, roles, departments).

Every change calls a function of conversations/staff_admin.py, which checks the actor's role and
writes the audit row with the change in one transaction; a refusal is audited in a transaction of
its own. After a change the browser is redirected (POST → 303 → GET) with a notice key."""
from __future__ import annotations

import secrets
from typing import Any, Callable

import qrcode
import qrcode.image.svg
from fastapi import APIRouter, Depends, Request
from markupsafe import Markup
from starlette.concurrency import run_in_threadpool

from conversations import staff_admin
from conversations.i18n import N_, format_when, translator
from conversations.permissions import ROLE_NAMES, ROLES, Refused
from handlers.panel.web import (
    LOGIN_NONCE_COOKIE,
    Denied,
    Guard,
    Signed,
    cookie_name,
    csrf_token,
    redirect,
    render,
    same_origin,
    secure,
)
from storage import panel
from storage.audit import audit
from storage.db import transaction
from storage.models import Staff

SIGNIN_REFUSALS = {"unknown": N_("panel.login.refused_unknown"), "used": N_("panel.login.refused_used"),
                   "expired": N_("panel.login.refused_expired"), "inactive": N_("panel.login.refused_inactive"),
                   "form": N_("panel.login.refused_form")}
DEPARTMENTS_NONE = {"admin": N_("panel.staff.all_departments"), "staff": N_("panel.staff.no_departments"),
                    "viewer": N_("panel.staff.no_departments")}
QR_LABEL = N_("panel.totp.qr_label")
LANGUAGE_NAMES = (("tr", "Türkçe"), ("en", "English"))  # each in its own language
CHANNEL_NAMES = {"telegram": "Telegram", "whatsapp": "WhatsApp", "console": N_("panel.staff.console")}


def _in_db(app, fn: Callable, *args, **kw) -> Any:
    """Run fn(db, ...) in one transaction, off the event loop."""
    def run():
        with transaction(app.db) as db:
            return fn(db, *args, **kw)
    return run_in_threadpool(run)


def _client(request: Request) -> tuple[str, str]:
    return (request.headers.get("user-agent", "")[:200], request.client.host if request.client else "")


# ---------------------------------------------------------------- sign-in (no session yet)
def public_router(app) -> APIRouter:
    r = APIRouter(prefix="/panel")
    settings = app.settings

    @r.get("/login")
    async def login_page(request: Request):
        return render(request, "login.html")

    @r.get("/login/{token}")
    async def login_confirm(request: Request, token: str):
        checked = await _in_db(app, lambda db: panel.peek_login_token(db, token))
        if checked.staff is None:
            return render(request, "message.html", status=400, title=N_("panel.login.title"),
                          message=SIGNIN_REFUSALS[checked.reason], link=("/panel/login", N_("panel.login.again")))
        nonce = secrets.token_urlsafe(24)
        response = render(request, "login_confirm.html", lang=checked.staff.panel_locale, token=token,
                          login_csrf=csrf_token(nonce), name=checked.staff.name)
        response.set_cookie(LOGIN_NONCE_COOKIE, nonce, max_age=int(panel.LOGIN_TTL.total_seconds()), httponly=True,
                            samesite="lax", secure=secure(settings), path="/panel/login")
        return response

    @r.post("/login")
    async def login(request: Request):
        form = await request.form()
        token, sent = str(form.get("token", "")), str(form.get("csrf", ""))
        nonce = request.cookies.get(LOGIN_NONCE_COOKIE, "")
        agent, ip = _client(request)
        if not same_origin(request, settings) or not nonce or not secrets.compare_digest(sent, csrf_token(nonce)):
            await _in_db(app, lambda db: audit(db, "anonymous", "panel.signin_refused", "", reason="form"))
            return render(request, "message.html", status=403, title=N_("panel.login.title"),
                          message=SIGNIN_REFUSALS["form"], link=("/panel/login", N_("panel.login.again")))

        def sign_in(db):
            checked = panel.spend_login_token(db, token)
            if checked.staff is None:
                who = f"staff:{checked.staff_id}" if checked.staff_id else "anonymous"
                audit(db, who, "panel.signin_refused", f"staff:{checked.staff_id}" if checked.staff_id else "",
                           reason=checked.reason)
                return checked, None, ""
            staff = checked.staff
            row, secret = panel.open_session(db, staff.id, lifetime=settings.panel_session_lifetime,
                                             mfa_ok=staff.totp_enabled_at is None, user_agent=agent, ip=ip)
            audit(db, f"staff:{staff.id}", "panel.signin", f"staff:{staff.id}", session=row.id,
                       second_factor="due" if staff.totp_enabled_at else "none")
            return checked, row, secret

        checked, row, secret = await _in_db(app, sign_in)
        if row is None:
            return render(request, "message.html", status=403, title=N_("panel.login.title"),
                          message=SIGNIN_REFUSALS[checked.reason], link=("/panel/login", N_("panel.login.again")))
        response = redirect("/panel/login/totp" if not row.mfa_ok else "/panel/")
        response.set_cookie(cookie_name(settings), secret, max_age=int(settings.panel_session_lifetime.total_seconds()),
                            httponly=True, samesite="lax", secure=secure(settings), path="/")
        return response

    return r


def denied_handler(app):
    async def handle(request: Request, exc: Denied):
        unsafe = request.method not in ("GET", "HEAD")
        if not exc.to and (exc.signed is not None or unsafe):
            who = exc.signed.actor.who if exc.signed is not None else "anonymous"
            reason = exc.key.rsplit(".", 1)[-1]
            await _in_db(app, lambda db: audit(db, who, "panel.refused", request.url.path[:128],
                                                    reason=reason, method=request.method))
        if exc.to:
            return redirect(exc.to)
        if exc.login and not unsafe:
            return redirect("/panel/login")
        signed = exc.signed if exc.signed is not None and not exc.signed.pending else None
        return render(request, "message.html", signed=signed, status=403, title=N_("panel.refused.title"),
                      message=exc.key, link=("/panel/", N_("panel.back_home")) if signed else
                      ("/panel/login", N_("panel.login.again")))
    return handle


# ---------------------------------------------------------------- signed in
def router(app) -> APIRouter:
    r = APIRouter(prefix="/panel")
    settings = app.settings
    signed_in = Guard(app)
    code_due = Guard(app, pending=("totp",))
    enrolling = Guard(app, pending=("enrol",))
    any_step = Guard(app, pending=("totp", "enrol"))
    admin = Guard(app, admin=True)

    # -- the second factor at sign-in
    @r.get("/login/totp")
    async def totp_page(request: Request, signed: Signed = Depends(code_due)):
        if not signed.pending:
            return redirect("/panel/")
        return render(request, "login_totp.html", signed=signed)

    @r.post("/login/totp")
    async def totp_check(request: Request, signed: Signed = Depends(code_due)):
        code = str((await request.form()).get("code", ""))

        def check(db):
            staff = db.get(Staff, signed.staff.id)
            if not staff_admin.verify_totp(db, staff, code, purpose="signin"):
                return staff_admin.tries_left(db, staff)
            session = db.get(panel.PanelSession, signed.session.id)
            session.mfa_ok = True
            db.add(session)
            audit(db, signed.actor.who, "panel.signin_second_factor", f"staff:{staff.id}", session=session.id)
            return None

        left = await _in_db(app, check)
        if left is None:
            return redirect("/panel/")
        return render(request, "login_totp.html", signed=signed, status=400,
                      error=translator(signed.lang).n("panel.totp.wrong", left))

    @r.post("/logout")
    async def logout(request: Request, signed: Signed = Depends(any_step)):
        def end(db):
            panel.revoke_sessions(db, signed.staff.id, only_id=signed.session.id)
            audit(db, signed.actor.who, "panel.signout", f"staff:{signed.staff.id}", session=signed.session.id)

        await _in_db(app, end)
        response = redirect("/panel/login", "signed_out")
        response.delete_cookie(cookie_name(settings), path="/")
        return response

    # -- Hesabım
    @r.get("/account")
    async def account(request: Request, signed: Signed = Depends(signed_in)):
        return await _account_page(request, signed)

    async def _account_page(request: Request, signed: Signed, *, status: int = 200, error: str = ""):
        rows = await _in_db(app, lambda db: panel.live_sessions(db, signed.staff.id, idle=settings.panel_idle_timeout))
        tz = app.catalog.municipality.timezone
        sessions = [{"id": s.id, "current": s.id == signed.session.id, "agent": _agent(s.user_agent),
                     "started": format_when(s.created_at, signed.lang, tz),
                     "seen": format_when(s.last_seen_at, signed.lang, tz)} for s in rows]
        return render(request, "account.html", signed=signed, sessions=sessions, status=status, error=error,
                      totp_required=settings.panel_require_totp and signed.staff.role == "admin",
                      role_name=ROLE_NAMES[signed.staff.role], no_departments=DEPARTMENTS_NONE[signed.staff.role],
                      departments=_department_names(app, signed.departments, signed.lang))

    @r.post("/account/language")
    async def language(request: Request, signed: Signed = Depends(signed_in)):
        lang = str((await request.form()).get("language", ""))
        return await _change(request, signed, lambda db, staff: staff_admin.set_language(db, signed.actor, staff, lang),
                             "/panel/account", "language", on_error=_account_page)

    @r.get("/account/totp")
    async def totp_enrol_page(request: Request, signed: Signed = Depends(enrolling)):
        if signed.staff.totp_enabled_at is not None:
            return redirect("/panel/account")
        return await _enrol_page(request, signed)

    async def _enrol_page(request: Request, signed: Signed, *, status: int = 200, error: str = ""):
        def prepare(db):
            staff = db.get(Staff, signed.staff.id)
            secret = staff_admin.totp_secret_for_enrolment(db, signed.actor, staff)
            return secret, staff_admin.provisioning_uri(staff, issuer=f"Katılım {app.catalog.municipality.name.get('tr')}")

        secret, uri = await _in_db(app, prepare)
        svg = qrcode.make(uri, image_factory=qrcode.image.svg.SvgPathImage, box_size=8).to_string(encoding="unicode")
        return render(request, "account_totp.html", signed=signed, status=status, error=error,
                      qr=Markup(svg.replace("<svg ", f'<svg role="img" aria-label="{translator(signed.lang)(QR_LABEL)}" ', 1)),
                      secret=" ".join(secret[i:i + 4] for i in range(0, len(secret), 4)))

    @r.post("/account/totp")
    async def totp_enrol(request: Request, signed: Signed = Depends(enrolling)):
        code = str((await request.form()).get("code", ""))

        def confirm(db):
            staff = db.get(Staff, signed.staff.id)
            if not staff_admin.confirm_totp(db, signed.actor, staff, code):
                return staff_admin.tries_left(db, staff)
            session = db.get(panel.PanelSession, signed.session.id)
            session.mfa_ok = True
            db.add(session)
            return None

        try:
            left = await _in_db(app, confirm)
        except staff_admin.StaffError:
            return redirect("/panel/account")
        if left is None:
            return redirect("/panel/account", "totp_on")
        return await _enrol_page(request, signed, status=400, error=translator(signed.lang).n("panel.totp.wrong", left))

    @r.post("/account/totp/disable")
    async def totp_disable(request: Request, signed: Signed = Depends(signed_in)):
        code = str((await request.form()).get("code", ""))
        required = settings.panel_require_totp

        def disable(db, staff):
            if not staff_admin.disable_totp(db, signed.actor, staff, code, required=required):
                raise staff_admin.StaffError(N_("panel.totp.wrong_plain"))

        return await _change(request, signed, disable, "/panel/account", "totp_off", on_error=_account_page)

    @r.post("/account/sessions/others")
    async def end_others(request: Request, signed: Signed = Depends(signed_in)):
        return await _change(request, signed, lambda db, staff: staff_admin.sign_out(
            db, signed.actor, staff, all_but=signed.session.id), "/panel/account", "sessions_ended",
            on_error=_account_page)

    @r.post("/account/sessions/{sid}/end")
    async def end_one(request: Request, sid: int, signed: Signed = Depends(signed_in)):
        return await _change(request, signed, lambda db, staff: staff_admin.sign_out(
            db, signed.actor, staff, session_id=sid), "/panel/account", "sessions_ended", on_error=_account_page)

    # -- Personel (admins)
    @r.get("/staff")
    async def staff_list(request: Request, signed: Signed = Depends(admin)):
        def rows(db):
            departments = panel.departments_by_staff(db)
            return [(s, departments.get(s.id, [])) for s in db.exec(_all_staff()).all()]

        found = await _in_db(app, rows)
        people = [_person(app, s, deps, signed.lang) for s, deps in found]
        return render(request, "staff_list.html", signed=signed, people=people)

    @r.get("/staff/new")
    async def staff_new(request: Request, signed: Signed = Depends(admin)):
        return _staff_form(request, signed, None, {})

    @r.post("/staff/new")
    async def staff_create(request: Request, signed: Signed = Depends(admin)):
        values = _staff_values(await request.form())
        return await _save(request, signed, None, values)

    @r.get("/staff/{sid}")
    async def staff_edit(request: Request, sid: int, signed: Signed = Depends(admin)):
        def load(db):
            staff = db.get(Staff, sid)
            return (staff, panel.departments_of(db, sid)) if staff else (None, [])

        staff, departments = await _in_db(app, load)
        if staff is None:
            return render(request, "message.html", signed=signed, status=404, title=N_("panel.staff.title"),
                          message=N_("panel.staff.missing"), link=("/panel/staff", N_("panel.staff.back")))
        return _staff_form(request, signed, staff, _values_of(staff, departments))

    @r.post("/staff/{sid}")
    async def staff_update(request: Request, sid: int, signed: Signed = Depends(admin)):
        return await _save(request, signed, sid, _staff_values(await request.form()))

    @r.post("/staff/{sid}/active")
    async def staff_active(request: Request, sid: int, signed: Signed = Depends(admin)):
        active = str((await request.form()).get("active", "")) == "1"

        def change(db):
            staff_admin.set_active(db, signed.actor, sid, active)

        try:
            await _in_db(app, change)
        except Refused as refused:
            return await _refused(request, signed, refused)
        except staff_admin.StaffError as exc:
            return await _staff_error(request, signed, sid, exc)
        return redirect(f"/panel/staff/{sid}", "activated" if active else "deactivated")

    @r.post("/staff/{sid}/reset-totp")
    async def staff_reset_totp(request: Request, sid: int, signed: Signed = Depends(admin)):
        try:
            await _in_db(app, lambda db: staff_admin.reset_totp(db, signed.actor, sid))
        except Refused as refused:
            return await _refused(request, signed, refused)
        except staff_admin.StaffError as exc:
            return await _staff_error(request, signed, sid, exc)
        return redirect(f"/panel/staff/{sid}", "totp_reset")

    @r.post("/staff/{sid}/link")
    async def staff_link(request: Request, sid: int, signed: Signed = Depends(admin)):
        try:
            name, url = await _in_db(app, lambda db: (lambda s, u: (s.name, u))(
                *staff_admin.issue_link(db, signed.actor, sid, settings)))
        except Refused as refused:
            return await _refused(request, signed, refused)
        except staff_admin.StaffError as exc:
            return await _staff_error(request, signed, sid, exc)
        return render(request, "staff_link.html", signed=signed, sid=sid, name=name, url=url,
                      minutes=int(panel.LOGIN_TTL.total_seconds() // 60))

    # -- helpers bound to this app
    async def _change(request, signed, fn, to: str, notice: str, *, on_error):
        """Run fn(db, staff) for the signed-in member; redirect with a notice, or re-render."""
        def run(db):
            fn(db, db.get(Staff, signed.staff.id))

        try:
            await _in_db(app, run)
        except Refused as refused:
            return await _refused(request, signed, refused)
        except staff_admin.StaffError as exc:
            return await on_error(request, signed, status=400, error=translator(signed.lang)(exc.key, **exc.params))
        return redirect(to, notice)

    async def _refused(request, signed, refused: Refused):
        await _in_db(app, lambda db: staff_admin.refusal(db, signed.actor, refused, request.url.path[:128]))
        return render(request, "message.html", signed=signed, status=403, title=N_("panel.refused.title"),
                      message=refused.key, link=("/panel/", N_("panel.back_home")))

    def _staff_form(request, signed, staff, values, *, status: int = 200, error: str = ""):
        return render(request, "staff_edit.html", signed=signed, status=status, error=error, person=staff,
                      values=values, roles=[(r_, ROLE_NAMES[r_]) for r_ in ROLES],
                      departments=[(d.key, d.name.get(signed.lang)) for d in app.catalog.departments],
                      languages=LANGUAGE_NAMES,
                      is_self=staff is not None and staff.id == signed.staff.id)

    async def _save(request, signed, sid, values):
        known = {d.key for d in app.catalog.departments}

        def save(db):
            return staff_admin.save_staff(db, signed.actor, staff_id=sid, name=values["name"], role=values["role"],
                                          departments=values["departments"], telegram=values["telegram"] or None,
                                          whatsapp=values["whatsapp"] or None, console=values["console"] or None,
                                          known_departments=known, language=values["language"]).id

        try:
            saved = await _in_db(app, save)
        except Refused as refused:
            return await _refused(request, signed, refused)
        except staff_admin.StaffError as exc:
            person = await _in_db(app, lambda db: db.get(Staff, sid)) if sid else None
            return _staff_form(request, signed, person, values, status=400,
                               error=translator(signed.lang)(exc.key, **exc.params))
        return redirect(f"/panel/staff/{saved}", "saved" if sid else "staff_added")

    async def _staff_error(request, signed, sid, exc):
        def load(db):
            staff = db.get(Staff, sid)
            return staff, panel.departments_of(db, sid)

        staff, departments = await _in_db(app, load)
        return _staff_form(request, signed, staff, _values_of(staff, departments), status=400,
                           error=translator(signed.lang)(exc.key, **exc.params))

    return r


def _all_staff():
    from sqlmodel import select

    return select(Staff).order_by(Staff.active.desc(), Staff.name, Staff.id)


def _staff_values(form) -> dict[str, Any]:
    role = str(form.get("role", ""))
    return {"name": str(form.get("name", "")).strip(), "role": role if role in ROLES else "staff",
            "departments": [str(d) for d in form.getlist("departments")],
            "telegram": str(form.get("telegram", "")).strip(), "whatsapp": str(form.get("whatsapp", "")).strip(),
            "console": str(form.get("console", "")).strip(),
            "language": language if (language := str(form.get("language", ""))) in staff_admin.PANEL_LOCALES else "tr"}


def _values_of(staff: Staff, departments: list[str]) -> dict[str, Any]:
    return {"name": staff.name, "role": staff.role, "departments": departments, "telegram": staff.telegram_id or "",
            "whatsapp": staff.whatsapp or "", "console": staff.console or "", "language": staff.panel_locale}


def _department_names(app, keys, lang: str) -> list[str]:
    return [d.name.get(lang) if (d := app.catalog.department(k)) else k for k in keys]


def _person(app, staff: Staff, departments: list[str], lang: str) -> dict[str, Any]:
    t = translator(lang)
    channels = [("Telegram", staff.telegram_id), ("WhatsApp", staff.whatsapp), (t(CHANNEL_NAMES["console"]), staff.console)]
    return {"id": staff.id, "name": staff.name or f"#{staff.id}", "role": ROLE_NAMES.get(staff.role, staff.role),
            "departments": _department_names(app, departments, lang), "active": staff.active,
            "totp": staff.totp_enabled_at is not None,
            "channels": [f"{label}: {value}" for label, value in channels if value]}


def _agent(user_agent: str) -> str:
    """A short, recognisable name of a browser from its User-Agent ("Chrome · Linux")."""
    ua = user_agent or ""
    browser = next((name for key, name in (("Edg/", "Edge"), ("Firefox/", "Firefox"), ("Chrome/", "Chrome"),
                                           ("Safari/", "Safari")) if key in ua), "")
    system = next((name for key, name in (("Android", "Android"), ("iPhone", "iPhone"), ("Windows", "Windows"),
                                          ("Mac OS", "macOS"), ("Linux", "Linux")) if key in ua), "")
    return " · ".join(p for p in (browser, system) if p) or (ua[:40] or "?")
