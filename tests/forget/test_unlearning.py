"""Every algorithm selectable through POST /forget; pruning, audits and escalation visible through HTTP."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from app.main import create_app
from tests.factories import create_model, drain, upload_dataset
from workers.engine.params import PARAMS


@pytest.fixture
def embedded(sqlite_env: dict[str, str]) -> Iterator[TestClient]:
    with TestClient(create_app()) as c:
        yield c


def _trained(client: TestClient, h: dict[str, str], **model: object) -> list[str]:
    upload_dataset(client, h, n=300, n_test=100)
    create_model(client, h, **model)
    client.post("/models/toy/train", headers=h)
    drain()
    items = client.get("/models/toy/versions/1/influence?limit=1000", headers=h).json()["items"]
    return [i["point_id"] for i in items]


@pytest.mark.parametrize("algorithm", sorted(set(PARAMS) - {"retrain"}))
def test_each_algorithm_through_post_forget(embedded: TestClient, admin_headers: dict[str, str],
                                            algorithm: str) -> None:
    h = admin_headers
    ids = _trained(embedded, h, policy={"q_forget": 0.25, "q_retain": 0.2})
    # above the free threshold (10% quantile), the lowest of them under the prune bound (25% quantile)
    resp = embedded.post("/forget", headers=h, json={"model": "toy", "point_ids": ids[40:80], "reason": "gdpr",
                                                     "requested_by": "dpo", "algorithm": algorithm})
    assert resp.status_code == 202, resp.text
    drain()
    job = embedded.get(f"/jobs/{resp.json()['job_id']}", headers=h).json()
    assert job["status"] == "completed", job["error"]
    attempts = job["result"]["metrics"]["attempts"]
    assert attempts[0]["algorithm"] == algorithm  # the override ran first; escalation may follow
    assert attempts[-1]["passed"] and embedded.get("/models/toy", headers=h).json()["current"] == 2
    audit = job["result"]["audit"]
    assert audit["n_audit"] == 40  # the audit covers the whole request, pruned points included
    assert {"ua", "ra", "ta", "mia", "mia_conf"} <= set(audit["after"]) and audit["before"]["ta"] is not None
    pruned = job["result"]["pruned"]
    assert pruned["forget"]["n"] == 10 and pruned["retain"]["n"] > 0
    req = embedded.get(f"/requests/{resp.json()['request_id']}", headers=h).json()
    assert sum(p["disposition"] == "pruned" for p in req["points"]) == 10


def test_bad_algorithm_or_params_are_422_and_record_nothing(embedded: TestClient,
                                                            admin_headers: dict[str, str]) -> None:
    h = admin_headers
    ids = _trained(embedded, h)
    base = {"model": "toy", "point_ids": ids[-5:], "reason": "gdpr", "requested_by": "dpo"}
    for extra in ({"algorithm": "forgetify"}, {"algorithm": "scrub", "params": {"epochs": 0}},
                  {"algorithm": "imu", "params": {"not_a_param": 1}},
                  {"algorithm": "imu", "params": {"selection": "everything"}},
                  {"algorithm": "iau", "params": {"step": "newton"}}):
        bad = embedded.post("/forget", headers=h, json=base | extra)
        assert bad.status_code == 422, (extra, bad.text)
    assert embedded.get("/requests", headers=h).json()["total"] == 0
    bad_policy = embedded.post("/models", headers=h, json={"name": "x", "dataset": "toy",
                                                           "architecture": {"kind": "mlp"},
                                                           "policy": {"algorithm": "rank2", "params": {"lr": -1}}})
    assert bad_policy.status_code == 422


def test_an_audit_that_does_not_pass_escalates_and_only_a_promoted_version_counts(
        client: TestClient, admin_headers: dict[str, str]) -> None:
    h = admin_headers
    # No reference pool here (these tests run with LETHE_REFERENCE_K=0): every audit is inconclusive, and a policy
    # that escalates inconclusive audits climbs the ladder to retraining, which is exact and promoted regardless.
    # (The pool-measured 'failed' verdict escalating is tests/evidence/test_evidence.py.)
    ids = _trained(client, h, policy={"algorithm": "finetune", "audit": {"on_inconclusive": "escalate"}})
    resp = client.post("/forget", headers=h, json={"model": "toy", "point_ids": ids[-40:], "reason": "gdpr",
                                                   "requested_by": "dpo"}).json()
    drain()
    job = client.get(f"/jobs/{resp['job_id']}", headers=h).json()
    assert job["status"] == "completed", job["error"]
    attempts = job["result"]["metrics"]["attempts"]
    assert [a["algorithm"] for a in attempts] == ["finetune", "finetune", "retrain"]
    assert [a["passed"] for a in attempts] == [False, False, True]
    assert [a["verdict"] for a in attempts] == ["inconclusive"] * 3
    assert attempts[1]["params"]["epochs"] > attempts[0]["params"]["epochs"]  # stronger the second time
    assert "no valid reference pool" in job["result"]["audit"]["evidence"]["why"]
    model = client.get("/models/toy", headers=h).json()
    assert model["current"] == 2 and client.get("/models/toy/versions", headers=h).json()["total"] == 2
    audits = [e for e in client.get("/ledger", headers=h, params={"event": "audit.recorded", "limit": 100}).json()[
        "items"]]
    assert len(audits) == 3 and [a["data"]["passed"] for a in sorted(audits, key=lambda e: e["seq"])] == [
        False, False, True]
    assert client.get("/ledger/verify", headers=h).json()["ok"]


def test_retrain_reference_policy_reports_the_gap_and_judges_the_mia_by_it(embedded: TestClient,
                                                                         admin_headers: dict[str, str]) -> None:
    from app import artifacts

    h = admin_headers
    ids = _trained(embedded, h, policy={"algorithm": "neggrad", "audit": {"retrain_reference": True,
                                                                          "reference_margin": 0.2}})
    resp = embedded.post("/forget", headers=h, json={"model": "toy", "point_ids": ids[-40:], "reason": "gdpr",
                                                     "requested_by": "dpo"}).json()
    drain()
    job = embedded.get(f"/jobs/{resp['job_id']}", headers=h).json()
    assert job["status"] == "completed", job["error"]
    assert "reference" in job["timings"], job["timings"]
    audit = job["result"]["audit"]
    ref = audit["reference"]
    assert {"ua", "ra", "ta", "mia", "mia_conf"} <= set(ref["metrics"])
    assert {"ua", "ra", "ta"} <= set(ref["gap"]) and all(v >= 0 for v in ref["gap"].values())
    after = audit["after"]
    assert ref["gap"]["ra"] == pytest.approx(abs(after["ra"] - ref["metrics"]["ra"]), abs=1e-6)
    assert ref["avg_gap"] == pytest.approx(sum(ref["gap"].values()) / len(ref["gap"]), abs=1e-5)
    if ref["metrics"]["mia"]["status"] == "ok":
        assert audit["mia_reference"].startswith("retrain reference")
        assert audit["policy"]["reference_auc"] == ref["metrics"]["mia"]["auc"]
        assert audit["policy"]["reference_margin"] == 0.2
    entry = embedded.get("/ledger", headers=h, params={"event": "audit.recorded"}).json()["items"][0]
    assert entry["data"]["reference_gap"] == ref["gap"]
    model_id = embedded.get("/models/toy", headers=h).json()["id"]
    assert not artifacts.path_of(artifacts.job_weights_uri(model_id, resp['job_id'], 'reference')).exists()
