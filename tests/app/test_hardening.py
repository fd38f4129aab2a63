"""Issue 14's smaller findings, each through the HTTP path: the webhook SSRF filter (every non-global address,
connections pinned to the checked address, no addresses in errors), the development certificate's name, unknown
subject ids kept as keyed hashes, the operator scope for tenants, architecture limits, and failed
authentication limited per client address."""

from __future__ import annotations

import json
import socket
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from app.main import create_app
from app.settings import get_settings
from tests.factories import create_model, upload_dataset, upload_version
from tests.support import Receiver, assert_problem

# --- SSRF -----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("url", ["http://100.64.0.1/x", "http://100.127.255.254/x", "http://192.0.2.10/x",
                                 "http://198.18.0.1/x", "http://[::ffff:127.0.0.1]/x", "http://[64:ff9b:1::1]/x", "http://[64:ff9b::a00:1]/x",
                                 "http://[2002:c0a8:1::1]/x",
                                 "http://0.0.0.0/x", "http://224.0.0.1/x", "http://localhost:9/x"])
def test_every_non_global_target_is_refused_naming_no_address(client: TestClient, admin_headers: dict[str, str],
                                                              url: str) -> None:
    r = client.post("/webhooks", headers=admin_headers, json={"url": url, "events": ["version.promoted"]})
    assert r.status_code == 422, r.text
    detail = r.json()["detail"].replace(url, "")
    assert not any(a in detail for a in ("127.0.0.1", "::1", "100.64", "192.0.2", "198.18")), detail
    assert client.get("/webhooks", headers=admin_headers).json()["total"] == 0


