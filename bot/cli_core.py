"""`katilim run | worker | chat | db | staff`."""
from __future__ import annotations

import argparse
import getpass
import sys

from sqlmodel import select

from bot.app import add_configured_channels, build_app, open_db, reader_locale, run_forever
from bot.catalog import load_catalog
from bot.cli import keys_in, operator_name
from bot.settings import Settings
from conversations import staff_admin
from conversations.i18n import N_, t_in
from conversations.permissions import ROLES, Actor
from storage import panel
from storage.audit import audit
from storage.db import transaction
from storage.migrate import current
from storage.models import Staff


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("run", help="start every configured channel, the HTTP server and the scheduler")
    p.add_argument("--or-chat", action="store_true",
                   help="with no channel configured, open the terminal chat instead (make run)")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("chat", help="chat with the bot in this terminal, as a resident")
    p.add_argument("--as", dest="name", default=None, help="the resident's name (default: your user name)")
    p.set_defaults(func=cmd_chat)

    p = sub.add_parser("db", help="database schema")
    dsub = p.add_subparsers(dest="db_command", required=True)
    dsub.add_parser("upgrade", help="apply every migration").set_defaults(func=cmd_db_upgrade)
    dsub.add_parser("current", help="show the applied revision").set_defaults(func=cmd_db_current)

    p = sub.add_parser("staff", help="municipal staff accounts")
    ssub = p.add_subparsers(dest="staff_command", required=True)
    a = ssub.add_parser("add", help="add or update a staff member")
    a.add_argument("--telegram", help="Telegram user id")
    a.add_argument("--whatsapp", help="WhatsApp number, +90...")
    a.add_argument("--console", help="terminal chat name (katilim chat --as NAME)")
    a.add_argument("--name", default=None, help="the person's name (default: the terminal name)")
    a.add_argument("--role", choices=list(ROLES), default=None,
                   help="admin (everything), staff (the reports of their departments), viewer (reads only); "
                        "default: staff for a new member, unchanged otherwise")
    a.add_argument("--department", action="append", default=None, metavar="KEY",
                   help="a department key from the catalog (repeat for several); replaces the member's departments")
    a.set_defaults(func=cmd_staff_add)
    ssub.add_parser("list", help="list staff").set_defaults(func=cmd_staff_list)
    r = ssub.add_parser("remove", help="remove a staff member")
    r.add_argument("id", type=int)
    r.set_defaults(func=cmd_staff_remove)
    link = ssub.add_parser("login-link", help="print a one-time sign-in link to the staff console (10 minutes)")
    link.add_argument("id", type=int)
    link.set_defaults(func=cmd_staff_login_link)
    reset = ssub.add_parser("reset-totp", help="turn a staff member's second factor off (a lost phone)")
    reset.add_argument("id", type=int)
    reset.set_defaults(func=cmd_staff_reset_totp)


async def cmd_run(settings: Settings, args) -> int:
    """Every configured channel, the HTTP server (health, Open311, /panel) and the scheduler
    (reminders, scheduled announcements, the outbox). With no channel configured they still run,
    and it says which channels are off; with --or-chat (make run) the terminal chat runs beside
    them in the same process."""
    app = build_app(settings, features=args.features)
    add_configured_channels(app)
    if not app.channels:
        lang = reader_locale()
        key = N_("console.no_channel_chat") if args.or_chat else N_("console.no_channel")
        url = f"http://{settings.http_host}:{settings.http_port}" + ("/panel" if args.or_chat else "")
        print(t_in(lang, key, url=url), file=sys.stderr)
        if args.or_chat:
            return await _chat(app, None, serve=True)
    await run_forever(app)
    return 0


async def cmd_chat(settings: Settings, args) -> int:
    return await _chat(build_app(settings, features=args.features, role="chat"), args.name)


