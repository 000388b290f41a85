"""The staff console's HTTP edge: templates, the session guard, CSRF, security headers.

- Templates are Jinja2 (handlers/panel/templates/), autoescaped, with `t()` bound to the staff
  member's console language (tr by default, en): keys, never prose (the `panel.` catalog domain).
- Every route under /panel needs a live session except PUBLIC_ROUTES (the sign-in pages). The
  guard (`Guard`, a dependency) loads the session row named by the cookie (idle timeout, absolute
  lifetime, revocation, an active staff record) and, for unsafe methods, refuses a request without
  the form's CSRF token (a synchronizer token: an HMAC of the session's secret cookie value, which
  a page from another site cannot read) or coming from another origin (Origin, Sec-Fetch-Site).
  Without a session a GET is redirected to the sign-in page and anything else gets 403.
- Cookie: HttpOnly, SameSite=Lax (Strict would not be sent when a staff member opens a console
  link from the chat app, and every unsafe request carries the CSRF token anyway), Path=/, and
  Secure with the `__Host-` prefix when PUBLIC_BASE_URL is https.
- Headers on every /panel response (`SecurityHeaders`): a strict Content-Security-Policy (no
  inline script or style, no framing), nosniff, Referrer-Policy same-origin (a page's address,
  the sign-in link's included, never goes to another site; "no-referrer" would make the browser
  send "Origin: null" with the sign-in button's form, which the origin check must refuse) and
  Cache-Control: no-store.
"""
from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from fastapi import Request
from fastapi import routing as fastapi_routing
from fastapi.responses import HTMLResponse, RedirectResponse
from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.concurrency import run_in_threadpool

from conversations.i18n import N_, translator
from conversations.permissions import Actor, can
from storage import panel
from storage.db import transaction

HERE = Path(__file__).resolve().parent
TEMPLATES = HERE / "templates"
STATIC = HERE / "static"
UNSAFE = frozenset({"POST", "PUT", "PATCH", "DELETE"})
PUBLIC_ROUTES = frozenset({("GET", "/panel/login"), ("GET", "/panel/login/{token}"), ("POST", "/panel/login")})
LOGIN_NONCE_COOKIE = "katilim_panel_login"
CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; object-src 'none'; "
       "base-uri 'none'; form-action 'self'; frame-ancestors 'none'")


def csp_for(settings) -> str:
    """CSP, with the map's tile server (PANEL_TILE_URL) allowed as an image source."""
    tiles = getattr(settings, "panel_tile_url", "") or ""
    if not tiles:
        return CSP
    parts = urlsplit(tiles)
    host = parts.netloc.replace("{s}", "*")      # a.tile…, b.tile…: any subdomain
    return CSP.replace("img-src 'self' data:", f"img-src 'self' data: {parts.scheme}://{host}")

# Navigation: (label key, path, admin only). A page not built yet shows as plain text; an admin-only
# link shows only to admins.
NAV = (
    (N_("panel.nav.dashboard"), "/panel/", False),
    (N_("panel.nav.reports"), "/panel/reports", False),
    (N_("panel.nav.map"), "/panel/map", False),
    (N_("panel.nav.new"), "/panel/reports/new", False),
    (N_("panel.nav.account"), "/panel/account", False),
    (N_("panel.nav.staff"), "/panel/staff", True),
    (N_("panel.nav.apikeys"), "/panel/apikeys", True),
    (N_("panel.nav.audit"), "/panel/audit", True),
)
# Messages a page may show after a redirect (?notice=KEY): only these keys.
NOTICES = {
    "saved": N_("panel.notice.saved"),
    "language": N_("panel.notice.language"),
    "totp_on": N_("panel.notice.totp_on"),
    "totp_off": N_("panel.notice.totp_off"),
    "sessions_ended": N_("panel.notice.sessions_ended"),
    "signed_out": N_("panel.notice.signed_out"),
    "staff_added": N_("panel.notice.staff_added"),
    "deactivated": N_("panel.notice.deactivated"),
    "activated": N_("panel.notice.activated"),
    "totp_reset": N_("panel.notice.totp_reset"),
    "key_revoked": N_("panel.notice.key_revoked"),
    "key_already_revoked": N_("panel.notice.key_already_revoked"),
    "bulk_done": N_("panel.notice.bulk_done"),
    "bulk_partial": N_("panel.notice.bulk_partial"),
    "bulk_none": N_("panel.notice.bulk_none"),
    # the report page (handlers/panel/report_page.py)
    "filed": N_("panel.notice.filed"),
    "status_changed": N_("panel.notice.status_changed"),
    "note_saved": N_("panel.notice.note_saved"),
    "question_sent": N_("panel.notice.question_sent"),
    "assigned": N_("panel.notice.assigned"),
    "merged": N_("panel.notice.merged"),
    "unmerged": N_("panel.notice.unmerged"),
    "photo_changed": N_("panel.notice.photo_changed"),
    "pin_moved": N_("panel.notice.pin_moved"),
    "category_changed": N_("panel.notice.category_changed"),
}

