"""The whole path in one process: HTTP → DB → pipeline → engine → ledger (jobs run inline)."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from tests.factories import create_model, drain, upload_dataset


def test_train_score_forget_unlearn_audit_register(client: TestClient, admin_headers: dict[str, str]) -> None:
    h = admin_headers
    scores = _trained_and_scored(client, h)
    lowest = [i["point_id"] for i in scores["items"][:3]]
    highest = [i["point_id"] for i in scores["items"][-40:]]
    resp = client.post("/forget", headers=h, json={"model": "toy", "point_ids": lowest + highest,
                                                   "reason": "gdpr", "requested_by": "dpo"})
    assert resp.status_code == 202, resp.text
    body = resp.json()
    assert sorted(body["free"]) == sorted(lowest)
    assert sorted(body["pending"]) == sorted(highest)
    assert len(body["linked_requests"]) == 1
    drain()

    _unlearned_into_version_2(client, h, body)
    _request_completed(client, h, body, lowest=lowest, highest=highest)
    _certificate_verifies(client, h, body)
    again = client.post("/forget", headers=h, json={"model": "toy", "point_ids": lowest[:1] + highest[:2],
                                                    "reason": "again", "requested_by": "dpo"})
    assert again.status_code == 200 and again.json()["job_id"] is None
    assert sorted(again.json()["already_forgotten"]) == sorted(lowest[:1] + highest[:2])

    # the next training never sees forgotten points
    client.post("/models/toy/train", headers=h)
    drain()
    v3 = client.get("/models/toy/versions/3", headers=h).json()
    assert v3["n_train"] == 300 - 43

    ledger = client.get("/ledger?limit=1000", headers=h).json()
    events = [e["event"] for e in ledger["items"]]
    for needed in ("dataset.registered", "request.received", "points.free", "job.started", "points.pruned",
                   "audit.recorded", "version.registered", "version.promoted", "version.revoked", "request.completed"):
        assert needed in events, needed
    assert client.get("/ledger/verify", headers=h).json()["ok"]


def _trained_and_scored(client: TestClient, h: dict[str, str]) -> dict:
    """toy and its twin (same data: linked requests) trained; toy@1's scores, lowest first."""
    upload_dataset(client, h, n=300, n_test=100)
    create_model(client, h, policy={"algorithm": "finetune", "q_forget": 0.5})
    create_model(client, h, name="twin")  # a second model on the same data: gets linked requests
    for name in ("toy", "twin"):
        train = client.post(f"/models/{name}/train", headers=h)
        assert train.status_code == 202 and train.json()["kind"] == "train"
    drain()
    model = client.get("/models/toy", headers=h).json()
    assert model["current"] == 1 and model["ref"] == "toy@1"
    v1 = client.get("/models/toy/versions/1", headers=h).json()
    assert v1["source"] == "train" and v1["n_train"] == 300 and v1["threshold"] is not None
    assert v1["influence"][0]["status"] == "completed" and v1["budget"] == 6  # 2% of 300
    scores = client.get("/models/toy/versions/1/influence?limit=1000", headers=h).json()
    assert scores["total"] == 300 and scores["status"] == "completed"
    values = [i["score"] for i in scores["items"]]
    assert values == sorted(values) and values[0] >= 0
    return scores


def _unlearned_into_version_2(client: TestClient, h: dict[str, str], body: dict) -> None:
    """The request's job completed, audited, registered and promoted toy@2; toy@1 was revoked."""
    job = client.get(f"/jobs/{body['job_id']}", headers=h).json()
    assert job["status"] == "completed", job["error"]
    assert job["result"]["ref"] == "toy@2" and job["result"]["version"] == 2
    assert {"scoring", "pruning", "unlearning", "auditing", "registering"} <= set(job["timings"])
    assert job["progress"] == 1.0 and job["requests"] == [body["request_id"]]
    audit = job["result"]["audit"]
    assert audit["passed"] and audit["n_audit"] == 43 and {"ra", "ta", "ua", "mia"} <= set(audit["after"])
    assert audit["before"]["mia"]["auc"] is not None
    assert client.get("/models/toy", headers=h).json()["current"] == 2
    v2 = client.get("/models/toy/versions/2", headers=h).json()
    assert v2["parent"] == 1 and v2["request_id"] == body["request_id"] and v2["audit"]["passed"]
    assert client.get("/models/toy/versions/1/weights", headers=h).status_code == 410
    weights = client.get("/models/toy/versions/2/weights", headers=h)
    assert weights.status_code == 200 and weights.content[:8] != b""


