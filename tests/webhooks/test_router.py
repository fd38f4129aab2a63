"""Signed webhook events reach a local receiver; bad targets are refused; failures back off."""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from app.client import WebhookSignatureError, verify_callback, verify_webhook
from app.webhooks.service import deliver_due
from tests.factories import create_model, drain, upload_dataset, upload_version
from tests.support import Receiver


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


@pytest.fixture
def client_settings() -> dict[str, str]:
    return {
        "LETHE_WEBHOOKS_ALLOW_PRIVATE": "true"  # loopback receiver, explicitly allowed
    }


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


# ----------------------------------------------------------------------------- issue 14 item 1: webhook secrets

def _promote(client: TestClient, h: dict[str, str]) -> None:
    """A version.promoted event (an uploaded version becomes current)."""
    assert upload_version(client, h).status_code == 201


def _deliveries(receiver: Receiver) -> list[tuple[str, bytes]]:
    assert deliver_due() >= 1
    got = [(hd["Lethe-Signature"], b) for hd, b in receiver.got]
    receiver.got.clear()
    return got


def test_webhook_secret_cannot_be_read_from_the_ledger(client: TestClient, admin_headers: dict[str, str],
                                                       receiver: Receiver) -> None:
    """The attack of issue 14: a forget+read key gets keyed_hash("webhook:<tenant>") written to the ledger.
    Before, that hash WAS the tenant's webhook secret; now secrets are random and keys are separated."""
    h = admin_headers
    upload_dataset(client, h)
    create_model(client, h)
    _promote(client, h)
    tenant = client.get("/ledger/head", headers=h).json()["tenant_id"]
    key = client.post("/keys", headers=h, json={"scopes": ["forget", "read"]}).json()["key"]
    attacker = {"Authorization": f"Bearer {key}"}
    r = client.post("/forget", headers=attacker, json={"model": "toy", "point_ids": ["p0001"], "reason": "r",
                                                       "requested_by": f"webhook:{tenant}"})
    assert r.status_code == 202, r.text
    leaked = next(e["data"]["requested_by"] for e in client.get("/ledger", headers=attacker).json()["items"]
                  if e["event"] == "request.received")
    secret = client.post("/webhooks", headers=h, json={"url": receiver.url, "events": ["version.promoted"]}
                         ).json()["secret"]
    assert secret != leaked
    _promote(client, h)
    [(header, body)] = _deliveries(receiver)
    assert verify_webhook(body, header, secret)["type"] == "version.promoted"
    with pytest.raises(WebhookSignatureError):
        verify_webhook(body, header, leaked)  # the attacker's forgery key signs nothing any more


def test_secrets_are_random_per_webhook_and_stored_sealed(client: TestClient, admin_headers: dict[str, str],
                                                          receiver: Receiver) -> None:
    h = admin_headers
    made = [client.post("/webhooks", headers=h, json={"url": receiver.url, "events": ["version.promoted"]}).json()
            for _ in range(2)]
    assert made[0]["secret"] != made[1]["secret"] and all(m["secret"].startswith("whsec_") for m in made)
    from app.db import session_scope
    from app.webhooks.tables import Webhook

    with session_scope(readonly=True) as s:
        stored = [s.get(Webhook, m["id"]).secret_enc for m in made]
    assert all(m["secret"] not in v and v.startswith("v1:") for m, v in zip(made, stored, strict=True))
    upload_dataset(client, h)
    create_model(client, h)
    _promote(client, h)
    got = _deliveries(receiver)
    assert len(got) == 2  # each hook signs with its own secret only
    for header, body in got:
        matches = [m for m in made if _verifies(body, header, m["secret"])]
        assert len(matches) == 1


def _verifies(body: bytes, header: str, secret: str) -> bool:
    try:
        verify_webhook(body, header, secret)
        return True
    except WebhookSignatureError:
        return False


