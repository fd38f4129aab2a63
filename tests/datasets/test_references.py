"""Datasets registered by reference: each tenant names files under its own import directory only, Lethe registers
and erases a copy, never touches the original, names no server path, and the certificate says the original is
outside what Lethe can erase."""

from __future__ import annotations

import hashlib

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from app.settings import get_settings
from tests.factories import create_model, drain, npz_bytes, tenant_headers


@pytest.fixture
def client_settings() -> dict[str, str]:
    return {
        "LETHE_ERASURE_INTERVAL": "0"  # free points are erased inside the request
    }


def tenant_id(client: TestClient, headers: dict[str, str]) -> str:
    return client.get("/keys", headers=headers).json()["items"][0]["tenant_id"]


def test_references_are_per_tenant_copied_and_the_original_never_erased(client: TestClient,
                                                                        admin_headers: dict[str, str]) -> None:
    a = admin_headers
    b = tenant_headers(client, a, "tenant-b")
    imports = get_settings().imports
    original = imports / tenant_id(client, a) / "shared" / "ref.npz"
    original.parent.mkdir(parents=True)
    original.write_bytes(npz_bytes(n=200, n_test=80))
    digest = hashlib.sha256(original.read_bytes()).hexdigest()
    server_dirs = [str(get_settings().resolved_data_dir), str(imports)]

    # tenant B cannot name A's file, however it spells the path; no answer names a server directory
    a_id = tenant_id(client, a)
    for uri in (f"../{a_id}/shared/ref.npz", f"imports/{a_id}/shared/ref.npz", f"{a_id}/shared/ref.npz",
                "shared/ref.npz", str(original), "nope.npz"):
        r = client.post("/datasets", headers=b, json={"name": "stolen", "uri": uri})
        assert r.status_code == 422, (uri, r.text)
        assert not any(d in r.json()["detail"].replace(uri, "") for d in server_dirs), r.text
    assert client.get("/datasets", headers=b).json()["total"] == 0

    # A registers it: Lethe keeps a copy of its own, and says so
    r = client.post("/datasets", headers=a, json={"name": "toy", "uri": "shared/ref.npz"})
    assert r.status_code == 201, r.text
    assert r.json()["by_reference"] is True and r.json()["sha256"] == digest
    from app.datasets.tables import Dataset
    from app.db import session_scope

    with session_scope(readonly=True) as s:
        stored = s.scalar(select(Dataset.uri).where(Dataset.id == r.json()["id"]))
    assert stored.startswith("datasets/") and "shared" not in stored
    create_model(client, a)
    client.post("/models/toy/train", headers=a)
    drain()

    # a free forget erases the points from Lethe's copy; the original is untouched and still there
    ids = [i["point_id"] for i in client.get("/models/toy/versions/1/influence?limit=1000", headers=a).json()["items"]]
    resp = client.post("/forget", headers=a, json={"model": "toy", "point_ids": ids[:2], "reason": "r",
                                                   "requested_by": "x"})
    assert resp.status_code == 200 and set(resp.json()["free"]) == set(ids[:2]), resp.text
    assert client.get("/datasets/toy", headers=a).json()["n_erased"] == 2
    assert original.is_file() and hashlib.sha256(original.read_bytes()).hexdigest() == digest
    cert = client.get(f"/requests/{resp.json()['request_id']}/certificate", headers=a).json()
    assert cert["original_outside_lethe"] is True

    # B's own import directory works for B
    mine = imports / tenant_id(client, b) / "mine.npz"
    mine.parent.mkdir(parents=True)
    mine.write_bytes(npz_bytes(n=20, n_test=0))
    r = client.post("/datasets", headers=b, json={"name": "mine", "uri": "mine.npz"})
    assert r.status_code == 201 and r.json()["by_reference"] is True
