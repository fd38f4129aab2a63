"""Nothing lost, nothing done twice: concurrent duplicates against a real server process."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import Awaitable, Callable, Iterator

import httpx
import pytest

from tests.conftest import BOOTSTRAP
from tests.factories import npz_bytes, safetensors_bytes
from tests.support import free_port, stop, wait_until_up

pytestmark = pytest.mark.slow


@pytest.fixture
def server(lethe_env: dict[str, str]) -> Iterator[str]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "app.cli", "serve", "--no-worker", "--port", str(port)],
                            env=os.environ.copy(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_up(proc, url)
        yield url
    finally:
        stop(proc)


H = {"Authorization": f"Bearer {BOOTSTRAP}"}


def _toy(server: str, *, version: bool) -> None:
    """Dataset `toy` and model `toy` (and its first version) through the API."""
    with httpx.Client(base_url=server, headers=H, timeout=60) as http:
        assert http.post("/datasets", data={"name": "toy"}, files={"file": ("d.npz", npz_bytes())}).status_code == 201
        assert http.post("/models", json={"name": "toy", "dataset": "toy",
                                          "architecture": {"kind": "mlp", "hidden": [16]}}).status_code == 201
        if version:
            assert http.post("/models/toy/versions", files={"weights": ("w", safetensors_bytes())}).status_code == 201


def _storm(server: str, key: str, n: int,
           send: Callable[[httpx.AsyncClient], Awaitable[httpx.Response]]) -> list[httpx.Response]:
    """`n` concurrent requests under one Idempotency-Key, over at most 64 connections."""
    async def storm() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=server, headers=H | {"Idempotency-Key": key}, timeout=120,
                                     limits=httpx.Limits(max_connections=64)) as client:
            return await asyncio.gather(*[send(client) for _ in range(n)])

    return asyncio.run(storm())


def test_500_concurrent_duplicates_make_one_request_and_one_job(server: str) -> None:
    _toy(server, version=True)
    body = {"model": "toy", "point_ids": ["p0001", "p0002"], "reason": "r", "requested_by": "x"}
    responses = _storm(server, "dup-1", 500, lambda client: client.post("/forget", json=body))
    assert {r.status_code for r in responses} == {202}, {r.text for r in responses if r.status_code != 202}
    assert len({r.json()["request_id"] for r in responses}) == 1
    assert len({r.json()["job_id"] for r in responses}) == 1
    with httpx.Client(base_url=server, headers=H, timeout=60) as http:
        assert http.get("/requests").json()["total"] == 1
        assert http.get("/jobs", params={"kind": "unlearn"}).json()["total"] == 1
        received = http.get("/ledger", params={"event": "request.received"}).json()["total"]
        assert received == 1 and http.get("/ledger/verify").json()["ok"]
        clash = http.post("/forget", headers={"Idempotency-Key": "dup-1"}, json=body | {"reason": "other"})
        assert clash.status_code == 409


def test_concurrent_duplicates_of_other_posts_make_one_job(server: str) -> None:
    """app.idempotency: 200 concurrent POST /train with one key → one job; every answer is the first one."""
    _toy(server, version=False)
    responses = _storm(server, "train-dup", 200, lambda client: client.post("/models/toy/train"))
    assert {r.status_code for r in responses} == {202}, {r.text for r in responses if r.status_code != 202}
    assert len({r.json()["job_id"] for r in responses}) == 1
    assert sum(r.headers.get("idempotent-replayed") == "true" for r in responses) == 199
    with httpx.Client(base_url=server, headers=H, timeout=60) as http:
        assert http.get("/jobs", params={"kind": "train"}).json()["total"] == 1