def test_a_delivery_connects_to_the_address_that_was_checked(client: TestClient, admin_headers: dict[str, str],
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """DNS rebinding: the name resolves to a public address when checked, then to loopback. The delivery goes to
    the checked address, never to the receiver listening on loopback."""
    from app.webhooks.service import deliver_due

    monkeypatch.setenv("LETHE_WEBHOOK_DEADLINE", "2")
    get_settings.cache_clear()
    receiver = Receiver()
    real = socket.getaddrinfo
    lookups: list[str] = []

    def rebinding(host: Any, port: Any, *args: Any, **kw: Any) -> Any:
        if host != "rebind.example":
            return real(host, port, *args, **kw)
        lookups.append(host)
        address = "93.184.216.34" if len(lookups) <= 2 else "127.0.0.1"  # public twice, then loopback
        return [(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", (address, int(port or 80)))]

    monkeypatch.setattr(socket, "getaddrinfo", rebinding)
    try:
        h = admin_headers
        url = f"http://rebind.example:{receiver.server.server_port}/hook"
        assert client.post("/webhooks", headers=h, json={"url": url, "events": ["version.promoted"]}
                           ).status_code == 201
        upload_dataset(client, h)
        create_model(client, h)
        assert upload_version(client, h).status_code == 201
        assert deliver_due() == 0
        assert receiver.got == [] and len(lookups) == 2
        d = client.get("/webhooks/deliveries", headers=h).json()["items"][0]
        assert d["attempts"] == 1 and d["delivered_at"] is None
        assert "93.184" not in d["last_error"] and "127.0.0.1" not in d["last_error"]
    finally:
        receiver.close()


# --- the development certificate --------------------------------------------------------------------------------

def test_the_host_header_does_not_name_the_development_certificate(client: TestClient) -> None:
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    r = client.get("/opendsr/v1/certificate.pem", headers={"host": "attacker.example"})
    assert r.status_code == 200
    cert = x509.load_pem_x509_certificate(r.content)
    names = [a.value for a in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
    assert names == ["localhost"], names  # no configured domain: the fixed development name
    assert b"attacker" not in r.content
    status = client.get("/opendsr/v1/status", headers={"host": "attacker.example"})
    assert "attacker" not in json.dumps(dict(status.headers))


# --- unknown subjects -------------------------------------------------------------------------------------------

def test_unknown_subject_ids_are_kept_as_keyed_hashes_only(client: TestClient, admin_headers: dict[str, str]) -> None:
    from app.db import session_scope
    from app.forget.tables import ForgetRequest
    from app.identity import keyed_hash

    h = admin_headers
    upload_dataset(client, h)
    create_model(client, h)
    assert upload_version(client, h).status_code == 201
    secret_subject = "jane.doe@example.com"
    r = client.post("/forget", headers=h, json={"model": "toy", "subject_ids": ["s010", secret_subject],
                                                "reason": "r", "requested_by": "x"})
    assert r.status_code in (200, 202), r.text
    assert r.json()["unknown_subjects"] == [keyed_hash(secret_subject)]
    # the caller's own answer names it as they sent it (they hold it already); nothing stored or served later does
    assert r.json()["unknown_subject_ids"] == [secret_subject]
    assert secret_subject not in client.get(f"/requests/{r.json()['request_id']}", headers=h).text
    assert secret_subject not in client.get("/ledger?limit=1000", headers=h).text
    with session_scope(readonly=True) as s:
        stored = s.scalar(select(ForgetRequest.unknown_subjects).where(ForgetRequest.id == r.json()["request_id"]))
    assert stored == [keyed_hash(secret_subject)]


# --- tenants ----------------------------------------------------------------------------------------------------

def test_tenants_are_the_operators_and_cannot_be_enumerated(client: TestClient, admin_headers: dict[str, str]) -> None:
    operator = admin_headers  # the bootstrap key: the deployment's admin and operator key
    made = client.post("/keys", headers=operator, json={"scopes": ["admin"]})
    assert made.status_code == 201 and made.json()["scopes"] == ["admin"]
    admin = {"Authorization": f"Bearer {made.json()['key']}"}
    assert client.post("/keys", headers=operator, json={"scopes": ["read"], "tenant": "acme"}).status_code == 201

    # a tenant admin creates no tenant, and cannot tell an existing one from an unknown one
    exists = client.post("/keys", headers=admin, json={"scopes": ["admin"], "tenant": "acme"})
    unknown = client.post("/keys", headers=admin, json={"scopes": ["admin"], "tenant": "zeta"})
    assert exists.status_code == unknown.status_code == 403
    assert exists.json()["detail"].replace("acme", "zeta") == unknown.json()["detail"]
    assert "operator" in unknown.json()["detail"]
    # nor grants the operator scope
    assert client.post("/keys", headers=admin, json={"scopes": ["operator"]}).status_code == 403
    # its own tenant, by default or by name, is fine
    assert client.post("/keys", headers=admin, json={"scopes": ["read"]}).status_code == 201
    assert client.post("/keys", headers=admin, json={"scopes": ["read"], "tenant": "default"}).status_code == 201
    # the operator scope alone holds no tenant data
    op_only = client.post("/keys", headers=operator, json={"scopes": ["operator"]})
    assert op_only.status_code == 201
    assert client.get("/datasets", headers={"Authorization": f"Bearer {op_only.json()['key']}"}).status_code == 403


# --- architecture limits ----------------------------------------------------------------------------------------

def test_architectures_and_epochs_past_the_deployments_limits_are_422(client: TestClient,
                                                                      admin_headers: dict[str, str],
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    h = admin_headers
    upload_dataset(client, h)
    base = {"name": "big", "dataset": "toy", "recipe": {"epochs": 5}}
    cases = {
        "LETHE_MAX_LAYER_WIDTH": {"architecture": {"kind": "mlp", "hidden": [1e12, 1e12]}},
        "LETHE_MAX_MODEL_PARAMS": {"architecture": {"kind": "mlp", "hidden": [8000, 8000, 8000]}},
        "LETHE_MAX_LAYERS": {"architecture": {"kind": "mlp", "hidden": [4] * 40}},
        "LETHE_MAX_EPOCHS": {"architecture": {"kind": "mlp", "hidden": [16]}, "recipe": {"epochs": 5000}},
        "positive": {"architecture": {"kind": "cnn", "channels": [0]}},
    }
    for setting, body in cases.items():
        r = client.post("/models", headers=h, json=base | body)
        assert r.status_code == 422 and setting in r.json()["detail"], (setting, r.text)
    monkeypatch.setenv("LETHE_MAX_EPOCHS", "3")
    get_settings.cache_clear()
    r = client.post("/models", headers=h, json=base | {"architecture": {"kind": "mlp", "hidden": [16]}})
    assert r.status_code == 422 and "at most 3" in r.json()["detail"]
    assert client.get("/models", headers=h).json()["total"] == 0
    assert client.get("/ledger?event=model.registered", headers=h).json()["total"] == 0
    create_model(client, h, recipe={"epochs": 3})  # within the limits


# --- failed authentication --------------------------------------------------------------------------------------

def test_failed_authentication_is_limited_per_client_address(lethe_env: dict[str, str], admin_headers: dict[str, str],
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LETHE_AUTH_FAILURE_BURST", "5")
    get_settings.cache_clear()
    app = create_app()
    with TestClient(app, client=("203.0.113.7", 5000)) as attacker, \
            TestClient(app, client=("198.51.100.9", 5000)) as other:
        wrong = {"Authorization": "Bearer lethe_guess"}
        assert [attacker.get("/datasets", headers=wrong).status_code for _ in range(5)] == [401] * 5
        r = attacker.get("/datasets", headers=wrong)
        assert_problem(r, 429, kind="rate-limited", detail="too many failed authentications")
        assert int(r.headers["retry-after"]) >= 1
        # past the burst no key is looked up from that address, not even a right one
        assert attacker.get("/datasets", headers=admin_headers).status_code == 429
        # another address is unaffected; requests without a key reveal nothing and are not counted
        assert other.get("/datasets", headers=admin_headers).status_code == 200
        assert [other.get("/datasets").status_code for _ in range(10)] == [401] * 10
        assert other.get("/datasets", headers=admin_headers).status_code == 200


# --- server paths -----------------------------------------------------------------------------------------------

def test_a_failed_job_names_no_server_path_in_the_ledger(client: TestClient, admin_headers: dict[str, str]) -> None:
    from app import artifacts
    from app.datasets.tables import Dataset
    from app.db import session_scope
    from tests.factories import drain

    h = admin_headers
    ds = upload_dataset(client, h)
    create_model(client, h)
    with session_scope() as s:
        artifacts.path_of(s.get(Dataset, ds["id"]).uri).unlink()  # the worker's read fails, naming the file
    job = client.post("/models/toy/train", headers=h).json()
    drain()
    failed = client.get(f"/jobs/{job['job_id']}", headers=h).json()
    assert failed["status"] == "failed"
    entries = client.get("/ledger", headers=h, params={"event": "job.failed"}).json()["items"]
    assert entries and all(str(get_settings().resolved_data_dir) not in json.dumps(e) for e in entries), entries
    assert "<artifacts>" in entries[0]["data"]["error"] or "<data>" in entries[0]["data"]["error"]
