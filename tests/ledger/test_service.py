from sqlalchemy import text, update

from app.db import session_scope
from app.ledger import service as ledger
from app.ledger.tables import LedgerEntry
from app.tenants import service as tenants


def test_chain_appends_verifies_and_detects_tampering(lethe_env: dict[str, str]) -> None:
    with session_scope() as s:
        t = tenants.get_or_create_tenant(s, name="acme")
        other = tenants.get_or_create_tenant(s, name="other")
        for i in range(5):
            ledger.append(s, tenant_id=t.id, event="test.event", subject_type="test", subject_id=str(i),
                          data={"i": i, "x": 0.1 * i, "nested": {"b": [1, 2], "a": None}})
        ledger.append(s, tenant_id=other.id, event="test.event", subject_type="test", subject_id="o", data={})
        tid = t.id
    with session_scope() as s:
        result = ledger.verify(s, tenant_id=tid)
        assert result["ok"] and result["entries"] == 5
        entries, total = ledger.list_entries(s, tenant_id=tid)
        assert total == 5 and entries[0].prev_hash == ledger.GENESIS
        assert all(b.prev_hash == a.hash for a, b in zip(entries, entries[1:], strict=False))
        assert result["head"] == entries[-1].hash
    with session_scope() as s:
        if lethe_env["backend"] == "postgres":  # append-only trigger: tamper as a superuser would
            s.execute(text("ALTER TABLE ledger_entries DISABLE TRIGGER ledger_entries_append_only"))
        s.execute(update(LedgerEntry).where(LedgerEntry.tenant_id == tid, LedgerEntry.seq == 3)
                  .values(data={"i": 99}))
        if lethe_env["backend"] == "postgres":
            s.execute(text("ALTER TABLE ledger_entries ENABLE TRIGGER ledger_entries_append_only"))
    with session_scope() as s:
        result = ledger.verify(s, tenant_id=tid)
        assert not result["ok"] and result["broken_at"] == 3
