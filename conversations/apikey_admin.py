"""Open311 API keys as operations: list, create, revoke (issue 15: admins manage the keys).

Each checks the actor may manage keys (`apikeys.manage`: admins and the CLI; a refusal is audited
in the caller's transaction, then raised as Refused), writes the change and its audit row in the
caller's transaction, and raises ApiKeyInputError with a catalog key for bad input. The console's
/panel/apikeys page and `katilim apikey add|list|revoke` (bot/cli_apikey.py) both call these, so
the audit rows of one action are the same whichever door it came through.

Only a key's SHA-256 is stored (storage/apikeys.py): the plain key is returned by `create` once,
and nothing can show it again."""
from __future__ import annotations

from sqlmodel import Session

from conversations.domain import authorise
from conversations.i18n import N_
from conversations.permissions import Actor
from conversations.staff_admin import StaffError
from storage import apikeys
from storage.apikeys import ApiKey
from storage.audit import audit

ACTION = "apikeys.manage"


class ApiKeyInputError(StaffError):
    """Bad input for a key (a catalog key and its parameters, as for staff accounts)."""


def list_keys(db: Session, actor: Actor, *, record: bool = True) -> list[ApiKey]:
    """Every key (never a plain one). `record`: audit the listing (the CLI's `apikey list`); the
    console's page views are not audited, as no console page view is, its changes are."""
    authorise(db, actor, ACTION, "apikeys")
    rows = apikeys.list_keys(db)
    if record:
        audit(db, actor.who, "apikey.listed", "", count=len(rows))
    return rows


def create(db: Session, actor: Actor, name: str, scope: str = "public") -> tuple[ApiKey, str]:
    """A new key: its row and the plain key (to show once)."""
    authorise(db, actor, ACTION, "apikeys")
    name = (name or "").strip()
    if not name or len(name) > 64 or any(c.isspace() for c in name) or name.isdigit():
        raise ApiKeyInputError(N_("panel.apikeys.bad_name"))
    if scope not in apikeys.SCOPES:
        raise ApiKeyInputError(N_("panel.apikeys.bad_scope"), scope=scope)
    if apikeys.active_by_name(db, name) is not None:
        raise ApiKeyInputError(N_("panel.apikeys.taken"), name=name)
    key, plain = apikeys.create_key(db, name, scope=scope)
    audit(db, actor.who, "apikey.added", f"apikey:{key.id}", name=key.name, prefix=key.prefix, scope=key.scope)
    return key, plain


def revoke(db: Session, actor: Actor, id_or_name: str) -> tuple[ApiKey, bool]:
    """Revoke a key (by id, else by name): the key and whether it was active until now."""
    authorise(db, actor, ACTION, f"apikey:{id_or_name}"[:128])
    key = apikeys.find_key(db, str(id_or_name))
    if key is None:
        raise ApiKeyInputError(N_("panel.apikeys.missing"), key=str(id_or_name))
    if not apikeys.revoke(db, key):
        return key, False
    audit(db, actor.who, "apikey.revoked", f"apikey:{key.id}", name=key.name, prefix=key.prefix)
    return key, True
