"""`katilim run | worker | chat | db | staff`."""
from __future__ import annotations

import argparse
import getpass
import sys

from sqlmodel import select

from bot.app import add_configured_channels, build_app, open_db, run_forever
from bot.cli import operator_name
from bot.settings import Settings
from conversations.i18n import t_in
from storage import repo
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
    a.add_argument("--name", default="")
    a.add_argument("--role", choices=["admin", "staff"], default="staff")
    a.set_defaults(func=cmd_staff_add)
    ssub.add_parser("list", help="list staff").set_defaults(func=cmd_staff_list)
    r = ssub.add_parser("remove", help="remove a staff member")
    r.add_argument("id", type=int)
    r.set_defaults(func=cmd_staff_remove)


async def cmd_run(settings: Settings, args) -> int:
    app = build_app(settings, features=args.features)
    add_configured_channels(app)
    if not app.channels:
        print(t_in(settings.default_locale, "console.no_channel"), file=sys.stderr)
        if args.or_chat:
            return await _chat(app, None)
        return 1
    await run_forever(app)
    return 0


async def cmd_chat(settings: Settings, args) -> int:
    return await _chat(build_app(settings, features=args.features, role="chat"), args.name)


async def _chat(app, name: str | None) -> int:
    from handlers.console import ConsoleChannel

    address = (name or getpass.getuser() or "resident")[:64]
    channel = ConsoleChannel(app, address)
    app.add_channel(channel)
    print(t_in(app.settings.default_locale, "console.intro", name=address), file=sys.stderr)
    await channel.run()
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
    whatsapp = args.whatsapp.removeprefix("whatsapp:").replace(" ", "") if args.whatsapp else None
    with transaction(_db(settings)) as db:
        staff = None
        if args.telegram:
            staff = db.exec(select(Staff).where(Staff.telegram_id == str(args.telegram))).first()
        if staff is None and whatsapp:
            staff = db.exec(select(Staff).where(Staff.whatsapp == whatsapp)).first()
        if staff is None and args.console:
            staff = db.exec(select(Staff).where(Staff.name == f"console:{args.console}")).first()
        staff = staff or Staff()
        if args.telegram:
            staff.telegram_id = str(args.telegram)
        if whatsapp:
            staff.whatsapp = whatsapp
        staff.name = f"console:{args.console}" if args.console else (args.name or staff.name)
        staff.role = args.role
        db.add(staff)
        db.flush()
        repo.audit(db, operator_name(), "staff.added", f"staff:{staff.id}", role=args.role)
        print(f"staff {staff.id} saved: telegram={staff.telegram_id or '-'} whatsapp={staff.whatsapp or '-'} "
              f"role={staff.role}")
    return 0


def cmd_staff_list(settings: Settings, args) -> int:
    with transaction(_db(settings)) as db:
        rows = db.exec(select(Staff).order_by(Staff.id)).all()
        print(f"{'id':>4}  {'role':<6} {'telegram':<14} {'whatsapp':<16} name")
        for s in rows:
            print(f"{s.id:>4}  {s.role:<6} {s.telegram_id or '-':<14} {s.whatsapp or '-':<16} {s.name}")
    return 0


def cmd_staff_remove(settings: Settings, args) -> int:
    with transaction(_db(settings)) as db:
        staff = db.get(Staff, args.id)
        if staff is None:
            print(f"katilim: no staff member {args.id}", file=sys.stderr)
            return 1
        db.delete(staff)
        repo.audit(db, operator_name(), "staff.removed", f"staff:{args.id}")
        print(f"staff {args.id} removed")
    return 0