async def _chat(app, name: str | None, *, serve: bool = False) -> int:
    """The terminal chat; with `serve` (make run: no channel configured) inside `katilim run`:
    the HTTP server (the staff console at http://HTTP_HOST:HTTP_PORT/panel) and the scheduler
    (reminders, scheduled announcements, the outbox of the other channels) run beside it."""
    from handlers.console import ConsoleChannel

    address = (name or getpass.getuser() or "resident")[:64]
    channel = ConsoleChannel(app, address)
    app.add_channel(channel)
    print(t_in(reader_locale(), "console.intro", name=address), file=sys.stderr)
    if serve:
        await run_forever(app, until=channel.run)
        return 0
    try:
        await channel.run()
    finally:
        app.db.dispose()
    return 0


def cmd_db_upgrade(settings: Settings, args) -> int:
    engine = open_db(settings)
    print(f"database at revision {current(engine)}")
    return 0


def cmd_db_current(settings: Settings, args) -> int:
    print(current(open_db(settings, migrate=False)) or "empty")
    return 0


_db = open_db


def cmd_staff_add(settings: Settings, args) -> int:
    if not (args.telegram or args.whatsapp or args.console):
        print("katilim: give --telegram ID, --whatsapp +90... or --console NAME", file=sys.stderr)
        return 2
    catalog = load_catalog(settings.katilim_catalog)
    try:
        with transaction(_db(settings)) as db:
            existing = staff_admin.find_staff(db, telegram=str(args.telegram) if args.telegram else None,
                                              whatsapp=args.whatsapp, console=args.console)
            staff = staff_admin.save_staff(
                db, Actor.cli(operator_name()), staff_id=existing.id if existing else None, name=args.name,
                role=args.role or (None if existing else "staff"),
                departments=keys_in(args.department, [d.key for d in catalog.departments]),
                telegram=str(args.telegram) if args.telegram else None, whatsapp=args.whatsapp,
                console=args.console, known_departments={d.key for d in catalog.departments})
            departments = panel.departments_of(db, staff.id)
    except staff_admin.StaffError as exc:
        print(f"katilim: {t_in('en', exc.key, **exc.params)}", file=sys.stderr)
        return 1
    print(f"staff {staff.id} saved: name={staff.name or '-'} telegram={staff.telegram_id or '-'} "
          f"whatsapp={staff.whatsapp or '-'} console={staff.console or '-'} role={staff.role} "
          f"departments={','.join(departments) or '-'}")
    return 0


def cmd_staff_list(settings: Settings, args) -> int:
    with transaction(_db(settings)) as db:
        rows = db.exec(select(Staff).order_by(Staff.id)).all()
        departments = panel.departments_by_staff(db)
        print(f"{'id':>4}  {'role':<6} {'active':<6} {'telegram':<14} {'whatsapp':<16} {'console':<12} "
              f"{'departments':<28} name")
        for s in rows:
            print(f"{s.id:>4}  {s.role:<6} {'yes' if s.active else 'no':<6} {s.telegram_id or '-':<14} "
                  f"{s.whatsapp or '-':<16} {s.console or '-':<12} {','.join(departments.get(s.id, [])) or '-':<28} "
                  f"{s.name}")
    return 0


def cmd_staff_login_link(settings: Settings, args) -> int:
    from conversations.panel_link import issue_login_link

    with transaction(_db(settings)) as db:
        staff = db.get(Staff, args.id)
        if staff is None or not staff.active:
            print(f"katilim: no active staff member {args.id}", file=sys.stderr)
            return 1
        url = issue_login_link(db, settings, staff, via="cli", actor=operator_name())
    print(url)
    return 0


def cmd_staff_remove(settings: Settings, args) -> int:
    with transaction(_db(settings)) as db:
        staff = db.get(Staff, args.id)
        if staff is None:
            print(f"katilim: no staff member {args.id}", file=sys.stderr)
            return 1
        db.delete(staff)
        audit(db, operator_name(), "staff.removed", f"staff:{args.id}")
        print(f"staff {args.id} removed")
    return 0


def cmd_staff_reset_totp(settings: Settings, args) -> int:
    try:
        with transaction(_db(settings)) as db:
            staff_admin.reset_totp(db, Actor.cli(operator_name()), args.id)
    except staff_admin.StaffError as exc:
        print(f"katilim: {t_in('en', exc.key, **exc.params)}", file=sys.stderr)
        return 1
    print(f"staff {args.id}: two-step verification turned off, console sessions ended")
    return 0
