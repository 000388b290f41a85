"""`katilim broadcast send | list | status | cancel`: staff announcements from the terminal.

    katilim broadcast send --text-file duyuru.txt [--text-file-en en.txt] [--text-file-ar ar.txt]
                           [--mahalle "Kozağaç"]... [--language tr|en|ar] [--at "2026-11-25 18:00"]
                           [--photo afis.jpg]
    katilim broadcast list
    katilim broadcast status ID
    katilim broadcast cancel ID

Without --at the broadcast is fanned out into the outbox at once (a running `katilim run` or
`katilim worker` delivers it); with --at the scheduler's "broadcasts" job starts it at that time
(Europe/Istanbul, the catalog's time zone). Every action is audited as bot.cli.operator_name().
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from zoneinfo import ZoneInfo

from sqlmodel import select

from bot.app import make_worker_id, open_db
from bot.catalog import load_catalog
from bot.cli import counted, operator_name
from bot.settings import Settings
from conversations.domain import broadcasts as domain
from conversations.i18n import LANGUAGES, format_when
from conversations.permissions import Actor
from conversations.text import fold, match_options, strip_mahalle
from conversations.when import WhenError, parse_when
from storage import broadcasts as bc
from storage import media as media_store
from storage.db import transaction, utcnow
from storage.models import Broadcast

WHEN_ERRORS = {"format": "cannot read the time {text!r} (use e.g. \"2026-11-25 18:00\", \"yarın 09:00\", \"18:00\")",
               "invalid": "{text!r} is not a real date or time", "past": "{text!r} is in the past",
               "far": "{text!r} is more than a year ahead"}


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("broadcast", help="staff announcements to residents who agreed to receive them")
    bsub = p.add_subparsers(dest="broadcast_command", required=True)
    s = bsub.add_parser("send", help="send (or schedule) an announcement")
    s.add_argument("--text-file", required=True, type=Path, help="the Turkish text (required), UTF-8")
    s.add_argument("--text-file-en", type=Path, help="the English text")
    s.add_argument("--text-file-ar", type=Path, help="the Arabic text")
    s.add_argument("--mahalle", action="append", default=[], metavar="NAME",
                   help="only residents of this mahalle (repeat for several; matched Turkish-aware)")
    s.add_argument("--language", choices=LANGUAGES, help="only residents reading this language")
    s.add_argument("--at", metavar="\"YYYY-MM-DD HH:MM\"", help="send at this local time instead of now")
    s.add_argument("--photo", type=Path, help="a photo sent with the text")
    s.set_defaults(func=cmd_send)
    bsub.add_parser("list", help="list broadcasts, newest first").set_defaults(func=cmd_list)
    st = bsub.add_parser("status", help="a broadcast's progress: sent, failed, waiting")
    st.add_argument("id", type=int)
    st.set_defaults(func=cmd_status)
    c = bsub.add_parser("cancel", help="cancel a scheduled or running broadcast (its unsent messages are withdrawn)")
    c.add_argument("id", type=int)
    c.set_defaults(func=cmd_cancel)


def _fail(message: str, code: int = 2) -> int:
    print(f"katilim: {message}", file=sys.stderr)
    return code


_engine = open_db


def _timezone(settings: Settings, catalog) -> str:
    return catalog.municipality.timezone or settings.timezone


def _read(path: Path | None, what: str) -> str | None:
    if path is None:
        return None
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise SystemExit(_fail(f"cannot read the {what} {path}: {exc}")) from None


def resolve_mahalles(catalog, names: list[str]) -> list[str]:
    """Catalog keys of the named mahalles (Turkish-aware); an unknown or ambiguous name is an error."""
    options = [(n.key, [n.name]) for n in catalog.neighbourhoods]
    keys = []
    for name in names:
        found = match_options(strip_mahalle(name), options)
        exact = [k for k in found if fold(catalog.neighbourhood(k).name) == strip_mahalle(name)]
        if len(exact) == 1 or len(found) == 1:
            key = exact[0] if exact else found[0]
        elif not found:
            raise ValueError(f"unknown mahalle {name!r}")
        else:
            names_found = ", ".join(catalog.neighbourhood(k).name for k in found[:8])
            raise ValueError(f"mahalle {name!r} is ambiguous: {names_found}")
        if key not in keys:
            keys.append(key)
    return keys


def _store_photo(settings: Settings, path: Path) -> str:
    """The photo judged, cleaned and stored in MEDIA_DIR like a resident's (storage.media.keep:
    JPEG, PNG or WebP, re-encoded without metadata); MediaRefused otherwise."""
    limits = media_store.Limits.from_settings(settings)
    stored = media_store.keep("photo", media_store.read_local(path, limits.max_bytes), settings.media_dir, limits)
    return str(stored.path.resolve())


def cmd_send(settings: Settings, args) -> int:
    catalog = load_catalog(settings.katilim_catalog)
    tz = _timezone(settings, catalog)
    texts = {"tr": _read(args.text_file, "text file"), "en": _read(args.text_file_en, "English text file"),
             "ar": _read(args.text_file_ar, "Arabic text file")}
    try:
        mahalles = resolve_mahalles(catalog, args.mahalle)
    except ValueError as exc:
        return _fail(str(exc))
    at = None
    if args.at:
        try:
            at = parse_when(args.at, utcnow(), tz)
        except WhenError as exc:
            return _fail(WHEN_ERRORS[exc.code].format(text=args.at))
    photo = ""
    if args.photo is not None:
        if not args.photo.is_file():
            return _fail(f"no photo at {args.photo}")
        try:
            photo = _store_photo(settings, args.photo)
        except media_store.MediaRefused as exc:
            return _fail(f"{args.photo} cannot be sent as a photo ({exc}): give a JPEG, PNG or WebP file")
    audience = {"mahalles": mahalles, "language": args.language}
    engine = _engine(settings)
    try:
        with transaction(engine) as db:
            b = domain.send(db, Actor.cli(operator_name()), texts=texts, audience=audience, photo_path=photo,
                            scheduled_at=at)
            count = bc.count_recipients(db, b.audience)
            broadcast_id = b.id
    except bc.BroadcastError as exc:
        return _fail(str(exc))
    if at is not None:
        print(f"broadcast {broadcast_id} scheduled for {format_when(at, 'en', tz)}: {counted(count, 'recipient')} now")
        return 0
    domain.start_now(engine, broadcast_id, make_worker_id("cli"), tz)
    domain.check_running(engine, tz)  # nobody to send to: done at once
    with transaction(engine) as db:
        b = db.get(Broadcast, broadcast_id)
        print(f"broadcast {broadcast_id} sending: {counted(b.total, 'recipient')}")
    return 0


def cmd_list(settings: Settings, args) -> int:
    catalog = load_catalog(settings.katilim_catalog)
    tz = _timezone(settings, catalog)
    with transaction(_engine(settings)) as db:
        rows = db.exec(select(Broadcast).order_by(Broadcast.id.desc()).limit(100)).all()
        print(f"{'id':>5}  {'status':<10} {'when':<16} {'sent':>8} {'failed':>7} {'waiting':>8} {'total':>8}  "
              f"{'by':<18} text")
        for b in rows:
            p = bc.progress(db, b)
            when = _short(b.scheduled_at, tz)
            text = " ".join(b.texts.get("tr", "").split())[:40]
            print(f"{b.id:>5}  {b.status:<10} {when:<16} {p.sent:>8} {p.failed:>7} {p.waiting:>8} {p.total:>8}  "
                  f"{b.created_by[:18]:<18} {text}")
    return 0


def _short(dt, tz: str) -> str:
    return dt.astimezone(ZoneInfo(tz)).strftime("%Y-%m-%d %H:%M") if dt else "-"


def cmd_status(settings: Settings, args) -> int:
    catalog = load_catalog(settings.katilim_catalog)
    tz = _timezone(settings, catalog)
    with transaction(_engine(settings)) as db:
        b = db.get(Broadcast, args.id)
        if b is None:
            return _fail(f"no broadcast {args.id}", 1)
        p = bc.progress(db, b)
        names = [h.name for key in b.audience.get("mahalles") or [] if (h := catalog.neighbourhood(key))]
        print(f"broadcast {b.id}: {b.status}")
        print(f"created by {b.created_by} at {format_when(b.created_at, 'en', tz)}")
        if b.scheduled_at:
            print(f"scheduled for {format_when(b.scheduled_at, 'en', tz)}")
        print(f"audience: mahalles={', '.join(names) or 'all'} language={b.audience.get('language') or 'all'}")
        print(f"languages: {', '.join(sorted(b.texts))}{'  photo: ' + b.photo_path if b.photo_path else ''}")
        print(f"sent {p.sent}  failed {p.failed}  waiting {p.waiting}  cancelled {p.cancelled}  total {p.total}")
        if b.status == "cancelled":
            print(f"cancelled by {b.cancelled_by}")
    return 0


def cmd_cancel(settings: Settings, args) -> int:
    catalog = load_catalog(settings.katilim_catalog)
    with transaction(_engine(settings)) as db:
        b = db.get(Broadcast, args.id)
        if b is None:
            return _fail(f"no broadcast {args.id}", 1)
        status = b.status
        done = domain.cancel(db, Actor.cli(operator_name()), args.id, tz=_timezone(settings, catalog))
        if done is None:
            return _fail(f"broadcast {args.id} is {status}: it can no longer be cancelled", 1)
        print(f"broadcast {args.id} cancelled: {counted(done.withdrawn, 'message')} withdrawn, "
              f"{done.already} already sent or on their way")
    return 0
