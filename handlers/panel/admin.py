"""The admins' console pages besides the staff page (issue 15): Open311 API keys (list, create
with the key shown once, revoke after a confirmation) and the audit log (filtered, paged, CSV).

Each page is guarded by its own permission (`apikeys.manage`, `audit.read`: admins only; a
refusal is a 403, audited by the guard) and every action is an operation of
conversations/apikey_admin.py or conversations/audit_log.py, as for `katilim apikey`. A refusal
raised by an operation is caught inside its transaction, so its audit row is kept."""
from __future__ import annotations

from datetime import date, timezone
from typing import Any, Callable
from urllib.parse import urlencode
from zoneinfo import ZoneInfo

from babel.dates import format_datetime
from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response

from conversations import apikey_admin, audit_log
from conversations.i18n import N_, translator
from conversations.permissions import Refused
from handlers.panel.routes import _in_db
from handlers.panel.web import Guard, Signed, redirect, render
from storage.db import utcnow

SCOPE_NAMES = {"public": N_("panel.apikeys.scope_public"), "full": N_("panel.apikeys.scope_full")}


def _when(dt, lang: str, tz: str) -> str:
    if dt is None:
        return ""
    dt = dt if dt.tzinfo else dt.replace(tzinfo=timezone.utc)
    return format_datetime(dt, "dd.MM.yyyy HH:mm", tzinfo=ZoneInfo(tz), locale=lang)


def _day(value: str) -> date | None:
    try:
        return date.fromisoformat((value or "").strip())
    except ValueError:
        return None


def audit_filter(params) -> tuple[audit_log.AuditFilter, dict[str, str]]:
    """The filter of a query string, and the form's values as typed."""
    get = lambda name: str(params.get(name, "") or "").strip()[:128]  # noqa: E731
    values = {name: get(name) for name in ("actor", "action", "target", "from", "to")}
    since, until = _day(values["from"]), _day(values["to"])
    values["from"], values["to"] = (since.isoformat() if since else ""), (until.isoformat() if until else "")
    return audit_log.AuditFilter(actor=values["actor"], action=values["action"], target=values["target"],
                                 since=since, until=until), values


