"""Database engine, session dependency and the declarative Base."""

from __future__ import annotations

import heapq
import itertools
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from functools import lru_cache
from typing import Annotated, Any

from fastapi import Depends, Request
from sqlalchemy import JSON, DateTime, MetaData, Select, TypeDecorator, create_engine, event, exc, func, select
from sqlalchemy.engine import Engine
from sqlalchemy.orm import DeclarativeBase, Session, SessionTransaction, sessionmaker

from app.settings import get_settings

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class UTCDateTime(TypeDecorator[datetime]):
    """DateTime(timezone=True) that always loads aware UTC values: SQLite stores none and hands back naive ones,
    which serialise without an offset (not an RFC 3339 date-time) and cannot be compared with aware ones."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        return value.replace(tzinfo=UTC) if value is not None and value.tzinfo is None else value


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)
    type_annotation_map = {dict[str, Any]: JSON, list[Any]: JSON, datetime: UTCDateTime()}


def utcnow() -> datetime:
    return datetime.now(UTC)


def new_id() -> str:
    return str(uuid.uuid4())


SQLITE_WRITERS = threading.Lock()  # a plain Lock: FastAPI may commit a session on another thread than began it


def _release_writer(conn: Any) -> None:
    """`conn`: a Connection or its pool record (they share `info`)."""
    if conn.info.pop("lethe_writer", False):
        SQLITE_WRITERS.release()


@lru_cache
def engine_for(url: str, readonly: bool = False) -> Engine:
    """One pooled engine per URL; SQLite gets WAL and a busy timeout so API and worker can share it.

    SQLite: writing sessions BEGIN IMMEDIATE; `readonly` ones (GET requests) BEGIN deferred and, in WAL
    mode, read a snapshot without waiting for writers.
    """
    return _sqlite_engine(url, readonly) if url.startswith("sqlite") else _postgres_engine(url)


def _sqlite_engine(url: str, readonly: bool) -> Engine:
    """WAL, foreign keys, a busy timeout, and writers that take the write lock up front (BEGIN IMMEDIATE)."""
    # Pool as large as the API's threadpool (40): a request waits for SQLite's lock, not for a connection.
    eng = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30}, pool_size=20,
                        max_overflow=30)

    @event.listens_for(eng, "connect")
    def _pragmas(dbapi_conn: Any, _: Any) -> None:
        dbapi_conn.isolation_level = None  # let SQLAlchemy's begin event own transactions
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute("PRAGMA busy_timeout=30000")
        cur.close()

    @event.listens_for(eng, "begin")
    def _begin(conn: Any) -> None:
        # IMMEDIATE takes the write lock up front, so read-then-append (ledger chain, seq
        # numbers) cannot interleave between API and worker; others wait on busy_timeout.
        if readonly:
            conn.exec_driver_sql("BEGIN")
            return
        # Writers of this process queue on a Python lock first: SQLite's busy handler polls with growing
        # sleeps, so under load a waiting writer could lose the race for seconds (p99 ≫ p50). Other
        # processes (the worker) still meet busy_timeout.
        if not SQLITE_WRITERS.acquire(timeout=30):
            raise exc.OperationalError("BEGIN IMMEDIATE", None, Exception("database is locked (30 s)"))
        conn.info["lethe_writer"] = True
        try:
            conn.exec_driver_sql("BEGIN IMMEDIATE")
        except BaseException:
            _release_writer(conn)
            raise

    event.listen(eng, "commit", _release_writer)
    event.listen(eng, "rollback", _release_writer)
    # A connection reset or invalidated by the pool without either event must not keep the lock.
    event.listen(eng.pool, "reset", lambda _dbapi, record, *_: _release_writer(record))
    event.listen(eng.pool, "invalidate", lambda _dbapi, record, *_: _release_writer(record))
    return eng


def _postgres_engine(url: str) -> Engine:
    """A short connect timeout, TCP keepalives, and WATCHDOG on every statement and checkout."""
    # Short connect timeout: a lost database must answer 503 quickly, never hang a request. libpq has no read
    # timeout, so a stalled server (connections open, no answers) is caught by WATCHDOG, which also pings
    # pooled connections on checkout (SQLAlchemy's pre-ping would wait on a stalled server for ever).
    limit = get_settings().db_statement_timeout
    eng = create_engine(url, pool_size=20, max_overflow=30, pool_timeout=10,
                        connect_args={"connect_timeout": 5, "keepalives": 1, "keepalives_idle": 10,
                                      "keepalives_interval": 5, "keepalives_count": 3,
                                      "tcp_user_timeout": int(limit * 1000)})

    @event.listens_for(eng, "checkout")
    def _ping(dbapi_conn: Any, _record: Any, _proxy: Any) -> None:
        token = WATCHDOG.arm(dbapi_conn, min(limit, 5.0))
        try:
            dbapi_conn.execute("SELECT 1")
            dbapi_conn.rollback()
        except Exception as e:  # the pool discards this connection and checks out (or opens) another
            raise exc.DisconnectionError(str(e)) from e
        finally:
            WATCHDOG.disarm(token)

    @event.listens_for(eng, "before_cursor_execute")
    def _arm(conn: Any, _cursor: Any, _stmt: Any, _params: Any, context: Any, _many: Any) -> None:
        context._lethe_watch = WATCHDOG.arm(conn.connection.dbapi_connection, limit)

    @event.listens_for(eng, "after_cursor_execute")
    def _disarm(conn: Any, _cursor: Any, _stmt: Any, _params: Any, context: Any, _many: Any) -> None:
        WATCHDOG.disarm(getattr(context, "_lethe_watch", None))

    @event.listens_for(eng, "handle_error")
    def _disarm_on_error(ctx: Any) -> None:
        if ctx.execution_context is not None:
            WATCHDOG.disarm(getattr(ctx.execution_context, "_lethe_watch", None))

    return eng


class Watchdog:
    """Shuts down the socket of a Postgres connection whose statement outlives its deadline, so the blocked
    call fails at once (SQLAlchemy sees a disconnect and invalidates it) instead of waiting on a stalled
    server for ever. One thread for the process; arming costs a heap push."""

    def __init__(self) -> None:
        self._lock = threading.Condition()
        self._heap: list[tuple[float, int]] = []
        self._armed: dict[int, Any] = {}
        self._ids = itertools.count()
        self._thread: threading.Thread | None = None

    def arm(self, dbapi_conn: Any, seconds: float) -> int | None:
        pgconn = getattr(dbapi_conn, "pgconn", None)
        if pgconn is None:
            return None
        token = next(self._ids)
        with self._lock:
            self._armed[token] = pgconn
            heapq.heappush(self._heap, (time.monotonic() + seconds, token))
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="db-watchdog", daemon=True)
                self._thread.start()
            if self._heap[0][1] == token:  # an earlier deadline than the one the thread sleeps towards
                self._lock.notify()
        return token

    def disarm(self, token: int | None) -> None:
        if token is not None:
            with self._lock:
                self._armed.pop(token, None)

    def _run(self) -> None:
        while True:
            with self._lock:
                while not self._heap:
                    self._lock.wait()
                deadline, token = self._heap[0]
                wait = deadline - time.monotonic()
                if wait > 0:
                    self._lock.wait(wait)
                    continue
                heapq.heappop(self._heap)
                pgconn = self._armed.pop(token, None)
            if pgconn is not None:
                self._shut(pgconn)

    @staticmethod
    def _shut(pgconn: Any) -> None:
        try:
            sock = socket.socket(fileno=os.dup(pgconn.socket))
        except Exception:  # noqa: BLE001 - already closed: nothing is waiting on it
            return
        with sock:
            try:
                sock.shutdown(socket.SHUT_RDWR)  # wakes the blocked reader with an error, for every fd of it
            except OSError:
                pass
        logging.getLogger("lethe.db").warning("database statement exceeded LETHE_DB_STATEMENT_TIMEOUT: "
                                              "connection shut down")


WATCHDOG = Watchdog()


def get_engine(readonly: bool = False) -> Engine:
    settings = get_settings()
    url = settings.sqlalchemy_url
    if url.startswith("sqlite"):
        settings.ensure_data_dir()
        return engine_for(url, readonly)
    return engine_for(url)  # Postgres: row locks do the serialising; one engine serves both


AFTER_COMMIT = ("delete_after_commit", "on_commit")  # session.info lists run once the outermost commit lands


@event.listens_for(Session, "after_transaction_create")
def _mark_savepoint(session: Session, transaction: SessionTransaction) -> None:
    """Remember how much after-commit work was registered when a savepoint began, so rolling it back drops
    only what was registered inside it."""
    if transaction.nested:
        session.info.setdefault("savepoints", {})[id(transaction)] = {k: len(session.info.get(k, []))
                                                                     for k in AFTER_COMMIT}


@event.listens_for(Session, "after_soft_rollback")
def _drop_on_rollback(session: Session, previous_transaction: SessionTransaction) -> None:
    """A rolled-back savepoint drops what it registered; a rolled-back transaction drops everything."""
    if previous_transaction.nested:
        mark = session.info.get("savepoints", {}).pop(id(previous_transaction), None) or {}
        for key, n in mark.items():
            del session.info.get(key, [])[n:]
    elif previous_transaction.parent is None:
        for key in (*AFTER_COMMIT, "savepoints"):
            session.info.pop(key, None)


@event.listens_for(Session, "after_commit")
def _run_after_commit(session: Session) -> None:
    """Work that must only start once its rows are committed: deleting superseded artifacts (never on rollback),
    then the on_commit callbacks (publishing the outbox, waking the webhook senders), run once, never raising.
    SQLAlchemy fires after_commit when a savepoint is released too; the outer transaction may still roll back
    (and, on SQLite, still holds the write lock a publish would wait 30 s for), so that waits for the real
    commit."""
    from app import artifacts

    if (savepoint := session.get_nested_transaction()) is not None:
        session.info.get("savepoints", {}).pop(id(savepoint), None)
        return
    session.info.pop("savepoints", None)
    for uri in session.info.pop("delete_after_commit", []):
        artifacts.delete(uri)
    for fn in session.info.pop("on_commit", []):
        try:
            fn()
        except Exception as exc:  # noqa: BLE001 - the transaction committed; a missed wake is caught up later
            logging.getLogger("lethe.db").warning("after-commit %s failed: %s", getattr(fn, "__name__", fn), exc)


def on_commit(session: Session, fn: Callable[[], None]) -> None:
    """Call `fn()` once after this session's outermost transaction commits (not at all if it rolls back)."""
    pending = session.info.setdefault("on_commit", [])
    if fn not in pending:
        pending.append(fn)


def count(session: Session, query: Select[Any]) -> int:
    """How many rows a query returns (a list page's `total`)."""
    return session.scalar(select(func.count()).select_from(query.subquery())) or 0


def page(session: Session, query: Select[Any], *order_by: Any, offset: int = 0, limit: int) -> tuple[list[Any], int]:
    """One page of a query's rows in `order_by`, and how many rows it has in all."""
    return list(session.scalars(query.order_by(*order_by).offset(offset).limit(limit))), count(session, query)


def session_factory(readonly: bool = False) -> sessionmaker[Session]:
    return sessionmaker(bind=get_engine(readonly), expire_on_commit=False)


@contextmanager
def session_scope(readonly: bool = False) -> Iterator[Session]:
    """A unit of work: commit on success, roll back on error."""
    session = session_factory(readonly)()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


def get_session(request: Request) -> Iterator[Session]:
    with session_scope(readonly=request.method in ("GET", "HEAD")) as session:
        # An Idempotency-Key claim (app.idempotency) commits with the route's own writes.
        session.info["idempotency_claim"] = request.scope.get("state", {}).get("idempotency_claim")
        yield session


SessionDep = Annotated[Session, Depends(get_session)]
