"""The HTTP contract without running jobs: validation, auth, tenants, idempotency, cancel, ledger."""

from __future__ import annotations

import io
from datetime import timedelta

import numpy as np
import pytest
from fastapi.testclient import TestClient

from app.identity import keyed_hash
from tests.factories import create_model, npz_bytes, upload_dataset, upload_version
from tests.support import assert_problem


@pytest.fixture
def toy(client: TestClient, admin_headers: dict[str, str]) -> TestClient:
    upload_dataset(client, admin_headers)
    create_model(client, admin_headers)
    resp = upload_version(client, admin_headers)
    assert resp.status_code == 201, resp.text
    assert resp.json()["version"] == 1 and resp.json()["ref"] == "toy@1"
    return client


def forget_body(**kw: object) -> dict[str, object]:
    return {"model": "toy", "point_ids": ["p0001", "p0002"], "reason": "gdpr art. 17",
            "requested_by": "dpo@example.com"} | kw


def counts(client: TestClient, h: dict[str, str]) -> tuple[int, int]:
    return client.get("/ledger", headers=h).json()["total"], client.get("/requests", headers=h).json()["total"]


def test_dataset_upload_and_bad_files(client: TestClient, admin_headers: dict[str, str]) -> None:
    ds = upload_dataset(client, admin_headers)
    assert ds["n_points"] == 120 and ds["n_test"] == 40 and len(ds["sha256"]) == 64
    assert client.get("/datasets", headers=admin_headers).json()["total"] == 1
    # object arrays would need pickle: refused
    buf = io.BytesIO()
    np.savez(buf, x=np.zeros((2, 2)), y=np.zeros(2, np.int64), ids=np.array(["a", {"b": 1}], dtype=object))
    bad = client.post("/datasets", headers=admin_headers, data={"name": "obj"},
                      files={"file": ("x.npz", buf.getvalue())})
    assert_problem(bad, 422, kind="unprocessable", detail="pickle")
    missing = client.post("/datasets", headers=admin_headers, data={"name": "m"},
                          files={"file": ("x.npz", npz_bytes(subjects=False)[:100])})
    assert missing.status_code == 422
    dup = client.post("/datasets", headers=admin_headers, data={"name": "toy"}, files={"file": ("x.npz", npz_bytes())})
    assert dup.status_code == 409
    assert client.get("/datasets", headers=admin_headers).json()["total"] == 1


def test_models_and_versions_validation(client: TestClient, admin_headers: dict[str, str]) -> None:
    upload_dataset(client, admin_headers)
    assert_problem(client.post("/models", headers=admin_headers, json={
        "name": "x", "dataset": "nope", "architecture": {"kind": "mlp"}}), 404, kind="not-found",
        detail="no dataset 'nope'", suggestions=[])
    typo = client.post("/models", headers=admin_headers, json={
        "name": "x", "dataset": "tot", "architecture": {"kind": "mlp"}})
    assert_problem(typo, 404, detail="did you mean 'toy'?", suggestions=["toy"])
    bad = client.post("/models", headers=admin_headers, json={
        "name": "x", "dataset": "toy", "architecture": {"kind": "transformer"}})
    body = assert_problem(bad, 422, kind="validation", detail="body.architecture")
    assert body["errors"] and {"loc", "msg", "type"} <= body["errors"][0].keys()
    assert body["errors"][0]["loc"][:2] == ["body", "architecture"]
    scorer = assert_problem(client.post("/models", headers=admin_headers, json={
        "name": "x", "dataset": "toy", "architecture": {"kind": "mlp"}, "policy": {"scorer": "gradnrom"}}),
        422, kind="validation", detail="body.policy.scorer: Input should be", suggestions=["gradnorm"])
    assert "did you mean 'gradnorm'?" in scorer["detail"] and "less_own" in scorer["choices"]
    assert scorer["errors"][0]["suggestions"] == ["gradnorm"]
    optimizer = client.post("/models", headers=admin_headers, json={
        "name": "x", "dataset": "toy", "architecture": {"kind": "mlp"}, "recipe": {"optimizer": "adamw"}}).json()
    assert optimizer["choices"] == ["adam", "sgd"] and optimizer["suggestions"] == ["adam"]
    create_model(client, admin_headers)
    not_st = upload_version(client, admin_headers, data=b"\x80\x04pickle-bytes")
    assert not_st.status_code == 422
    assert client.get("/models/toy", headers=admin_headers).json()["versions"] == []
    assert upload_version(client, admin_headers, model="ghost").status_code == 404


