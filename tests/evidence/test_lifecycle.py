"""A reference pool's life: fitted after the first training, measuring free answers, losing erased points'
statistics, going stale after enough removals (nothing new is free until its successor is ready), and never
existing for a lineage whose weights Lethe did not train. Jobs run in this process (drain), on both backends."""

from __future__ import annotations

import numpy as np
import pytest
from fastapi.testclient import TestClient

from tests.evidence.test_evidence import _npz, blobs
from tests.factories import create_model, drain, upload_dataset, upload_version


@pytest.fixture
def client_settings() -> dict[str, str]:
    return {"LETHE_REFERENCE_K": "16", "LETHE_FREE_PROVISIONAL": "false", "LETHE_ERASURE_INTERVAL": "0",
            "LETHE_POOL_MAX_REMOVED": "0.04", "LETHE_AUDIT_ON_INCONCLUSIVE": "accept"}


def _certified(pool_id: str) -> list[str]:
    from app import artifacts
    from workers.engine.evidence import load_pool

    pool = load_pool(artifacts.path_of(artifacts.pool_uri(pool_id)))
    return [f"p{int(r):04d}" for r in np.asarray(pool.rows)[np.asarray(pool.certified_by) >= 0]]


def test_a_pool_measures_goes_stale_and_is_replaced(client: TestClient, admin_headers: dict[str, str]) -> None:
    from app import artifacts
    from workers.engine.evidence import load_pool

    h = admin_headers
    x, y, xt, yt = blobs(1000, seed=2)
    upload_dataset(client, h, name="b", data=_npz(x, y, xt, yt))
    create_model(client, h, name="b", dataset="b", architecture={"kind": "linear"},
                 recipe={"lr": 1e-2, "epochs": 10, "batch_size": 64, "checkpoints": 0},
                 policy={"reference": {"k": 16, "shift_models": 2}})
    before = client.post("/forget", headers=h, json={"model": "b", "point_ids": ["p0000"], "reason": "r",
                                                     "requested_by": "dpo"})
    assert before.status_code == 409  # no version yet
    client.post("/models/b/train", headers=h)
    drain()
    pool = client.get("/models/b", headers=h).json()["reference"]
    assert pool["status"] == "completed" and pool["valid"] and pool["k"] == 16, pool
    assert {h["certify_half"] for h in pool["certification"]} == {0, 1}  # both halves' measured curves shown
    assert all(c["auc_hi"] is not None for h in pool["certification"] for c in h["curve"])
    certified = _certified(pool["pool_id"])
    assert len(certified) >= 50, pool

    # measured free answers, with their evidence
    ask = certified[:5]
    resp = client.post("/forget", headers=h, json={"model": "b", "point_ids": ask, "reason": "r",
                                                   "requested_by": "dpo"})
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["free"] == sorted(ask) and body["free_basis"] == "measured" and body["pool_id"] == pool["pool_id"]
    ev = client.get(f"/requests/{body['request_id']}/evidence", headers=h).json()
    assert {p["point_id"] for p in ev["items"]} == set(ask)
    assert all(p["separation"] is not None and p["pool_id"] == pool["pool_id"] for p in ev["items"])
    assert ev["evidence"]["certified_set"]["auc_hi"] <= 0.55 and ev["evidence"]["cumulative"]["n"] == 5
    entry = client.get("/ledger", headers=h, params={"event": "points.free"}).json()["items"][0]
    assert entry["data"]["free_basis"] == "measured" and len(entry["data"]["evidence_sha256"]) == 64
    # erased with the points: their pool statistics are gone too
    arrays = load_pool(artifacts.path_of(f"pools/{pool['pool_id']}"))
    cols = arrays.columns(np.array([int(p[1:]) for p in ask]))
    assert np.isnan(np.asarray(arrays.phi)[:, cols]).all() and (np.asarray(arrays.certified_by)[cols] == -1).all()

    # 40 more points: 45 of 1000 removed > 4%, so the pool goes stale for the next request
    rest = [f"p{i:04d}" for i in range(1000) if f"p{i:04d}" not in set(ask)][:40]
    assert client.post("/forget", headers=h, json={"model": "b", "point_ids": rest, "reason": "r",
                                                   "requested_by": "dpo"}).status_code in (200, 202)
    drain()
    later = [f"p{i:04d}" for i in range(999, 900, -1) if f"p{i:04d}" in set(certified) - set(ask) - set(rest)][:2]
    stale = client.post("/forget", headers=h, json={"model": "b", "point_ids": later[:1], "reason": "r",
                                                    "requested_by": "dpo"}).json()
    assert stale["free"] == [] and stale["free_basis"] == "unmeasured", stale
    model = client.get("/models/b", headers=h).json()
    assert not model["reference"]["valid"] and "stale" in model["reference"]["why"]
    assert model["reference"]["next"]["status"] == "queued"
    drain()
    fresh = client.get("/models/b", headers=h).json()["reference"]
    assert fresh["valid"] and fresh["pool_id"] != pool["pool_id"] and fresh["removed_fraction"] == 0
    assert not artifacts.path_of(f"pools/{pool['pool_id']}").exists()  # the superseded pool's statistics
    events = [e["event"] for e in client.get("/ledger", headers=h, params={"limit": 1000}).json()["items"]]
    assert events.count("pool.completed") == 2 and client.get("/ledger/verify", headers=h).json()["ok"]


def test_uploaded_weights_leave_the_lineage_unmeasured(client: TestClient, admin_headers: dict[str, str]) -> None:
    h = admin_headers
    upload_dataset(client, h)
    create_model(client, h)
    assert upload_version(client, h).status_code == 201
    drain()
    ref = client.get("/models/toy", headers=h).json()["reference"]
    assert ref["valid"] is False and "uploaded" in ref["why"], ref
    refused = client.post("/models/toy/versions/1/reference", headers=h)
    assert refused.status_code == 409 and "uploaded" in refused.json()["detail"]
    body = client.post("/forget", headers=h, json={"model": "toy", "point_ids": ["p0001"], "reason": "r",
                                                   "requested_by": "dpo"}).json()
    assert body["free"] == [] and body["free_basis"] == "unmeasured"
