"""SQLModel tables. Times are aware UTC datetimes. Schema changes go through Alembic (storage/migrations)."""
from __future__ import annotations

from datetime import datetime
from typing import Any, Optional

from sqlalchemy import JSON, Column, Index, Text, UniqueConstraint, text
from sqlmodel import Field, SQLModel

from storage.db import utcnow

CONSENT_PURPOSES = ("reports", "volunteering", "reminders", "announcements")


class Resident(SQLModel, table=True):
    __tablename__ = "resident"
    id: Optional[int] = Field(default=None, primary_key=True)
    locale: str = Field(default="tr", max_length=8)
    mahalle: Optional[str] = Field(default=None, max_length=64, index=True)
    display_name: str = Field(default="", max_length=128)
    phone: Optional[str] = Field(default=None, max_length=32, index=True)
    onboarded_at: Optional[datetime] = None
    created_at: datetime = Field(default_factory=utcnow)
    updated_at: datetime = Field(default_factory=utcnow)
    anonymised_at: Optional[datetime] = None


class ChannelIdentity(SQLModel, table=True):
    """How a resident is reached: a Telegram chat, a WhatsApp number, a terminal name."""

    __tablename__ = "channel_identity"
    __table_args__ = (UniqueConstraint("channel", "address", name="uq_identity_channel_address"),)
    id: Optional[int] = Field(default=None, primary_key=True)
    resident_id: int = Field(foreign_key="resident.id", index=True)
    channel: str = Field(max_length=16)
    address: str = Field(max_length=64)
    unreachable: bool = Field(default=False)
    unreachable_reason: str = Field(default="", max_length=255)
    last_inbound_at: Optional[datetime] = None
    created_at: datetime = Field(default_factory=utcnow)


class ConversationSession(SQLModel, table=True):
    """Where a resident is in a conversation: a named state and what was collected so far."""

    __tablename__ = "conversation_session"
    resident_id: int = Field(foreign_key="resident.id", primary_key=True)
    state: str = Field(default="menu", max_length=64)
    data: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    updated_at: datetime = Field(default_factory=utcnow)
    version: int = Field(default=0)


class ConsentRecord(SQLModel, table=True):
    """Append-only: each grant or withdrawal, per purpose, with the notice version shown."""

    __tablename__ = "consent_record"
    __table_args__ = (Index("ix_consent_resident_purpose", "resident_id", "purpose", "id"),)
    id: Optional[int] = Field(default=None, primary_key=True)
    resident_id: int = Field(foreign_key="resident.id")
    purpose: str = Field(max_length=32)
    granted: bool
    notice_version: str = Field(max_length=32)
    channel: str = Field(default="", max_length=16)
    recorded_at: datetime = Field(default_factory=utcnow)


STAFF_ROLES = ("admin", "staff", "viewer")


class Staff(SQLModel, table=True):
    """A municipal staff member: the same record in the chat, the CLI and the staff console (one
    person, one role). Roles (STAFF_ROLES): admin (everything), staff (works on the reports of
    their departments, storage/panel.py StaffDepartment), viewer (reads only)."""

    __tablename__ = "staff"
    id: Optional[int] = Field(default=None, primary_key=True)
    telegram_id: Optional[str] = Field(default=None, max_length=32, unique=True)
    whatsapp: Optional[str] = Field(default=None, max_length=32, unique=True)
    name: str = Field(default="", max_length=128)
    role: str = Field(default="staff", max_length=16)
    created_at: datetime = Field(default_factory=utcnow)
    # the staff console (revision 0016_panel)
    console: Optional[str] = Field(default=None, max_length=64, unique=True, index=True)  # katilim chat --as NAME
    active: bool = Field(default=True)  # a deactivated member can neither sign in nor use staff commands
    panel_locale: str = Field(default="tr", max_length=8)  # tr or en
    totp_secret: str = Field(default="", max_length=64)  # base32; pending until totp_enabled_at is set
    totp_enabled_at: Optional[datetime] = None
    totp_last_timecode: Optional[int] = None  # the last accepted code's time step: a code is used once


class AuditLog(SQLModel, table=True):
    __tablename__ = "audit_log"
    id: Optional[int] = Field(default=None, primary_key=True)
    at: datetime = Field(default_factory=utcnow, index=True)
    actor: str = Field(max_length=64)
    action: str = Field(max_length=64, index=True)
    target: str = Field(default="", max_length=128)
    details: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))


