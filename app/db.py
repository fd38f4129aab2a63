"""Database engine, session dependency and the declarative Base."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from functools import lru_cache
from typing import Annotated, Any

from fastapi import Depends, Request
from sqlalchemy import JSON, DateTime, MetaData, TypeDecorator, create_engine, event
from sqlalchemy.engine import Engine
from sqlalchemy.orm import DeclarativeBase, Session, sessionmaker

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


@lru_cache
def engine_for(url: str, readonly: bool = False) -> Engine:
    """One pooled engine per URL; SQLite gets WAL and a busy timeout so API and worker can share it.

    SQLite: writing sessions BEGIN IMMEDIATE; `readonly` ones (GET requests) BEGIN deferred and, in WAL
    mode, read a snapshot without waiting for writers.
    """
    if url.startswith("sqlite"):
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
            conn.exec_driver_sql("BEGIN" if readonly else "BEGIN IMMEDIATE")

        return eng
    # Short connect timeout: a lost database must answer 503 quickly, never hang a request.
    return create_engine(url, pool_pre_ping=True, pool_size=20, max_overflow=30, pool_timeout=10,
                         connect_args={"connect_timeout": 5})


def get_engine(readonly: bool = False) -> Engine:
    settings = get_settings()
    url = settings.sqlalchemy_url
    if url.startswith("sqlite"):
        settings.resolved_data_dir.mkdir(parents=True, exist_ok=True)
        return engine_for(url, readonly)
    return engine_for(url)  # Postgres: row locks do the serialising; one engine serves both


@event.listens_for(Session, "after_commit")
def _delete_after_commit(session: Session) -> None:
    """Artifacts superseded in a transaction are deleted only once it committed (never on rollback)."""
    from app import artifacts

    for uri in session.info.pop("delete_after_commit", []):
        artifacts.delete(uri)


@event.listens_for(Session, "after_rollback")
def _keep_on_rollback(session: Session) -> None:
    session.info.pop("delete_after_commit", None)


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
