"""`katilim reports list | show | set-status | merge | export`: problem reports for operators.

Status changes made here notify the reporter and the followers exactly like a change made by staff
in the chat (outbox rows, delivered by the dispatcher), and are audited with the operator's name.
Exports are open data: one row (CSV) or one feature (GeoJSON) per report, never who reported it.
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import sys
from datetime import datetime, time
from pathlib import Path
from zoneinfo import ZoneInfo

from bot.app import open_db
from bot.catalog import load_catalog
from bot.cli import catalog_key, counted, operator_name
from bot.settings import Settings
from conversations.domain import reports as domain
from conversations.i18n import t_in
from conversations.permissions import Actor
from conversations.text import key_for
from storage import reports as rp
from storage.db import aware, transaction


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("reports", help="problem reports: list, show, change status, export")
    rsub = p.add_subparsers(dest="reports_command", required=True)

    a = rsub.add_parser("list", help="list reports, newest first")
    a.add_argument("--status", choices=list(rp.STATUSES) + ["open"], type=catalog_key([*rp.STATUSES, "open"]))
    a.add_argument("--category", help="category key (see the catalog)")
    a.add_argument("--mahalle", help="mahalle key or name")
    a.add_argument("--limit", type=int, default=100)
    a.set_defaults(func=cmd_list)

    a = rsub.add_parser("show", help="one report with its history and attachments")
    a.add_argument("code")
    a.set_defaults(func=cmd_show)

    a = rsub.add_parser("set-status", help="change a report's status (notifies the reporter and followers)")
    a.add_argument("code")
    a.add_argument("status", choices=[s for s in rp.STATUSES if s != "merged"], type=catalog_key(rp.STATUSES))
    a.add_argument("--note", default="",
                   help="a note sent to the residents and shown in the public Open311 feed (the reason when rejecting)")
    a.set_defaults(func=cmd_set_status)

    a = rsub.add_parser("merge", help="merge a duplicate report into another")
    a.add_argument("code")
    a.add_argument("into")
    a.set_defaults(func=cmd_merge)

    a = rsub.add_parser("export", help="open-data export: CSV or GeoJSON, without residents' identities")
    a.add_argument("--format", choices=["csv", "geojson"], default="csv")
    a.add_argument("--since", help="only reports created on or after this day (YYYY-MM-DD, local time)")
    a.add_argument("-o", "--output", help="file to write (default: standard output)")
    a.set_defaults(func=cmd_export)


_db = open_db


def _tz(settings: Settings, catalog) -> str:
    return catalog.municipality.timezone or settings.timezone


def _local(dt: datetime | None, tz: str) -> str:
    if dt is None:
        return "-"
    return aware(dt).astimezone(ZoneInfo(tz)).strftime("%Y-%m-%d %H:%M")


def _mahalle_key(catalog, value: str | None) -> str | None:
    if not value:
        return None
    from conversations.text import match_mahalle

    if catalog.neighbourhood(value):
        return value
    found = match_mahalle(value, catalog.neighbourhoods, with_keys=True)
    return found[0] if len(found) == 1 else value


def cmd_list(settings: Settings, args) -> int:
    catalog = load_catalog(settings.katilim_catalog)
    tz = _tz(settings, catalog)
    category = key_for(args.category, [c.key for c in catalog.categories]) if args.category else None
    kwargs = {"category": category or args.category, "mahalle": _mahalle_key(catalog, args.mahalle), "limit": args.limit}
    if args.status == "open":
        kwargs["statuses"] = rp.OPEN_STATUSES
    else:
        kwargs["status"] = args.status
    with transaction(_db(settings)) as db:
        rows = rp.list_reports(db, **kwargs)
        print(f"{'code':<16} {'status':<11} {'category':<14} {'mahalle':<16} {'created':<16} {'sup':>3}")
        for r in rows:
            print(f"{r.code:<16} {r.status:<11} {r.category:<14} {(r.mahalle or '-'):<16} "
                  f"{_local(r.created_at, tz):<16} {r.supporters:>3}")
        print(counted(len(rows), "report"), file=sys.stderr)
    return 0


def cmd_show(settings: Settings, args) -> int:
    catalog = load_catalog(settings.katilim_catalog)
    tz = _tz(settings, catalog)
    with transaction(_db(settings)) as db:
        report = rp.get_by_code(db, args.code)
        if report is None:
            print(f"katilim: no report {args.code}", file=sys.stderr)
            return 1
        cat = catalog.category(report.category)
        hood = catalog.neighbourhood(report.mahalle) if report.mahalle else None
        print(f"code:        {report.code}")
        print(f"status:      {report.status}" + (f" ({report.reject_reason})" if report.reject_reason else ""))
        print(f"category:    {report.category}" + (f" ({cat.name.get('tr')})" if cat else ""))
        print(f"mahalle:     {hood.name if hood else report.mahalle or '-'}")
        print(f"address:     {report.address or '-'}")
        print("location:    " + (f"{report.latitude:.6f}, {report.longitude:.6f}" if report.latitude is not None else "-"))
        print(f"created:     {_local(report.created_at, tz)}")
        print(f"updated:     {_local(report.updated_at, tz)}")
        print(f"resolved:    {_local(report.resolved_at, tz)}")
        print(f"supporters:  {report.supporters}   reopened: {report.reopened_count}   rating: {report.rating or '-'}")
        if report.merged_into_id:
            target = rp.get_report(db, report.merged_into_id)
            print(f"merged into: {target.code if target else '?'}")
        print(f"reporter:    {'resident ' + str(report.resident_id) if report.resident_id else '(anonymised)'}")
        print("description:")
        described = t_in(settings.default_locale, "report.erased") if report.erased_at else report.description
        for line in (described or "-").splitlines() or ["-"]:
            print(f"  {line}")
        media = rp.media_of(db, report.id)
        if media:
            print("attachments:")
            for m in media:
                print(f"  {m.kind:<5} {m.path} ({m.content_type or '?'}, {m.size or '?'} bytes)")
        print("history:")
        for e in rp.history_of(db, report.id):
            change = f"{e.from_status or '-'} -> {e.to_status}" if e.to_status else ""
            note = f"  \"{e.note}\"" if e.note else ""
            print(f"  {_local(e.at, tz)}  {e.kind:<9} {change:<24} {e.actor}{note}")
    return 0


def cmd_set_status(settings: Settings, args) -> int:
    catalog = load_catalog(settings.katilim_catalog)
    if args.status == "rejected" and not args.note.strip():
        print("katilim: rejecting needs --note with the reason the residents will see", file=sys.stderr)
        return 2
    with transaction(_db(settings)) as db:
        try:
            changed = domain.change_status(db, Actor.cli(operator_name()), args.code, args.status, note=args.note,
                                           reason=args.note if args.status == "rejected" else "",
                                           catalog=catalog, tz=_tz(settings, catalog))
        except rp.ReportError as err:
            print(f"katilim: {err.key.rsplit('.', 1)[-1].replace('_', ' ')}: {args.code}", file=sys.stderr)
            return 1
        report = changed.report
        print(f"{report.code}: {changed.previous} -> {report.status}; "
              f"{counted(len(changed.told), 'resident')} notified through the outbox")
    return 0


def cmd_merge(settings: Settings, args) -> int:
    catalog = load_catalog(settings.katilim_catalog)
    with transaction(_db(settings)) as db:
        try:
            merged = domain.merge(db, Actor.cli(operator_name()), args.code, args.into, catalog=catalog,
                                  tz=_tz(settings, catalog))
        except rp.ReportError as err:
            print(f"katilim: {err.key.rsplit('.', 1)[-1].replace('_', ' ')}: {args.code}", file=sys.stderr)
            return 1
        print(f"{merged.report.code} merged into {merged.target.code}")
    return 0


def _since(value: str | None, tz: str) -> datetime | None:
    if not value:
        return None
    try:
        day = datetime.strptime(value, "%Y-%m-%d").date()
    except ValueError:
        raise SystemExit(f"katilim: --since must be YYYY-MM-DD, not {value!r}") from None
    return datetime.combine(day, time.min, tzinfo=ZoneInfo(tz))


def export_csv(rows: list[dict]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rp.EXPORT_FIELDS), lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: "" if row[k] is None else row[k] for k in rp.EXPORT_FIELDS})
    return buf.getvalue()


def export_geojson(rows: list[dict]) -> str:
    features = []
    for row in rows:
        has_pin = row["latitude"] is not None and row["longitude"] is not None
        geometry = {"type": "Point", "coordinates": [row["longitude"], row["latitude"]]} if has_pin else None
        properties = {k: row[k] for k in rp.EXPORT_FIELDS if k not in ("latitude", "longitude")}
        features.append({"type": "Feature", "id": row["code"], "geometry": geometry, "properties": properties})
    return json.dumps({"type": "FeatureCollection", "features": features}, ensure_ascii=False, indent=1)


def cmd_export(settings: Settings, args) -> int:
    catalog = load_catalog(settings.katilim_catalog)
    since = _since(args.since, _tz(settings, catalog))
    with transaction(_db(settings)) as db:
        rows = rp.export_rows(db, since=since)
    text = export_csv(rows) if args.format == "csv" else export_geojson(rows) + "\n"
    if args.output:
        Path(args.output).write_text(text, encoding="utf-8")
        print(f"{counted(len(rows), 'report')} written to {args.output}", file=sys.stderr)
    else:
        sys.stdout.write(text)
    return 0
