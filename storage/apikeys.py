"""API keys for machine clients (the Open311 GeoReport v2 API of the municipality's CRM and apps).

Only the SHA-256 of a key is stored; the plain key is shown once, when `katilim apikey add NAME`
creates it. A key is never deleted, only revoked (the audit log and the reports it created point
at its name). A name is unique among the active keys, so a key is rotated by revoking it and
adding a new one with the same name.

A key's scope says what it may read (any active key may create requests):
- "public" (the default): what anyone gets without a key (category, status, public status notes,
  dates, the mahalle and the pin rounded to about 100 m);
- "full": also the resident's description, the exact pin, the street they typed and the photos.
  Every read with a full key is written to the audit log (handlers/open311.py).

The reports a key created: storage/open311.py.
"""
from __future__ import annotations

import hashlib
import hmac
import secrets
from datetime import datetime, timedelta
from typing import Optional

from sqlalchemy import Index
from sqlmodel import Field, Session, SQLModel, select

from storage.db import utcnow

KEY_PREFIX = "k311_"
# last_used_at is written at most this often per key (no write per request).
LAST_USED_RESOLUTION = timedelta(minutes=1)
SCOPES = ("public", "full")


class ApiKey(SQLModel, table=True):
    __tablename__ = "api_key"
    __table_args__ = (Index("ix_api_key_name", "name"),)
    id: Optional[int] = Field(default=None, primary_key=True)
    name: str = Field(max_length=64)
    key_hash: str = Field(max_length=64, unique=True)  # sha256 hex of the plain key
    prefix: str = Field(max_length=16)  # the first characters, to recognise a key in lists and logs
    scope: str = Field(default="public", max_length=8)  # public or full (SCOPES)
    created_at: datetime = Field(default_factory=utcnow)
    revoked_at: Optional[datetime] = None
    last_used_at: Optional[datetime] = None

    @property
    def active(self) -> bool:
        return self.revoked_at is None

    @property
    def full(self) -> bool:
        return self.scope == "full"


class ApiKeyError(ValueError):
    pass


def hash_key(plain: str) -> str:
    return hashlib.sha256(plain.encode("utf-8")).hexdigest()


def create_key(db: Session, name: str, *, scope: str = "public", now: datetime | None = None) -> tuple[ApiKey, str]:
    """A new key: the row and the plain key (shown once, never stored)."""
    name = (name or "").strip()
    if not name or len(name) > 64 or any(c.isspace() for c in name) or name.isdigit():
        raise ApiKeyError("the name must be 1-64 characters without spaces, and not only digits")
    if scope not in SCOPES:
        raise ApiKeyError(f"the scope must be {' or '.join(SCOPES)}")
    if active_by_name(db, name) is not None:
        raise ApiKeyError(f"an active key named {name!r} exists: revoke it first")
    plain = KEY_PREFIX + secrets.token_urlsafe(32)
    key = ApiKey(name=name, key_hash=hash_key(plain), prefix=plain[:12], scope=scope, created_at=now or utcnow())
    db.add(key)
    db.flush()
    return key, plain


def active_by_name(db: Session, name: str) -> ApiKey | None:
    return db.exec(select(ApiKey).where(ApiKey.name == name, ApiKey.revoked_at.is_(None))).first()


def list_keys(db: Session) -> list[ApiKey]:
    return list(db.exec(select(ApiKey).order_by(ApiKey.id)))


def find_key(db: Session, id_or_name: str) -> ApiKey | None:
    """By id, else the active key of that name, else the newest key of that name."""
    text = (id_or_name or "").strip()
    if text.isdigit():
        return db.get(ApiKey, int(text))
    return active_by_name(db, text) or db.exec(
        select(ApiKey).where(ApiKey.name == text).order_by(ApiKey.id.desc())).first()


def revoke(db: Session, key: ApiKey, *, now: datetime | None = None) -> bool:
    """False when it was already revoked."""
    if key.revoked_at is not None:
        return False
    key.revoked_at = now or utcnow()
    db.add(key)
    db.flush()
    return True


def authenticate(db: Session, plain: str | None, *, now: datetime | None = None) -> ApiKey | None:
    """The active key for a plain key (and its last use recorded), or None."""
    if not plain or len(plain) > 200:
        return None
    try:
        digest = hash_key(plain)
    except UnicodeEncodeError:  # a lone surrogate from a JSON body: no key looks like that
        return None
    key = db.exec(select(ApiKey).where(ApiKey.key_hash == digest)).first()
    # the lookup is by hash (an index); compare again in constant time all the same
    if key is None or key.revoked_at is not None or not hmac.compare_digest(key.key_hash, digest):
        return None
    now = now or utcnow()
    last = key.last_used_at
    if last is None or now - (last if last.tzinfo else last.replace(tzinfo=now.tzinfo)) >= LAST_USED_RESOLUTION:
        key.last_used_at = now
        db.add(key)
    return key
