"""Every route × every caller: no key (401), each single scope of tenant A (403 exactly when DESIGN.md's
scope table says so), and an all-scopes key of tenant B (404 for A's objects, none of A's ids anywhere).

Routes come from `app.routes`, so a new route is covered (or fails for want of a scope rule) automatically.
Also: keys are stored hashed, and the `lethe keys` CLI creates, lists and revokes them.
"""

from __future__ import annotations

import hashlib
import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient
from sqlalchemy import select

from app.main import create_app
from tests.factories import create_model, npz_bytes, safetensors_bytes, upload_dataset, upload_version
from tests.support import PROBLEM_BASE

SCOPES = ("read", "forget", "models", "admin")

# Public routes: no key needed. Anything else must answer 401 without a key.
PUBLIC = {
    ("GET", "/healthz"), ("GET", "/readyz"), ("GET", "/metrics"),
    ("GET", "/openapi.json"), ("GET", "/docs"), ("GET", "/docs/oauth2-redirect"), ("GET", "/redoc"),
    ("GET", "/static-offline-docs"),  # the docs pages' own Swagger UI / ReDoc assets (served offline)
    # OpenDSR: discovery, the processor's certificate and its status are public by the spec.
    ("GET", "/opendsr/v1/discovery"), ("GET", "/opendsr/v1/certificate.pem"), ("GET", "/opendsr/v1/status"),
    # The ledger's Ed25519 public key: auditors and callback receivers verify with it.
    ("GET", "/ledger/public-key"),
}
# A's sufficient-scope GETs must be 200, except these (nothing computed or ended yet in this fixture: 404/409).
GET_NOT_YET = {"/models/{name}/versions/{number}/calibration", "/models/{name}/versions/{number}/calibration.png",
               "/requests/{request_id}/certificate"}


def required(method: str, path: str) -> tuple[set[str], set[str]]:
    """DESIGN.md's scope table: (scopes that suffice on their own, scopes where either answer is accepted).

    read = every GET of the caller's tenant; forget = POST /forget and OpenDSR requests (and cancelling a
    request); models = datasets, models, versions, train, calibrate; admin = all of these plus keys.
    Webhook registration is admin (it hands out the tenant's signing secret).
    """
    if path.startswith("/keys"):
        return {"admin"}, set()
    if path.startswith("/opendsr"):
        return ({"read"}, {"forget"}) if method == "GET" else ({"forget"}, set())
    if method == "GET":
        return {"read", "admin"}, set()
    if path == "/forget" or path.endswith("/cancel"):
        return {"forget", "admin"}, set()
    if path.startswith("/webhooks"):
        return {"admin"}, set()
    if path.startswith(("/datasets", "/models")):
        return {"models", "admin"}, set()
    raise AssertionError(f"no scope rule for {method} {path}: add one from DESIGN.md's scope table")


@dataclass
class World:
    client: TestClient
    a: dict[str, dict[str, str]]  # scope -> headers of tenant A's single-scope key
    b: dict[str, str]  # headers of tenant B's all-scopes key
    params: dict[str, str]  # path parameter -> one of A's objects
    a_ids: set[str] = field(default_factory=set)  # identifiers of A's objects that B must never see
    a_dataset_uri: str = ""


