"""`katilim volunteers call | calls | responses | close-call | cancel-call | members`.

A call goes to every volunteer of the given pools who is available then (weekdays, weekends or
evenings, from the start time in the municipality's time zone) and consented to volunteering,
through the outbox: the running bot delivers it with accept / decline buttons.
"""
from __future__ import annotations

import argparse
import sys

from sqlmodel import select

from bot.app import open_db
from bot.catalog import load_catalog
from bot.cli import counted, keys_in, operator_name
from bot.settings import Settings
from conversations.domain import volunteering as call_ops
from conversations.i18n import t_in
from conversations.participation import ParticipationError, read_time
from conversations.permissions import Actor
from conversations.text import key_for
from conversations.when import span_text
from storage.db import transaction, utcnow
from storage.models import Resident
from storage.participation import CALL_HELD, CallResponse, PoolMembership, VolunteerCall


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("volunteers", help="volunteer pools and calls for volunteers")
    vsub = p.add_subparsers(dest="volunteers_command", required=True)

    c = vsub.add_parser("call", help="send a call for volunteers to one or more pools")
    c.add_argument("--pool", action="append", required=True, help="pool key (repeat for several pools)")
    c.add_argument("--what", required=True, help="what the work is")
    c.add_argument("--where", required=True, help="where")
    c.add_argument("--start", required=True, help='start, local time: "2026-11-28 10:00"')
    c.add_argument("--end", required=True, help='end: "13:00" (the same day) or a date and time')
    c.add_argument("--people", type=int, required=True, help="how many volunteers are needed")
    c.set_defaults(func=cmd_call)

    ls = vsub.add_parser("calls", help="calls for volunteers (--all: past and cancelled too)")
    ls.add_argument("--all", action="store_true")
    ls.set_defaults(func=cmd_calls)

    r = vsub.add_parser("responses", help="who accepted, declined, is on the reserve list")
    r.add_argument("id", type=int)
    r.set_defaults(func=cmd_responses)

    cl = vsub.add_parser("close-call", help="close a call: no more answers (the invited and reserves are told)")
    cl.add_argument("id", type=int)
    cl.set_defaults(func=cmd_close_call)

    x = vsub.add_parser("cancel-call", help="cancel a call (accepted and reserve volunteers are told)")
    x.add_argument("id", type=int)
    x.set_defaults(func=cmd_cancel_call)

    m = vsub.add_parser("members", help="members of the pools (or of one pool)")
    m.add_argument("--pool")
    m.set_defaults(func=cmd_members)


def _context(settings: Settings):
    catalog = load_catalog(settings.katilim_catalog)
    engine = open_db(settings)
    return engine, catalog, catalog.municipality.timezone or settings.timezone


def _fail(message: str) -> int:
    print(f"katilim: {message}", file=sys.stderr)
    return 1


def _show(call: VolunteerCall, tz: str) -> str:
    return (f"call {call.id} [{call.status}] {call.what} · {span_text(call.starts_at, call.ends_at, 'tr', tz)} · "
            f"{call.place} · pools {','.join(call.pools)} · accepted {call.accepted}/{call.capacity} · "
            f"invited {call.invited}")


def cmd_call(settings: Settings, args) -> int:
    engine, catalog, tz = _context(settings)
    args.pool = keys_in(args.pool, [p.key for p in catalog.pools])
    unknown = [p for p in args.pool if catalog.pool(p) is None]
    if unknown:
        return _fail(f"unknown pool {unknown[0]!r} (known: {', '.join(p.key for p in catalog.pools)})")
    try:
        start = read_time(args.start, tz, now=utcnow(), future=False)  # the rules say what may be past
        end = read_time(args.end, tz, now=utcnow(), base=start, future=False)
        with transaction(engine) as db:
            call = call_ops.create_call(db, Actor.cli(operator_name()), pools=args.pool, what=args.what,
                                        place=args.where, starts_at=start, ends_at=end, capacity=args.people,
                                        catalog=catalog, tz=tz)
            print(_show(call, tz))
    except ParticipationError as exc:
        return _fail(t_in(settings.default_locale, exc.key))
    return 0


def cmd_calls(settings: Settings, args) -> int:
    engine, catalog, tz = _context(settings)
    with transaction(engine) as db:
        query = select(VolunteerCall).order_by(VolunteerCall.starts_at)
        if not args.all:
            query = query.where(VolunteerCall.status.in_(CALL_HELD), VolunteerCall.ends_at > utcnow())
        calls = list(db.exec(query))
        for call in calls:
            print(_show(call, tz))
        if not calls:
            print("no calls")
    return 0


def cmd_responses(settings: Settings, args) -> int:
    engine, catalog, tz = _context(settings)
    with transaction(engine) as db:
        call = db.get(VolunteerCall, args.id)
        if call is None:
            return _fail(f"no call {args.id}")
        print(_show(call, tz))
        rows = list(db.exec(select(CallResponse).where(CallResponse.call_id == call.id)
                            .order_by(CallResponse.status, CallResponse.position, CallResponse.id)))
        print(f"{'resident':>8}  {'status':<9} {'pos':>4}  name")
        for row in rows:
            resident = db.get(Resident, row.resident_id)
            print(f"{row.resident_id:>8}  {row.status:<9} {row.position or '':>4}  "
                  f"{resident.display_name if resident else ''}")
    return 0


def cmd_close_call(settings: Settings, args) -> int:
    return _end_call(settings, args, call_ops.close_call, "closed")


def cmd_cancel_call(settings: Settings, args) -> int:
    return _end_call(settings, args, call_ops.cancel_call, "cancelled")


def _end_call(settings: Settings, args, operation, done: str) -> int:
    engine, catalog, tz = _context(settings)
    try:
        with transaction(engine) as db:
            ended = operation(db, Actor.cli(operator_name()), args.id, tz=tz)
            print(f"call {args.id} {done}; {counted(ended.told, 'volunteer')} told")
    except ParticipationError as exc:
        return _fail(t_in(settings.default_locale, exc.key))
    return 0


def cmd_members(settings: Settings, args) -> int:
    engine, catalog, tz = _context(settings)
    with transaction(engine) as db:
        query = select(PoolMembership).order_by(PoolMembership.pool, PoolMembership.joined_at)
        if args.pool:
            query = query.where(PoolMembership.pool == (key_for(args.pool, [p.key for p in catalog.pools])
                                                       or args.pool))
        rows = list(db.exec(query))
        print(f"{'pool':<12} {'resident':>8}  {'availability':<26} {'mahalle':<16} skills")
        for m in rows:
            avail = ",".join(a for a in ("weekdays", "weekends", "evenings") if getattr(m, a)) or "-"
            skills = ", ".join(m.skill_tags + ([m.skills] if m.skills else []))
            print(f"{m.pool:<12} {m.resident_id:>8}  {avail:<26} {m.mahalle or '-':<16} {skills}")
        print(counted(len(rows), "membership"))
    return 0
