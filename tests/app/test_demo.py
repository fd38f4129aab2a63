"""`lethe demo` waits for its jobs on a worker: it fails loudly instead of waiting forever."""

from __future__ import annotations

import subprocess
import sys

import pytest

from app import demo
from app.db import session_scope
from app.jobs import outbox
from app.jobs import service as jobs
from app.jobs.enums import JobKind
from app.tenants.service import get_or_create_tenant


def _queued_job(monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setattr(outbox, "kick", lambda: None)  # published nowhere: no worker will ever claim it
    with session_scope() as s:
        tenant = get_or_create_tenant(s, name="default")
        return jobs.create(s, tenant_id=tenant.id, kind=JobKind.VALIDATE, model_id=None, version=None).id


def test_a_job_no_worker_receives_ends_the_wait_with_the_reason(sqlite_env: dict[str, str],
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    job_id = _queued_job(monkeypatch)
    with pytest.raises(RuntimeError, match=f"job {job_id} is still queued after 0 s.*LETHE_BROKER_URL"):
        demo.wait_for_job(job_id, poll=0.01, queued_limit=0.05)


def test_a_worker_that_exits_ends_the_wait(sqlite_env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    job_id = _queued_job(monkeypatch)
    worker = subprocess.Popen([sys.executable, "-c", "raise SystemExit(3)"])
    worker.wait()
    with pytest.raises(RuntimeError, match="worker exited \\(code 3\\)"):
        demo.wait_for_job(job_id, worker=worker, poll=0.01)
