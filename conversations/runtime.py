"""The conversation runtime: one step (conversations/step.py) per inbound message, in one
database transaction.

`Engine.handle` locks the resident's row (and their session's), runs the step, and commits the
new state, every record the step wrote and the replies (as outbox rows) together. A crash before
the commit loses nothing that was acknowledged; a crash after it leaves the replies in the outbox
for the dispatcher.

A step that fails commits nothing of its own: the step's writes go into a savepoint, begun by
the first write (`StepWrites`: the ORM session, ctx.conn; a profile change waits for the end of
the step instead, so the common steps, a prompt or a choice, take no savepoint at all). On an
exception the savepoint is rolled back, the step's ORM session discarded, and the resident gets
the apology in their language and the menu, written in the outer transaction.

Each thread that runs steps keeps one connection between steps, and the statements every step
runs are prepared once (storage/fastsql.py): a pool checkout and SQLAlchemy's execution path
cost more than a step's own statements on SQLite.
"""
from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from datetime import datetime, timedelta
from types import SimpleNamespace
from typing import Any

from sqlalchemy import and_, bindparam, event
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import Connection, NestedTransaction
from sqlalchemy.engine import Engine as DbEngine
from sqlalchemy.orm.attributes import set_committed_value
from sqlmodel import Session, select

from conversations.erasure import erase_resident
from conversations.i18n import N_
from conversations.messages import Inbound, Kind, Outbound
from conversations.step import (
    IDLE,
    Ctx,
    EngineConfig,
    StepResult,
    back_to_menu,
    expired,
    step,
    step_session,
    takes_attachment,
)
from storage import attachments, outbox
from storage.attachments import Erased
from storage.db import aware, utcnow
from storage.fastsql import Prepared, detached, run_all
from storage.models import ChannelIdentity, ConversationSession, ProcessedInbound, Resident
from storage.residents import identity_for, resident_update, update_resident
from storage.staff import is_chat_staff

log = logging.getLogger(__name__)


@dataclass
class Handled:
    replies: list[tuple[int, Outbound]]   # (outbox id, message) claimed by this worker for direct sending
    duplicate: bool = False
    resident_id: int | None = None
    erased: Erased | None = None          # the step erased the resident: what is left to do after the commit


class StepWrites:
    """The writes of one step, so that a failed step leaves none behind. The first write through
    the ORM session or ctx.conn begins a savepoint on the step's connection (SAVEPOINT costs a
    statement: the steps that only read and change the profile never pay it); changes to the
    resident's profile wait for the end of the step, and go in its last round trip, or are
    written when a savepoint begins (so the ORM sees them). On success the savepoint stays
    open and the step's COMMIT releases it."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.savepoint: NestedTransaction | None = None
        self.profile: dict[str, Any] = {}
        self.resident: Resident | None = None

    def begin(self) -> None:
        if self.savepoint is None:
            self.savepoint = self.conn.begin_nested()
            if self.profile:
                update_resident(self.conn, self.resident, **self.profile)
                self.profile = {}

    def update_resident(self, resident: Resident, values: dict[str, Any]) -> None:
        if self.savepoint is not None:
            update_resident(self.conn, resident, **values)
            return
        self.resident = resident
        self.profile.update(values)
        for key, value in values.items():
            set_committed_value(resident, key, value)

    def pending(self) -> list[tuple[Prepared, dict[str, Any]]]:
        """The profile change still to write, as a statement for the step's last round trip."""
        if not self.profile:
            return []
        return [resident_update(self.resident.id, self.profile)]

    def roll_back(self) -> None:
        """Undo everything the step wrote (a savepoint an error already rolled back is left as it is)."""
        if self.savepoint is not None and self.savepoint.is_active:
            self.savepoint.rollback()
        self.savepoint = None
        self.profile = {}


