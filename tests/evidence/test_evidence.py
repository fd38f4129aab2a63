"""The evidence behind "free" and "audited", through the real path: HTTP → DB → broker → a real `lethe worker` →
engine → ledger, once embedded (SQLite ledger and broker) and once in production shape (Postgres + Redis).

Two fixtures, seeds fixed:
- memorisation: 400 digits with 25% flipped labels and an MLP trained until it fits them. A do-nothing unlearning
  run must fail the audit ("remembers"), a retrain of the same request must pass, the audit's power on the
  flipped points must be ≥ 0.99, and no flipped point is ever answered free.
- non-memorising: well-separated Gaussian classes and a linear model, so one point changes almost nothing. The
  certified free set must be non-empty (≥ 100 points), and the points answered free must be unidentifiable to
  32 shadow models the test trains itself (group LiRA AUC ≤ 0.55 + 2 standard errors).
"""

from __future__ import annotations

import io
import time
from typing import Any

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient

from bench import settings as fixtures  # the same fixtures the evidence benchmark measures
from tests.factories import upload_dataset
from tests.workers.test_worker import stack, wait_for  # noqa: F401 - the real-worker fixture

pytestmark = pytest.mark.slow

EVIDENCE_ENV = {"LETHE_REFERENCE_K": "16", "LETHE_FREE_PROVISIONAL": "false",
                "LETHE_AUDIT_ON_INCONCLUSIVE": "escalate", "OMP_NUM_THREADS": "1", "LETHE_ERASURE_INTERVAL": "0"}


