"""One resident, several channels (issue 6): one-time link codes and merging two residents.

`merge_residents(db, keep_id, gone_id)` makes one person of two: every row of every table that
points at the resident that goes (a `resident_id` column or a foreign key to resident.id) is
moved to the one that stays, so identities, consents, reports, follows, RSVPs... follow the
person without each feature writing its own merge. Rows that would then collide with a unique
constraint (both followed the same report, both have a session) are dropped from the resident
that goes first. Features with more to do (recount a total, combine two rows) declare a merger on
their router (conversations/registry.py); the caller passes them, and they run before the generic move. Runs inside the caller's
transaction; callers wrap it in a SAVEPOINT so a failure leaves both residents as they were.
"""
from __future__ import annotations

import logging
import secrets
import unicodedata
from datetime import datetime, timedelta
from typing import Callable, Iterable, Optional

from sqlalchemy import Column, Table, and_, delete, exists, update
from sqlalchemy import select as sa_select
from sqlmodel import Field, Session, SQLModel

from storage.audit import audit
from storage.db import aware, utcnow
from storage.models import ConversationSession, Resident

log = logging.getLogger(__name__)

CODE_TTL = timedelta(minutes=10)
# Ten digits, shown as two groups of five ("48213 90577"): every phone keyboard has digits (an
# Arabic one types ٤٨٢١٣, read the same), and 10^10 codes against a global budget of wrong
# guesses (LinkGuard) leave guessing hopeless: with the defaults (50 wrong codes, then an hour's
# pause that also voids every live code) at most about 50 guesses an hour get through, from any
# number of accounts. With one code alive, a guess hits with a chance of 10^-10 and a whole year
# of guessing (some 440,000 guesses, linking paused for everyone all along, which is seen) with
# a chance of 0.004%; with a hundred codes alive at once, 0.4%.
CODE_DIGITS = 10
CODE_GROUP = 5
CODE_SEPARATORS = " -.·_/"
# The defaults of LINK_CODE_FAILURES, LINK_CODE_WINDOW and LINK_CODE_PAUSE (bot/settings.py).
FAILURE_BUDGET = 50
FAILURE_WINDOW = timedelta(hours=1)
PAUSE = timedelta(hours=1)


class LinkCode(SQLModel, table=True):
    """A one-time code shown on one channel (WhatsApp /bagla) and typed on another to link them."""

    __tablename__ = "link_code"
    code: str = Field(max_length=16, primary_key=True)
    resident_id: int = Field(foreign_key="resident.id", index=True)
    channel: str = Field(max_length=16)
    created_at: datetime = Field(default_factory=utcnow)
    expires_at: datetime = Field(index=True)


class LinkGuard(SQLModel, table=True):
    """The global budget of wrong link codes (one row, shared by every worker): a wrong code
    cannot be attributed to the code it missed, so every wrong guess, from any resident, counts
    here; past the budget within the window, linking by code pauses for everyone and every live
    code is voided (revision 0013)."""

    __tablename__ = "link_guard"
    id: int = Field(default=1, primary_key=True)
    window_started_at: datetime = Field(default_factory=utcnow)
    failures: int = Field(default=0)
    paused_until: Optional[datetime] = None


# ---------------------------------------------------------------- phone numbers
def normalize_phone(number: str, default_country: str = "90") -> str:
    """A phone number in international form, "+905551234567" ("" when it is not one).
    Accepts "+90 555 123 45 67", "905551234567", "00905551234567", "0555 123 45 67" (national,
    default_country), "whatsapp:+905551234567"."""
    text = (number or "").strip().removeprefix("whatsapp:")
    plus = text.startswith("+")
    digits = "".join(ch for ch in text if ch.isdigit())
    if not digits:
        return ""
    if not plus:
        if digits.startswith("00"):
            digits = digits[2:]
        elif digits.startswith("0"):
            digits = default_country + digits[1:]
    if not 8 <= len(digits) <= 15 or digits.startswith("0"):
        return ""
    return "+" + digits


def whatsapp_address(phone: str) -> str:
    """The WhatsApp channel address of a phone number (the form handlers/whatsapp.py uses)."""
    normal = normalize_phone(phone)
    return f"whatsapp:{normal}" if normal else ""