def _request_completed(client: TestClient, h: dict[str, str], body: dict, *, lowest: list[str],
                       highest: list[str]) -> None:
    """Each point's disposition and the version that removed it; the twin's linked request ran too."""
    req = client.get(f"/requests/{body['request_id']}", headers=h).json()
    assert req["status"] == "completed"
    by_point = {p["point_id"]: p for p in req["points"]}
    assert {by_point[p]["disposition"] for p in lowest} == {"free"}
    assert {by_point[p]["disposition"] for p in highest} <= {"unlearned", "pruned"}
    assert all(by_point[p]["version"] == 2 for p in highest)
    # the twin's linked request ran too, so nobody holds the points any more
    linked = client.get(f"/requests/{body['linked_requests'][0]}", headers=h).json()
    assert linked["status"] == "completed" and linked["linked_from"] == body["request_id"]
    assert all(not p["still_held_by"] for p in req["points"])


def _certificate_verifies(client: TestClient, h: dict[str, str], body: dict) -> None:
    """The deletion certificate: points, audits, ledger entries, signed with Ed25519 under the published key."""
    import base64
    import json

    from cryptography.hazmat.primitives.serialization import load_pem_public_key

    cert = client.get(f"/requests/{body['request_id']}/certificate", headers=h).json()
    assert cert["status"] == "completed" and len(cert["points"]) == 43 and cert["ledger_ok"]
    assert cert["audits"][-1]["passed"] and cert["audits"][-1]["version"] == 2
    assert {"request.received", "points.free", "request.completed"} <= {e["event"] for e in cert["ledger"]}
    # an auditor checks it with no Lethe secret
    signed = json.dumps({k: v for k, v in cert.items() if k != "signature"}, sort_keys=True,
                        separators=(",", ":")).encode()
    assert cert["signature"]["alg"] == "Ed25519"
    public = load_pem_public_key(client.get("/ledger/public-key").content)
    public.verify(base64.b64decode(cert["signature"]["value"]), signed)  # raises if forged
    assert cert["checkpoint"]["seq"] >= max(e["seq"] for e in cert["ledger"])


def test_erasure_once_every_model_cleared(client: TestClient, admin_headers: dict[str, str]) -> None:
    """Raw features leave the dataset file once no model holds the point; the ledger records it."""
    import numpy as np

    from app import artifacts
    from app.datasets.tables import Dataset
    from app.db import session_scope

    h = admin_headers
    upload_dataset(client, h, n=200, n_test=80)
    create_model(client, h)
    create_model(client, h, name="twin")
    for name in ("toy", "twin"):
        client.post(f"/models/{name}/train", headers=h)
    drain()

    def dataset_file() -> bytes:
        with session_scope() as s:
            return artifacts.path_of(s.query(Dataset).one().uri).read_bytes()

    original = np.load(__import__("io").BytesIO(dataset_file()))
    ids = [i["point_id"] for i in client.get("/models/toy/versions/1/influence?limit=1000", headers=h).json()["items"]]
    target = ids[-1]  # high influence: pending in both lineages
    row = int(target[1:])
    needle = original["x"][row].tobytes()
    assert needle in dataset_file()
    resp = client.post("/forget", headers=h, json={"model": "toy", "point_ids": [target], "reason": "r",
                                                   "requested_by": "x"}).json()
    assert resp["pending"] == [target] and len(resp["linked_requests"]) == 1
    assert needle in dataset_file()  # both models still hold it
    req = client.get(f"/requests/{resp['request_id']}", headers=h).json()
    assert sorted(req["points"][0]["still_held_by"]) == ["toy", "twin"]
    drain()
    assert client.get(f"/requests/{resp['request_id']}", headers=h).json()["points"][0]["still_held_by"] == []
    after = dataset_file()
    assert needle not in after
    assert not np.load(__import__("io").BytesIO(after))["x"][row].any()
    erased = client.get("/ledger?event=points.erased", headers=h).json()["items"]
    assert len(erased) == 1 and erased[0]["data"]["point_ids"] == [target]
    assert client.get("/datasets/toy", headers=h).json()["n_erased"] == 1
    assert client.get("/ledger/verify", headers=h).json()["ok"]