@pytest.fixture
def evidence_env(lethe_env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    for k, v in EVIDENCE_ENV.items():  # after lethe_env's legacy settings, before the worker starts
        monkeypatch.setenv(k, v)


@pytest.fixture
def worker(evidence_env: None, stack: TestClient) -> TestClient:  # noqa: F811 - the fixture imported above
    return stack


def _npz(x: np.ndarray, y: np.ndarray, x_test: np.ndarray, y_test: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, x=x.astype(np.float32), y=y.astype(np.int64), ids=np.array([f"p{i:04d}" for i in range(len(x))]),
             x_test=x_test.astype(np.float32), y_test=y_test.astype(np.int64))
    return buf.getvalue()


def memorisation_data() -> tuple[bytes, list[str]]:
    """400 digits, 100 of them with a wrong label; 350 held out. Returns the npz and the flipped point ids."""
    s = fixtures.memorisation()
    return _npz(s.x, s.y, s.x_test, s.y_test), [f"p{i:04d}" for i in s.flipped]


def blobs(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    s = fixtures.blobs(n, seed=seed)
    return s.x, s.y, s.x_test, s.y_test


def wait_pool(client: TestClient, h: dict[str, str], model: str, timeout: float = 300) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ref = client.get(f"/models/{model}", headers=h).json()["reference"]
        if ref and ref.get("status") in ("completed", "failed"):
            return ref
        time.sleep(0.5)
    raise AssertionError(f"the reference pool of {model} is not ready after {timeout}s")


def test_memorised_points_are_never_free_and_the_audit_separates_retrain_from_doing_nothing(
        worker: TestClient, admin_headers: dict[str, str]) -> None:
    client, h = worker, admin_headers
    data, flipped = memorisation_data()
    upload_dataset(client, h, name="mem", data=data)
    resp = client.post("/models", headers=h, json={
        "name": "mem", "dataset": "mem", "architecture": {"kind": "mlp", "hidden": [128]},
        "recipe": {"optimizer": "adam", "lr": 3e-3, "epochs": 100, "batch_size": 32, "seed": 0, "checkpoints": 0},
        # a do-nothing unlearning run: fine-tuning at lr 1e-6 for one epoch changes nothing. 40 of the 100 flipped
        # points are a concentrated request (a retrain without them is a cleaner model than any pool model): the
        # audit needs a retrain reference (its own seed) to pass anything
        "policy": {"algorithm": "finetune", "params": {"lr": 1e-6, "epochs": 1},
                   "audit": {"retrain_reference": True}}})
    assert resp.status_code == 201, resp.text
    train = client.post("/models/mem/train", headers=h).json()
    job = wait_for(client, h, train["job_id"])
    assert job["status"] == "completed", job["error"]
    assert job["result"]["metrics"]["train_accuracy"] >= 0.97  # it fits the flipped labels: it memorises
    pool = wait_pool(client, h, "mem")
    assert pool["status"] == "completed" and pool["valid"] and pool["k"] == 16, pool

    request = flipped[:40]
    resp = client.post("/forget", headers=h, json={"model": "mem", "point_ids": request, "reason": "test",
                                                   "requested_by": "dpo"})
    assert resp.status_code == 202, resp.text
    body = resp.json()
    assert body["free_basis"] == "measured" and body["pool_id"] == pool["pool_id"]
    assert body["free"] == [], "a memorised (flipped) point was answered free"
    job = wait_for(client, h, body["job_id"], timeout=600)
    assert job["status"] == "completed", job["error"]
    attempts = job["result"]["metrics"]["attempts"]
    assert attempts[0]["algorithm"] == "finetune" and attempts[0]["verdict"] == "failed"
    assert attempts[-1]["algorithm"] == "retrain" and attempts[-1]["verdict"] == "passed", job["result"]["audit"]

    evidence = client.get(f"/requests/{body['request_id']}/evidence", headers=h).json()
    assert evidence["total"] == 40 and evidence["free_basis"] == "measured"
    assert all(p["pool_id"] == pool["pool_id"] and p["separation"] is not None for p in evidence["items"])
    assert np.median([p["separation"] for p in evidence["items"]]) > 0.8  # measured: these points are remembered
    audits = evidence["audits"]
    do_nothing, retrain = audits[0], audits[-1]
    assert do_nothing["verdict"] == "failed" and do_nothing["side"] == "remembers"
    assert do_nothing["power"] >= 0.99
    assert do_nothing["statistic"] > do_nothing["null"]["hi"]
    assert retrain["verdict"] == "passed" and retrain["promoted"]
    assert retrain["null"]["lo"] <= retrain["statistic"] <= retrain["null"]["hi"]
    assert retrain["concentrated"] and retrain["concentration"]["depletion"] > 0.1, retrain["concentration"]
    assert retrain["null"]["around"] == "retrain reference"

    cert = client.get(f"/requests/{body['request_id']}/certificate", headers=h).json()
    assert [a["verdict"] for a in cert["audits"]][-1] == "passed"
    assert cert["free_basis"] == "measured"
    assert client.get("/ledger/verify", headers=h).json()["ok"]
    events = [e["event"] for e in client.get("/ledger", headers=h, params={"limit": 1000}).json()["items"]]
    assert "pool.completed" in events


def _own_shadow_auc(x: np.ndarray, y: np.ndarray, xt: np.ndarray, yt: np.ndarray, cols: np.ndarray,
                    recipe: dict[str, Any], k: int = 32) -> dict[str, Any]:
    """Group LiRA AUC of the columns `cols` over k shadow models this test trains itself (its own design)."""
    from workers.engine import evidence as ev
    from workers.engine.architectures import build_model
    from workers.engine.data import ArraySet
    from workers.engine.reference import logit_confidence
    from workers.engine.training import train_model

    torch.set_num_threads(1)
    mask = ev.design(len(x), k, seed=12345)
    phi, phi_test = np.empty((k, len(x))), np.empty((k, len(xt)))
    for m in range(k):
        torch.manual_seed(5000 + m)
        net = build_model({"kind": "linear"}, input_shape=(8,), n_classes=4)
        train_model(net, ArraySet(x[mask[m]], y[mask[m]]), recipe=recipe | {"seed": 5000 + m},
                    device=torch.device("cpu"))
        phi[m] = logit_confidence(net, x, y, device=torch.device("cpu"))
        phi_test[m] = logit_confidence(net, xt, yt, device=torch.device("cpu"))
    std = ev.standardise(phi, phi_test)
    scores = ev.loo_scores(std[:, cols], mask[:, cols])
    return ev.group_test(scores, mask[:, cols], boot=400, seed=1)


def test_free_points_are_measured_unidentifiable(worker: TestClient, admin_headers: dict[str, str]) -> None:
    client, h = worker, admin_headers
    x, y, xt, yt = blobs(1000)
    upload_dataset(client, h, name="blobs", data=_npz(x, y, xt, yt))
    recipe = {"optimizer": "adam", "lr": 1e-2, "epochs": 10, "batch_size": 64, "seed": 0, "checkpoints": 0}
    assert client.post("/models", headers=h, json={"name": "blobs", "dataset": "blobs",
                                                   "architecture": {"kind": "linear"},
                                                   "recipe": recipe}).status_code == 201
    train = client.post("/models/blobs/train", headers=h).json()
    assert wait_for(client, h, train["job_id"])["status"] == "completed"
    pool = wait_pool(client, h, "blobs")
    assert pool["status"] == "completed", pool
    assert pool["n_certified"] >= 100, pool
    assert pool["certified_set"]["auc_hi"] <= 0.55 and pool["certified_set"]["tpr_hi"] <= 0.02

    ask = [f"p{i:04d}" for i in np.random.default_rng(3).choice(1000, 300, replace=False)]
    resp = client.post("/forget", headers=h, json={"model": "blobs", "point_ids": ask, "reason": "test",
                                                   "requested_by": "dpo"})
    assert resp.status_code in (200, 202), resp.text
    body = resp.json()
    assert body["free_basis"] == "measured" and len(body["free"]) >= 30, body
    evidence = client.get(f"/requests/{body['request_id']}/evidence", headers=h, params={"limit": 1000}).json()
    assert evidence["evidence"]["certified_set"]["auc_hi"] <= 0.55
    assert "cumulative" in evidence["evidence"]
    free_cols = np.array(sorted(int(p[1:]) for p in body["free"]))
    measured = _own_shadow_auc(x, y, xt, yt, free_cols, recipe)
    se = (measured["auc_hi"] - measured["auc_lo"]) / (2 * 1.645)
    assert measured["auc"] <= 0.55 + 2 * se, measured
    if body["job_id"]:
        job = wait_for(client, h, body["job_id"], timeout=600)
        assert job["status"] == "completed", job["error"]
    assert client.get("/ledger/verify", headers=h).json()["ok"]