def test_forget_bad_input_records_nothing(toy: TestClient, admin_headers: dict[str, str]) -> None:
    h = admin_headers
    before = counts(toy, h)
    r = toy.post("/forget", headers=h, json=forget_body(point_ids=["p0001", "nope-1", "nope-2"]))
    assert_problem(r, 422, kind="unprocessable", detail="2 point id(s) are not in this model's dataset: nope-1, nope-2",
                   unknown_point_ids=["nope-1", "nope-2"])
    assert_problem(toy.post("/forget", headers=h, json=forget_body(point_ids=[])), 422, kind="validation")
    assert_problem(toy.post("/forget", headers=h, json=forget_body(model="ghost")), 404, detail="no model 'ghost'",
                   suggestions=[])
    assert_problem(toy.post("/forget", headers=h, json=forget_body(model="tyo")), 404,
                   detail="no model 'tyo'; did you mean 'toy'?", suggestions=["toy"])
    assert_problem(toy.post("/forget", headers=h, json=forget_body(model="toy@7")), 404,
                   detail="model 'toy' has no version 7; the current version is toy@1", current=1)
    algo = assert_problem(toy.post("/forget", headers=h, json=forget_body(algorithm="finetun")), 422,
                          detail="did you mean 'finetune'?", suggestions=["finetune"])
    assert "finetune" in algo["choices"] and len(algo["choices"]) > 1
    assert_problem(toy.post("/forget", headers=h, json=forget_body(algorithm="teleport")), 422, suggestions=[])
    assert toy.post("/forget", headers=h, json=forget_body(params={"epochs": -1})).status_code == 422
    assert toy.post("/forget", json=forget_body()).status_code == 401
    assert toy.post("/forget", headers={"Authorization": "Bearer wrong"}, json=forget_body()).status_code == 401
    assert counts(toy, h) == before
    # a second version makes toy@1 not current: 409
    assert upload_version(toy, h).status_code == 201
    conflict = toy.post("/forget", headers=h, json=forget_body(model="toy@1"))
    assert_problem(conflict, 409, kind="conflict", detail="'toy@1' is not the current version (toy@2)", current="toy@2")


def test_scopes_and_tenants(toy: TestClient, admin_headers: dict[str, str]) -> None:
    h = admin_headers
    reader = toy.post("/keys", headers=h, json={"scopes": ["read"]}).json()["key"]
    rh = {"Authorization": f"Bearer {reader}"}
    assert toy.get("/models/toy", headers=rh).status_code == 200
    denied = toy.post("/forget", headers=rh, json=forget_body())
    assert_problem(denied, 403, kind="forbidden", detail="lacks the 'forget' scope")
    assert toy.get("/keys", headers=rh).status_code == 403
    other = toy.post("/keys", headers=h, json={"scopes": ["admin"], "tenant": "other-co"}).json()["key"]
    oh = {"Authorization": f"Bearer {other}"}
    assert toy.get("/models/toy", headers=oh).status_code == 404
    assert toy.post("/forget", headers=oh, json=forget_body()).status_code == 404
    assert toy.get("/models", headers=oh).json()["total"] == 0
    keys = toy.get("/keys", headers=h).json()["items"]
    reader_id = next(k["id"] for k in keys if k["scopes"] == ["read"])
    assert toy.delete(f"/keys/{reader_id}", headers=h).status_code == 200
    assert toy.get("/models/toy", headers=rh).status_code == 401


