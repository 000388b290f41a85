"""`katilim apikey add NAME [--scope public|full] | list | revoke ID|NAME`: keys of the Open311 API's clients.

The plain key is printed once, by `add`; only its SHA-256 is stored. Every action is audited.
A key of scope "public" (the default) reads what anyone reads; "full" also reads the residents'
descriptions, exact pins and photos, and each of its reads is audited (handlers/open311.py)."""
from __future__ import annotations

import argparse
import sys

from bot.app import open_db
from bot.cli import operator_name
from bot.settings import Settings
from storage import apikeys
from storage.audit import audit
from storage.db import transaction


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("apikey", help="API keys of Open311 clients (the municipality's CRM and apps)")
    asub = p.add_subparsers(dest="apikey_command", required=True)
    a = asub.add_parser("add", help="create a key (printed once: store it in the client)")
    a.add_argument("name", help="who uses it, e.g. crm or mobile-app (no spaces)")
    a.add_argument("--scope", choices=apikeys.SCOPES, default="public",
                   help="public (default): the public view; full: also descriptions, exact pins and photos "
                        "(every read audited)")
    a.set_defaults(func=cmd_add)
    asub.add_parser("list", help="list keys (scope, prefix, created, last used, revoked)").set_defaults(func=cmd_list)
    r = asub.add_parser("revoke", help="revoke a key: its requests are refused from now on")
    r.add_argument("key", metavar="ID|NAME")
    r.set_defaults(func=cmd_revoke)


_db = open_db


def _when(dt) -> str:
    return dt.strftime("%Y-%m-%d %H:%M") if dt else "-"


def cmd_add(settings: Settings, args) -> int:
    engine = _db(settings)
    try:
        with transaction(engine) as db:
            key, plain = apikeys.create_key(db, args.name, scope=args.scope)
            audit(db, operator_name(), "apikey.added", f"apikey:{key.id}", name=key.name, prefix=key.prefix,
                       scope=key.scope)
    except apikeys.ApiKeyError as exc:
        print(f"katilim: {exc}", file=sys.stderr)
        return 1
    finally:
        engine.dispose()
    print(f"API key {key.id} ({key.name}, scope {key.scope}) created. It is shown only this once:")
    print(plain)
    return 0


def cmd_list(settings: Settings, args) -> int:
    engine = _db(settings)
    with transaction(engine) as db:
        rows = apikeys.list_keys(db)
        audit(db, operator_name(), "apikey.listed", "", count=len(rows))
    engine.dispose()
    print(f"{'id':>4}  {'name':<20} {'scope':<7} {'prefix':<13} {'created (UTC)':<17} {'last used (UTC)':<17} "
          "revoked (UTC)")
    for k in rows:
        print(f"{k.id:>4}  {k.name:<20} {k.scope:<7} {k.prefix + '…':<13} {_when(k.created_at):<17} "
              f"{_when(k.last_used_at):<17} {_when(k.revoked_at)}")
    return 0


def cmd_revoke(settings: Settings, args) -> int:
    engine = _db(settings)
    try:
        with transaction(engine) as db:
            key = apikeys.find_key(db, args.key)
            if key is None:
                print(f"katilim: no API key {args.key!r}", file=sys.stderr)
                return 1
            if not apikeys.revoke(db, key):
                print(f"API key {key.id} ({key.name}) was already revoked")
                return 0
            audit(db, operator_name(), "apikey.revoked", f"apikey:{key.id}", name=key.name, prefix=key.prefix)
    finally:
        engine.dispose()
    print(f"API key {key.id} ({key.name}) revoked")
    return 0
