"""The staff console's records: staff departments, one-time sign-in links, sessions (issue 15).

Only hashes are stored. A sign-in link carries 32 random bytes (`secrets.token_urlsafe`); the
database keeps their SHA-256, so a link cannot be rebuilt from the database, and a changed
("tampered") link matches no row. A link is valid for LOGIN_TTL and is spent by one UPDATE that
only succeeds while it is unused and unexpired, so two requests (two workers, a preview fetch and
the person) can never both sign in with it. A session is a row too (revocable: sign-out, a role
change, deactivation), referenced by a random cookie of which only the SHA-256 is kept; it ends
after an idle time and an absolute lifetime (settings PANEL_IDLE_TIMEOUT, PANEL_SESSION_LIFETIME).
"""
from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Optional

from sqlalchemy import update
from sqlmodel import Field, Session, SQLModel, delete, select

from storage.db import aware, utcnow
from storage.models import Staff

LOGIN_TTL = timedelta(minutes=10)
# last_seen_at is written at most this often per session (no write per page view).
SEEN_RESOLUTION = timedelta(minutes=1)
# Ended sessions and spent or expired links are deleted this long after they ended.
KEEP_ENDED = timedelta(days=7)


class StaffDepartment(SQLModel, table=True):
    """The departments a staff member works for (the catalog's [[departments]] keys)."""

    __tablename__ = "staff_department"
    staff_id: int = Field(foreign_key="staff.id", primary_key=True, ondelete="CASCADE")
    department: str = Field(max_length=32, primary_key=True)


class PanelLoginToken(SQLModel, table=True):
    __tablename__ = "panel_login_token"
    id: Optional[int] = Field(default=None, primary_key=True)
    token_hash: str = Field(max_length=64, unique=True)
    staff_id: int = Field(foreign_key="staff.id", index=True, ondelete="CASCADE")
    issued_via: str = Field(default="", max_length=16)  # telegram, whatsapp, console, cli
    created_at: datetime = Field(default_factory=utcnow)
    expires_at: datetime
    used_at: Optional[datetime] = None


class PanelSession(SQLModel, table=True):
    __tablename__ = "panel_session"
    id: Optional[int] = Field(default=None, primary_key=True)
    token_hash: str = Field(max_length=64, unique=True)
    staff_id: int = Field(foreign_key="staff.id", index=True, ondelete="CASCADE")
    created_at: datetime = Field(default_factory=utcnow)
    last_seen_at: datetime = Field(default_factory=utcnow)
    expires_at: datetime  # the absolute end
    mfa_ok: bool = Field(default=False)  # the second factor was given (or is not needed)
    revoked_at: Optional[datetime] = None
    user_agent: str = Field(default="", max_length=200)
    ip: str = Field(default="", max_length=64)


class OverdueSummary(SQLModel, table=True):
    """A staff member's daily overdue summary (issue 15): one row per local day, written by the
    "overdue_summary" job in the transaction that queues the message (or that found nothing to
    tell), so that each staff member hears at most once a day, whatever the number of workers and
    restarts. `overdue`: how many reports the summary counted (0: nothing was sent)."""

    __tablename__ = "overdue_summary"
    staff_id: int = Field(foreign_key="staff.id", primary_key=True, ondelete="CASCADE")
    day: date = Field(primary_key=True)       # the municipality's local date
    overdue: int = Field(default=0)
    made_at: datetime = Field(default_factory=utcnow)


def token_hash(plain: str) -> str:
    return hashlib.sha256(plain.encode("utf-8")).hexdigest()


# ---------------------------------------------------------------- departments
def departments_of(db: Session, staff_id: int) -> list[str]:
    return list(db.exec(select(StaffDepartment.department).where(StaffDepartment.staff_id == staff_id)
                        .order_by(StaffDepartment.department)))


def departments_by_staff(db: Session) -> dict[int, list[str]]:
    found: dict[int, list[str]] = {}
    for staff_id, department in db.exec(select(StaffDepartment.staff_id, StaffDepartment.department)
                                        .order_by(StaffDepartment.department)):
        found.setdefault(staff_id, []).append(department)
    return found


def set_departments(db: Session, staff_id: int, departments) -> None:
    db.exec(delete(StaffDepartment).where(StaffDepartment.staff_id == staff_id))
    for department in sorted(set(departments)):
        db.add(StaffDepartment(staff_id=staff_id, department=department))
    db.flush()


# ---------------------------------------------------------------- the daily overdue summary
# Summary days are kept this long (what was counted when), then deleted by housekeeping.
KEEP_SUMMARIES = timedelta(days=60)


def summarised_on(db: Session, day: date) -> set[int]:
    """The staff members whose summary of `day` is already made."""
    return set(db.exec(select(OverdueSummary.staff_id).where(OverdueSummary.day == day)))


def claim_summary(db: Session, staff_id: int, day: date, overdue: int, *, now: datetime | None = None) -> bool:
    """Record `day`'s summary for a staff member; False when it was already made (another worker,
    an earlier run). INSERT .. ON CONFLICT DO NOTHING: a concurrent claim of the same day waits for
    this transaction and then finds the row."""
    if db.get_bind().dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    else:
        from sqlalchemy.dialects.sqlite import insert
    table = OverdueSummary.__table__
    stmt = (insert(table).values(staff_id=staff_id, day=day, overdue=overdue, made_at=now or utcnow())
            .on_conflict_do_nothing().returning(table.c.staff_id))   # RETURNING: rowcount is -1 on psycopg here
    return db.execute(stmt).first() is not None


def purge_summaries(db: Session, *, now: datetime | None = None) -> int:
    """Delete the summary days older than KEEP_SUMMARIES."""
    cutoff = ((now or utcnow()) - KEEP_SUMMARIES).date()
    return db.exec(delete(OverdueSummary).where(OverdueSummary.day < cutoff)).rowcount or 0