class Engine:
    def __init__(self, db: DbEngine, config: EngineConfig, worker_id: str = "main") -> None:
        self.db = db
        self.config = config
        self.worker_id = worker_id
        # Each thread that runs steps keeps one connection between steps (a pool checkout and
        # return cost more than a step's own statements on SQLite); Engine.dispose releases them.
        self._held: dict[int, Connection] = {}
        self._held_lock = threading.Lock()
        event.listen(db, "engine_disposed", lambda _db: self.release())

    @property
    def registry(self):
        return self.config.registry

    def handle(self, msg: Inbound, inbox_id: int | None = None) -> Handled:
        """Run one step for one inbound message, in one transaction (which also removes the
        message from the inbox when it was queued there)."""
        conn = self._connection()
        try:
            with conn.begin():  # commits at the end of the block, rolls back on an error
                if inbox_id is not None:
                    from storage import inbox

                    inbox.done(conn, inbox_id)
                handled = self._handle(conn, msg)
        except BaseException:
            self._drop(conn)  # the next step starts on a fresh connection (a restarted database)
            raise
        if handled.erased is not None:  # committed: their files go now (a crash here: housekeeping's sweep)
            attachments.remove(handled.erased.files, getattr(self.config.settings, "media_dir", None))
        return handled

    def wants_attachment(self, msg: Inbound) -> bool:
        """Whether the step for this message would use its attachment (App.handle downloads only
        then): one read of the resident's state by channel and address (the identity's unique
        index, the session's primary key), outside the step's transaction and taking no lock."""
        rows = self._read(_STATE_OF, {"channel": msg.channel, "address": msg.address})
        if not rows:
            return False  # a first message: onboarding comes first
        state, updated_at, onboarded_at = rows[0]
        state = state or IDLE  # no session row yet: the menu

        def is_staff() -> bool:
            with Session(self.db) as db:
                return is_chat_staff(db, msg.channel, msg.address)

        return takes_attachment(self.registry, state, msg.kind, onboarded_at=onboarded_at, is_staff=is_staff,
                                expired=expired(state, updated_at, utcnow(), self.config.session_expiry))

    def _read(self, stmt: Prepared, params: dict[str, Any]) -> list[tuple]:
        """Rows of a read on this thread's connection, in a transaction of its own (on SQLite none:
        a plain SELECT in autocommit, so no BEGIN IMMEDIATE takes the write lock for it)."""
        conn = self._connection()
        try:
            if conn.dialect.name == "sqlite":
                return stmt.execute(conn, params)[0]
            with conn.begin():
                return stmt.execute(conn, params)[0]
        except BaseException:
            self._drop(conn)
            raise

    def _connection(self) -> Connection:
        key = threading.get_ident()
        conn = self._held.get(key)
        if conn is None or conn.closed or conn.invalidated:
            conn = self.db.connect()
            with self._held_lock:
                self._held[key] = conn
        return conn

    def _drop(self, conn: Connection) -> None:
        with self._held_lock:
            if self._held.get(threading.get_ident()) is conn:
                del self._held[threading.get_ident()]
        try:
            conn.close()
        except Exception:
            log.debug("closing a failed step's connection", exc_info=True)

    def release(self) -> None:
        """Return every held connection to the pool (at shutdown, and when the database engine
        is disposed)."""
        with self._held_lock:
            held, self._held = list(self._held.values()), {}
        for conn in held:
            try:
                conn.close()
            except Exception:
                log.debug("releasing a held connection", exc_info=True)

    def _handle(self, conn: Connection, msg: Inbound) -> Handled:
        now = utcnow()
        where = {"channel": msg.channel, "address": msg.address}
        if msg.external_id:  # recorded and loaded in one round trip (PostgreSQL)
            seen = {"channel": msg.channel, "external_id": msg.external_id[:64], "at": now}
            (fresh, _), loaded = run_all(conn, [(_INSERT_PROCESSED, seen), (_LOAD_LOCKED, where)])
            if not fresh:  # a re-delivered update or webhook: seen before
                return Handled([], duplicate=True)
        else:
            loaded = _LOAD_LOCKED.execute(conn, where)
        identity, resident, session = _load_locked(conn, where, loaded[0])
        if identity is None:  # a first message: the resident and their identity, before the step
            with step_session(conn) as opened:
                identity, resident = identity_for(opened, msg.channel, msg.address, msg.language_hint,
                                                       msg.display_name, self.config.default_locale)
        stored = session is not None
        if not stored:
            session = _Stored(IDLE, {}, None)
        profile = {key: getattr(resident, key) for key in _R_KEYS}  # as loaded: what a failed step goes back to
        writes = StepWrites(conn)
        ctx = Ctx(self.config, resident, identity, session.state, session.data or {}, now, conn=conn,
                  writes=writes)  # data: freshly decoded, the step's own
        try:
            try:
                result = self._step(ctx, msg, session)
                _flush(ctx, writes)
            except Exception:
                log.exception("step failed in state %s for resident:%s (%s)", ctx.state, resident.id, identity.channel)
                _discard(ctx)
                writes.roll_back()
                ctx = Ctx(self.config, detached(Resident, profile.items()), identity, session.state, {}, now,
                          conn=conn, writes=writes)
                result = back_to_menu(ctx, N_("engine.error"))
            return self._finish(ctx, msg, result, writes, stored)
        finally:
            _discard(ctx)  # the transaction stays open: handle() commits it

    def _step(self, ctx: Ctx, msg: Inbound, session: "_Stored") -> StepResult:
        if expired(session.state, session.updated_at, ctx.now, self.config.session_expiry):
            result = back_to_menu(ctx, N_("engine.expired"))
            return result if msg.kind != Kind.COMMAND else step(ctx, msg)
        return step(ctx, msg)

    def _finish(self, ctx: Ctx, msg: Inbound, result: StepResult, writes: StepWrites, stored: bool) -> Handled:
        now, conn, identity, resident = ctx.now, writes.conn, ctx.identity, ctx.resident
        stored_media = [m.ref for m in msg.media if m.ref]
        if stored_media and not ctx.erase:  # who sent which stored file (erasure finds a draft's photos)
            attachments.record_uploads(ctx.db, resident.id, stored_media, now)
        _flush(ctx, writes)  # what the step changed through the ORM goes first (foreign keys)
        # Claimed under a name of their own: a dispatcher stopping in this process releases its own
        # claims, never replies that are being sent right now (they are confirmed, or their lease runs out).
        claimed_by = f"{self.worker_id}/direct"
        if ctx.erase:
            erased = erase_resident(ctx.db, resident.id, actor=f"resident:{resident.id}", config=self.config)
            _flush(ctx, writes)
            # Nothing else of theirs stays queued or archived in the outbox; the goodbye goes out,
            # telling the channel which files it wrote for them to forget, and loses its address
            # once sent (storage.outbox.mark_sent).
            for out in result.replies:
                out.forget = list(erased.documents)
            rows = outbox.enqueue_replies(conn, identity, result.replies, claimed_by=claimed_by, now=now)
            return Handled(rows, resident_id=resident.id, erased=erased)
        # The replies, the session and (when due) the last inbound time: one round trip (PostgreSQL).
        statements = outbox.reply_statements(identity, result.replies, claimed_by=claimed_by, now=now)
        values = {"rid": resident.id, "state": result.state, "data": result.data, "now": now}
        statements.append((_SAVE_SESSION if stored else _NEW_SESSION, values))
        # The last inbound time matters to the minute (WhatsApp's 24-hour window): skip the write
        # when it is fresh, so a busy conversation costs one UPDATE fewer per message.
        last = identity.last_inbound_at
        if last is None or now - aware(last) > timedelta(seconds=60) or identity.unreachable:
            statements.append((_SEEN, {"iid": identity.id, "now": now}))
        statements += writes.pending()  # a profile change (a language, a mahalle) goes in the same trip
        done = run_all(conn, statements)
        if stored and not done[len(result.replies)][1]:  # the session row went away meanwhile
            _NEW_SESSION.execute(conn, values)
        rows = outbox.reply_ids(done, result.replies)
        return Handled(rows, resident_id=resident.id)