# ---------------------------------------------------------------- one-time codes
def new_code(db: Session, resident_id: int, channel: str, now: datetime | None = None) -> LinkCode:
    """A fresh code for a resident (their older codes and every expired code are removed)."""
    now = now or utcnow()
    db.exec(delete(LinkCode).where((LinkCode.resident_id == resident_id) | (LinkCode.expires_at < now)))
    for _ in range(20):
        code = f"{secrets.randbelow(10 ** CODE_DIGITS):0{CODE_DIGITS}d}"
        if db.get(LinkCode, code) is None:
            row = LinkCode(code=code, resident_id=resident_id, channel=channel, created_at=now,
                           expires_at=now + CODE_TTL)
            db.add(row)
            db.flush()
            return row
    raise RuntimeError("no free link code")  # 10^10 codes, a handful alive: not a real case


def shown(code: str) -> str:
    """A code as the resident reads it: "48213 90577"."""
    return " ".join(code[i:i + CODE_GROUP] for i in range(0, len(code), CODE_GROUP))


def parse_code(text: str) -> str | None:
    """The code in what a resident typed ("48213 90577", "4821390577", "٤٨٢١٣-٩٠٥٧٧"), or None
    when it is not one: separators dropped, every script's digits read as 0-9."""
    digits = []
    for ch in (text or "").strip():
        if ch in CODE_SEPARATORS:
            continue
        value = unicodedata.decimal(ch, None)
        if value is None:
            return None
        digits.append(str(value))
    return "".join(digits) if len(digits) == CODE_DIGITS else None


def take_code(db: Session, code: str, now: datetime | None = None) -> LinkCode | None:
    """The live code typed (removed: it works once), or None."""
    now = now or utcnow()
    row = db.get(LinkCode, code.strip())
    if row is None:
        return None
    db.delete(row)
    db.flush()
    return row if aware(row.expires_at) >= now else None


# ---------------------------------------------------------------- the global budget of wrong codes
def _guard(db: Session, now: datetime, *, lock: bool = False) -> LinkGuard:
    row = db.get(LinkGuard, 1, with_for_update=lock, populate_existing=True)
    if row is None:  # the migration writes the row; a database made otherwise gets it here
        row = LinkGuard(id=1, window_started_at=now)
        db.add(row)
        db.flush()
    return row


def paused_for(db: Session, now: datetime | None = None, *, pause: timedelta = PAUSE) -> float:
    """Seconds linking by code stays paused (0: it is not). A pause never lasts longer than
    `pause` from now: one left further ahead (the clock was set back) is cut to that."""
    now = now or utcnow()
    row = db.get(LinkGuard, 1)
    if row is None or row.paused_until is None:
        return 0.0
    left = aware(row.paused_until) - now
    if left > pause:
        row.paused_until = now + pause
        db.add(row)
        db.flush()
        left = pause
    return max(0.0, left.total_seconds())


def record_wrong_code(db: Session, actor: str, now: datetime | None = None, *, budget: int = FAILURE_BUDGET,
                      window: timedelta = FAILURE_WINDOW, pause: timedelta = PAUSE) -> bool:
    """Count one wrong code against the global budget (the guard's row locked: every worker
    counts in the same place). True when it used up the budget: linking by code is paused for
    `pause` and every live code is deleted (audited, with how many)."""
    now = now or utcnow()
    row = _guard(db, now, lock=True)
    started = aware(row.window_started_at)
    if now - started >= window or started > now:  # a new window (or the clock went back)
        row.window_started_at, row.failures = now, 0
    row.failures += 1
    tripped = row.failures >= budget
    if tripped:
        voided = db.exec(delete(LinkCode)).rowcount or 0
        audit(db, actor, "link.paused", "link_code", failures=row.failures, codes_voided=voided,
                   until=(now + pause).isoformat())
        log.warning("linking by code paused until %s: %d wrong codes within %s; %d live codes voided",
                    (now + pause).isoformat(timespec="seconds"), row.failures, window, voided)
        row.paused_until, row.window_started_at, row.failures = now + pause, now, 0
    db.add(row)
    db.flush()
    return tripped


def erase_codes(db: Session, resident_id: int) -> None:
    db.exec(delete(LinkCode).where(LinkCode.resident_id == resident_id))


# ---------------------------------------------------------------- merging
Merger = Callable[[Session, int, int], None]   # (db, gone_id, keep_id)


