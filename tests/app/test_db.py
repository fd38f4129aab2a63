"""app.db's after-commit work (outbox publishing, webhook wakes, artifact deletion) runs once the outermost
transaction commits: not when a savepoint is released, never for what a rolled-back savepoint registered."""

from __future__ import annotations

from pathlib import Path

import pytest

from app import artifacts
from app.db import on_commit, session_scope
from app.tenants.tables import Tenant


def _names() -> set[str]:
    with session_scope(readonly=True) as s:
        return {t.name for t in s.query(Tenant)}


def test_after_commit_work_waits_for_the_outer_commit(lethe_env: dict[str, str]) -> None:
    seen: list[set[str]] = []

    def publish() -> None:
        # what a publisher does: read (and, on SQLite, write) in a session of its own
        seen.append(_names())
        with session_scope() as other:
            other.add(Tenant(name="written-by-the-callback"))

    with session_scope() as s:
        s.add(Tenant(name="before-savepoint"))
        s.flush()
        with s.begin_nested():
            s.add(Tenant(name="in-savepoint"))
            on_commit(s, publish)
        assert seen == []  # releasing the savepoint is not the commit
        s.add(Tenant(name="after-savepoint"))
    # it ran once, after the commit, and saw every row of the transaction; its own write did not wait on a lock
    assert len(seen) == 1 and {"before-savepoint", "in-savepoint", "after-savepoint"} <= seen[0]
    assert "written-by-the-callback" in _names()


def test_a_rolled_back_savepoint_drops_only_its_own_work(lethe_env: dict[str, str], tmp_path: Path) -> None:
    kept, dropped = tmp_path / "kept.bin", tmp_path / "dropped.bin"
    for f in (kept, dropped):
        f.write_bytes(b"x")
    calls: list[str] = []
    with session_scope() as s:
        on_commit(s, lambda: calls.append("outer"))
        artifacts.delete_after_commit(s, str(kept))
        with pytest.raises(ValueError), s.begin_nested():
            on_commit(s, lambda: calls.append("inner"))
            artifacts.delete_after_commit(s, str(dropped))
            raise ValueError("the savepoint rolls back")
    assert calls == ["outer"]  # the outer registration survived the savepoint's rollback
    assert not kept.exists() and dropped.exists()  # a file the rolled-back savepoint superseded is still needed


def test_a_rolled_back_transaction_runs_nothing(lethe_env: dict[str, str], tmp_path: Path) -> None:
    f = tmp_path / "weights.bin"
    f.write_bytes(b"x")
    calls: list[str] = []
    with pytest.raises(RuntimeError), session_scope() as s:
        on_commit(s, lambda: calls.append("ran"))
        artifacts.delete_after_commit(s, str(f))
        raise RuntimeError("rolls back")
    with session_scope() as s:  # the next transaction of a new session starts clean
        s.add(Tenant(name="next"))
    assert calls == [] and f.exists()
