"""`katilim events add | edit | cancel | list | attendees | qr | feedback`.

Times are typed in the municipality's time zone (Europe/Istanbul): "2026-11-28 14:00",
"28.11.2026 14:00" or "yarın 18:00" (conversations/when.py reads them, as in the chat). Changes of
time or place and cancellations are told to everyone registered or waiting through the outbox
(the running bot delivers them), in their own language. The operations are the chat's own
(conversations/domain/events.py), done as an admin named "cli:USER".
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from zoneinfo import ZoneInfo

import httpx
from sqlmodel import select

from bot.app import open_db
from bot.catalog import load_catalog
from bot.cli import catalog_key, counted, operator_name
from bot.settings import Settings
from conversations import attendance, reminders
from conversations.domain import events as event_ops
from conversations.i18n import t_in
from conversations.participation import ParticipationError, read_time
from conversations.permissions import Actor
from conversations.when import span_text
from storage.db import aware, transaction, utcnow
from storage.models import ChannelIdentity, Resident
from storage.participation import EVENT_TYPES, Event, Rsvp


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("events", help="events: add, edit, cancel, list, attendees, qr, feedback")
    esub = p.add_subparsers(dest="events_command", required=True)

    a = esub.add_parser("add", help="create an event")
    _options(a, new=True)
    a.set_defaults(func=cmd_add)

    e = esub.add_parser("edit", help="change an event (registered residents are told of a new time or place)")
    e.add_argument("id", type=int)
    _options(e, new=False)
    e.add_argument("--no-pin", action="store_true", help="remove the map pin")
    e.add_argument("--no-capacity", action="store_true", help="no limit on places")
    e.add_argument("--no-deadline", action="store_true", help="registration open until the start")
    e.set_defaults(func=cmd_edit)

    c = esub.add_parser("cancel", help="cancel an event (everyone registered or waiting is told)")
    c.add_argument("id", type=int)
    c.set_defaults(func=cmd_cancel)

    ls = esub.add_parser("list", help="upcoming events (--all: past and cancelled too)")
    ls.add_argument("--all", action="store_true")
    ls.set_defaults(func=cmd_list)

    at = esub.add_parser("attendees", help="who is registered, waiting, checked in")
    at.add_argument("id", type=int)
    at.set_defaults(func=cmd_attendees)

    q = esub.add_parser("qr", help="a QR code of the event's deep link (t.me/<bot>?start=ev_ID)")
    q.add_argument("id", type=int)
    q.add_argument("-o", "--output", required=True, type=Path, help="PNG file to write")
    q.add_argument("--checkin", action="store_true", help="the venue's check-in link instead (start=ci_<token>)")
    q.set_defaults(func=cmd_qr)

    f = esub.add_parser("feedback", help="ratings (average, count) and comments")
    f.add_argument("id", type=int)
    f.set_defaults(func=cmd_feedback)


def _options(p: argparse.ArgumentParser, *, new: bool) -> None:
    p.add_argument("--title", required=new, help="title in Turkish")
    p.add_argument("--title-en", help="title in English")
    p.add_argument("--title-ar", help="title in Arabic")
    p.add_argument("--description", help="description in Turkish")
    p.add_argument("--description-en", help="description in English")
    p.add_argument("--description-ar", help="description in Arabic")
    p.add_argument("--type", choices=EVENT_TYPES, type=catalog_key(EVENT_TYPES), default="other" if new else None)
    p.add_argument("--start", required=new, help='start, local time: "2026-11-28 14:00"')
    p.add_argument("--end", required=new, help='end, local time: "2026-11-28 16:00" or "16:00" (the same day)')
    p.add_argument("--place", default="" if new else None, help="address or hall")
    p.add_argument("--lat", type=float, help="map pin latitude")
    p.add_argument("--lon", type=float, help="map pin longitude")
    p.add_argument("--capacity", type=int, help="number of places (default: no limit)")
    p.add_argument("--deadline", help='registration deadline, local time (default: the start)')


class _Fail(Exception):
    pass


def _event(db, event_id: int) -> Event:
    event = db.get(Event, event_id)
    if event is None:
        raise _Fail(f"no event {event_id}")
    return event


def _context(settings: Settings):
    catalog = load_catalog(settings.katilim_catalog)
    engine = open_db(settings)
    tz = catalog.municipality.timezone or settings.timezone
    return engine, catalog, tz, f"katilim.{catalog.municipality.tracking_prefix.lower()}"


def _texts(args, name: str) -> dict[str, str] | None:
    values = {"tr": getattr(args, name), "en": getattr(args, f"{name}_en"), "ar": getattr(args, f"{name}_ar")}
    values = {k: v for k, v in values.items() if v is not None}
    return values or None


def _time(settings: Settings, text: str | None, tz: str, base=None):
    if text is None:
        return None
    try:
        return read_time(text, tz, now=utcnow(), base=base, future=False)  # the rules say what may be past
    except ParticipationError as exc:
        raise _Fail(f"{text!r}: {t_in(settings.default_locale, exc.key)}") from None


def _pin(args) -> tuple[float | None, float | None]:
    if (args.lat is None) != (args.lon is None):
        raise _Fail("give both --lat and --lon")
    if args.lat is not None and not (-90 <= args.lat <= 90 and -180 <= args.lon <= 180):
        raise _Fail("--lat must be within -90..90 and --lon within -180..180")
    return args.lat, args.lon


def _run(fn):
    def wrapped(settings: Settings, args) -> int:
        try:
            return fn(settings, args)
        except _Fail as exc:
            print(f"katilim: {exc}", file=sys.stderr)
            return 1
        except ParticipationError as exc:
            print(f"katilim: {t_in(settings.default_locale, exc.key)}", file=sys.stderr)
            return 1
    return wrapped


def _show(event: Event, tz: str, lang: str = "tr") -> str:
    places = "unlimited" if event.capacity is None else f"{event.going}/{event.capacity}"
    return (f"event {event.id} [{event.status}] {event.title_in(lang)} · {event.type} · "
            f"{span_text(event.starts_at, event.ends_at, lang, tz)} · {event.place or '-'} · places {places}")


@_run
def cmd_add(settings: Settings, args) -> int:
    engine, catalog, tz, domain = _context(settings)
    start = _time(settings, args.start, tz)
    end = _time(settings, args.end, tz, base=start)
    deadline = _time(settings, args.deadline, tz, base=start)
    lat, lon = _pin(args)
    with transaction(engine) as db:
        event = event_ops.create_event(db, Actor.cli(operator_name()), title=_texts(args, "title"),
                                       description=_texts(args, "description"), type=args.type, starts_at=start,
                                       ends_at=end, place=args.place or "", latitude=lat, longitude=lon,
                                       capacity=args.capacity, registration_deadline=deadline)
        print(_show(event, tz))
        if settings.telegram_bot_username:
            print(f"link: {attendance.event_link(settings.telegram_bot_username, event.id)}")
    return 0


@_run
def cmd_edit(settings: Settings, args) -> int:
    engine, catalog, tz, domain = _context(settings)
    lat, lon = _pin(args)
    with transaction(engine) as db:
        event = _event(db, args.id)
        start = _time(settings, args.start, tz)
        end = _time(settings, args.end, tz, base=start or event.starts_at)
        change = event_ops.EventChange(
            title=_texts(args, "title"), description=_texts(args, "description"), type=args.type, starts_at=start,
            ends_at=end, place=args.place, latitude=lat, longitude=lon, clear_pin=args.no_pin, capacity=args.capacity,
            clear_capacity=args.no_capacity,
            registration_deadline=_time(settings, args.deadline, tz, base=start or event.starts_at),
            clear_deadline=args.no_deadline)
        edited = event_ops.update_event(db, Actor.cli(operator_name()), args.id, change, now=utcnow(),
                                        offsets=reminders.offsets_of(settings), tz=tz, domain=domain)
        print(_show(edited.event, tz))
        print(f"{counted(edited.told, 'resident')} told")
    return 0


@_run
def cmd_cancel(settings: Settings, args) -> int:
    engine, catalog, tz, domain = _context(settings)
    with transaction(engine) as db:
        cancelled = event_ops.cancel_event(db, Actor.cli(operator_name()), args.id, now=utcnow(), tz=tz, domain=domain)
        print(f"event {args.id} cancelled; {counted(cancelled.told, 'resident')} told")
    return 0


@_run
def cmd_list(settings: Settings, args) -> int:
    engine, catalog, tz, domain = _context(settings)
    with transaction(engine) as db:
        if args.all:
            events = list(db.exec(select(Event).order_by(Event.starts_at)))
        else:
            events = attendance.upcoming_events(db, utcnow())
        for event in events:
            waiting = len(attendance.attendees(db, event.id, ("waitlist",)))
            print(_show(event, tz) + f" · waiting {waiting}")
        if not events:
            print("no events")
    return 0


@_run
def cmd_attendees(settings: Settings, args) -> int:
    engine, catalog, tz, domain = _context(settings)
    with transaction(engine) as db:
        event = _event(db, args.id)
        print(_show(event, tz))
        rows = attendance.attendees(db, event.id, ("going", "waitlist"))
        print(f"{'resident':>8}  {'status':<9} {'pos':>4}  {'checked in':<17} {'channel':<9} name")
        for rsvp in rows:
            resident = db.get(Resident, rsvp.resident_id)
            identity = db.exec(select(ChannelIdentity).where(ChannelIdentity.resident_id == rsvp.resident_id)).first()
            checked = aware(rsvp.checked_in_at).astimezone(ZoneInfo(tz)).strftime("%Y-%m-%d %H:%M") \
                if rsvp.checked_in_at else "-"
            print(f"{rsvp.resident_id:>8}  {rsvp.status:<9} {rsvp.position or '':>4}  {checked:<17} "
                  f"{identity.channel if identity else '-':<9} {resident.display_name if resident else ''}")
        going = sum(1 for r in rows if r.status == "going")
        checked_in = sum(1 for r in rows if r.checked_in_at) + event.anonymous_checkins
        print(f"going {going}, waiting {len(rows) - going}, checked in {checked_in}")
    return 0


def bot_username(settings: Settings) -> str:
    """TELEGRAM_BOT_USERNAME, or the bot's own name from getMe when a token is set."""
    if settings.telegram_bot_username:
        return settings.telegram_bot_username
    if not settings.telegram_bot_token:
        raise _Fail("set TELEGRAM_BOT_USERNAME (or TELEGRAM_BOT_TOKEN, to ask Telegram with getMe)")
    try:
        response = httpx.get(f"{settings.telegram_api_url}/bot{settings.telegram_bot_token}/getMe", timeout=10)
        username = response.json().get("result", {}).get("username")
    except (httpx.HTTPError, ValueError) as exc:
        raise _Fail(f"getMe failed ({type(exc).__name__}); set TELEGRAM_BOT_USERNAME") from None
    if not username:
        raise _Fail("getMe gave no username; set TELEGRAM_BOT_USERNAME")
    return username