def test_forget_without_scores_queues_everything_idempotently(toy: TestClient, admin_headers: dict[str, str]) -> None:
    h = admin_headers | {"Idempotency-Key": "req-1"}
    first = toy.post("/forget", headers=h, json=forget_body(subject_ids=["s010", "who-is-this"]))
    assert first.status_code == 202, first.text
    body = first.json()
    assert body["free"] == [] and body["status"] == "accepted" and body["ref"] == "toy@1"
    assert body["pending"] == ["p0001", "p0002", "p0040", "p0041", "p0042", "p0043"]
    assert body["unknown_subjects"] == [keyed_hash("who-is-this")]  # never stored nor echoed in clear
    assert first.headers["location"] == f"/jobs/{body['job_id']}"
    replay = toy.post("/forget", headers=h, json=forget_body(subject_ids=["s010", "who-is-this"]))
    assert replay.status_code == 202 and replay.json() == body
    clash = toy.post("/forget", headers=h, json=forget_body())
    assert clash.status_code == 409
    # a later request coalesces into the same queued job
    later = toy.post("/forget", headers=admin_headers, json=forget_body(point_ids=["p0100"])).json()
    assert later["job_id"] == body["job_id"]
    job = toy.get(f"/jobs/{body['job_id']}", headers=admin_headers).json()
    assert job["status"] == "queued" and job["kind"] == "unlearn"
    assert sorted(job["requests"]) == sorted([body["request_id"], later["request_id"]])
    req = toy.get(f"/requests/{body['request_id']}", headers=admin_headers).json()
    assert req["counts"] == {"pending": 6} and {p["disposition"] for p in req["points"]} == {"pending"}
    ds = toy.get("/datasets/toy", headers=admin_headers).json()
    assert ds["n_tombstoned"] == 7
    # cancel the first: its job keeps serving the later one
    cancelled = toy.post(f"/requests/{body['request_id']}/cancel", headers=admin_headers)
    assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
    assert toy.post(f"/requests/{body['request_id']}/cancel", headers=admin_headers).status_code == 409
    assert toy.get("/datasets/toy", headers=admin_headers).json()["n_tombstoned"] == 1
    job = toy.get(f"/jobs/{body['job_id']}", headers=admin_headers).json()
    assert job["status"] == "queued" and job["requests"] == [later["request_id"]]
    toy.post(f"/requests/{later['request_id']}/cancel", headers=admin_headers)
    assert toy.get(f"/jobs/{body['job_id']}", headers=admin_headers).json()["status"] == "cancelled"
    verify = toy.get("/ledger/verify", headers=admin_headers).json()
    assert verify["ok"] and verify["entries"] > 5


def test_paging(toy: TestClient, admin_headers: dict[str, str]) -> None:
    for i in range(3):
        toy.post("/forget", headers=admin_headers, json=forget_body(point_ids=[f"p00{10 + i}"]))
    page = toy.get("/requests?limit=2", headers=admin_headers).json()
    assert page["total"] == 3 and len(page["items"]) == 2 and page["next"]
    rest = toy.get(f"/requests?limit=2&cursor={page['next']}", headers=admin_headers).json()
    assert len(rest["items"]) == 1 and rest["next"] is None
    assert toy.get("/requests?cursor=garbage", headers=admin_headers).status_code == 422
    assert toy.get("/requests?limit=5000", headers=admin_headers).status_code == 422


def test_idempotency_keys_expire(toy: TestClient, admin_headers: dict[str, str]) -> None:
    """After LETHE_IDEMPOTENCY_TTL_HOURS a key is free again: a new request; the old one keeps its record."""
    from sqlalchemy import update

    from app.db import session_scope, utcnow
    from app.forget.tables import ForgetRequest

    h = admin_headers | {"Idempotency-Key": "req-ttl"}
    first = toy.post("/forget", headers=h, json=forget_body()).json()
    assert toy.post("/forget", headers=h, json=forget_body(point_ids=["p0003"])).status_code == 409
    with session_scope() as s:
        s.execute(update(ForgetRequest).where(ForgetRequest.id == first["request_id"])
                  .values(created_at=utcnow() - timedelta(hours=25)))
    reused = toy.post("/forget", headers=h, json=forget_body(point_ids=["p0003"]))
    assert reused.status_code == 202 and reused.json()["request_id"] != first["request_id"]
    assert toy.get(f"/requests/{first['request_id']}", headers=admin_headers).json()["status"] == "accepted"
    assert toy.post("/forget", headers=h, json=forget_body(point_ids=["p0003"])).json() == reused.json()
