"""Shared fixtures: every test gets its own data dir; Postgres tests a per-run database; nothing shared."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from fastapi.testclient import TestClient

PG_ADMIN_URL = os.environ.get("LETHE_TEST_PG", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
BOOTSTRAP = "lethe_test_bootstrap_key"
# Tests whose subject is not the evidence run without reference pools (they would cost K trainings per model):
# free answers on the labelled provisional rule, inconclusive audits accepted. tests/evidence/ turns pools on.
LEGACY = {"LETHE_REFERENCE_K": "0", "LETHE_FREE_PROVISIONAL": "true", "LETHE_AUDIT_ON_INCONCLUSIVE": "accept"}


def _reset_caches() -> None:
    from app.db import engine_for
    from app.settings import get_settings

    engine_for.cache_clear()
    get_settings.cache_clear()


@pytest.fixture(scope="session")
def pg_database() -> Iterator[str | None]:
    """A database of this test run on the machine's Postgres (dropped at the end), or None if absent."""
    try:
        import sqlalchemy as sa

        admin = sa.create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT", connect_args={"connect_timeout": 3})
        name = f"lethe_test_{uuid.uuid4().hex[:10]}"
        with admin.connect() as conn:
            conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    except Exception as exc:  # noqa: BLE001
        print(f"Postgres not reachable at {PG_ADMIN_URL}: {exc}")
        yield None
        return
    url = PG_ADMIN_URL.rsplit("/", 1)[0] + "/" + name
    from app import migrate

    migrate.upgrade(url)
    yield url
    _reset_caches()
    with admin.connect() as conn:
        conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


def _truncate(url: str) -> None:
    import sqlalchemy as sa

    from app.tables import Base

    eng = sa.create_engine(url)
    with eng.begin() as conn:
        names = ", ".join(f'"{t.name}"' for t in Base.metadata.sorted_tables)
        conn.execute(sa.text(f"TRUNCATE {names} RESTART IDENTITY CASCADE"))
    eng.dispose()


@pytest.fixture(params=["sqlite", "postgres"])
def lethe_env(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
              pg_database: str | None) -> Iterator[dict[str, str]]:
    """Settings for one test: a temp data dir and SQLite, or the run's Postgres database (cleaned after)."""
    env = {"LETHE_DATA_DIR": str(tmp_path / "var"), "LETHE_BOOTSTRAP_KEY": BOOTSTRAP,
           "LETHE_SECRET_KEY": "test-secret", "LETHE_DEVICE": "cpu", **LEGACY}
    if request.param == "postgres":
        if pg_database is None:
            pytest.skip("PostgreSQL is not reachable on 127.0.0.1:5432; Postgres variant skipped")
        env["LETHE_DATABASE_URL"] = pg_database
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    monkeypatch.delenv("LETHE_BROKER_URL", raising=False)
    _reset_caches()
    from app import migrate

    if request.param == "sqlite":
        migrate.upgrade()
    env["backend"] = request.param
    yield env
    _reset_caches()
    if request.param == "postgres":
        _truncate(pg_database)


@pytest.fixture
def sqlite_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, str]]:
    """The embedded settings only (for tests whose subject is not the database)."""
    env = {"LETHE_DATA_DIR": str(tmp_path / "var"), "LETHE_BOOTSTRAP_KEY": BOOTSTRAP,
           "LETHE_SECRET_KEY": "test-secret", "LETHE_DEVICE": "cpu", **LEGACY}
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    monkeypatch.delenv("LETHE_DATABASE_URL", raising=False)
    monkeypatch.delenv("LETHE_BROKER_URL", raising=False)
    _reset_caches()
    from app import migrate

    migrate.upgrade()
    yield env
    _reset_caches()


@pytest.fixture
def client_settings() -> dict[str, str]:
    """Settings a test module needs beside lethe_env's: a module overrides this fixture to set them."""
    return {}


@pytest.fixture
def client(lethe_env: dict[str, str], client_settings: dict[str, str],
           monkeypatch: pytest.MonkeyPatch) -> Iterator[TestClient]:
    """The app in process, on SQLite and on Postgres (lethe_env), with the module's client_settings."""
    from fastapi.testclient import TestClient

    from app.main import create_app

    for k, v in client_settings.items():
        monkeypatch.setenv(k, v)
    _reset_caches()
    with TestClient(create_app()) as c:
        yield c


@pytest.fixture
def admin_headers() -> dict[str, str]:
    return {"Authorization": f"Bearer {BOOTSTRAP}"}


@pytest.fixture(autouse=True)
def _error_answers_are_problems(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every error answer an in-process TestClient receives, in any test, must be RFC 9457 problem details
    (OpenDSR routes excepted): the error paths of every router test assert the shape, not only those that say so."""
    from starlette.testclient import TestClient

    from tests.support import check_error_answer

    init = TestClient.__init__

    def checked_init(self: TestClient, *args: object, **kwargs: object) -> None:
        init(self, *args, **kwargs)
        self.event_hooks = {**self.event_hooks, "response": [*self.event_hooks["response"], check_error_answer]}

    monkeypatch.setattr(TestClient, "__init__", checked_init)