# ---------------------------------------------------------------- sign-in links
def issue_login_token(db: Session, staff_id: int, via: str, *, now: datetime | None = None) -> str:
    """A new one-time sign-in token for a staff member (the plain token, shown once)."""
    now = now or utcnow()
    plain = secrets.token_urlsafe(32)
    db.add(PanelLoginToken(token_hash=token_hash(plain), staff_id=staff_id, issued_via=via[:16], created_at=now,
                           expires_at=now + LOGIN_TTL))
    db.flush()
    return plain


@dataclass
class Checked:
    """What a sign-in token is: its staff member when usable, else why not."""

    staff: Staff | None
    reason: str = ""  # "", "unknown", "used", "expired", "inactive"
    staff_id: int | None = None  # whose link it is, when the link exists (for the audit log)


def peek_login_token(db: Session, plain: str, *, now: datetime | None = None) -> Checked:
    """Whether a token could be spent now, without spending it (the confirmation page)."""
    now = now or utcnow()
    row = db.exec(select(PanelLoginToken).where(PanelLoginToken.token_hash == token_hash(plain or ""))).first()
    if row is None:
        return Checked(None, "unknown")
    if row.used_at is not None:
        return Checked(None, "used", row.staff_id)
    if aware(row.expires_at) <= now:
        return Checked(None, "expired", row.staff_id)
    staff = db.get(Staff, row.staff_id)
    if staff is None or not staff.active:
        return Checked(None, "inactive", row.staff_id)
    return Checked(staff, "", row.staff_id)


def spend_login_token(db: Session, plain: str, *, now: datetime | None = None) -> Checked:
    """Spend a token: one conditional UPDATE, so it signs in once whatever runs at the same time."""
    now = now or utcnow()
    checked = peek_login_token(db, plain, now=now)
    if checked.staff is None:
        return checked
    spent = db.exec(update(PanelLoginToken)
                    .where(PanelLoginToken.token_hash == token_hash(plain), PanelLoginToken.used_at.is_(None),
                           PanelLoginToken.expires_at > now)
                    .values(used_at=now))
    if spent.rowcount != 1:
        return Checked(None, "used", checked.staff_id)
    return checked


# ---------------------------------------------------------------- sessions
def open_session(db: Session, staff_id: int, *, lifetime: timedelta, mfa_ok: bool, user_agent: str = "",
                 ip: str = "", now: datetime | None = None) -> tuple[PanelSession, str]:
    now = now or utcnow()
    plain = secrets.token_urlsafe(32)
    row = PanelSession(token_hash=token_hash(plain), staff_id=staff_id, created_at=now, last_seen_at=now,
                       expires_at=now + lifetime, mfa_ok=mfa_ok, user_agent=user_agent[:200], ip=ip[:64])
    db.add(row)
    db.flush()
    return row, plain


@dataclass
class Loaded:
    session: PanelSession | None
    staff: Staff | None
    reason: str = ""  # "", "none", "revoked", "expired", "idle", "inactive"


def load_session(db: Session, plain: str, *, idle: timedelta, now: datetime | None = None) -> Loaded:
    """The live session a cookie names, touched (at most once per SEEN_RESOLUTION), or why not."""
    now = now or utcnow()
    if not plain:
        return Loaded(None, None, "none")
    row = db.exec(select(PanelSession).where(PanelSession.token_hash == token_hash(plain))).first()
    if row is None:
        return Loaded(None, None, "none")
    if row.revoked_at is not None:
        return Loaded(None, None, "revoked")
    if aware(row.expires_at) <= now:
        return Loaded(None, None, "expired")
    if aware(row.last_seen_at) + idle <= now:
        row.revoked_at = now
        db.add(row)
        return Loaded(None, None, "idle")
    staff = db.get(Staff, row.staff_id)
    if staff is None or not staff.active:
        return Loaded(None, None, "inactive")
    if now - aware(row.last_seen_at) >= SEEN_RESOLUTION:
        row.last_seen_at = now
        db.add(row)
    return Loaded(row, staff)


def live_sessions(db: Session, staff_id: int, *, idle: timedelta, now: datetime | None = None) -> list[PanelSession]:
    now = now or utcnow()
    rows = db.exec(select(PanelSession).where(PanelSession.staff_id == staff_id, PanelSession.revoked_at.is_(None),
                                              PanelSession.expires_at > now)
                   .order_by(PanelSession.last_seen_at.desc())).all()
    return [r for r in rows if aware(r.last_seen_at) + idle > now]


def revoke_sessions(db: Session, staff_id: int, *, except_id: int | None = None, only_id: int | None = None,
                    now: datetime | None = None) -> int:
    """End a staff member's sessions (all, all but one, or one); how many were live."""
    query = (update(PanelSession).where(PanelSession.staff_id == staff_id, PanelSession.revoked_at.is_(None))
             .values(revoked_at=now or utcnow()))
    if except_id is not None:
        query = query.where(PanelSession.id != except_id)
    if only_id is not None:
        query = query.where(PanelSession.id == only_id)
    return db.exec(query).rowcount


def purge(db: Session, *, now: datetime | None = None) -> int:
    """Delete sessions and sign-in links that ended more than KEEP_ENDED ago."""
    cutoff = (now or utcnow()) - KEEP_ENDED
    gone = db.exec(delete(PanelLoginToken).where(PanelLoginToken.expires_at < cutoff)).rowcount
    gone += db.exec(delete(PanelSession).where((PanelSession.expires_at < cutoff)
                                               | (PanelSession.revoked_at < cutoff))).rowcount
    return gone
