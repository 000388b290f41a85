"""The staff console's report triage (issue 15): the home dashboard (/panel/), the list
(/panel/reports: filters, sorting, paging, bulk assign and status, CSV and GeoJSON exports of
exactly the filtered set), the map (/panel/map and its data /panel/map.json) and the live
updates of the list (/panel/live.json, short polling with a `since` cursor).

One filter (`filters_of` → storage.report_list.Filters) serves the list, the exports, the map and
the live updates. A staff member sees their departments' reports unless they choose otherwise
(the department filter's preset); admins and viewers see all. Bulk actions call
conversations/bulk.py, which checks each report against the actor's role and departments.
Report pages (/panel/reports/{code}) are linked, not built here.
"""
from __future__ import annotations

import csv
import io
import json
from datetime import date, datetime, time, timedelta, timezone
from typing import Any
from urllib.parse import urlencode
from zoneinfo import ZoneInfo

from babel.numbers import format_decimal
from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response
from sqlmodel import select
from starlette.concurrency import run_in_threadpool

from conversations import bulk as bulk_actions
from conversations import staff_admin
from conversations.i18n import N_, format_when, translator
from conversations.notify import STATUS_KEYS
from conversations.permissions import Refused, can_some
from handlers.panel.web import Guard, Signed, fragment, redirect, render
from storage import report_list as rl
from storage import reports as rp
from storage.audit import audit
from storage.db import transaction, utcnow
from storage.models import Staff

PAGE_SIZES = (25, 50, 100, 200)
# pin and legend colours per status (AA against white for the legend's text is the label's, not these)
STATUS_COLOURS = {"new": "#c2410c", "seen": "#a16207", "in_progress": "#1d4ed8", "resolved": "#15803d",
                  "rejected": "#6b7280", "merged": "#7c3aed"}
STATUS_GROUPS = {"open": rp.OPEN_STATUSES, "closed": rp.CLOSED_STATUSES}
SORT_LABELS = {"code": N_("panel.reports.col_code"), "created": N_("panel.reports.col_created"),
               "status": N_("panel.reports.col_status"), "category": N_("panel.reports.col_category"),
               "mahalle": N_("panel.reports.col_mahalle"), "department": N_("panel.reports.col_department"),
               "due": N_("panel.reports.col_due")}
BULK_NOTICES = {"done": "bulk_done", "partial": "bulk_partial", "none": "bulk_none"}
CSV_FIELDS = ("code", "status", "category", "department", "mahalle", "latitude", "longitude", "address",
              "description", "created_at", "updated_at", "due_at", "overdue", "assignee", "first_response_at",
              "closed_at", "supporters", "channel")
LIVE_LIMIT = 50


def _in_db(app, fn, *args, **kw):
    def run():
        with transaction(app.db) as db:
            return fn(db, *args, **kw)
    return run_in_threadpool(run)


# ---------------------------------------------------------------- the filter
def _local_day(value: str, tz: ZoneInfo, *, next_day: bool = False) -> datetime | None:
    try:
        day = date.fromisoformat((value or "").strip())
    except ValueError:
        return None
    if next_day:
        day += timedelta(days=1)
    return datetime.combine(day, time(0), tz).astimezone(timezone.utc)


def filters_of(app, signed: Signed, params) -> tuple[rl.Filters, dict[str, str]]:
    """The Filters of a query string, and the form's values (to show what was chosen). Without a
    submitted form (`f` absent) a staff member's department filter is "mine"."""
    catalog = app.catalog
    tz = ZoneInfo(catalog.municipality.timezone or "Europe/Istanbul")
    def get(name: str) -> str:
        return str(params.get(name, "") or "").strip()[:200]
    values = {name: get(name) for name in ("status", "category", "mahalle", "department", "assignee", "from", "to",
                                           "q", "overdue")}
    if "f" not in params and "department" not in params and signed.staff.role == "staff" and signed.departments:
        values["department"] = "mine"
    status = values["status"]
    statuses = STATUS_GROUPS.get(status) or ((status,) if status in rp.STATUSES else ())
    if not statuses:
        values["status"] = ""
    category = values["category"] if catalog.category(values["category"]) else ""
    values["category"] = category
    mahalle = values["mahalle"] if catalog.neighbourhood(values["mahalle"]) else ""
    values["mahalle"] = mahalle
    department = values["department"]
    if department == "mine":
        departments = tuple(signed.departments) or ("",)
    elif catalog.department(department) or department == "none":
        departments = ("",) if department == "none" else (department,)
    else:
        departments, values["department"] = (), ""
    assignee_value = values["assignee"]
    assignee = None
    if assignee_value == "me":
        assignee = signed.staff.id
    elif assignee_value == "none":
        assignee = rl.NOBODY
    elif assignee_value.isdigit():
        assignee = int(assignee_value)
    else:
        values["assignee"] = ""
    since, until = _local_day(values["from"], tz), _local_day(values["to"], tz, next_day=True)
    values["from"] = values["from"] if since else ""
    values["to"] = values["to"] if until else ""
    overdue = values["overdue"] in ("1", "on", "true")
    values["overdue"] = "1" if overdue else ""
    return rl.Filters(statuses=tuple(statuses), categories=(category,) if category else (), mahalle=mahalle,
                      departments=departments, assignee=assignee, since=since, until=until, overdue=overdue,
                      text=values["q"][:100]), values