@_run
def cmd_qr(settings: Settings, args) -> int:
    import qrcode

    engine, catalog, tz, domain = _context(settings)
    with transaction(engine) as db:
        event = _event(db, args.id)
        token = event.checkin_token
    username = bot_username(settings)
    link = attendance.checkin_link(username, token) if args.checkin else attendance.event_link(username, args.id)
    image = qrcode.make(link, error_correction=qrcode.constants.ERROR_CORRECT_M, box_size=10, border=4)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    image.save(str(args.output))
    print(f"{args.output}: {link}")
    return 0


@_run
def cmd_feedback(settings: Settings, args) -> int:
    engine, catalog, tz, domain = _context(settings)
    with transaction(engine) as db:
        event = _event(db, args.id)
        summary = attendance.feedback_summary(db, event.id)
        attended = len(list(db.exec(select(Rsvp).where(Rsvp.event_id == event.id, Rsvp.checked_in_at.is_not(None)))))
        print(_show(event, tz))
        average = f"{summary.average:.2f}" if summary.average is not None else "-"
        print(f"ratings: {summary.count}, average {average} (checked in: {attended + event.anonymous_checkins})")
        for n in range(5, 0, -1):
            print(f"  {n}: {'★' * summary.histogram[n]} {summary.histogram[n]}")
        print(f"comments: {len(summary.comments)}")
        for comment in summary.comments:
            print(f"  - {comment}")
    return 0
