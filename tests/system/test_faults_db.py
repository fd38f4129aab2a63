"""Database faults: Postgres cut off behind a TCP proxy → /readyz and requests answer 503 with a clear error
and Retry-After, promptly (never a 500, never a hang); restored → the same process serves again unaided."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import BOOTSTRAP
from tests.factories import npz_bytes, safetensors_bytes
from tests.support import PROBLEM_BASE, check_problem, wait_until
from tests.system.faults import Server, TcpProxy, subprocess_env, tail

pytestmark = pytest.mark.slow
H = {"Authorization": f"Bearer {BOOTSTRAP}"}
FORGET = {"model": "toy", "point_ids": ["p0001", "p0002"], "reason": "gdpr", "requested_by": "dpo"}
# An answer that waited on the lost database would hang; one that gives up (connect_timeout 5 s) comes well within
# this. Only a hang fails the test (httpx ReadTimeout), not a slow machine: no assertion on how long answers take.
ANSWERS_WITHIN = 30.0


@pytest.fixture
def proxied(lethe_env: dict[str, str], tmp_path: Path) -> Iterator[tuple[Server, TcpProxy]]:
    from sqlalchemy.engine import make_url

    if lethe_env["backend"] != "postgres":
        pytest.skip("the proxy stands in front of Postgres")
    proxy = TcpProxy(("127.0.0.1", 5432)).start()
    url = make_url(lethe_env["LETHE_DATABASE_URL"]).set(host="127.0.0.1", port=proxy.port)
    server = Server(subprocess_env(LETHE_DATABASE_URL=url.render_as_string(hide_password=False),
                                   LETHE_DB_STATEMENT_TIMEOUT="3"), tmp_path / "serve.log")
    try:
        yield server.start(), proxy
    finally:
        server.stop()
        proxy.cut()


@pytest.mark.parametrize("lethe_env", ["postgres"], indirect=True)
def test_database_cut_answers_503_and_recovers_unaided(proxied: tuple[Server, TcpProxy]) -> None:
    server, proxy = proxied
    with httpx.Client(base_url=server.url, headers=H, timeout=ANSWERS_WITHIN) as http:
        assert http.post("/datasets", data={"name": "toy"}, files={"file": ("d.npz", npz_bytes())}).status_code == 201
        assert http.post("/models", json={"name": "toy", "dataset": "toy",
                                          "architecture": {"kind": "mlp", "hidden": [16]}}).status_code == 201
        assert http.post("/models/toy/versions", files={"weights": ("w", safetensors_bytes())}).status_code == 201
        assert http.get("/readyz").status_code == 200
        assert proxy.open_connections > 0  # the app's pool really goes through the proxy

        proxy.cut()
        for round_ in range(2):  # the first round meets dead pooled connections, the second an empty pool
            ready = http.get("/readyz")
            assert ready.status_code == 503, ready.text
            assert ready.json()["checks"]["database"].startswith("down"), ready.json()
            for method, path, kw in (("GET", "/models", {}), ("GET", "/jobs", {}), ("GET", "/models/toy", {}),
                                     ("POST", "/forget", {"json": FORGET})):
                resp = http.request(method, path, **kw)
                assert resp.status_code == 503, (round_, method, path, resp.status_code, resp.text,
                                                  tail(server.log))
                assert check_problem(resp)["type"] in (PROBLEM_BASE + "database-unavailable",
                                                       PROBLEM_BASE + "database-busy"), resp.text
                assert int(resp.headers["Retry-After"]) > 0
            # the OpenDSR routes answer in their specification's error shape, also while the database is away
            dsr = http.get("/opendsr/v1/opendsr_requests/0b6c2b9e-6f3c-4a8e-9d55-1d2f0a7c3e11")
            assert dsr.status_code == 503, (dsr.status_code, dsr.text)
            assert dsr.json()["error"]["code"] == 503 and int(dsr.headers["Retry-After"]) > 0, dsr.text
            assert dsr.json()["error"]["errors"][0]["reason"] in ("DatabaseUnavailable", "DatabaseBusy")
        assert http.get("/healthz").status_code == 200  # liveness does not depend on the database

        proxy.restore()
        wait_until(lambda: http.get("/readyz").status_code == 200, 15, "/readyz to recover")
        assert http.get("/models").json()["total"] == 1
        accepted = http.post("/forget", json=FORGET)
        assert accepted.status_code in (200, 202), accepted.text
        assert http.get(f"/requests/{accepted.json()['request_id']}").status_code == 200
        assert http.get("/ledger/verify").json()["ok"]
        # nothing was recorded while the database was away: one request, from after the restore
        assert http.get("/requests").json()["total"] == 1


@pytest.mark.parametrize("lethe_env", ["postgres"], indirect=True)
def test_database_frozen_answers_503_not_a_hang(proxied: tuple[Server, TcpProxy]) -> None:
    """A stalled database (connections open, no answers: a paused host, a black-holed network) must not hang
    requests: pooled connections are pinged and statements watched under LETHE_DB_STATEMENT_TIMEOUT."""
    server, proxy = proxied
    with httpx.Client(base_url=server.url, headers=H, timeout=ANSWERS_WITHIN) as http:
        assert http.post("/models", json={"name": "toy", "dataset": "nope"}).status_code in (404, 422)
        assert http.get("/readyz").status_code == 200
        proxy.freeze()
        for method, path, kw in (("GET", "/readyz", {}), ("GET", "/models", {}), ("POST", "/forget", {"json": FORGET}),
                                 ("GET", "/jobs", {})):
            resp = http.request(method, path, **kw)
            assert resp.status_code == 503, (method, path, resp.status_code, resp.text)
        assert http.get("/healthz").status_code == 200
        proxy.thaw()
        wait_until(lambda: http.get("/readyz").status_code == 200, 20, "/readyz to recover after the stall")
        assert http.get("/models").status_code == 200
