"""The health probe (GET /health): does the database accept a write, can MEDIA_DIR be written?

A read (SELECT 1) answers on a full disk and on a read-only database, where every webhook fails;
so the probe commits a real write: one row of `health_probe` updated, which appends to the
write-ahead log on SQLite (SQLITE_FULL when the disk is full; a rolled-back write would stay in
memory and prove nothing) and on PostgreSQL (refused on a read-only server or transaction, and
when its disk is full). MEDIA_DIR gets a small file written, synced to disk and removed.
Each probe answers "ok" or a short reason fit for a public answer; the full error is logged.
"""
from __future__ import annotations

import errno
import logging
import os
import tempfile
from datetime import datetime
from pathlib import Path

from sqlalchemy import insert, update
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DBAPIError
from sqlmodel import Field, SQLModel

from storage.db import utcnow

log = logging.getLogger(__name__)

MEDIA_PROBE_BYTES = 4096  # one block: a disk without room for it refuses every photo too


class HealthProbe(SQLModel, table=True):
    """One row, written by every health check (revision 0012)."""

    __tablename__ = "health_probe"
    id: int = Field(default=1, primary_key=True)
    at: datetime = Field(default_factory=utcnow)
    worker: str = Field(default="", max_length=96)


_T = HealthProbe.__table__


def _reason(text: str) -> str:
    """A short, public reason from a driver's message (the message itself is only logged)."""
    lowered = text.lower()
    if "full" in lowered or "no space" in lowered:
        return "fail: disk full"
    if "read-only" in lowered or "readonly" in lowered or "read only" in lowered:
        return "fail: read-only"
    if "locked" in lowered or "busy" in lowered:
        return "fail: locked"
    if "connect" in lowered or "closed" in lowered or "terminat" in lowered:
        return "fail: unreachable"
    return "fail: write refused"


def probe_database(engine: Engine, worker_id: str) -> str:
    """Commit one write; "ok" or "fail: <reason>"."""
    try:
        with engine.begin() as conn:
            values = dict(at=utcnow(), worker=worker_id[:96])
            if not conn.execute(update(_T).where(_T.c.id == 1).values(**values)).rowcount:
                conn.execute(insert(_T).values(id=1, **values))
        return "ok"
    except DBAPIError as exc:
        message = " ".join(str(exc.orig or exc).split())
        log.warning("health: the database refused a write: %s", message)
        return _reason(message)


def probe_media(media_dir: Path) -> str:
    """Write, sync and remove a small file in MEDIA_DIR; "ok" or "fail: <reason>"."""
    try:
        fd, name = tempfile.mkstemp(prefix=".health-", dir=media_dir)
        try:
            os.write(fd, b"\0" * MEDIA_PROBE_BYTES)
            os.fsync(fd)
        finally:
            os.close(fd)
            os.unlink(name)
        return "ok"
    except OSError as exc:
        log.warning("health: MEDIA_DIR %s cannot be written: %s", media_dir, exc)
        return "fail: disk full" if exc.errno == errno.ENOSPC else "fail: not writable"