def test_free_points_are_erased_by_the_relay_sweep_in_one_batch(client: TestClient, admin_headers: dict[str, str],
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """Free answers leave erasure to the relay thread's sweep: one dataset rewrite for many requests."""
    import io

    import numpy as np

    from app import artifacts
    from app.background import Background
    from app.datasets.tables import Dataset
    from app.db import session_scope
    from app.settings import get_settings
    from tests.support import wait_until

    h = admin_headers
    upload_dataset(client, h, n=200, n_test=80)
    create_model(client, h)
    client.post("/models/toy/train", headers=h)
    drain()

    def dataset_file() -> bytes:
        with session_scope() as s:
            return artifacts.path_of(s.query(Dataset).one().uri).read_bytes()

    original = np.load(io.BytesIO(dataset_file()))
    ids = [i["point_id"] for i in client.get("/models/toy/versions/1/influence?limit=1000", headers=h).json()["items"]]
    for point in ids[:2]:  # the two lowest: free
        resp = client.post("/forget", headers=h, json={"model": "toy", "point_ids": [point], "reason": "r",
                                                       "requested_by": "x"}).json()
        assert resp["free"] == [point], resp
    needles = [original["x"][int(p[1:])].tobytes() for p in ids[:2]]
    assert all(n in dataset_file() for n in needles)  # not erased inside the request
    assert client.get("/ledger?event=points.erased", headers=h).json()["total"] == 0
    from datetime import timedelta

    from app.datasets.service import sweep_erasures
    from app.db import utcnow

    # an incremental sweep looks only where a point reached a final disposition since its last run
    assert sweep_erasures(since=utcnow() + timedelta(hours=1)) == []
    assert all(n in dataset_file() for n in needles)

    monkeypatch.setenv("LETHE_ERASURE_INTERVAL", "0.2")
    get_settings.cache_clear()
    relay = Background(0.05)
    relay.start()
    try:
        wait_until(lambda: client.get("/ledger?event=points.erased", headers=h).json()["total"] > 0, 20,
                   "the relay's erasure sweep")
    finally:
        relay.stop()
        relay.join(10)
    after = dataset_file()
    assert not any(n in after for n in needles)
    erased = client.get("/ledger?event=points.erased", headers=h).json()["items"]
    assert len(erased) == 1 and erased[0]["data"]["point_ids"] == sorted(ids[:2])  # one rewrite for both
    assert client.get("/datasets/toy", headers=h).json()["n_erased"] == 2
    assert client.get("/ledger/verify", headers=h).json()["ok"]


def test_spent_free_budget_is_settled_by_the_next_job(client: TestClient, admin_headers: dict[str, str],
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LETHE_FREE_BUDGET", "0.01")  # 2 of 200 points
    monkeypatch.setenv("LETHE_FREE_QUANTILE", "0.5")
    from app.settings import get_settings

    get_settings.cache_clear()
    h = admin_headers
    upload_dataset(client, h, n=200, n_test=80)
    create_model(client, h)
    client.post("/models/toy/train", headers=h)
    drain()
    ids = [i["point_id"] for i in client.get("/models/toy/versions/1/influence?limit=1000", headers=h).json()["items"]]
    forget = lambda pts: client.post("/forget", headers=h, json={  # noqa: E731
        "model": "toy", "point_ids": pts, "reason": "r", "requested_by": "x"}).json()
    first = forget(ids[:3])
    assert len(first["free"]) == 2 and len(first["pending"]) == 1  # budget of 2 spent
    assert client.get("/models/toy", headers=h).json()["free_spent"] == 2
    second = forget(ids[3:5])
    assert second["free"] == [] and second["job_id"] == first["job_id"]  # pending, coalesced
    drain()
    job = client.get(f"/jobs/{first['job_id']}", headers=h).json()
    assert job["status"] == "completed" and job["result"]["settlement"] == {"free_points": 2}
    assert client.get("/models/toy", headers=h).json()["free_spent"] == 0
    settled = client.get("/ledger?event=budget.settled", headers=h).json()["items"]
    assert len(settled) == 1 and settled[0]["data"]["free_points"] == 2
    v2 = client.get("/models/toy/versions/2/influence?limit=1000", headers=h).json()
    low = [i["point_id"] for i in v2["items"]][:1] if v2["status"] == "completed" else ids[5:6]
    assert forget(low)["free"] == low  # a fresh budget (the parent's scores decide until v2's land)