_env = Environment(loader=FileSystemLoader(str(TEMPLATES)), autoescape=select_autoescape(["html"]),
                   trim_blocks=True, lstrip_blocks=True)


def cookie_name(settings) -> str:
    return "__Host-katilim_panel" if secure(settings) else "katilim_panel"


def secure(settings) -> bool:
    return (getattr(settings, "public_base_url", "") or "").startswith("https://")


def csrf_token(secret: str) -> str:
    """The synchronizer token of a session (or of a sign-in page's nonce)."""
    return hmac.new(secret.encode("utf-8"), b"katilim-panel-csrf", hashlib.sha256).hexdigest()


def route_paths(http_app) -> frozenset[str]:
    """Every route path of the app, included routers too (FastAPI 0.16x keeps those nested; older
    versions kept them flat in app.routes). Read once, at the first page."""
    found = getattr(http_app.state, "katilim_paths", None)
    if found is None:
        walk = getattr(fastapi_routing, "iter_route_contexts", lambda routes: routes)
        found = http_app.state.katilim_paths = frozenset(getattr(r, "path", "") or "" for r in walk(http_app.routes))
    return found


def browser_language(request: Request) -> str:
    wanted = (request.headers.get("accept-language") or "").lower()
    return "en" if wanted.startswith("en") else "tr"


@dataclass
class Signed:
    """The signed-in staff member of a request."""

    session: panel.PanelSession
    staff: Any
    departments: list[str]
    secret: str                  # the cookie's value (never stored)
    pending: str = ""            # "totp": the code is still due; "enrol": TOTP must be set up first

    @property
    def csrf(self) -> str:
        return csrf_token(self.secret)

    @property
    def actor(self) -> Actor:
        return Actor.of_staff(self.staff, self.departments)

    @property
    def lang(self) -> str:
        return self.staff.panel_locale if self.staff.panel_locale in ("tr", "en") else "tr"


class Denied(Exception):
    """The guard refuses: `login` sends a GET to the sign-in page; else a 403 page with `key`."""

    def __init__(self, key: str, *, login: bool = False, to: str = "", signed: Signed | None = None) -> None:
        super().__init__(key)
        self.key, self.login, self.to, self.signed = key, login, to, signed


def same_origin(request: Request, settings) -> bool:
    """An unsafe request must come from our own pages: Sec-Fetch-Site not cross-site, and an
    Origin (when the browser sends one) equal to PUBLIC_BASE_URL's, else to the Host's."""
    if (request.headers.get("sec-fetch-site") or "").lower() == "cross-site":
        return False
    origin = request.headers.get("origin")
    if not origin:
        return True
    public = getattr(settings, "public_base_url", "")
    if public:
        parts = urlsplit(public)
        return origin == f"{parts.scheme}://{parts.netloc}"
    return urlsplit(origin).netloc == request.headers.get("host", "")


