"""The workers that dispatch the outbox: each process records itself in WorkerHeartbeat and beats
every HEARTBEAT_INTERVAL seconds (bot/dispatcher.py runs the beat).

SQLite allows one dispatcher: a second one (another `katilim run` or `katilim worker` on the same
file while the first one's heartbeat is fresh) is refused (`Heartbeat.register` names the rivals)
and does not dispatch; the only dispatcher starting on SQLite gives back the 'sending' rows of
dead workers at once instead of waiting for their leases. A worker of this host whose process is
gone is dead whatever its heartbeat says. On PostgreSQL any number of workers dispatch together.
"""
from __future__ import annotations

import logging
import os
import socket
from datetime import timedelta
from typing import Collection

from sqlalchemy.engine import Engine as DbEngine

from storage import outbox
from storage.db import is_sqlite, transaction

log = logging.getLogger(__name__)

HEARTBEAT_INTERVAL = 3.0                  # seconds between two heartbeats
HEARTBEAT_STALE = timedelta(seconds=15)   # a worker whose heartbeat is older is considered gone
SQLITE_SINGLE = ("SQLite allows a single outbox dispatcher and another one is running ({others}); this "
                 "process will not dispatch. Use PostgreSQL (DATABASE_URL=postgresql+psycopg://...) to run "
                 "several dispatchers (katilim run / katilim worker).")


def host() -> str:
    return socket.gethostname()[:40]


def dead_here(worker_id: str) -> bool:
    """A worker of this host (host:pid:role) whose process is gone: dead, whatever its heartbeat says."""
    parts = worker_id.rsplit(":", 2)
    if len(parts) != 3 or parts[0] != host() or not parts[1].isdigit():
        return False
    pid = int(parts[1])
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


class Heartbeat:
    """This worker's row in WorkerHeartbeat, for the `channels` it would dispatch (none: a
    process that only converses)."""

    def __init__(self, db: DbEngine, worker_id: str, role: str, channels: Collection[str]) -> None:
        self.db = db
        self.worker_id = worker_id
        self.role = role
        self.channels = list(channels)
        self.sqlite = is_sqlite(db)

    def register(self) -> list[str]:
        """Record this worker; on SQLite refuse beside another live dispatcher, else give back the
        'sending' rows of dead workers at once. Returns the live rival dispatchers (refused)."""
        with transaction(self.db) as db:
            others = [w for w in outbox.live_workers(db, HEARTBEAT_STALE)
                      if w.worker_id != self.worker_id and not dead_here(w.worker_id)]
            rivals = [w.worker_id for w in others if w.dispatching] if self.sqlite and self.channels else []
            outbox.forget_workers_except(db, [w.worker_id for w in others] + [self.worker_id])
            outbox.beat(db, self.worker_id, self.role, dispatching=bool(self.channels) and not rivals)
            if self.sqlite and self.channels and not rivals:
                released = outbox.release_dead_workers(db, self.channels, [w.worker_id for w in others]
                                                       + [self.worker_id])
                if released:
                    log.info("outbox: gave back %d rows claimed by workers that are gone", released)
            return rivals

    def beat(self, dispatching: bool) -> None:
        with transaction(self.db) as db:
            outbox.beat(db, self.worker_id, self.role, dispatching=dispatching and bool(self.channels))

    def unregister(self) -> int:
        """Give back what this worker still holds and remove its row; the rows given back."""
        with transaction(self.db) as db:
            released = outbox.release_worker(db, self.worker_id)
            outbox.forget_worker(db, self.worker_id)
            return released
