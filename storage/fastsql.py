"""Statements that every inbound message runs, executed on the DBAPI cursor of the step's own
connection (inside its transaction).

SQLAlchemy's execution machinery (compiled-cache lookup, execution context, result wrapping)
costs some 60 µs a statement, more than SQLite takes to run one; a conversation step runs four or
five of these (bench/inbound.py measures the whole step). `Prepared` compiles a Core statement
once per dialect and keeps SQLAlchemy's own bind
processors, so values are stored exactly as the ORM stores them (UTCDateTime, JSON); errors come
out as SQLAlchemy's exceptions (`sqlalchemy.exc.OperationalError` for a locked or restarted
database), and a connection the server dropped is invalidated as SQLAlchemy would.
`detached` turns such a row into the ORM object the rest of the step works with.
Everything else keeps using the ORM."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterable

from sqlalchemy.engine import Connection
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session, configure_mappers, make_transient_to_detached
from sqlalchemy.sql import ClauseElement
from sqlmodel import SQLModel


@dataclass(frozen=True)
class _Plan:
    sql: str
    names: tuple[str, ...]                 # bind names in the order of a positional paramstyle
    fixed: dict[str, Any]                  # binds with a value of their own (version + 1)
    processors: dict[str, Callable[[Any], Any]]
    positional: bool
    results: tuple[Callable[[Any], Any] | None, ...]   # per returned column (UTCDateTime, JSON)


class Prepared:
    """A Core statement (or one per dialect name: {"sqlite": ..., "postgresql": ...}) that binds
    only named `bindparam`s."""

    def __init__(self, stmt: ClauseElement | dict[str, ClauseElement]) -> None:
        self._stmts = stmt if isinstance(stmt, dict) else None
        self._stmt = None if isinstance(stmt, dict) else stmt
        self._plans: dict[str, _Plan] = {}

    def _plan(self, dialect) -> _Plan:
        plan = self._plans.get(dialect.name)
        if plan is None:
            stmt = self._stmts[dialect.name] if self._stmts is not None else self._stmt
            compiled = stmt.compile(dialect=dialect)
            fixed = {name: bind.effective_value for name, bind in compiled.binds.items() if not bind.required}
            for column in [*compiled.insert_prefetch, *compiled.update_prefetch]:  # Python-side defaults
                if column.default is None or not column.default.is_scalar:
                    raise ValueError(f"{column}: give it a value (its default is computed per row)")
                fixed[column.key] = column.default.arg
            names = tuple(compiled.positiontup or ()) if dialect.positional else tuple(compiled.binds)
            results = tuple(entry.type._cached_result_processor(dialect, None) for entry in compiled._result_columns)
            plan = _Plan(compiled.string, names, fixed, dict(compiled._bind_processors), dialect.positional,
                         results if any(results) else ())
            self._plans[dialect.name] = plan
        return plan

    def bind(self, dialect, params: dict[str, Any]) -> tuple[_Plan, Any]:
        plan = self._plan(dialect)
        values = {**plan.fixed, **params} if plan.fixed else dict(params)
        for name, process in plan.processors.items():
            values[name] = process(values[name])
        return plan, [values[name] for name in plan.names] if plan.positional else values

    def execute(self, conn: Connection, params: dict[str, Any]) -> tuple[list[tuple], int]:
        """Run on `conn`'s DBAPI connection: (rows returned, rowcount)."""
        return run_all(conn, [(self, params)])[0]


def run_all(conn: Connection, statements: list[tuple[Prepared, dict[str, Any]]]) -> list[tuple[list[tuple], int]]:
    """Run statements in order on `conn`'s DBAPI connection: [(rows returned, rowcount), ...].
    On PostgreSQL several statements go in one round trip (psycopg's pipeline mode): a step's
    first two statements do not wait for each other's answer, nor do its last ones."""
    dialect = conn.dialect
    raw = conn.connection.dbapi_connection
    bound = [prepared.bind(dialect, params) for prepared, params in statements]
    pipelined = len(bound) > 1 and dialect.name == "postgresql"
    cursors = [raw.cursor() for _ in bound] if pipelined else [raw.cursor()]
    cursor = cursors[0]
    try:
        if pipelined:
            with raw.pipeline():
                for cursor, (plan, values) in zip(cursors, bound):
                    cursor.execute(plan.sql, values)
            return [_result(plan, cursor) for cursor, (plan, _) in zip(cursors, bound)]
        results = []
        for plan, values in bound:
            cursor.execute(plan.sql, values)
            results.append(_result(plan, cursor))
        return results
    except dialect.loaded_dbapi.Error as exc:
        invalidated = dialect.is_disconnect(exc, raw, cursor)
        sql = "; ".join(plan.sql for plan, _ in bound)
        error = DBAPIError.instance(sql, [values for _, values in bound], exc, dialect.loaded_dbapi.Error,
                                    connection_invalidated=invalidated, dialect=dialect)
        if invalidated:
            conn.invalidate(exc)
        raise error from exc
    finally:
        for cursor in cursors:
            cursor.close()


def _result(plan: _Plan, cursor) -> tuple[list[tuple], int]:
    rows = cursor.fetchall() if cursor.description else []
    if plan.results and rows:
        rows = [tuple(v if f is None or v is None else f(v) for f, v in zip(plan.results, row)) for row in rows]
    return rows, cursor.rowcount


def detached(model: type[SQLModel], values: Iterable[tuple[str, Any]]) -> Any:
    """The ORM object of a row read with `Prepared` (all its columns), detached as if a session
    had loaded it and closed: its columns read without a query, and `session.add` makes it
    persistent in a session (its changes are then flushed, session.get returns it)."""
    if not model.__mapper__.configured:
        configure_mappers()
    obj = model._sa_class_manager.new_instance()
    obj.__dict__.update(values)
    make_transient_to_detached(obj)
    return obj


def connection_of(db: Session | Connection) -> Connection:
    """The Connection of a Session's transaction (its pending changes flushed first, as a query
    through the session would), or the Connection itself."""
    if isinstance(db, Connection):
        return db
    if db.new or db.dirty or db.deleted:
        db.flush()
    return db.connection()


def begin_immediate(conn: Connection) -> None:
    """SQLite: take the write lock at the start of a transaction (the engine's "begin" event)."""
    cursor = conn.connection.dbapi_connection.cursor()
    try:
        cursor.execute("BEGIN IMMEDIATE")
    except conn.dialect.loaded_dbapi.Error as exc:
        raise DBAPIError.instance("BEGIN IMMEDIATE", (), exc, conn.dialect.loaded_dbapi.Error,
                                  dialect=conn.dialect) from exc
    finally:
        cursor.close()
