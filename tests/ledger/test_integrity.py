"""The ledger is append-only: Postgres refuses UPDATE/DELETE of entries (trigger); a row edited or removed behind
Lethe's back (SQLite, or Postgres with the trigger disabled by a superuser) makes /ledger/verify name the first
broken entry; /ledger/head exports the chain head for anchoring outside Lethe."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient

from app.settings import get_settings
from tests.factories import create_model, upload_dataset, upload_version

ROOT = Path(__file__).resolve().parents[2]
TRIGGER = "ledger_entries_append_only"


@pytest.fixture
def chain(client: TestClient, admin_headers: dict[str, str]) -> list[dict]:
    """A few real entries of the bootstrap tenant (dataset, model, version, jobs)."""
    upload_dataset(client, admin_headers)
    create_model(client, admin_headers)
    assert upload_version(client, admin_headers).status_code == 201
    entries = client.get("/ledger", headers=admin_headers).json()["items"]
    assert len(entries) >= 4
    return entries


def tamper(backend: str, statement: str, **params: object) -> None:
    """Run a write on ledger_entries directly in the database, as an intruder with database access would.

    On Postgres the append-only trigger is disabled for this one transaction (needs the table owner or a
    superuser); DDL is transactional, so nobody else ever sees the table without its trigger."""
    eng = sa.create_engine(get_settings().sqlalchemy_url)
    try:
        with eng.begin() as conn:
            if backend == "postgres":
                conn.execute(sa.text(f"ALTER TABLE ledger_entries DISABLE TRIGGER {TRIGGER}"))
            conn.execute(sa.text(statement), params)
            if backend == "postgres":
                conn.execute(sa.text(f"ALTER TABLE ledger_entries ENABLE TRIGGER {TRIGGER}"))
    finally:
        eng.dispose()


def row_id(seq: int) -> int:
    eng = sa.create_engine(get_settings().sqlalchemy_url)
    try:
        with eng.connect() as conn:
            return conn.execute(sa.text("SELECT e.id FROM ledger_entries e JOIN tenants t ON t.id = e.tenant_id "
                                        "WHERE t.name = 'default' AND e.seq = :s"), {"s": seq}).scalar_one()
    finally:
        eng.dispose()


def test_postgres_refuses_update_and_delete_of_entries(lethe_env: dict[str, str], chain: list[dict]) -> None:
    if lethe_env["backend"] != "postgres":
        pytest.skip("the append-only trigger is Postgres-only; SQLite relies on verify (tested below)")
    eng = sa.create_engine(get_settings().sqlalchemy_url)
    try:
        for stmt in ("UPDATE ledger_entries SET data = '{}' WHERE seq = 2",
                     "UPDATE ledger_entries SET hash = hash",  # even a no-op rewrite
                     "DELETE FROM ledger_entries WHERE seq = 2",
                     "DELETE FROM ledger_entries"):
            with pytest.raises(sa.exc.DBAPIError, match="append-only"), eng.begin() as conn:
                conn.execute(sa.text(stmt))
        # appending still works, and TRUNCATE (test fixtures' cleanup) is not a row edit: allowed, rolled back here
        with eng.connect() as conn:
            tx = conn.begin()
            conn.execute(sa.text("TRUNCATE ledger_entries"))
            tx.rollback()
        with eng.connect() as conn:
            assert conn.execute(sa.text("SELECT count(*) FROM ledger_entries")).scalar_one() == len(chain)
            trig = conn.execute(sa.text("SELECT tgenabled FROM pg_trigger WHERE tgname = :n"), {"n": TRIGGER}).one()
            assert trig[0] == "O"  # enabled
    finally:
        eng.dispose()


def test_verify_names_the_first_edited_entry(lethe_env: dict[str, str], client: TestClient,
                                             admin_headers: dict[str, str], chain: list[dict]) -> None:
    h = admin_headers
    ok = client.get("/ledger/verify", headers=h).json()
    assert ok["ok"] and ok["entries"] == len(chain) and ok["head"] == chain[-1]["hash"] and ok["broken_at"] is None
    # edit the data of entry 2 (and, later in the chain, entry 4): verify names entry 2 only
    tamper(lethe_env["backend"], "UPDATE ledger_entries SET data = :d WHERE seq IN (2, 4)", d='{"forged": true}')
    bad = client.get("/ledger/verify", headers=h).json()
    assert bad == {"ok": False, "entries": 1, "head": chain[0]["hash"], "broken_at": 2, "broken_id": row_id(2),
                   "reason": "content does not match its hash (entry edited)"}


@pytest.mark.parametrize("edit", ["delete_middle", "relink", "reorder_time"])
def test_verify_catches_removed_and_relinked_entries(lethe_env: dict[str, str], client: TestClient,
                                                     admin_headers: dict[str, str], chain: list[dict],
                                                     edit: str) -> None:
    backend = lethe_env["backend"]
    if edit == "delete_middle":
        rid = row_id(4)  # the entry after the removed one is where the chain breaks
        tamper(backend, "DELETE FROM ledger_entries WHERE seq = 3")
        want = (4, rid, "sequence gap")
    elif edit == "relink":
        tamper(backend, "UPDATE ledger_entries SET prev_hash = :p WHERE seq = 3", p="0" * 64)
        want = (3, row_id(3), "prev_hash")
    else:
        tamper(backend, "UPDATE ledger_entries SET at = :t WHERE seq = 3", t="1999-01-01T00:00:00+00:00")
        want = (3, row_id(3), "edited")
    bad = client.get("/ledger/verify", headers=admin_headers).json()
    assert not bad["ok"] and (bad["broken_at"], bad["broken_id"]) == want[:2] and want[2] in bad["reason"]
    assert bad["entries"] == want[0] - 1 - (edit == "delete_middle")


def test_head_is_exported_for_anchoring(lethe_env: dict[str, str], client: TestClient,
                                        admin_headers: dict[str, str], chain: list[dict]) -> None:
    h = admin_headers
    head = client.get("/ledger/head", headers=h).json()
    last = chain[-1]
    assert head["seq"] == last["seq"] and head["hash"] == last["hash"] and head["at"] == last["at"]
    # another tenant's head is its own chain (empty here)
    other = client.post("/keys", headers=h, json={"scopes": ["read"], "tenant": "elsewhere"}).json()["key"]
    empty = client.get("/ledger/head", headers={"Authorization": f"Bearer {other}"}).json()
    assert empty["seq"] == 0 and empty["hash"] == "0" * 64 and empty["at"] is None
    assert empty["tenant_id"] != head["tenant_id"]
    # the head moves with every append
    client.post("/models/toy/train", headers=h)
    moved = client.get("/ledger/head", headers=h).json()
    assert moved["seq"] > head["seq"] and moved["hash"] != head["hash"]
    # Why anchor: an intruder who rewrites an entry AND recomputes every later hash passes verify, but the
    # chain no longer reaches the head recorded outside Lethe.
    _rewrite_from(lethe_env["backend"], seq=2, forge=lambda d: {**d, "forged": True})
    check = client.get("/ledger/verify", headers=h).json()
    assert check["ok"], check  # internally consistent again ...
    entries = {e["seq"]: e["hash"] for e in client.get("/ledger", headers=h).json()["items"]}
    assert entries[moved["seq"]] != moved["hash"]  # ... but the anchored head is gone from the chain


def _rewrite_from(backend: str, *, seq: int, forge: Callable[[dict], dict]) -> None:
    from app.db import session_scope
    from app.ledger import service as ledger
    from app.ledger.tables import LedgerEntry
    from app.tenants.tables import Tenant

    with session_scope(readonly=True) as s:
        tid = s.scalar(sa.select(Tenant.id).where(Tenant.name == "default"))
        rows = list(s.scalars(sa.select(LedgerEntry).where(LedgerEntry.tenant_id == tid).order_by(LedgerEntry.seq)))
        prev = ledger.GENESIS
        updates = []
        for e in rows:
            data = forge(e.data) if e.seq == seq else e.data
            new = ledger.entry_hash(tenant_id=tid, seq=e.seq, event=e.event, subject_type=e.subject_type,
                                    subject_id=e.subject_id, data=data, at=e.at, prev_hash=prev)
            if e.seq >= seq:
                updates.append({"i": e.id, "d": ledger.canonical(data), "p": prev, "h": new})
            prev = new
    eng = sa.create_engine(get_settings().sqlalchemy_url)
    table = LedgerEntry.__table__
    try:
        with eng.begin() as conn:
            if backend == "postgres":
                conn.execute(sa.text(f"ALTER TABLE ledger_entries DISABLE TRIGGER {TRIGGER}"))
            # hashes are unique: move them out of the way first
            conn.execute(table.update().where(table.c.id.in_([u["i"] for u in updates]))
                         .values(hash=sa.func.substr(table.c.hash, 1, 60) + sa.literal("xxxx")))
            for u in updates:
                conn.execute(table.update().where(table.c.id == u["i"]).values(data=u["d"], prev_hash=u["p"],
                                                                              hash=u["h"]))
            if backend == "postgres":
                conn.execute(sa.text(f"ALTER TABLE ledger_entries ENABLE TRIGGER {TRIGGER}"))
    finally:
        eng.dispose()


def test_no_code_path_updates_or_deletes_ledger_entries() -> None:
    """Append-only in code too: nothing in app/ or workers/ issues an UPDATE or DELETE on the ledger."""
    pattern = re.compile(r"(update|delete)\(\s*LedgerEntry|ledger_entries.*\b(UPDATE|DELETE)\b|"
                         r"\b(UPDATE|DELETE FROM)\s+ledger_entries", re.IGNORECASE)
    offenders = []
    for path in [*ROOT.glob("app/**/*.py"), *ROOT.glob("workers/**/*.py")]:
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if pattern.search(line):
                offenders.append(f"{path.relative_to(ROOT)}:{n}: {line.strip()}")
    assert not offenders, offenders