def _h(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture
def world(lethe_env: dict[str, str], monkeypatch: pytest.MonkeyPatch,
          admin_headers: dict[str, str]) -> Iterator[World]:
    monkeypatch.setenv("LETHE_WEBHOOKS_ALLOW_PRIVATE", "true")  # no DNS lookups for the test's callback URL
    from app.settings import get_settings

    get_settings.cache_clear()
    with TestClient(create_app()) as client:
        h = admin_headers  # the bootstrap key: tenant A ("default")
        ds = upload_dataset(client, h)
        model = create_model(client, h)
        version = upload_version(client, h)
        assert version.status_code == 201, version.text
        fr = client.post("/forget", headers=h, json={"model": "toy", "point_ids": ["p0001", "p0002"],
                                                     "reason": "matrix", "requested_by": "test"})
        assert fr.status_code == 202, fr.text
        a = {s: _h(client.post("/keys", headers=h, json={"scopes": [s]}).json()["key"]) for s in SCOPES}
        spare_key = client.post("/keys", headers=h, json={"scopes": ["read"], "name": "spare"}).json()
        hook = client.post("/webhooks", headers=h, json={"url": "http://127.0.0.1:9/hook",
                                                         "events": ["request.completed"]})
        assert hook.status_code == 201, hook.text
        b = client.post("/keys", headers=h, json={"scopes": list(SCOPES), "tenant": "tenant-b"})
        assert b.status_code == 201, b.text
        keys = client.get("/keys", headers=h).json()["items"]
        head = client.get("/ledger/verify", headers=h).json()["head"]
        from app.datasets.tables import Dataset
        from app.db import session_scope

        with session_scope(readonly=True) as s:
            uri = s.scalar(select(Dataset.uri).where(Dataset.id == ds["id"]))
        w = World(client=client, a=a, b=_h(b.json()["key"]),
                  params={"name": "toy", "number": "1", "job_id": fr.json()["job_id"],
                          "request_id": fr.json()["request_id"], "key_id": spare_key["id"],
                          "webhook_id": hook.json()["id"]},
                  a_dataset_uri=uri)
        w.a_ids = {ds["id"], ds["sha256"], model["id"], version.json()["sha256"], version.json()["score_job_id"],
                   fr.json()["job_id"], fr.json()["request_id"], hook.json()["id"], head,
                   keys[0]["tenant_id"], *(k["id"] for k in keys if k["tenant_id"] == keys[0]["tenant_id"])}
        yield w


def _routes() -> list[tuple[str, str, Any]]:
    """(method, path, route) of every route, through included routers (FastAPI ≥0.16x includes them lazily)."""
    app = create_app()
    try:
        from fastapi.routing import iter_route_contexts
    except ImportError:  # older FastAPI: app.routes is already flat
        flat = [(r.path, getattr(r, "methods", None), r) for r in app.routes]
    else:
        flat = [(c.path, c.methods, c.original_route) for c in iter_route_contexts(app.routes)]
    out = []
    for path, methods, route in flat:
        if not methods:  # a mounted app (e.g. /metrics): public or a failure
            out.append(("GET", path, route))
            continue
        for method in sorted(set(methods) - {"HEAD"}):
            out.append((method, path, route))
    return out


def _request(w: World, method: str, path: str, headers: dict[str, str]) -> Any:
    """Call one route with path parameters and a body that name A's objects."""
    url = re.sub(r"\{(\w+)(?::\w+)?\}", lambda m: w.params.get(m.group(1), str(uuid.uuid4())), path)
    kw: dict[str, Any] = {}
    if (method, path) == ("POST", "/datasets"):
        # by reference to A's stored dataset file: nobody may re-register a file Lethe manages
        kw["json"] = {"name": "stolen", "uri": w.a_dataset_uri}
    elif (method, path) == ("POST", "/models"):
        kw["json"] = {"name": "m2", "dataset": "toy", "architecture": {"kind": "mlp", "hidden": [4]}}
    elif (method, path) == ("POST", "/models/{name}/versions"):
        kw["files"] = {"weights": ("w.safetensors", safetensors_bytes(), "application/octet-stream")}
    elif (method, path) == ("POST", "/forget"):
        kw["json"] = {"model": "toy", "point_ids": ["p0003"], "reason": "matrix", "requested_by": "test"}
    elif (method, path) == ("POST", "/keys"):
        kw["json"] = {"scopes": ["read"], "tenant": "default"}  # tenant A's name
    elif (method, path) == ("POST", "/webhooks"):
        kw["json"] = {"url": "http://127.0.0.1:9/hook", "events": ["request.completed"]}
    elif (method, path) == ("POST", "/models/{name}/versions/{number}/influence"):
        kw["json"] = {"method": "gradnorm"}
    elif method in ("POST", "PUT", "PATCH"):
        kw["json"] = {}
    return w.client.request(method, url, headers=headers, **kw)


# Routes without path parameters whose body names A's objects: B's expected answers.
B_BODY_EXPECT = {("POST", "/datasets"): {422}, ("POST", "/models"): {404}, ("POST", "/forget"): {404},
                 ("POST", "/keys"): {403}}


def test_every_route_every_scope_every_tenant(world: World) -> None:
    w = world
    failures: list[str] = []
    routes = _routes()
    assert len(routes) > 20, routes
    checked = 0
    for method, path, route in routes:
        if (method, path) in PUBLIC:
            continue
        if not isinstance(route, APIRoute):
            failures.append(f"{method} {path}: {type(route).__name__}, not an API route nor in the public allow-list")
            continue
        sufficient, either = required(method, path)
        sufficient = sufficient | {"admin"}  # admin holds every scope
        has_params = "{" in path
        opendsr = path.startswith("/opendsr")  # OpenDSR's own error shape
        # Tenant B, every scope: A's objects are 404; its answer carries none of A's identifiers.
        r = _request(w, method, path, w.b)
        if has_params:
            if r.status_code != 404:
                failures.append(f"B {method} {path}: {r.status_code}, expected 404: {r.text[:200]}")
        elif (method, path) in B_BODY_EXPECT:
            if r.status_code not in B_BODY_EXPECT[(method, path)]:
                failures.append(f"B {method} {path}: {r.status_code}, expected {B_BODY_EXPECT[(method, path)]}")
        elif r.status_code in (401, 403) or r.status_code >= 500:
            failures.append(f"B {method} {path}: {r.status_code}: {r.text[:200]}")
        leaked = sorted(i for i in w.a_ids if i in r.text and i not in str(r.request.url))  # echoes are no leak
        if leaked:
            failures.append(f"B {method} {path}: LEAK of A's {leaked}")
        # No key at all: 401 with WWW-Authenticate.
        r = _request(w, method, path, {})
        if r.status_code != 401 or (not opendsr and r.json().get("type") != PROBLEM_BASE + "unauthorized"):
            failures.append(f"no key {method} {path}: {r.status_code}, expected 401: {r.text[:200]}")
        # Each single scope of tenant A.
        for scope in SCOPES:
            r = _request(w, method, path, w.a[scope])
            if scope in either:
                ok = r.status_code < 500 and r.status_code != 401
            elif scope in sufficient:
                ok = r.status_code < 500 and r.status_code not in (401, 403)
                if method == "GET" and path not in GET_NOT_YET and not opendsr:
                    ok = ok and r.status_code == 200
            else:
                ok = r.status_code == 403 and (opendsr or r.json().get("type") == PROBLEM_BASE + "forbidden")
            if not ok:
                want = "403" if scope not in sufficient | either else "allowed"
                failures.append(f"A[{scope}] {method} {path}: {r.status_code}, expected {want}: {r.text[:200]}")
        checked += 1
    assert not failures, "\n".join(failures)
    assert checked >= 20
    # After everything, B still sees none of A's objects in any list.
    for path in ("/datasets", "/models", "/jobs", "/requests", "/ledger", "/keys", "/webhooks", "/webhooks/deliveries"):
        body = w.client.get(path, headers=w.b).json()
        assert not any(i in str(body) for i in w.a_ids), (path, body)


def test_keys_are_stored_hashed_and_foreign_tenants_unreachable(world: World) -> None:
    from app.db import session_scope
    from app.tenants.tables import ApiKey

    key = world.a["read"]["Authorization"].split()[1]
    with session_scope(readonly=True) as s:
        rows = list(s.scalars(select(ApiKey)))
        row = next(r for r in rows if r.key_hash == hashlib.sha256(key.encode()).hexdigest())
        for r in rows:
            assert key not in (r.key_hash, r.prefix, r.name or "")
    assert row.prefix == key[:12] and len(row.key_hash) == 64
    # B cannot mint a key into A's tenant, nor create a tenant: one answer for both (tenants cannot be enumerated)
    r = world.client.post("/keys", headers=world.b, json={"scopes": ["admin"], "tenant": "default"})
    unknown = world.client.post("/keys", headers=world.b, json={"scopes": ["admin"], "tenant": "nobody-yet"})
    assert r.status_code == unknown.status_code == 403 and r.json() == {
        **unknown.json(), "detail": unknown.json()["detail"].replace("nobody-yet", "default")}


def test_cli_keys_create_list_revoke(lethe_env: dict[str, str], admin_headers: dict[str, str]) -> None:
    from typer.testing import CliRunner

    from app.cli import cli

    runner = CliRunner()
    made = runner.invoke(cli, ["keys", "create", "--tenant", "acme", "--scopes", "read,models"])
    assert made.exit_code == 0, made.output
    key = made.output.strip().splitlines()[-1]
    assert re.fullmatch(r"lethe_[A-Za-z0-9_-]{20,}", key), made.output
    bad = runner.invoke(cli, ["keys", "create", "--tenant", "acme", "--scopes", "read,root"])
    assert bad.exit_code == 2 and "scopes" in bad.output
    with TestClient(create_app()) as client:
        h = _h(key)
        assert client.get("/datasets", headers=h).status_code == 200
        assert client.post("/datasets", headers=h, data={"name": "acme-ds"},
                           files={"file": ("d.npz", npz_bytes(), "application/octet-stream")}).status_code == 201
        assert client.post("/keys", headers=h, json={"scopes": ["read"]}).status_code == 403
        # the bootstrap tenant sees nothing of acme's
        assert client.get("/datasets", headers=admin_headers).json()["total"] == 0
        listed = runner.invoke(cli, ["keys", "list", "--tenant", "acme"], env={"COLUMNS": "250"})
        assert listed.exit_code == 0 and "acme" in listed.output and key[:12] in listed.output
        assert key not in listed.output and "bootstrap" not in listed.output
        everyone = runner.invoke(cli, ["keys", "list"], env={"COLUMNS": "250"})
        assert "bootstrap" in everyone.output and "acme" in everyone.output
        from app.db import session_scope
        from app.tenants.tables import ApiKey

        with session_scope(readonly=True) as s:
            key_id = s.scalar(select(ApiKey.id).where(ApiKey.key_hash == hashlib.sha256(key.encode()).hexdigest()))
        revoked = runner.invoke(cli, ["keys", "revoke", key_id])
        assert revoked.exit_code == 0 and key_id in revoked.output
        r = client.get("/datasets", headers=h)
        assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
        missing = runner.invoke(cli, ["keys", "revoke", str(uuid.uuid4())])
        assert missing.exit_code == 3 and "no API key" in missing.output