def _flush(ctx: Ctx, writes: StepWrites) -> None:
    """Write what the step changed through the ORM; a savepoint or session rolled back by an error
    the step caught must not let the step's later writes commit on their own."""
    if writes.savepoint is not None and not writes.savepoint.is_active:
        raise RuntimeError("the step's savepoint was rolled back by an error")
    db = ctx.session
    if db is None:
        return
    if not db.is_active or not writes.conn.in_transaction():
        raise RuntimeError("the step's transaction was rolled back by an error")
    if db.new or db.dirty or db.deleted:
        db.flush()


def _discard(ctx: Ctx) -> None:
    if ctx.session is not None:
        ctx.session.close()
        ctx.session = None


@dataclass
class _Stored:
    """A conversation session as stored (read with plain columns and written with one UPDATE:
    the ORM's change tracking would cost more than the rest of the step)."""
    state: str
    data: dict[str, Any]
    updated_at: datetime | None


# Statements built once (building them per message costs more than running them on SQLite).
_P = ProcessedInbound.__table__
_INSERT_PROCESSED = Prepared({
    name: fn(_P).values(channel=bindparam("channel"), external_id=bindparam("external_id"), at=bindparam("at"))
    .on_conflict_do_nothing().returning(_P.c.at)
    for name, fn in (("postgresql", pg_insert), ("sqlite", sqlite_insert))
})
_S = ConversationSession.__table__
_I = ChannelIdentity.__table__
_R = Resident.__table__
_I_KEYS, _R_KEYS = tuple(_I.c.keys()), tuple(_R.c.keys())
_BY_ADDRESS = and_(_I.c.channel == bindparam("channel"), _I.c.address == bindparam("address"))
_LOAD_LOCKED = Prepared(select(_I, _R, _S.c.state, _S.c.data, _S.c.updated_at)
                        .join(_R, _R.c.id == _I.c.resident_id).join(_S, _S.c.resident_id == _R.c.id)
                        .where(_BY_ADDRESS).with_for_update(of=[_R, _S]))