def query_of(values: dict[str, str], **extra: Any) -> str:
    """The query string of these filter values (and sort, page...): only what is set, `f=1` to
    say the form was submitted (so an empty department means all)."""
    pairs = [("f", "1")] + [(k, v) for k, v in values.items() if v] + [(k, str(v)) for k, v in extra.items()
                                                                    if v not in (None, "")]
    return urlencode(pairs)


# ---------------------------------------------------------------- rows for the pages
class Names:
    """Display names of a language: categories, mahalleler, departments, staff, statuses."""

    def __init__(self, app, lang: str, staff: dict[int, str]) -> None:
        self.app, self.lang, self.staff = app, lang, staff
        self.t = translator(lang)
        self.tz = app.catalog.municipality.timezone or "Europe/Istanbul"

    def category(self, key: str) -> str:
        cat = self.app.catalog.category(key)
        return cat.name.get(self.lang) if cat else key

    def mahalle(self, key: str | None) -> str:
        hood = self.app.catalog.neighbourhood(key) if key else None
        return hood.name if hood else (key or "")

    def department(self, key: str) -> str:
        dep = self.app.catalog.department(key) if key else None
        return dep.name.get(self.lang) if dep else key

    def status(self, key: str) -> str:
        return self.t(STATUS_KEYS[key]) if key in STATUS_KEYS else key

    def when(self, dt: datetime | None) -> str:
        return format_when(dt, self.lang, self.tz) if dt else ""


def _staff_names(db) -> dict[int, str]:
    return {s.id: s.name or f"#{s.id}" for s in db.exec(select(Staff).order_by(Staff.name, Staff.id))}


def _assignable(db) -> list[tuple[int, str]]:
    return [(s.id, s.name or f"#{s.id}") for s in db.exec(
        select(Staff).where(Staff.active.is_(True), Staff.role != "viewer").order_by(Staff.name, Staff.id))]


def row_of(report: rp.Report, names: Names, now: datetime) -> dict[str, Any]:
    overdue = rl.is_overdue(report, now)
    return {"code": report.code, "status": report.status, "status_name": names.status(report.status),
            "category": names.category(report.category), "mahalle": names.mahalle(report.mahalle),
            "department": names.department(report.department),
            "assignee": names.staff.get(report.assignee_id, "") if report.assignee_id else "",
            "created": names.when(report.created_at), "created_iso": rp._iso(report.created_at),
            "due": names.when(report.due_at) if report.status in rp.OPEN_STATUSES else "", "overdue": overdue,
            "supporters": report.supporters,
            "summary": _summary(report), "erased": report.erased_at is not None,
            "href": f"/panel/reports/{report.code}"}


def _cell(value: Any) -> Any:
    """A CSV cell a spreadsheet shows as text: one starting with = + - @ (a formula) gets a quote."""
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@", "\t", "\r"):
        return "'" + value
    return value


def _summary(report: rp.Report) -> str:
    text = " ".join((report.description or "").split())
    return text if len(text) <= 90 else text[:89].rstrip() + "…"