def resident_columns(metadata=None) -> list[tuple[Table, Column]]:
    """Every (table, column) that points at a resident: named resident_id or a foreign key to
    resident.id (the resident and session tables themselves excepted)."""
    metadata = metadata or SQLModel.metadata
    found = []
    for table in metadata.sorted_tables:
        if table.name in (Resident.__tablename__, ConversationSession.__tablename__):
            continue
        for column in table.columns:
            points = column.name == "resident_id" or any(
                fk.column.table.name == Resident.__tablename__ for fk in column.foreign_keys)
            if points:
                found.append((table, column))
    return found


def _unique_sets(table: Table) -> list[list[Column]]:
    sets = [list(table.primary_key.columns)] if table.primary_key is not None else []
    for constraint in table.constraints:
        if constraint.__class__.__name__ == "UniqueConstraint":
            sets.append(list(constraint.columns))
    for index in table.indexes:
        if index.unique:
            sets.append([c for c in index.columns if isinstance(c, Column)])
    return [s for s in sets if s]


def move_rows(db: Session, table: Table, column: Column, gone_id: int, keep_id: int) -> int:
    """Point `column` of `table` at keep_id where it points at gone_id; rows that would then break
    a unique constraint (keep_id already has the same row) are deleted instead."""
    for cols in _unique_sets(table):
        if column not in cols:
            continue
        others = [c for c in cols if c is not column]
        twin = table.alias("twin")
        same = and_(twin.c[column.name] == keep_id, *[twin.c[c.name] == c for c in others])
        db.execute(delete(table).where(column == gone_id, exists(sa_select(twin.c[column.name]).where(same))))
    result = db.execute(update(table).where(column == gone_id).values({column.name: keep_id}))
    return result.rowcount or 0


def merge_residents(db: Session, keep_id: int, gone_id: int, *, mergers: Iterable[Merger] = (),
                    actor: str = "") -> Resident:
    """Make one resident of two (see the module docstring). The resident that stays keeps its own
    profile and takes what it lacks (language, mahalle, name, phone, onboarding) from the other;
    when only the other finished onboarding, the other's language and mahalle win."""
    if keep_id == gone_id:
        raise ValueError("a resident cannot be merged into itself")
    db.flush()
    keep = db.get(Resident, keep_id, with_for_update=True)
    gone = db.get(Resident, gone_id, with_for_update=True)
    if keep is None or gone is None:
        raise LookupError("resident gone")
    # the other resident's conversation (maybe mid-flow) ends; its rows move below
    db.exec(delete(ConversationSession).where(ConversationSession.resident_id == gone_id))
    if keep.onboarded_at is None and gone.onboarded_at is not None:
        keep.locale = gone.locale
        keep.mahalle = gone.mahalle or keep.mahalle
    keep.mahalle = keep.mahalle or gone.mahalle
    keep.display_name = keep.display_name or gone.display_name
    keep.phone = keep.phone or gone.phone
    onboarded = [d for d in (keep.onboarded_at, gone.onboarded_at) if d is not None]
    keep.onboarded_at = min(onboarded, key=aware) if onboarded else None
    keep.created_at = min(keep.created_at, gone.created_at, key=aware)
    keep.updated_at = utcnow()
    db.add(keep)
    db.flush()
    for merger in mergers:
        merger(db, gone_id, keep_id)
    db.flush()
    moved = {}
    for table, column in resident_columns():
        count = move_rows(db, table, column, gone_id, keep_id)
        if count:
            moved[f"{table.name}.{column.name}"] = count
    db.expunge(gone)
    db.execute(delete(Resident.__table__).where(Resident.__table__.c.id == gone_id))
    audit(db, actor or f"resident:{keep_id}", "resident.merged", f"resident:{keep_id}",
               merged=gone_id, moved=moved)
    db.flush()
    db.expire_all()
    return db.get(Resident, keep_id)


def export_codes(db: Session, resident_id: int) -> dict:
    """For the resident's data export: their live link codes (when and where; the code itself is a
    credential and is not repeated)."""
    from sqlmodel import select

    rows = db.exec(select(LinkCode).where(LinkCode.resident_id == resident_id)).all()
    return {"link_codes": [{"channel": r.channel, "created_at": aware(r.created_at).isoformat(),
                            "expires_at": aware(r.expires_at).isoformat()} for r in rows]}
