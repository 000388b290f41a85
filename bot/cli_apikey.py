"""`katilim apikey add NAME [--scope public|full] | list | revoke ID|NAME`: keys of the Open311 API's clients.

The plain key is printed once, by `add`; only its SHA-256 is stored. Every action is audited. The
rules live in conversations/apikey_admin.py, which the console's /panel/apikeys page calls too.
A key of scope "public" (the default) reads what anyone reads; "full" also reads the residents'
descriptions, exact pins and photos, and each of its reads is audited (handlers/open311.py)."""
from __future__ import annotations

import argparse
import sys

from bot.app import open_db
from bot.cli import operator_name
from bot.settings import Settings
from conversations import apikey_admin
from conversations.i18n import t_in
from conversations.permissions import Actor
from storage import apikeys
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


def _actor() -> Actor:
    return Actor.cli(operator_name())


def _say_error(exc: apikey_admin.ApiKeyInputError) -> int:
    print(f"katilim: {t_in('en', exc.key, **exc.params)}", file=sys.stderr)
    return 1


def cmd_add(settings: Settings, args) -> int:
    engine = _db(settings)
    try:
        with transaction(engine) as db:
            key, plain = apikey_admin.create(db, _actor(), args.name, args.scope)
    except apikey_admin.ApiKeyInputError as exc:
        return _say_error(exc)
    finally:
        engine.dispose()
    print(f"API key {key.id} ({key.name}, scope {key.scope}) created. It is shown only this once:")
    print(plain)
    return 0


def cmd_list(settings: Settings, args) -> int:
    engine = _db(settings)
    with transaction(engine) as db:
        rows = apikey_admin.list_keys(db, _actor())
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
            key, revoked = apikey_admin.revoke(db, _actor(), args.key)
    except apikey_admin.ApiKeyInputError as exc:
        return _say_error(exc)
    finally:
        engine.dispose()
    if not revoked:
        print(f"API key {key.id} ({key.name}) was already revoked")
        return 0
    print(f"API key {key.id} ({key.name}) revoked")
    return 0
