"""Idempotency-Key on the POSTs other than /forget (app.idempotency), on SQLite and Postgres."""

from __future__ import annotations

from datetime import timedelta

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select, update

from app.db import session_scope, utcnow
from app.idempotency import BodyDigest, IdempotencyKey
from app.jobs.tables import Job
from tests.factories import create_model, npz_bytes, upload_dataset, upload_version


def _jobs(kind: str) -> int:
    with session_scope(readonly=True) as s:
        return s.scalar(select(func.count()).select_from(Job).where(Job.kind == kind))


def test_replay_conflict_and_release(client: TestClient, admin_headers: dict[str, str]) -> None:
    h = admin_headers | {"Idempotency-Key": "ds-1"}
    data = npz_bytes()
    # httpx draws a new multipart boundary per request: the retried upload must still replay
    first = client.post("/datasets", headers=h, data={"name": "toy"}, files={"file": ("d.npz", data)})
    again = client.post("/datasets", headers=h, data={"name": "toy"}, files={"file": ("d.npz", data)})
    assert first.status_code == again.status_code == 201, again.text
    assert again.json() == first.json() and again.headers["idempotent-replayed"] == "true"
    assert "idempotent-replayed" not in first.headers
    assert client.get("/datasets", headers=admin_headers).json()["total"] == 1
    other = client.post("/datasets", headers=h, data={"name": "toy2"}, files={"file": ("d.npz", data)})
    assert other.status_code == 409 and "different request" in other.json()["detail"]
    moved = client.post("/models", headers=h, json={"name": "x", "dataset": "toy"})
    assert moved.status_code == 409  # same key, another route

    # a first request that fails changes nothing and frees its key
    hm = admin_headers | {"Idempotency-Key": "m-1"}
    body = {"name": "toy", "dataset": "nope", "architecture": {"kind": "mlp", "hidden": [16]}}
    assert client.post("/models", headers=hm, json=body).status_code == 404
    fixed = client.post("/models", headers=hm, json=body | {"dataset": "toy"})
    assert fixed.status_code == 201, fixed.text
    assert client.post("/models", headers=hm, json=body | {"dataset": "toy"}).json() == fixed.json()


def test_jobs_once_per_key_and_key_expiry(client: TestClient, admin_headers: dict[str, str]) -> None:
    upload_dataset(client, admin_headers)
    create_model(client, admin_headers)
    assert upload_version(client, admin_headers).status_code == 201
    trained = _jobs("train")
    h = admin_headers | {"Idempotency-Key": "train-1"}
    a = client.post("/models/toy/train", headers=h)
    b = client.post("/models/toy/train", headers=h)
    assert a.status_code == b.status_code == 202 and a.json()["job_id"] == b.json()["job_id"]
    assert a.headers.get("location") == b.headers.get("location")
    assert _jobs("train") == trained + 1
    calib = [client.post("/models/toy/versions/1/calibrate", headers=admin_headers | {"Idempotency-Key": "c-1"},
                         json={}) for _ in range(2)]
    assert calib[0].status_code == 202 and calib[0].json() == calib[1].json()
    assert _jobs("calibrate") == 1

    hm = admin_headers | {"Idempotency-Key": "m-exp"}
    body = {"name": "toy2", "dataset": "toy", "architecture": {"kind": "mlp", "hidden": [16]}}
    assert client.post("/models", headers=hm, json=body).status_code == 201
    assert client.post("/models", headers=hm, json=body | {"name": "toy3"}).status_code == 409
    with session_scope() as s:  # past LETHE_IDEMPOTENCY_TTL_HOURS the key is free again
        s.execute(update(IdempotencyKey).where(IdempotencyKey.key == "m-exp")
                  .values(created_at=utcnow() - timedelta(hours=25)))
    assert client.post("/models", headers=hm, json=body | {"name": "toy3"}).status_code == 201
    assert client.get("/models", headers=admin_headers).json()["total"] == 3


def test_keys_are_per_credential_and_secrets_are_never_stored(client: TestClient,
                                                             admin_headers: dict[str, str]) -> None:
    h = admin_headers | {"Idempotency-Key": "k-1"}
    made = client.post("/keys", headers=h, json={"scopes": ["read", "models"], "name": "ci"})
    assert made.status_code == 201
    secret = made.json()["key"]
    again = client.post("/keys", headers=h, json={"scopes": ["read", "models"], "name": "ci"})
    assert again.status_code == 409 and "only once" in again.json()["detail"]
    assert client.get("/keys", headers=admin_headers).json()["total"] == 2  # bootstrap + one
    with session_scope(readonly=True) as s:
        stored = [r.response_body or "" for r in s.scalars(select(IdempotencyKey))]
    assert stored and not any(secret in body for body in stored)

    # another API key of the same tenant with the same Idempotency-Key makes another request: the route runs
    # (and refuses a second model of that name) instead of showing it the first key's stored response
    upload_dataset(client, admin_headers)
    body = {"name": "m", "dataset": "toy", "architecture": {"kind": "mlp", "hidden": [16]}}
    assert client.post("/models", headers=admin_headers | {"Idempotency-Key": "shared"}, json=body).status_code == 201
    second = client.post("/models", headers={"Authorization": f"Bearer {secret}", "Idempotency-Key": "shared"},
                         json=body)
    assert second.status_code == 409 and "already exists" in second.json()["detail"]
    reader = client.post("/keys", headers=admin_headers, json={"scopes": ["read"]}).json()["key"]
    denied = client.post("/models", headers={"Authorization": f"Bearer {reader}", "Idempotency-Key": "shared"},
                         json=body)
    assert denied.status_code == 403  # a replay is never a way around a scope
    assert client.post("/models", headers={"Idempotency-Key": "shared"}, json=body).status_code == 401
    bad = client.post("/models", headers=admin_headers | {"Idempotency-Key": "x" * 201}, json=body)
    assert bad.status_code == 422


@pytest.mark.parametrize("cut", [1, 3, 7, 13, 50])
def test_body_digest_ignores_the_multipart_boundary_wherever_chunks_split(cut: int) -> None:
    def digest(boundary: bytes, body: bytes) -> str:
        d = BodyDigest({"headers": [(b"content-type", b"multipart/form-data; boundary=" + boundary)]})
        for i in range(0, len(body), cut):
            d.update(body[i:i + cut])
        return d.hexdigest()

    def form(boundary: bytes, payload: bytes) -> bytes:
        return b"--" + boundary + b"\r\nContent-Disposition: form-data; name=\"f\"\r\n\r\n" + payload + \
            b"\r\n--" + boundary + b"--\r\n"

    a, b = b"0123456789abcdef", b"fedcba9876543210"
    assert digest(a, form(a, b"same bytes")) == digest(b, form(b, b"same bytes"))
    assert digest(a, form(a, b"same bytes")) != digest(b, form(b, b"other bytes"))


def test_openapi_lists_the_header_on_every_post(client: TestClient) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    posts = {path: ops["post"] for path, ops in paths.items() if "post" in ops}
    assert "/models/{name}/train" in posts and "/datasets" in posts
    for path, op in posts.items():
        if path.startswith("/opendsr/"):
            continue
        names = [p["name"].lower() for p in op.get("parameters", [])]
        assert names.count("idempotency-key") == 1, (path, names)