class ProcessedInbound(SQLModel, table=True):
    """Inbound ids already handled (Telegram update_id, Twilio MessageSid): retries are ignored.
    One B-tree (SQLite: WITHOUT ROWID; no index on `at`, which only the hourly purge reads):
    every conversation step inserts a row here (migration 0009)."""

    __tablename__ = "processed_inbound"
    __table_args__ = {"sqlite_with_rowid": False}
    channel: str = Field(max_length=16, primary_key=True)
    external_id: str = Field(max_length=64, primary_key=True)
    at: datetime = Field(default_factory=utcnow)


class OutboxMessage(SQLModel, table=True):
    """Every message that leaves: persisted first, delivered by a dispatcher second."""

    __tablename__ = "outbox"
    __table_args__ = (
        Index("ix_outbox_due", "status", "channel", "available_at", "priority"),
        # partial: a reply or notification (no broadcast, no provider id until sent) costs no write here
        Index("ix_outbox_broadcast", "broadcast_id", "status", sqlite_where=text("broadcast_id IS NOT NULL"),
              postgresql_where=text("broadcast_id IS NOT NULL")),
        Index("ix_outbox_provider_id", "provider_id", sqlite_where=text("provider_id != ''"),
              postgresql_where=text("provider_id != ''")),
    )
    id: Optional[int] = Field(default=None, primary_key=True)
    channel: str = Field(max_length=16)
    address: str = Field(max_length=64)
    resident_id: Optional[int] = Field(default=None, index=True)
    kind: str = Field(default="reply", max_length=32)  # reply, notification, broadcast, reminder
    priority: int = Field(default=5)  # lower is sooner: replies 0, notifications 3, broadcasts 8
    payload: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    status: str = Field(default="pending", max_length=16)  # pending, sending, sent, failed, unsendable, cancelled
    attempts: int = Field(default=0)
    available_at: datetime = Field(default_factory=utcnow)
    claimed_by: str = Field(default="", max_length=64)
    claimed_until: Optional[datetime] = None
    sent_at: Optional[datetime] = None
    error: str = Field(default="", sa_column=Column(Text, nullable=False, default=""))
    provider_id: str = Field(default="", max_length=64)  # the channel's message id (Twilio SM...)
    # What the provider reported after sending (WhatsApp status callbacks): delivered, read, failed,
    # undelivered; and its error code and message when it failed.
    delivery_status: str = Field(default="", max_length=16)
    delivery_error: str = Field(default="", max_length=255)
    broadcast_id: Optional[int] = Field(default=None)
    created_at: datetime = Field(default_factory=utcnow)


class ChannelRate(SQLModel, table=True):
    """The shared send pace of a channel (GCRA): every dispatcher reserves its slots here, so any
    number of workers together stay under the platform's limit; a 429 pauses all of them."""

    __tablename__ = "channel_rate"
    channel: str = Field(max_length=16, primary_key=True)
    tat: datetime = Field(default_factory=utcnow)  # theoretical arrival time of the next free slot
    paused_until: Optional[datetime] = None
    pause_seconds: Optional[float] = None  # the pause's length (revision 0014): a pause never lasts longer


class WorkerHeartbeat(SQLModel, table=True):
    """Running processes (run, worker, chat): a dispatcher on SQLite refuses to start beside a live one."""

    __tablename__ = "worker_heartbeat"
    worker_id: str = Field(max_length=96, primary_key=True)
    role: str = Field(max_length=16)
    dispatching: bool = Field(default=False)
    started_at: datetime = Field(default_factory=utcnow)
    heartbeat_at: datetime = Field(default_factory=utcnow, index=True)


class Broadcast(SQLModel, table=True):
    """A staff announcement: texts per language, an audience, now or at a set time."""

    __tablename__ = "broadcast"
    id: Optional[int] = Field(default=None, primary_key=True)
    created_by: str = Field(max_length=64)
    created_at: datetime = Field(default_factory=utcnow)
    texts: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    photo_path: str = Field(default="", max_length=255)
    audience: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    scheduled_at: Optional[datetime] = Field(default=None, index=True)
    status: str = Field(default="draft", max_length=16, index=True)  # draft, scheduled, sending, done, cancelled
    total: int = Field(default=0)
    started_at: Optional[datetime] = None
    finished_at: Optional[datetime] = None
    cancelled_by: str = Field(default="", max_length=64)
    notify_address: str = Field(default="", max_length=96)  # channel:address of the staff member to update
    # fan-out progress (revision b3_broadcast_fanout): residents with id <= fanout_cursor have their rows
    fanout_cursor: int = Field(default=0)
    fanout_by: str = Field(default="", max_length=96)
    fanout_until: Optional[datetime] = None
    fanout_done_at: Optional[datetime] = None
    progress_pct: int = Field(default=0)
    progress_at: Optional[datetime] = None
    sent: int = Field(default=0)
    failed: int = Field(default=0)