class Guard:
    """The dependency of every non-public /panel route. `pending` lists what a session still
    waiting for its second factor may reach ("totp": the code page, "enrol": the enrolment)."""

    def __init__(self, app, *, pending: tuple[str, ...] = (), admin: bool = False, action: str = "") -> None:
        # admin=True: the staff pages (staff.manage); action: the page's own permission
        self.app, self.pending_ok = app, pending
        self.action = action or ("staff.manage" if admin else "")

    async def __call__(self, request: Request) -> Signed:
        settings = self.app.settings
        secret = request.cookies.get(cookie_name(settings), "")
        signed = await run_in_threadpool(self._load, secret) if secret else None
        if request.method in UNSAFE:
            form = await request.form()
            token = str(form.get("csrf", "")) or request.headers.get("x-csrf-token", "")
            if not same_origin(request, settings):
                raise Denied(N_("panel.refused.origin"), signed=signed)
            if signed is not None and not hmac.compare_digest(token, signed.csrf):
                raise Denied(N_("panel.refused.csrf"), signed=signed)
        if signed is None:
            raise Denied(N_("panel.refused.signed_out"), login=True)
        if signed.pending and signed.pending not in self.pending_ok:
            raise Denied(N_("panel.refused.second_factor"), signed=signed,
                         to="/panel/login/totp" if signed.pending == "totp" else "/panel/account/totp")
        if self.action and not can(signed.actor, self.action):
            raise Denied(N_("panel.refused.role"), signed=signed)
        return signed

    def _load(self, secret: str) -> Signed | None:
        settings = self.app.settings
        with transaction(self.app.db) as db:
            loaded = panel.load_session(db, secret, idle=settings.panel_idle_timeout)
            if loaded.session is None:
                return None
            staff = loaded.staff
            pending = ""
            if staff.totp_enabled_at is not None and not loaded.session.mfa_ok:
                pending = "totp"
            elif staff.totp_enabled_at is None and staff.role == "admin" and settings.panel_require_totp:
                pending = "enrol"
            db.expunge(staff)
            db.expunge(loaded.session)
            return Signed(loaded.session, staff, panel.departments_of(db, staff.id), secret, pending)


# ---------------------------------------------------------------- rendering
def render(request: Request, template: str, /, *, signed: Signed | None = None, status: int = 200,
           lang: str | None = None, **context: Any) -> HTMLResponse:
    lang = lang or (signed.lang if signed is not None else browser_language(request))
    t = translator(lang)
    routes = route_paths(request.app)
    nav = []
    if signed is not None and not signed.pending:
        admin = can(signed.actor, "staff.manage")
        for label, path, admin_only in NAV:
            if admin_only and not admin:
                continue
            nav.append({"label": label, "href": path if path in routes else "",
                        "current": request.url.path == path or (not path.endswith("/")
                                                                and request.url.path.startswith(path + "/"))})
    notice = NOTICES.get(request.query_params.get("notice", ""))
    app = request.app.state.katilim
    html = _env.get_template(template).render(
        t=t, lang=lang, signed=signed, staff=signed.staff if signed else None,
        csrf=signed.csrf if signed else "", nav=nav, notice=notice,
        municipality=app.catalog.municipality.name.get(lang), **context)
    return HTMLResponse(html, status_code=status)


def fragment(template: str, lang: str, **context: Any) -> str:
    """A piece of a page (a table row for the live updates), in the staff member's language."""
    return _env.get_template(template).render(t=translator(lang), lang=lang, **context)


def redirect(path: str, notice: str = "") -> RedirectResponse:
    return RedirectResponse(path + (f"?notice={notice}" if notice else ""), status_code=303)


OWN_HEADERS = (b"cache-control", b"content-security-policy", b"x-content-type-options", b"x-frame-options",
               b"referrer-policy", b"cross-origin-opener-policy")  # set here once (a stored file brings its own)


class SecurityHeaders:
    """ASGI middleware: the console's headers on every response under /panel."""

    def __init__(self, app, csp: str = CSP) -> None:
        self.app, self.csp = app, csp.encode()

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or not (scope["path"] == "/panel" or scope["path"].startswith("/panel/")):
            await self.app(scope, receive, send)
            return
        async def with_headers(message) -> None:
            if message["type"] == "http.response.start":
                headers = [(k, v) for k, v in message.get("headers", [])
                           if k.lower() not in OWN_HEADERS]
                headers += [(b"content-security-policy", self.csp), (b"x-content-type-options", b"nosniff"),
                            (b"x-frame-options", b"DENY"), (b"cache-control", b"no-store"),
                            (b"referrer-policy", b"same-origin"),
                            (b"cross-origin-opener-policy", b"same-origin")]
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, with_headers)