def router(app) -> APIRouter:
    r = APIRouter(prefix="/panel")
    tz = app.catalog.municipality.timezone or "Europe/Istanbul"
    keys_admin = Guard(app, action="apikeys.manage")
    audit_reader = Guard(app, action="audit.read")

    async def _run(signed: Signed, fn: Callable[[Any], Any]) -> tuple[Any, Refused | None]:
        """fn(db) in one transaction; a Refused is caught inside it (its audit row commits)."""
        def run(db):
            try:
                return fn(db), None
            except Refused as refused:
                return None, refused
        return await _in_db(app, run)

    def _refused_page(request, signed, refused: Refused):
        return render(request, "message.html", signed=signed, status=403, title=N_("panel.refused.title"),
                      message=refused.key, link=("/panel/", N_("panel.back_home")))

    # -- API keys
    def _key_rows(keys, lang: str) -> list[dict[str, Any]]:
        return [{"id": k.id, "name": k.name, "scope": SCOPE_NAMES.get(k.scope, k.scope), "prefix": k.prefix,
                 "created": _when(k.created_at, lang, tz), "used": _when(k.last_used_at, lang, tz),
                 "revoked": _when(k.revoked_at, lang, tz), "active": k.active}
                for k in sorted(keys, key=lambda k: (not k.active, -k.id))]

    async def _keys_page(request, signed, *, status: int = 200, error: str = "", created=None,
                         values: dict[str, str] | None = None):
        keys, refused = await _run(signed, lambda db: apikey_admin.list_keys(db, signed.actor, record=False))
        if refused:
            return _refused_page(request, signed, refused)
        return render(request, "apikeys.html", signed=signed, status=status, error=error, created=created,
                      keys=_key_rows(keys, signed.lang), scopes=[(s, SCOPE_NAMES[s]) for s in SCOPE_NAMES],
                      values=values or {"name": "", "scope": "public"})

    @r.get("/apikeys")
    async def apikeys_page(request: Request, signed: Signed = Depends(keys_admin)):
        return await _keys_page(request, signed)

    @r.post("/apikeys")
    async def apikey_create(request: Request, signed: Signed = Depends(keys_admin)):
        form = await request.form()
        values = {"name": str(form.get("name", "")).strip()[:100], "scope": str(form.get("scope", "public"))}

        def create(db):
            key, plain = apikey_admin.create(db, signed.actor, values["name"], values["scope"])
            return {"id": key.id, "name": key.name, "scope": SCOPE_NAMES.get(key.scope, key.scope), "plain": plain}

        try:
            created, refused = await _run(signed, create)
        except apikey_admin.ApiKeyInputError as exc:
            return await _keys_page(request, signed, status=400, values=values,
                                    error=translator(signed.lang)(exc.key, **exc.params))
        if refused:
            return _refused_page(request, signed, refused)
        # shown in this response only (Cache-Control: no-store), never again
        return await _keys_page(request, signed, status=201, created=created)

    @r.get("/apikeys/{kid}/revoke")
    async def apikey_revoke_page(request: Request, kid: int, signed: Signed = Depends(keys_admin)):
        keys, refused = await _run(signed, lambda db: apikey_admin.list_keys(db, signed.actor, record=False))
        if refused:
            return _refused_page(request, signed, refused)
        key = next((k for k in keys if k.id == kid), None)
        if key is None or not key.active:
            return render(request, "message.html", signed=signed, status=404, title=N_("panel.apikeys.title"),
                          message=N_("panel.apikeys.missing_plain"), link=("/panel/apikeys", N_("panel.apikeys.back")))
        return render(request, "apikey_revoke.html", signed=signed, key=_key_rows([key], signed.lang)[0])

    @r.post("/apikeys/{kid}/revoke")
    async def apikey_revoke(request: Request, kid: int, signed: Signed = Depends(keys_admin)):
        try:
            done, refused = await _run(signed, lambda db: apikey_admin.revoke(db, signed.actor, str(kid)))
        except apikey_admin.ApiKeyInputError as exc:
            return await _keys_page(request, signed, status=404, error=translator(signed.lang)(exc.key, **exc.params))
        if refused:
            return _refused_page(request, signed, refused)
        return redirect("/panel/apikeys", "key_revoked" if done[1] else "key_already_revoked")

    # -- the audit log
    @r.get("/audit")
    async def audit_page(request: Request, signed: Signed = Depends(audit_reader)):
        f, values = audit_filter(request.query_params)
        try:
            page = int(request.query_params.get("page", "1"))
        except ValueError:
            page = 1
        found, refused = await _run(signed, lambda db: audit_log.read(db, signed.actor, f, page=page, tz=tz))
        if refused:
            return _refused_page(request, signed, refused)
        query = {k: v for k, v in values.items() if v}
        link = lambda n: "/panel/audit?" + urlencode({**query, "page": n})  # noqa: E731
        rows = [{"id": a.id, "at": _when(a.at, signed.lang, tz), "actor": a.actor, "name": found.names.get(a.actor, ""),
                 "action": a.action, "target": a.target, "details": audit_log.details_text(a.details)}
                for a in found.rows]
        return render(request, "audit.html", signed=signed, rows=rows, values=values, total=found.total,
                      page=found.page, pages=found.pages, actions=found.actions,
                      prev=link(found.page - 1) if found.page > 1 else "",
                      next=link(found.page + 1) if found.page < found.pages else "",
                      csv="/panel/audit.csv" + ("?" + urlencode(query) if query else ""))

    @r.get("/audit.csv")
    async def audit_csv(request: Request, signed: Signed = Depends(audit_reader)):
        f, _ = audit_filter(request.query_params)
        done, refused = await _run(signed, lambda db: audit_log.export_csv(db, signed.actor, f, tz=tz))
        if refused:
            return _refused_page(request, signed, refused)
        body, _count = done
        stamp = utcnow().strftime("%Y%m%d-%H%M")
        return Response("\ufeff" + body, media_type="text/csv; charset=utf-8",
                        headers={"content-disposition": f'attachment; filename="audit-{stamp}.csv"'})

    return r
