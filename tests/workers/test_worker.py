"""The same scenario through a real broker and a real `lethe worker` process:
embedded (SQLite ledger, SQLite broker) and production (Postgres ledger, Redis broker)."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from app.main import create_app
from tests.factories import create_model, upload_dataset

REDIS = os.environ.get("LETHE_TEST_REDIS", "redis://127.0.0.1:6379")


def _redis_db() -> str | None:
    try:
        import redis

        db = random.randint(1, 15)
        url = f"{REDIS}/{db}"
        redis.Redis.from_url(url, socket_connect_timeout=2).ping()
        return url
    except Exception:  # noqa: BLE001
        return None


@pytest.fixture
def stack(lethe_env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Iterator[TestClient]:
    yield from worker_stack(lethe_env, monkeypatch)


def worker_stack(lethe_env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Iterator[TestClient]:
    """An API client beside a real `lethe worker` process on the environment's broker."""
    if lethe_env["backend"] == "postgres":
        url = _redis_db()
        if url is None:
            pytest.skip(f"Redis is not reachable at {REDIS}; production variant skipped")
        monkeypatch.setenv("LETHE_BROKER_URL", url)
    from tests.conftest import _reset_caches

    _reset_caches()
    import workers.celery_app as ca

    monkeypatch.setattr(ca, "celery", ca.make_celery(__import__("app.settings").settings.get_settings()))
    worker = subprocess.Popen([sys.executable, "-m", "app.cli", "worker", "--loglevel", "WARNING"],
                              env=os.environ.copy(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        with TestClient(create_app()) as client:
            yield client
    finally:
        worker.send_signal(signal.SIGTERM)
        try:
            worker.wait(timeout=30)
        except subprocess.TimeoutExpired:
            worker.kill()
        if os.environ.get("LETHE_BROKER_URL", "").startswith("redis"):
            import redis

            redis.Redis.from_url(os.environ["LETHE_BROKER_URL"]).flushdb()


def wait_for(client: TestClient, headers: dict[str, str], job_id: str, timeout: float = 180) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.get(f"/jobs/{job_id}", headers=headers).json()
        if job["status"] in ("completed", "failed", "cancelled"):
            return job
        time.sleep(0.5)
    raise AssertionError(f"job {job_id} still {job['status']} after {timeout}s")


def train_and_wait(client: TestClient, headers: dict[str, str], model: str) -> dict:
    """Train `model` on the worker; the completed train job."""
    trained = wait_for(client, headers, client.post(f"/models/{model}/train", headers=headers).json()["job_id"])
    assert trained["status"] == "completed", trained["error"]
    return trained


def forget_and_wait(client: TestClient, headers: dict[str, str], **body: object) -> dict:
    """POST /forget (reason and requester filled in) and the job it queued, completed on the worker."""
    resp = client.post("/forget", headers=headers, json={"reason": "gdpr", "requested_by": "dpo", **body})
    assert resp.status_code == 202, (body, resp.text)
    job = wait_for(client, headers, resp.json()["job_id"])
    assert job["status"] == "completed", (body, job["error"])
    return job


def unlearn_as_next_version(client: TestClient, headers: dict[str, str], model: str, point_ids: list[str],
                            algorithm: str, params: dict, current: int) -> int:
    """Forget `point_ids` with `algorithm`: its job completes with that algorithm's attempt and the model's current
    version moves from `current` to the next; returns it."""
    job = forget_and_wait(client, headers, model=model, point_ids=point_ids, algorithm=algorithm, params=params)
    assert job["result"]["metrics"]["attempts"][0]["algorithm"] == algorithm
    assert client.get(f"/models/{model}", headers=headers).json()["current"] == current + 1, algorithm
    return current + 1


def test_worker_runs_forget_job_through_the_broker(stack: TestClient, admin_headers: dict[str, str]) -> None:
    h = admin_headers
    upload_dataset(stack, h, n=200, n_test=80)
    create_model(stack, h)
    train = stack.post("/models/toy/train", headers=h).json()
    # the worker process takes the train job from the broker
    trained = wait_for(stack, h, train["job_id"])
    assert trained["status"] == "completed", trained["error"]
    assert wait_for(stack, h, trained["result"]["score_job_id"])["status"] == "completed"
    scores = stack.get("/models/toy/versions/1/influence?limit=1000", headers=h).json()
    assert scores["status"] == "completed"
    ids = [i["point_id"] for i in scores["items"]]
    resp = stack.post("/forget", headers=h, json={"model": "toy", "point_ids": ids[:2] + ids[-30:],
                                                  "reason": "gdpr", "requested_by": "dpo"}).json()
    assert resp["free"] == sorted(ids[:2]) and resp["job_id"]
    job = wait_for(stack, h, resp["job_id"])
    assert job["status"] == "completed", job["error"]
    assert job["result"]["ref"] == "toy@2"
    assert stack.get("/models/toy", headers=h).json()["current"] == 2
    assert stack.get("/ledger/verify", headers=h).json()["ok"]
    started = [e for e in stack.get("/ledger?event=job.started&limit=1000", headers=h).json()["items"]
               if e["subject_id"] == resp["job_id"]]
    assert len(started) == 1  # claimed once


@pytest.fixture
def small_shards(lethe_env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> int:
    monkeypatch.setenv("LETHE_SCORE_SHARD_SIZE", "64")
    return 64


def test_large_scoring_runs_as_shards_joined_by_a_chord(small_shards: int, stack: TestClient,
                                                        admin_headers: dict[str, str]) -> None:
    import numpy as np

    h = admin_headers
    upload_dataset(stack, h, n=300, n_test=60)
    create_model(stack, h)
    trained = wait_for(stack, h, stack.post("/models/toy/train", headers=h).json()["job_id"])
    assert trained["status"] == "completed", trained["error"]
    hess = stack.post("/models/toy/versions/1/influence", headers=h, json={"method": "hessian"}).json()
    for job_id, method in ((trained["result"]["score_job_id"], "gradnorm"), (hess["job_id"], "hessian")):
        job = wait_for(stack, h, job_id)
        assert job["status"] == "completed", job["error"]
        assert job["result"]["shards"] == 5 and job["progress"] == 1.0  # ceil(300 / 64)
        page = stack.get("/models/toy/versions/1/influence", headers=h,
                         params={"method": method, "limit": 1000}).json()
        assert page["total"] == 300 and page["computed_by"]["shards"] == 5
        # the joined shards equal one unsharded pass (hessian: factors fitted once on all rows)
        sharded = {i["point_id"]: i["score"] for i in page["items"]}
        whole = _unsharded_scores(method)
        np.testing.assert_allclose([sharded[f"p{i:04d}"] for i in range(300)], whole, rtol=1e-5)
    events = stack.get("/ledger", headers=h, params={"event": "scores.sharded"}).json()["items"]
    assert len(events) == 2 and stack.get("/ledger/verify", headers=h).json()["ok"]


def _unsharded_scores(method: str) -> object:
    from sqlalchemy import select

    from app import artifacts
    from app.datasets.tables import Dataset
    from app.db import session_scope
    from app.registry.tables import Model, Version
    from workers.engine import api as eng

    with session_scope() as s:
        m = s.scalar(select(Model).where(Model.name == "toy"))
        v = s.scalar(select(Version).where(Version.model_id == m.id, Version.number == 1))
        ds = s.get(Dataset, m.dataset_id)
        arrays = eng.load_arrays(artifacts.path_of(ds.uri))
        net = eng.load_network(m.architecture, tuple(ds.input_shape), ds.n_classes, artifacts.path_of(v.uri))
        work_dir = artifacts.path_of(artifacts.scores_dir(v.id))
    scores, _ = eng.self_influence(method, net, eng.rows(arrays), progress=lambda _: None, work_dir=work_dir)
    return scores


def test_calibration_runs_on_the_worker(stack: TestClient, admin_headers: dict[str, str]) -> None:
    h = admin_headers
    upload_dataset(stack, h, n=160, n_test=40)
    create_model(stack, h)
    trained = wait_for(stack, h, stack.post("/models/toy/train", headers=h).json()["job_id"])
    assert trained["status"] == "completed", trained["error"]
    job = stack.post("/models/toy/versions/1/calibrate", headers=h, json={"grid": [8, 16], "compare": ["less"]})
    assert job.status_code == 202
    done = wait_for(stack, h, job.json()["job_id"])
    assert done["status"] == "completed", done["error"]
    cal = stack.get("/models/toy/versions/1/calibration", headers=h).json()
    assert set(cal["curves"]) == {"gradnorm", "less", "random"} and cal["grid"] == [8, 16]
    assert stack.get("/models/toy/versions/1", headers=h).json()["budget"] == cal["n_free"]
