"""The three scorers through HTTP: jobs, cache, what computed the scores, triage by the policy's scorer."""

from __future__ import annotations

import numpy as np
from fastapi.testclient import TestClient

from app import artifacts
from tests.factories import create_model, drain, upload_dataset


def _scores(client: TestClient, h: dict[str, str], number: int, method: str) -> dict:
    return client.get(f"/models/toy/versions/{number}/influence", headers=h,
                      params={"method": method, "limit": 1000}).json()


def test_hessian_and_less_scored_by_jobs_and_listed(client: TestClient, admin_headers: dict[str, str]) -> None:
    h = admin_headers
    upload_dataset(client, h, n=200, n_test=60)
    create_model(client, h, recipe={"epochs": 6, "checkpoints": 3}, policy={"scorer": "hessian"})
    assert client.post("/models/toy/train", headers=h).status_code == 202
    drain()
    v1 = client.get("/models/toy/versions/1", headers=h).json()
    assert v1["metrics"]["checkpoints"] == 3
    runs = {r["method"]: r for r in v1["influence"]}
    assert runs["hessian"]["status"] == "completed"  # the policy's scorer runs after training
    assert runs["hessian"]["computed_by"]["method"] == "ekfac"
    assert v1["threshold"] is not None

    # not scored yet: 200 with the status and no items (not an error)
    before = _scores(client, h, 1, "less")
    assert before["status"] == "absent" and before["items"] == []
    job = client.post("/models/toy/versions/1/influence", headers=h, json={"method": "less"})
    assert job.status_code == 202
    queued = _scores(client, h, 1, "less")
    assert queued["status"] in ("queued", "running") and queued["items"] == []
    drain()
    less = _scores(client, h, 1, "less")
    assert less["status"] == "completed" and less["total"] == 200
    assert less["computed_by"]["source"] == "checkpoints" and less["computed_by"]["n"] == 3
    hess = _scores(client, h, 1, "hessian")
    assert hess["computed_by"]["factors"] in ("fitted", "loaded")
    values = [i["score"] for i in hess["items"]]
    assert values == sorted(values) and values[0] >= 0
    # the two scorers agree on what matters most, without being the same numbers
    by_id = {m: {i["point_id"]: i["score"] for i in page["items"]} for m, page in (("h", hess), ("l", less))}
    ids = sorted(by_id["h"])
    a = np.argsort(np.argsort([by_id["h"][i] for i in ids]))
    b = np.argsort(np.argsort([by_id["l"][i] for i in ids]))
    assert np.corrcoef(a, b)[0, 1] > 0.5

    # triage uses the policy's scorer (hessian): its lowest points are the free ones
    lowest = [i["point_id"] for i in hess["items"][:2]]
    point_ids = lowest + [hess["items"][-1]["point_id"]]
    forget = client.post("/forget", headers=h, json={"model": "toy", "point_ids": point_ids,
                                                     "reason": "gdpr", "requested_by": "dpo"})
    assert forget.status_code == 202 and sorted(forget.json()["free"]) == sorted(lowest)
    drain()
    assert client.get(f"/jobs/{forget.json()['job_id']}", headers=h).json()["status"] == "completed"

    # v2 came from unlearning: it has no training checkpoints, and LESS says it fell back
    client.post("/models/toy/versions/2/influence", headers=h, json={"method": "less"})
    drain()
    assert "no checkpoints" in _scores(client, h, 2, "less")["computed_by"]["source"]

    # v1 was revoked on promotion: weights, checkpoints and cached factors are gone
    ledger = client.get("/ledger", headers=h, params={"event": "version.revoked"}).json()["items"]
    purged = ledger[0]["data"]["purged"]
    assert any(p.endswith(".ckpt") for p in purged) and any(p.startswith("scores/") for p in purged)
    assert all(not artifacts.path_of(p).exists() for p in purged)


def test_unknown_scorer_is_422(client: TestClient, admin_headers: dict[str, str]) -> None:
    h = admin_headers
    upload_dataset(client, h, n=60, n_test=20)
    create_model(client, h)
    bad = client.post("/models/toy/versions/1/influence", headers=h, json={"method": "tea-leaves"})
    assert bad.status_code == 422 and "method" in bad.text
    assert client.get("/models/toy/versions/1/influence", headers=h,
                      params={"method": "tea-leaves"}).status_code in (404, 422)
    bad_policy = client.post("/models", headers=h, json={"name": "x", "dataset": "toy",
                                                          "architecture": {"kind": "mlp"},
                                                          "policy": {"scorer": "tea-leaves"}})
    assert bad_policy.status_code == 422
    fixed = client.post("/models", headers=h, json={"name": "y", "dataset": "toy", "architecture": {"kind": "mlp"},
                                                    "policy": {"scorer": "less_own", "algorithm": "imu",
                                                               "params": {"selection": "per_point"}}})
    assert fixed.status_code in (201, 202), fixed.text
    assert fixed.json()["policy"]["scorer"] == "less_own"
    assert fixed.json()["policy"]["params"]["selection"] == "per_point"