_LOAD_NEW = Prepared(select(_I, _R).join(_R, _R.c.id == _I.c.resident_id).where(_BY_ADDRESS).with_for_update(of=_R))
_STATE_OF = Prepared(select(_S.c.state, _S.c.updated_at, _R.c.onboarded_at)
                     .select_from(_I.join(_R, _R.c.id == _I.c.resident_id).outerjoin(_S, _S.c.resident_id == _R.c.id))
                     .where(_BY_ADDRESS))
_SEEN = Prepared(_I.update().where(_I.c.id == bindparam("iid"))
                 .values(last_inbound_at=bindparam("now"), unreachable=False, unreachable_reason=""))
_LOAD_SESSION = Prepared(select(_S.c.state, _S.c.data, _S.c.updated_at)
                         .where(_S.c.resident_id == bindparam("rid")).with_for_update())
_SAVE_SESSION = Prepared(_S.update().where(_S.c.resident_id == bindparam("rid"))
                         .values(state=bindparam("state"), data=bindparam("data"), updated_at=bindparam("now"),
                                 version=_S.c.version + 1))
_NEW_SESSION = Prepared(_S.insert().values(resident_id=bindparam("rid"), state=bindparam("state"),
                                           data=bindparam("data"), updated_at=bindparam("now"), version=1))


def _load_locked(conn, where: dict[str, str], rows: list[tuple]):
    """Identity, resident and session from one query (`rows`: _LOAD_LOCKED's), the resident and session rows locked until
    commit (PostgreSQL: FOR UPDATE OF both, so one resident's steps run one at a time across
    workers, and a step that waited for the lock reads the session as the previous step left it;
    SQLite's BEGIN IMMEDIATE already serialises writers). A resident without a session yet (their
    first message) takes a second query. The resident becomes an ORM object, detached until a
    state opens the step's ORM session (storage.fastsql.detached); the identity and the session
    stay plain."""
    stored = None
    if rows:
        row = rows[0]
        stored = _Stored(*row[len(_I_KEYS) + len(_R_KEYS):])
    else:
        rows, _ = _LOAD_NEW.execute(conn, where)
        if not rows:
            return None, None, None
        row = rows[0]
    identity = SimpleNamespace(**dict(zip(_I_KEYS, row)))  # read only: the step writes it with _SEEN
    resident = detached(Resident, zip(_R_KEYS, row[len(_I_KEYS):]))
    if stored is None:
        found, _ = _LOAD_SESSION.execute(conn, {"rid": resident.id})
        stored = _Stored(*found[0]) if found else None
    return identity, resident, stored
