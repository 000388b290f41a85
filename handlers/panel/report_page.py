"""The console's report page, /panel/reports/{code}, its actions, and /panel/reports/new (a report
filed on a resident's behalf). Every action is a function of conversations/domain/triage.py (the
actor checked, the change, its audit row and outbox rows in one transaction); a refusal is audited
in a transaction of its own and answered 403. Photos and voice notes are served here only, to a
signed-in staff member (viewers get a blurred copy, and nothing of a hidden photo).

After a change the browser goes back to the page (POST → 303 → GET) with a notice; an error
shows the page again with the error at the top (400)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from conversations import geo, notify
from conversations.domain import triage
from conversations.i18n import N_, format_when, t_in, translator
from conversations.permissions import Refused, can
from conversations.staff_admin import refusal
from handlers.files import IMAGE_TYPES, stored_file
from handlers.panel.web import Guard, Signed, redirect, render
from storage import media as media_store
from storage import reports as rp
from storage.db import aware, transaction, utcnow
from storage.models import Resident, Staff

AUDIO_TYPES = frozenset({"audio/ogg", "audio/mpeg", "audio/mp4", "audio/amr"})
NOTICE_OF = {"status": "status_changed", "note": "note_saved", "ask": "question_sent", "assign": "assigned",
             "merge": "merged", "unmerge": "unmerged", "photo": "photo_changed", "pin": "pin_moved",
             "category": "category_changed"}


def _run(app, fn, *args, **kw):
    def go():
        with transaction(app.db) as db:
            return fn(db, *args, **kw)
    return run_in_threadpool(go)


@dataclass
class Shown:
    """A file of the report as the page shows it."""

    id: int
    kind: str
    token: str
    hidden: bool
    blurred: bool


def router(app) -> APIRouter:
    r = APIRouter(prefix="/panel")
    settings, catalog = app.settings, app.catalog
    tz = catalog.municipality.timezone
    signed_in = Guard(app)

    # -- on a resident's behalf (declared before /reports/{code})
    @r.get("/reports/new")
    async def new_page(request: Request, signed: Signed = Depends(signed_in)):
        return _new_form(request, signed, {})

    def _new_form(request, signed, values, *, status: int = 200, error: str = ""):
        lang = signed.lang
        return render(request, "report_new.html", signed=signed, status=status, error=error, values=values,
                      may_file=can(signed.actor, "report.file"),
                      categories=[(c.key, c.name.get(lang)) for c in catalog.categories],
                      mahalles=[(n.key, n.name) for n in catalog.neighbourhoods])

    @r.post("/reports/new")
    async def new_file(request: Request, signed: Signed = Depends(signed_in)):
        form = await request.form()
        values = {k: str(form.get(k, "")).strip() for k in ("category", "description", "mahalle", "lat", "lon",
                                                             "street", "whatsapp")}
        values["consent"] = form.get("consent") == "1"
        upload = form.get("photo")
        photo = await upload.read() if hasattr(upload, "read") else b""
        try:
            lat, lon = _point(values["lat"], values["lon"])
        except ValueError:
            return _new_form(request, signed, values, status=400,
                             error=translator(signed.lang)("report.location_bad"))

        def file(db):
            return triage.file_on_behalf(
                db, signed.actor, catalog=catalog, category=values["category"], description=values["description"],
                mahalle=values["mahalle"] or None, lat=lat, lon=lon, street=values["street"], photo=photo or None,
                media_dir=settings.media_dir, limits=media_store.Limits.from_settings(settings),
                whatsapp=values["whatsapp"], consent=values["consent"],
                notice_version=settings.privacy_notice_version, tz=tz).code

        try:
            code = await _run(app, file)
        except Refused as refused:
            return await _refused(request, signed, refused)
        except triage.TriageError as err:
            return _new_form(request, signed, values, status=400, error=translator(signed.lang)(err.key, **err.params))
        return redirect(f"/panel/reports/{code}", "filed")

    # -- the page
    @r.get("/reports/{code}")
    async def page(request: Request, code: str, signed: Signed = Depends(signed_in)):
        return await _page(request, signed, code)

    async def _page(request, signed: Signed, code: str, *, status: int = 200, error: str = "",
                    form: dict[str, Any] | None = None):
        chosen = form or {}
        wanted_status = chosen.get("status") or request.query_params.get("status", "")
        wanted_template = chosen.get("template") or request.query_params.get("template", "")
        context = await _run(app, _context, signed, code, wanted_status, wanted_template)
        if context is None:
            return render(request, "message.html", signed=signed, status=404, title=N_("panel.report.title"),
                          message=N_("panel.report.missing"), link=("/panel/", N_("panel.back_home")))
        if chosen.get("notes"):
            context["notes"] = {**context["notes"], **chosen["notes"]}
        return render(request, "report.html", signed=signed, status=status, error=error, **context)

    def _mahalle_name(report, t) -> str:
        """The report's mahalle; for a pin without one, the mahalle the pin is in (said so)."""
        hood = catalog.neighbourhood(report.mahalle) if report.mahalle else None
        if hood is not None:
            return hood.name
        if report.latitude is not None and report.longitude is not None:
            found = geo.mahalle_of((report.latitude, report.longitude), catalog.neighbourhoods)
            if found:
                return t("panel.report.mahalle_from_pin", mahalle=catalog.neighbourhood(found).name)
        return report.mahalle or ""

    def _context(db, signed: Signed, code: str, wanted_status: str, wanted_template: str):
        report = rp.get_by_code(db, code)
        if report is None:
            return None
        lang, t = signed.lang, translator(signed.lang)
        staff_view = signed.actor.role in ("admin", "staff")
        events = rp.history_of(db, report.id)
        names = triage.staff_names_for(db, events)
        history = [{"when": format_when(e.at, lang, tz), "who": triage.actor_name(t, e.actor, report, names),
                    "what": triage.event_text(t, e, report, catalog, names, lambda s: t(notify.STATUS_KEYS.get(s, s))),
                    "note": e.note if triage.shows_note(e) else "", "internal": e.internal,
                    "kind": e.kind} for e in events]
        files = []
        for m in rp.media_of(db, report.id):
            if not staff_view and m.kind == "photo" and m.hidden:
                continue
            files.append(Shown(m.id, m.kind, m.token, m.hidden, bool(m.blurred_path)))
        resident = db.get(Resident, report.resident_id) if report.resident_id else None
        cat = catalog.category(report.category)
        department = triage.department_of(report, catalog)
        dep = catalog.department(department) if department else None
        assignee = db.get(Staff, report.assignee_id) if report.assignee_id else None
        due = report.due_at
        overdue = bool(due and aware(due) < utcnow() and report.status in rp.OPEN_STATUSES)
        languages = triage.audience_languages(db, report)
        targets = [s for s in rp.STATUSES if s not in ("new", "merged") and s != report.status]
        status = wanted_status if wanted_status in targets else (targets[0] if targets else "")
        templates = catalog.templates_for(status, report.category) if status else []
        template = wanted_template if any(tp.key == wanted_template for tp in templates) else ""
        note_langs = list(languages) or [lang]
        notes = {code_: triage.template_text(catalog, template, code_, report) if template else ""
                 for code_ in note_langs}
        people = [(s.id, s.name or f"#{s.id}") for s in db.exec(
            _active_staff()).all()]
        merged_into = db.get(rp.Report, report.merged_into_id) if report.merged_into_id else None
        return {
            "report": report, "code": report.code, "files": files, "history": history,
            "may_change": triage.may_change(signed.actor, report, catalog),
            "status_name": t(notify.STATUS_KEYS.get(report.status, report.status)),
            "category_name": cat.name.get(lang) if cat else report.category,
            "mahalle_name": _mahalle_name(report, t),
            "department": department, "department_name": dep.name.get(lang) if dep else "",
            "assignee_name": (assignee.name or f"#{assignee.id}") if assignee else "",
            "assignee_id": assignee.id if assignee else 0,
            "due": format_when(due, lang, tz) if due else "", "overdue": overdue,
            "created": format_when(report.created_at, lang, tz),
            "resident_language": t_in(resident.locale, "language.name") if resident else "",
            "filed_by_staff": report.channel == triage.FILED_CHANNEL,
            "languages": [(code_, t_in(code_, "language.name"), n) for code_, n in languages.items()],
            "language_list": t.join([f"{t_in(code_, 'language.name')} ({n})" for code_, n in languages.items()]),
            "note_langs": [(code_, t_in(code_, "language.name")) for code_ in note_langs],
            "notes": notes, "targets": [(s, t(notify.STATUS_KEYS[s])) for s in targets], "next_status": status,
            "templates": [(tp.key, tp.title.get(lang)) for tp in templates], "template": template,
            "departments": [(d.key, d.name.get(lang)) for d in catalog.departments],
            "categories": [(c.key, c.name.get(lang)) for c in catalog.categories], "people": people,
            "merged_into": merged_into.code if merged_into else "",
            "can_ask": report.resident_id is not None and bool(rp.consenting(db, [report.resident_id])),
            "tiles": getattr(settings, "panel_tile_url", "") or "",          # the map's setting (issue 15)
            "attribution": getattr(settings, "panel_tile_attribution", "") or "",
        }

    # -- the files
    @r.get("/reports/{code}/media/{token}")
    async def media(request: Request, code: str, token: str, signed: Signed = Depends(signed_in)):
        def find(db):
            item = db.exec(_media_by_token(token)).first()
            report = db.get(rp.Report, item.report_id) if item is not None else None
            if report is None or report.code != code.strip().upper():
                return None
            if item.kind == "photo":
                staff_view = signed.actor.role in ("admin", "staff")
                path = item.path if staff_view else rp.shown_photo(item)
                return (path, IMAGE_TYPES) if path else None
            return item.path, AUDIO_TYPES

        found = await _run(app, find)
        response = None
        if found is not None:
            root = Path(settings.media_dir).resolve()
            path = Path(found[0]).resolve()
            response = stored_file(path, allowed=found[1]) if path.is_relative_to(root) else None
        return response or Response(status_code=404)

    # -- the actions
    @r.post("/reports/{code}/status")
    async def set_status(request: Request, code: str, signed: Signed = Depends(signed_in)):
        form = await request.form()
        status = str(form.get("status", ""))
        notes = {lang: str(form.get(f"note_{lang}", "")) for lang in ("tr", "en", "ar") if f"note_{lang}" in form}
        filled = {lang: text for lang, text in notes.items() if text.strip()}
        single = len(notes) <= 1

        def change(db):
            return triage.change_status(db, signed.actor, code, status,
                                        note=next(iter(filled.values()), "") if single else "",
                                        notes=None if single else filled, catalog=catalog, tz=tz)

        return await _act(request, signed, code, "status", change,
                          form={"status": status, "template": str(form.get("template", "")), "notes": notes})

    @r.post("/reports/{code}/note")
    async def note(request: Request, code: str, signed: Signed = Depends(signed_in)):
        text = str((await request.form()).get("text", ""))
        return await _act(request, signed, code, "note",
                          lambda db: triage.internal_note(db, signed.actor, code, text, catalog=catalog))

    @r.post("/reports/{code}/ask")
    async def ask(request: Request, code: str, signed: Signed = Depends(signed_in)):
        text = str((await request.form()).get("question", ""))
        return await _act(request, signed, code, "ask",
                          lambda db: triage.ask_reporter(db, signed.actor, code, text, catalog=catalog, tz=tz))

    @r.post("/reports/{code}/assign")
    async def assign(request: Request, code: str, signed: Signed = Depends(signed_in)):
        form = await request.form()
        department = str(form.get("department", "")) or None
        person = str(form.get("assignee", ""))
        assignee = int(person) if person.isdigit() else None
        return await _act(request, signed, code, "assign", lambda db: triage.assign(
            db, signed.actor, code, department=department, assignee_id=assignee, catalog=catalog))

    @r.post("/reports/{code}/category")
    async def category(request: Request, code: str, signed: Signed = Depends(signed_in)):
        key = str((await request.form()).get("category", ""))
        return await _act(request, signed, code, "category",
                          lambda db: triage.change_category(db, signed.actor, code, key, catalog=catalog))

    @r.post("/reports/{code}/pin")
    async def pin(request: Request, code: str, signed: Signed = Depends(signed_in)):
        form = await request.form()
        try:
            lat, lon = _point(str(form.get("lat", "")), str(form.get("lon", "")))
            if lat is None:
                raise ValueError
        except ValueError:
            return await _page(request, signed, code, status=400, error=translator(signed.lang)("report.location_bad"))
        return await _act(request, signed, code, "pin",
                          lambda db: triage.move_pin(db, signed.actor, code, lat, lon, catalog=catalog))

    @r.post("/reports/{code}/photo/{media_id}")
    async def photo(request: Request, code: str, media_id: int, signed: Signed = Depends(signed_in)):
        action = str((await request.form()).get("action", ""))
        return await _act(request, signed, code, "photo", lambda db: triage.set_photo(
            db, signed.actor, code, media_id, action, catalog=catalog, media_dir=settings.media_dir))

    @r.post("/reports/{code}/merge")
    async def merge(request: Request, code: str, signed: Signed = Depends(signed_in)):
        form = await request.form()
        into = str(form.get("into", "")).strip().upper()
        override = form.get("override") == "1"
        if form.get("confirm") != "1":
            return await _merge_confirm(request, signed, code, into, override)
        return await _act(request, signed, code, "merge", lambda db: triage.merge(
            db, signed.actor, code, into, override=override, catalog=catalog, tz=tz))

    async def _merge_confirm(request, signed, code, into, override):
        def look(db):
            source, target = rp.get_by_code(db, code), rp.get_by_code(db, into)
            if source is None or target is None or source.id == target.id:
                return None
            triage._changeable(db, signed.actor, code, catalog)  # Refused when they may not
            found = triage.merge_check(source, target)
            lang = signed.lang
            return {"code": source.code, "into": target.code, "check": found, "override": override,
                    "limit": int(triage.MERGE_MAX_METRES), "metres": int(found.metres or 0),
                    "source_category": catalog.category(source.category).name.get(lang),
                    "target_category": catalog.category(target.category).name.get(lang),
                    "people": len(rp.to_be_told(db, source))}

        try:
            found = await _run(app, look)
        except Refused as refused:
            return await _refused(request, signed, refused)
        if found is None:
            return await _page(request, signed, code, status=400,
                               error=translator(signed.lang)("report.unknown_code", code=into or "—"))
        return render(request, "report_merge.html", signed=signed, **found)

    @r.post("/reports/{code}/unmerge")
    async def unmerge(request: Request, code: str, signed: Signed = Depends(signed_in)):
        return await _act(request, signed, code, "unmerge",
                          lambda db: triage.unmerge(db, signed.actor, code, catalog=catalog, tz=tz))

    # -- helpers bound to this app
    async def _act(request, signed, code, what, fn, *, form=None):
        try:
            await _run(app, fn)
        except Refused as refused:
            return await _refused(request, signed, refused)
        except triage.TriageError as err:
            return await _page(request, signed, code, status=400, form=form,
                               error=translator(signed.lang)(err.key, **err.params))
        return redirect(f"/panel/reports/{code.strip().upper()}", NOTICE_OF[what])

    async def _refused(request, signed, refused: Refused):
        await _run(app, lambda db: refusal(db, signed.actor, refused, request.url.path[:128]))
        return render(request, "message.html", signed=signed, status=403, title=N_("panel.refused.title"),
                      message=N_("panel.refused.department") if refused.action == "report.change"
                      and signed.actor.role == "staff" else refused.key, link=("/panel/", N_("panel.back_home")))

    return r


def _point(lat: str, lon: str) -> tuple[float | None, float | None]:
    """A pin from two typed numbers (a decimal comma too); (None, None) when both are empty."""
    if not lat.strip() and not lon.strip():
        return None, None
    return float(lat.replace(",", ".")), float(lon.replace(",", "."))


def _active_staff():
    from sqlmodel import select

    return (select(Staff).where(Staff.active.is_(True), Staff.role.in_(("admin", "staff")))
            .order_by(Staff.name, Staff.id))


def _media_by_token(token: str):
    from sqlmodel import select

    return select(rp.ReportMedia).where(rp.ReportMedia.token == token)