def test_rotation_signs_with_both_secrets_during_the_grace_period(client: TestClient, admin_headers: dict[str, str],
                                                                  receiver: Receiver,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    h = admin_headers
    upload_dataset(client, h)
    create_model(client, h)
    hook = client.post("/webhooks", headers=h, json={"url": receiver.url, "events": ["version.promoted"]}).json()
    old = hook["secret"]
    rotated = client.post(f"/webhooks/{hook['id']}/rotate", headers=h)
    assert rotated.status_code == 200, rotated.text
    new = rotated.json()["secret"]
    assert new != old and rotated.json()["previous_valid_until"] and rotated.json()["rotated_at"]
    assert "secret" not in client.get("/webhooks", headers=h).json()["items"][0]
    _promote(client, h)
    [(header, body)] = _deliveries(receiver)
    assert header.count("v1=") == 2 and header.startswith("t=")
    assert _verifies(body, header, new) and _verifies(body, header, old)  # receivers switch over at leisure
    # with no grace left, only the newest secret signs
    monkeypatch.setenv("LETHE_WEBHOOK_ROTATION_GRACE_HOURS", "0")
    from app.settings import get_settings

    get_settings.cache_clear()
    newest = client.post(f"/webhooks/{hook['id']}/rotate", headers=h).json()["secret"]
    _promote(client, h)
    [(header, body)] = _deliveries(receiver)
    assert header.count("v1=") == 1 and _verifies(body, header, newest)
    assert not _verifies(body, header, new) and not _verifies(body, header, old)
    # another tenant's (or a deleted) webhook is not found
    other = client.post("/keys", headers=h, json={"scopes": ["admin"], "tenant": "other-co"}).json()["key"]
    assert client.post(f"/webhooks/{hook['id']}/rotate",
                       headers={"Authorization": f"Bearer {other}"}).status_code == 404
    assert client.delete(f"/webhooks/{hook['id']}", headers=h).status_code == 200
    assert client.post(f"/webhooks/{hook['id']}/rotate", headers=h).status_code == 404


def test_webhooks_registered_before_keep_their_secret_until_rotated(client: TestClient,
                                                                    admin_headers: dict[str, str],
                                                                    receiver: Receiver) -> None:
    """A webhook row from before the migration (no stored secret) signs with the old derived secret, and its
    rotation keeps that one valid for the grace period, so receivers are never cut off."""
    import hashlib
    import hmac

    import sqlalchemy as sa

    from app.settings import get_settings

    h = admin_headers
    upload_dataset(client, h)
    create_model(client, h)
    hook = client.post("/webhooks", headers=h, json={"url": receiver.url, "events": ["version.promoted"]}).json()
    eng = sa.create_engine(get_settings().sqlalchemy_url)
    with eng.begin() as conn:
        conn.execute(sa.text("UPDATE webhooks SET secret_enc = NULL WHERE id = :i"), {"i": hook["id"]})
    eng.dispose()
    tenant = client.get("/ledger/head", headers=h).json()["tenant_id"]
    legacy = hmac.new(b"test-secret", f"webhook:{tenant}".encode(), hashlib.sha256).hexdigest()
    assert client.get("/webhooks", headers=h).json()["items"][0]["legacy_secret"] is True
    _promote(client, h)
    [(header, body)] = _deliveries(receiver)
    assert _verifies(body, header, legacy)
    new = client.post(f"/webhooks/{hook['id']}/rotate", headers=h).json()["secret"]
    _promote(client, h)
    [(header, body)] = _deliveries(receiver)
    assert _verifies(body, header, new) and _verifies(body, header, legacy) and header.count("v1=") == 2
    assert client.get("/webhooks", headers=h).json()["items"][0]["legacy_secret"] is False


def test_receivers_refuse_stale_or_altered_deliveries(client: TestClient, admin_headers: dict[str, str],
                                                      receiver: Receiver) -> None:
    h = admin_headers
    upload_dataset(client, h)
    create_model(client, h)
    secret = client.post("/webhooks", headers=h, json={"url": receiver.url, "events": ["version.promoted"]}
                         ).json()["secret"]
    _promote(client, h)
    [(header, body)] = _deliveries(receiver)
    t = int(header.split(",")[0].removeprefix("t="))
    assert verify_webhook(body, header, secret, now=t + 299)
    with pytest.raises(WebhookSignatureError, match="tolerance"):
        verify_webhook(body, header, secret, now=t + 301)  # a replay after the window
    with pytest.raises(WebhookSignatureError):
        verify_webhook(body.replace(b"toy", b"tox"), header, secret)
    with pytest.raises(WebhookSignatureError):
        verify_webhook(body, header.replace(f"t={t}", f"t={t + 1}"), secret)  # the timestamp is signed too


def test_callback_urls_get_their_own_requests_events_signed_with_the_ledger_key(
        client: TestClient, admin_headers: dict[str, str]) -> None:
    """Two requests coalesced into one job, each with its own callback_url: each receiver gets only its
    request's events, signed with Ed25519 (no registered secret), verifiable with the public key alone."""
    h = admin_headers
    a, b = Receiver(), Receiver()
    try:
        upload_dataset(client, h)
        create_model(client, h)
        client.post("/models/toy/train", headers=h)
        drain()
        ids = [i["point_id"] for i in client.get("/models/toy/versions/1/influence?limit=1000",
                                                 headers=h).json()["items"]]
        answers = [client.post("/forget", headers=h, json={
            "model": "toy", "point_ids": pts, "reason": "r", "requested_by": who, "callback_url": r.url}).json()
            for pts, who, r in ((ids[-5:], "a", a), (ids[-10:-5], "b", b))]
        assert answers[0]["job_id"] == answers[1]["job_id"]  # coalesced: one job serves both
        drain()
        deliver_due()
        public = client.get("/ledger/public-key").text
        for receiver_, answer in ((a, answers[0]), (b, answers[1])):
            assert receiver_.got, "no callback delivered"
            for hd, body in receiver_.got:
                event = verify_callback(body, hd["Lethe-Signature"], public)
                assert event["data"]["request_id"] == answer["request_id"]
                assert "v1=" not in hd["Lethe-Signature"]
            with pytest.raises(WebhookSignatureError):
                verify_callback(receiver_.got[0][1] + b" ", receiver_.got[0][0]["Lethe-Signature"], public)
    finally:
        a.close()
        b.close()
