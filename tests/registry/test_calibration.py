"""Calibration (Figure 4.1) through HTTP: curve, PNG, threshold and budget that triage then uses."""

from __future__ import annotations

import io

import numpy as np
import pytest
from fastapi.testclient import TestClient

from tests.factories import create_model, drain, upload_dataset


def _trained_toy(client: TestClient, h: dict[str, str], *, n: int, n_test: int) -> None:
    """toy@1 trained on n points (n_test held out), its jobs run."""
    upload_dataset(client, h, n=n, n_test=n_test)
    create_model(client, h)
    client.post("/models/toy/train", headers=h)
    drain()


def test_calibration_sets_threshold_budget_and_prune_bound(client: TestClient, admin_headers: dict[str, str]) -> None:
    h = admin_headers
    _trained_toy(client, h, n=240, n_test=60)
    assert client.get("/models/toy/versions/1/calibration", headers=h).status_code == 404
    job = client.post("/models/toy/versions/1/calibrate", headers=h, json={"grid": [5, 10, 20, 40], "compare": []})
    assert job.status_code == 202 and job.json()["kind"] == "calibrate"
    drain()
    done = client.get(f"/jobs/{job.json()['job_id']}", headers=h).json()
    assert done["status"] == "completed", done["error"]
    cal = client.get("/models/toy/versions/1/calibration", headers=h).json()
    assert set(cal["curves"]) == {"gradnorm", "random"} and cal["grid"] == [5, 10, 20, 40]
    for curve in cal["curves"].values():
        assert [r["n"] for r in curve] == [5, 10, 20, 40]
        assert all(0 <= r["acc_retrained"] <= 1 and 0 <= r["loss_auc"] <= 1 for r in curve)
    n_free = cal["n_free"]
    # the chosen n satisfies the rule at every grid point up to it
    for r in cal["curves"]["gradnorm"]:
        if r["n"] <= n_free:
            assert r["acc_retrained"] >= r["acc_full"] - 0.01 and r["loss_auc"] <= 0.55
    assert cal["n_prune"] >= n_free
    v1 = client.get("/models/toy/versions/1", headers=h).json()
    assert v1["budget"] == n_free and v1["threshold"] == pytest.approx(cal["threshold"])
    png = client.get("/models/toy/versions/1/calibration.png", headers=h)
    assert png.status_code == 200 and png.content[:8] == b"\x89PNG\r\n\x1a\n"
    # triage uses the calibrated threshold and budget
    scores = client.get("/models/toy/versions/1/influence?limit=1000", headers=h).json()["items"]
    lowest = [i["point_id"] for i in scores[:10]]
    resp = client.post("/forget", headers=h, json={"model": "toy", "point_ids": lowest, "reason": "r",
                                                   "requested_by": "x"}).json()
    expected = [i["point_id"] for i in scores[:10] if i["score"] < cal["threshold"]][:n_free]
    assert sorted(resp["free"]) == sorted(expected)
    events = [e["event"] for e in client.get("/ledger?limit=1000", headers=h).json()["items"]]
    assert "calibration.completed" in events


def test_calibration_compares_every_scorer(client: TestClient, admin_headers: dict[str, str]) -> None:
    h = admin_headers
    _trained_toy(client, h, n=160, n_test=40)
    job = client.post("/models/toy/versions/1/calibrate", headers=h, json={"grid": [8, 16]})
    drain()
    assert client.get(f"/jobs/{job.json()['job_id']}", headers=h).json()["status"] == "completed"
    cal = client.get("/models/toy/versions/1/calibration", headers=h).json()
    assert set(cal["curves"]) == {"gradnorm", "hessian", "less", "less_own", "random"}
    assert set(cal["by_method"]) == set(cal["curves"]) and cal["method"] == "gradnorm"
    assert cal["by_method"]["gradnorm"]["n_free"] == cal["n_free"]
    # the other scorers were scored on the way, and their runs are listed on the version
    runs = {r["method"]: r["status"] for r in client.get("/models/toy/versions/1", headers=h).json()["influence"]}
    assert runs == {"gradnorm": "completed", "hessian": "completed", "less": "completed", "less_own": "completed"}


def test_calibration_needs_a_test_split(client: TestClient, admin_headers: dict[str, str]) -> None:
    h = admin_headers
    rng = np.random.default_rng(0)
    buf = io.BytesIO()
    np.savez(buf, x=rng.normal(size=(50, 4)).astype(np.float32), y=rng.integers(0, 2, 50),
             ids=np.array([f"q{i}" for i in range(50)]))
    upload_dataset(client, h, name="notest", data=buf.getvalue())
    create_model(client, h, name="nt", dataset="notest")
    client.post("/models/nt/train", headers=h)
    drain()
    r = client.post("/models/nt/versions/1/calibrate", headers=h, json={})
    assert r.status_code == 422 and "test split" in r.json()["detail"]
    assert client.post("/models/nt/versions/9/calibrate", headers=h, json={}).status_code == 404