def _choices(app, signed: Signed, lang: str, assignable: list[tuple[int, str]]) -> dict[str, Any]:
    t = translator(lang)
    catalog = app.catalog
    statuses = [("open", t("panel.reports.status_open")), ("closed", t("panel.reports.status_closed"))]
    statuses += [(s, t(STATUS_KEYS[s])) for s in rp.STATUSES]
    departments = []
    if signed.departments:
        departments.append(("mine", t("panel.reports.department_mine")))
    departments += [(d.key, d.name.get(lang)) for d in catalog.departments]
    departments.append(("none", t("panel.reports.department_none")))
    assignees = [("me", t("panel.reports.assignee_me")), ("none", t("panel.reports.assignee_none"))]
    assignees += [(str(i), n) for i, n in assignable]
    return {"statuses": statuses, "departments": departments, "assignees": assignees,
            "categories": sorted(((c.key, c.name.get(lang)) for c in catalog.categories), key=lambda x: x[1]),
            "mahalleler": sorted(((n.key, n.name) for n in catalog.neighbourhoods), key=lambda x: x[1]),
            "bulk_statuses": [(s, t(STATUS_KEYS[s])) for s in rp.STATUSES if s != "merged"],
            "bulk_assignees": [("none", t("panel.bulk.assign_nobody"))] + [(str(i), n) for i, n in assignable]}


def _centre(app) -> tuple[float, float]:
    points = [n.centre for n in app.catalog.neighbourhoods if n.centre] or list(app.catalog.municipality.boundary)
    if not points:
        return (39.0, 35.0)
    return (sum(p[0] for p in points) / len(points), sum(p[1] for p in points) / len(points))


