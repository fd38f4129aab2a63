"""Signed webhook events reach a local receiver; bad targets are refused; failures back off."""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from app.client import verify_callback
from app.main import create_app
from app.webhooks.service import deliver_due
from tests.factories import create_model, drain, upload_dataset
from tests.support import Receiver


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


@pytest.fixture
def client(lethe_env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Iterator[TestClient]:
    monkeypatch.setenv("LETHE_WEBHOOKS_ALLOW_PRIVATE", "true")  # loopback receiver, explicitly allowed
    from tests.conftest import _reset_caches

    _reset_caches()
    with TestClient(create_app()) as c:
        yield c


def verify(secret: str, headers: dict[str, str], body: bytes) -> bool:
    parts = dict(p.split("=", 1) for p in headers["Lethe-Signature"].split(","))
    expected = hmac.new(secret.encode(), f"{parts['t']}.".encode() + body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, parts["v1"])


def test_events_are_signed_and_delivered(client: TestClient, admin_headers: dict[str, str],
                                         receiver: Receiver) -> None:
    h = admin_headers
    created = client.post("/webhooks", headers=h, json={"url": receiver.url, "events": ["version.promoted",
                                                                                         "request.completed"]})
    assert created.status_code == 201
    secret = created.json()["secret"]
    assert "secret" not in client.get("/webhooks", headers=h).json()["items"][0]
    assert client.post("/webhooks", headers=h, json={"url": receiver.url, "events": ["nope"]}).status_code == 422
    upload_dataset(client, h)
    create_model(client, h)
    client.post("/models/toy/train", headers=h)
    drain()
    ids = [i["point_id"] for i in client.get("/models/toy/versions/1/influence?limit=1000", headers=h).json()["items"]]
    resp = client.post("/forget", headers=h, json={"model": "toy", "point_ids": ids[-5:], "reason": "r",
                                                   "requested_by": "x", "callback_url": receiver.url + "?req=1"})
    assert resp.status_code == 202
    drain()
    assert deliver_due() >= 4
    events = [(hd, json.loads(b)) for hd, b in receiver.got]
    # the subscription's deliveries carry its HMAC secret; the request's callback_url (no registered secret)
    # carries the server's Ed25519 signature, checked with the published public key
    public = client.get("/ledger/public-key").text
    for hd, b in receiver.got:
        if "ed25519=" in hd["Lethe-Signature"]:
            assert verify_callback(b, hd["Lethe-Signature"], public)["id"] == json.loads(b)["id"]
        else:
            assert verify(secret, hd, b)
    assert sum("ed25519=" in hd["Lethe-Signature"] for hd, _ in receiver.got) == 1  # the callback_url's one
    types = [e["type"] for _, e in events]
    assert types.count("version.promoted") == 2  # toy@1 trained, toy@2 unlearned
    assert types.count("request.completed") == 2  # the subscription and the request's callback_url
    done = next(e for _, e in events if e["type"] == "request.completed")
    assert done["data"]["request_id"] == resp.json()["request_id"] and done["data"]["ref"] == "toy@2"
    assert {"type", "id", "at", "data"} <= set(done)
    deliveries = client.get("/webhooks/deliveries", headers=h).json()
    assert deliveries["total"] == len(receiver.got) and all(d["delivered_at"] for d in deliveries["items"])
    assert deliver_due() == 0  # nothing twice


def test_failures_back_off_and_private_targets_are_refused(client: TestClient, admin_headers: dict[str, str],
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    failing = Receiver(status=500)
    try:
        h = admin_headers
        client.post("/webhooks", headers=h, json={"url": failing.url, "events": ["version.promoted"]})
        upload_dataset(client, h)
        create_model(client, h)
        client.post("/models/toy/train", headers=h)
        drain()
        assert deliver_due() == 0 and len(failing.got) == 1
        assert deliver_due() == 0 and len(failing.got) == 1  # backing off: not due yet
        d = client.get("/webhooks/deliveries", headers=h).json()["items"][0]
        assert d["attempts"] == 1 and d["last_status"] == 500 and d["delivered_at"] is None
    finally:
        failing.server.shutdown()
    monkeypatch.setenv("LETHE_WEBHOOKS_ALLOW_PRIVATE", "false")
    from app.settings import get_settings

    get_settings.cache_clear()
    for url in ("http://127.0.0.1:9/x", "http://10.0.0.8/x", "ftp://example.com/x"):
        r = client.post("/webhooks", headers=admin_headers, json={"url": url, "events": ["version.promoted"]})
        assert r.status_code == 422, url
    r = client.post("/forget", headers=admin_headers, json={"model": "toy", "point_ids": ["p0001"], "reason": "r",
                                                            "requested_by": "x", "callback_url": "http://127.0.0.1/"})
    assert r.status_code == 422
