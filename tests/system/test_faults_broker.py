"""Broker down: POST /forget still answers at once (free points now, the rest accepted), the outbox keeps the
job, and once a private Redis is back a fresh worker runs it exactly once."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa

from tests.conftest import BOOTSTRAP, _reset_caches
from tests.factories import drain, npz_bytes, safetensors_bytes
from tests.support import wait_until
from tests.system.faults import PrivateRedis, Server, Workers, subprocess_env, tail

pytestmark = pytest.mark.slow
# A request that would wait on the broker hangs until its socket timeouts; one that does not answers well within
# this. Only a hang fails it (httpx ReadTimeout), not a slow machine.
ANSWERS_WITHIN = 20.0
H = {"Authorization": f"Bearer {BOOTSTRAP}"}


@pytest.fixture
def stack(lethe_env: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
          ) -> Iterator[tuple[Server, PrivateRedis, Workers]]:
    redis = PrivateRedis(tmp_path / "redis").start()
    monkeypatch.setenv("LETHE_BROKER_URL", redis.url)
    monkeypatch.setenv("LETHE_RELAY_INTERVAL", "0.2")
    _reset_caches()
    import workers.celery_app as ca
    from app.settings import get_settings

    monkeypatch.setattr(ca, "celery", ca.make_celery(get_settings()))  # this process publishes to the private Redis
    server = Server(subprocess_env(), tmp_path / "serve.log")
    workers = Workers(subprocess_env(), tmp_path / "worker.log")
    try:
        yield server.start(), redis, workers
    finally:
        workers.stop_all()
        server.stop()
        redis.stop()


def _outbox(url: str, job_id: str) -> tuple[object, int]:
    eng = sa.create_engine(url)
    try:
        with eng.connect() as conn:
            return conn.execute(sa.text("SELECT published_at, attempts FROM outbox WHERE job_id = :j"),
                                {"j": job_id}).one()
    finally:
        eng.dispose()


def _scored_toy(http: httpx.Client) -> list[str]:
    """toy@1 uploaded and scored in this process (triage then has free points to give); its point ids."""
    assert http.post("/datasets", data={"name": "toy"},
                     files={"file": ("d.npz", npz_bytes(n=200, n_test=80))}).status_code == 201
    assert http.post("/models", json={"name": "toy", "dataset": "toy",
                                      "architecture": {"kind": "mlp", "hidden": [16]}}).status_code == 201
    assert http.post("/models/toy/versions", files={"weights": ("w", safetensors_bytes())}).status_code == 201
    drain()
    ids = [i["point_id"] for i in http.get("/models/toy/versions/1/influence?limit=1000").json()["items"]]
    assert len(ids) == 200
    return ids


@pytest.mark.parametrize("lethe_env", ["postgres"], indirect=True)
def test_forget_answers_while_the_broker_is_down_and_the_job_runs_once_it_is_back(
        lethe_env: dict[str, str], stack: tuple[Server, PrivateRedis, Workers]) -> None:
    server, redis, workers = stack
    db_url = lethe_env["LETHE_DATABASE_URL"]
    with httpx.Client(base_url=server.url, headers=H, timeout=30) as http:
        ids = _scored_toy(http)

        # 1. Redis hangs (accepts connections, never answers): requests still answer (a hung request would raise
        # ReadTimeout: no assertion on how long they take), and publishing gives up in bounded time (socket
        # timeouts) instead of blocking the relay for good
        redis.freeze()
        first = http.post("/forget", json={"model": "toy", "point_ids": ids[:2] + ids[-20:], "reason": "gdpr",
                                           "requested_by": "dpo"}, timeout=ANSWERS_WITHIN)
        assert first.status_code == 202, first.text
        body = first.json()
        assert body["status"] == "accepted" and body["free"] == sorted(ids[:2]) and len(body["pending"]) == 20
        job_id = body["job_id"]
        wait_until(lambda: _outbox(db_url, job_id)[1] >= 1, 20, "a bounded publish attempt against a hung Redis")

        # 2. Redis gone (connections refused)
        redis.stop()
        ready = http.get("/readyz", timeout=ANSWERS_WITHIN)
        assert ready.status_code == 503 and ready.json()["checks"]["broker"].startswith("down"), ready.text
        second = http.post("/forget", json={"model": "toy", "point_ids": ids[-30:-20], "reason": "gdpr",
                                            "requested_by": "dpo"}, timeout=ANSWERS_WITHIN)
        assert second.status_code == 202 and second.json()["job_id"] == job_id  # coalesced into the queued job
        # the relay keeps trying (and failing) without losing the row
        attempts = _outbox(db_url, job_id)[1]
        wait_until(lambda: _outbox(db_url, job_id)[1] >= attempts + 2, 15, "relay publish attempts")
        assert _outbox(db_url, job_id)[0] is None
        assert http.get(f"/jobs/{job_id}").json()["status"] == "queued"

        # 3. Redis back on the same port; a fresh worker runs the job once, for both requests
        redis.start()
        workers.start()

        def finished() -> dict | None:
            job = http.get(f"/jobs/{job_id}").json()
            return job if job["status"] in ("completed", "failed", "cancelled") else None

        job = wait_until(finished, 120, f"job {job_id} after the broker came back", interval=0.3)
        assert job["status"] == "completed", (job["error"], tail(workers.log))
        assert job["result"]["ref"] == "toy@2" and sorted(job["requests"]) == sorted(
            [body["request_id"], second.json()["request_id"]])
        assert _outbox(db_url, job_id)[0] is not None
        model = http.get("/models/toy").json()
        assert model["current"] == 2 and len(model["versions"]) == 2
        for rid in job["requests"]:
            assert http.get(f"/requests/{rid}").json()["status"] == "completed"
        registered = http.get("/ledger", params={"event": "version.registered", "limit": 1000}).json()["items"]
        assert [e["data"]["ref"] for e in registered] == ["toy@1", "toy@2"]
        started = http.get("/ledger", params={"event": "job.started", "subject_id": job_id}).json()
        assert started["total"] == 1  # run once
        assert http.get("/ledger/verify").json()["ok"]