# ---------------------------------------------------------------- routes
def router(app) -> APIRouter:
    r = APIRouter(prefix="/panel")
    signed_in = Guard(app)
    settings = app.settings

    def now() -> datetime:
        return utcnow()

    # -- home: the dashboard
    @r.get("/")
    async def dashboard(request: Request, signed: Signed = Depends(signed_in)):
        lang = signed.lang
        tz = ZoneInfo(app.catalog.municipality.timezone or "Europe/Istanbul")
        at = now()
        today = datetime.combine(at.astimezone(tz).date(), time(0), tz).astimezone(timezone.utc)
        mine = tuple(signed.departments) if signed.staff.role == "staff" else ()
        board = await _in_db(app, lambda db: rl.dashboard(db, today_start=today, window_start=at - timedelta(days=30),
                                                          departments=mine, now=at))
        names = Names(app, lang, {})
        median = board.median_first_response
        scope = "mine" if mine else ""
        statuses = [{"key": s, "name": names.status(s), "count": board.by_status[s], "colour": STATUS_COLOURS[s],
                     "href": "/panel/reports?" + query_of({"status": s, "department": scope})} for s in rp.STATUSES]
        overdue = [{"name": names.department(k) or translator(lang)("panel.reports.department_none"), "count": n,
                    "href": "/panel/reports?" + query_of({"overdue": "1", "department": k or "none"})}
                   for k, n in sorted(board.overdue_by_department.items(), key=lambda x: -x[1])]
        return render(request, "dashboard.html", signed=signed, statuses=statuses, overdue=overdue,
                      overdue_total=sum(board.overdue_by_department.values()), new_today=board.new_today,
                      new_today_href="/panel/reports?" + query_of({"from": at.astimezone(tz).date().isoformat(),
                                                                    "department": scope}),
                      median_hours=None if median is None else format_decimal(round(median / 3600, 1), locale=lang),
                      responses=len(board.first_responses), mine=bool(mine))

    # -- the list
    @r.get("/reports")
    async def report_list(request: Request, signed: Signed = Depends(signed_in)):
        params = request.query_params
        filters, values = filters_of(app, signed, params)
        sort = params.get("sort", "created")
        sort = sort if sort in rl.SORTS else "created"
        direction = params.get("dir", "")
        descending = None if direction not in ("asc", "desc") else direction == "desc"
        try:
            size = int(params.get("size", "50"))
            offset = max(0, int(params.get("offset", "0")))
        except ValueError:
            size, offset = 50, 0
        size = size if size in PAGE_SIZES else 50
        at = now()

        def load(db):
            found = rl.page(db, filters, sort=sort, descending=descending, offset=offset, limit=size, now=at)
            cursor = rl.latest_change(db, filters, now=at)
            return found, cursor, _staff_names(db), _assignable(db)

        found, cursor, staff_names, assignable = await _in_db(app, load)
        names = Names(app, signed.lang, staff_names)
        rows = [row_of(rep, names, at) for rep in found.reports]
        base = query_of(values)
        columns = []
        for key, label in SORT_LABELS.items():
            current = found.sort == key
            next_desc = not found.descending if current else rl.SORTS[key][1]
            columns.append({"key": key, "label": label, "current": current,
                            "aria": ("descending" if found.descending else "ascending") if current else "none",
                            "href": "/panel/reports?" + query_of(values, sort=key, dir="desc" if next_desc else "asc",
                                                                  size=size if size != 50 else "")})
        keep = {"sort": found.sort if found.sort != "created" else "",
                "dir": direction, "size": size if size != 50 else ""}
        paging = {"first": found.offset + 1 if found.total else 0, "last": found.offset + len(rows),
                  "total": found.total,
                  "previous": "/panel/reports?" + query_of(values, **keep, offset=max(0, found.offset - size))
                  if found.has_previous else "",
                  "next": "/panel/reports?" + query_of(values, **keep, offset=found.offset + size)
                  if found.has_next else ""}
        here = "/panel/reports?" + query_of(values, **keep, offset=found.offset or "")
        live = found.offset == 0 and found.sort == "created" and found.descending
        return render(request, "reports_list.html", signed=signed, rows=rows, values=values, columns=columns,
                      choices=_choices(app, signed, signed.lang, assignable), paging=paging, size=size,
                      sizes=PAGE_SIZES, here=here, base=base, can_change=can_some(signed.actor, "report.change"),
                      export_csv="/panel/reports.csv?" + base, export_geojson="/panel/reports.geojson?" + base,
                      map_href="/panel/map?" + base, cursor=rp._iso(cursor) or "",
                      live_src="/panel/live.json?" + base, live_insert=live, keep=keep)

    @r.get("/live.json")
    async def live(request: Request, signed: Signed = Depends(signed_in)):
        filters, values = filters_of(app, signed, request.query_params)
        try:
            since = datetime.fromisoformat(request.query_params.get("since", ""))
        except ValueError:
            since = None
        at = now()

        def load(db):
            cursor = rl.latest_change(db, filters, now=at)
            if since is None:
                return cursor, [], {}
            changed = rl.changed_since(db, filters, since, limit=LIVE_LIMIT, now=at)
            return cursor, changed, _staff_names(db)

        cursor, changed, staff_names = await _in_db(app, load)
        names = Names(app, signed.lang, staff_names)
        can_change = can_some(signed.actor, "report.change")
        rows = [{"code": rep.code, "created": rp._iso(rep.created_at),
                 "html": fragment("report_row.html", signed.lang, row=row_of(rep, names, at), can_change=can_change)}
                for rep in changed]
        return JSONResponse({"cursor": rp._iso(cursor) if cursor else (since.isoformat() if since else ""),
                             "rows": rows, "more": len(changed) >= LIVE_LIMIT})

    # -- exports: exactly the filtered set
    @r.get("/reports.csv")
    async def export_csv(request: Request, signed: Signed = Depends(signed_in)):
        filters, _ = filters_of(app, signed, request.query_params)
        at = now()

        def build(db):
            staff_names = _staff_names(db)
            out = io.StringIO()
            writer = csv.writer(out)
            writer.writerow(CSV_FIELDS)
            count = 0
            for rep in rl.iterate(db, filters, now=at):
                writer.writerow([_cell(v) for v in (
                                 rep.code, rep.status, rep.category, rep.department, rep.mahalle or "",
                                 "" if rep.latitude is None else rep.latitude,
                                 "" if rep.longitude is None else rep.longitude, rep.address, rep.description,
                                 rp._iso(rep.created_at), rp._iso(rep.updated_at), rp._iso(rep.due_at) or "",
                                 "1" if rl.is_overdue(rep, at) else "0",
                                 staff_names.get(rep.assignee_id, "") if rep.assignee_id else "",
                                 rp._iso(rep.first_response_at) or "", rp._iso(rep.closed_at) or "",
                                 rep.supporters, rep.channel)])
                count += 1
            audit(db, signed.actor.who, "panel.export", "reports.csv", count=count)
            return out.getvalue()

        body = await _in_db(app, build)
        stamp = now().strftime("%Y%m%d-%H%M")
        return Response("\ufeff" + body, media_type="text/csv; charset=utf-8",
                        headers={"content-disposition": f'attachment; filename="reports-{stamp}.csv"'})

    @r.get("/reports.geojson")
    async def export_geojson(request: Request, signed: Signed = Depends(signed_in)):
        filters, _ = filters_of(app, signed, request.query_params)
        at = now()

        def build(db):
            features = []
            for rep in rl.iterate(db, filters, now=at):
                geometry = None if rep.latitude is None or rep.longitude is None else {
                    "type": "Point", "coordinates": [rep.longitude, rep.latitude]}
                features.append({"type": "Feature", "id": rep.code, "geometry": geometry, "properties": {
                    "code": rep.code, "status": rep.status, "category": rep.category, "department": rep.department,
                    "mahalle": rep.mahalle, "created_at": rp._iso(rep.created_at), "due_at": rp._iso(rep.due_at),
                    "overdue": rl.is_overdue(rep, at), "supporters": rep.supporters}})
            audit(db, signed.actor.who, "panel.export", "reports.geojson", count=len(features))
            return {"type": "FeatureCollection", "features": features}

        body = await _in_db(app, build)
        stamp = now().strftime("%Y%m%d-%H%M")
        return Response(json.dumps(body, ensure_ascii=False), media_type="application/geo+json",
                        headers={"content-disposition": f'attachment; filename="reports-{stamp}.geojson"'})

    # -- bulk actions
    @r.post("/bulk")
    async def bulk(request: Request, signed: Signed = Depends(signed_in)):
        form = await request.form()
        codes = [str(c) for c in form.getlist("code")]
        action = str(form.get("action", ""))
        back = str(form.get("back", ""))
        back = back if back.startswith("/panel/reports") and "//" not in back else "/panel/reports"
        t = translator(signed.lang)

        def run(db):
            if action == "assign":
                target = str(form.get("assignee", ""))
                assignee = None if target in ("", "none") else int(target) if target.isdigit() else -1
                return bulk_actions.assign(db, signed.actor, codes, assignee, catalog=app.catalog)
            if action == "status":
                return bulk_actions.change_status(db, signed.actor, codes, str(form.get("status", "")),
                                            str(form.get("note", ""))[:1000], catalog=app.catalog,
                                            tz=app.catalog.municipality.timezone or settings.timezone)
            raise bulk_actions.BulkError(N_("panel.bulk.no_action"))

        try:
            outcome = await _in_db(app, run)
        except Refused as refused:
            await _in_db(app, staff_admin.refusal, signed.actor, refused, "/panel/bulk")
            return render(request, "message.html", signed=signed, status=403, title=N_("panel.refused.title"),
                          message=refused.key, link=(back, N_("panel.reports.back")))
        except bulk_actions.BulkError as exc:
            return render(request, "message.html", signed=signed, status=400, title=N_("panel.bulk.title"),
                          message=t(exc.key, **exc.params), link=(back, N_("panel.reports.back")))
        if outcome.refused or outcome.failed:
            kind = "partial"
        else:
            kind = "done" if outcome.changed else "none"
        joiner = "&" if "?" in back else "?"
        return redirect(back + joiner + "notice=" + BULK_NOTICES[kind])

    # -- the map
    @r.get("/map")
    async def map_page(request: Request, signed: Signed = Depends(signed_in)):
        filters, values = filters_of(app, signed, request.query_params)
        assignable = await _in_db(app, _assignable)
        base = query_of(values)
        lat, lon = _centre(app)
        legend = [{"key": s, "name": translator(signed.lang)(STATUS_KEYS[s]), "colour": STATUS_COLOURS[s]}
                  for s in rp.STATUSES]
        return render(request, "map.html", signed=signed, values=values, base=base,
                      choices=_choices(app, signed, signed.lang, assignable), legend=legend,
                      data_src="/panel/map.json?" + base, list_href="/panel/reports?" + base,
                      tiles=settings.panel_tile_url, attribution=settings.panel_tile_attribution,
                      centre=f"{lat:.5f},{lon:.5f}", colours=json.dumps(STATUS_COLOURS),
                      boundary=json.dumps([[round(a, 5), round(b, 5)] for a, b in app.catalog.municipality.boundary]))

    @r.get("/map.json")
    async def map_data(request: Request, signed: Signed = Depends(signed_in)):
        filters, _ = filters_of(app, signed, request.query_params)
        rows, total = await _in_db(app, lambda db: rl.map_points(db, filters, now=now()))
        centres = {n.key: n.centre for n in app.catalog.neighbourhoods if n.centre}
        points, unplaced = [], 0
        for code, status, category, lat, lon, mahalle, late in rows:
            approx = 0
            if lat is None or lon is None:
                centre = centres.get(mahalle or "")
                if centre is None:
                    unplaced += 1
                    continue
                lat, lon, approx = centre[0], centre[1], 1
            points.append([code, status, round(lat, 6), round(lon, 6), approx, 1 if late else 0, category])
        t = translator(signed.lang)
        shown = len(points)
        summary = t("panel.map.summary", shown=shown, total=total)
        if unplaced:
            summary += " " + t("panel.map.unplaced", count=unplaced)
        return JSONResponse({"total": total, "shown": shown, "unplaced": unplaced, "points": points,
                             "summary": summary})

    return r
