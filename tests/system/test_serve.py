"""`lethe serve` as a subprocess, `lethe demo`, then HTTP as a governance system would drive it."""

from __future__ import annotations

import os
import random
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from tests.support import free_port, stop, wait_until_up
from workers.engine.evidence import load_pool

pytestmark = pytest.mark.slow


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[str, dict[str, str], dict[str, str]]]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LETHE_")}
    env |= {"LETHE_DATA_DIR": str(tmp_path / "var"), "LETHE_DEVICE": "cpu", "LETHE_RELAY_INTERVAL": "0.5"}
    port = free_port()
    lethe = [sys.executable, "-m", "app.cli"]
    # the demo trains, scores and fits a 16-model reference pool: ~90 s on two quiet cores
    demo = subprocess.run([*lethe, "demo"], env=env, capture_output=True, text=True, timeout=900)
    assert demo.returncode == 0, demo.stderr
    assert "demo ready: digits@1" in demo.stdout and "reference pool:" in demo.stdout
    again = subprocess.run([*lethe, "demo"], env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and "training" not in again.stdout  # idempotent
    proc = subprocess.Popen([*lethe, "serve", "--port", str(port)], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_up(proc, url, path="/readyz")
        key = (tmp_path / "var" / "admin.key").read_text().strip()
        yield url, {"Authorization": f"Bearer {key}"}, env
    finally:
        stop(proc)


def test_governance_system_forgets_50_points(server: tuple[str, dict[str, str], dict[str, str]]) -> None:
    url, h, env = server
    with httpx.Client(base_url=url, headers=h, timeout=30) as http:
        model = http.get("/models/digits").json()
        assert model["current"] == 1
        listing = http.get("/models/digits/versions/1/influence", params={"limit": 1000}).json()
        ids = [i["point_id"] for i in listing["items"]]
        while listing["next"]:
            listing = http.get("/models/digits/versions/1/influence",
                               params={"limit": 1000, "cursor": listing["next"]}).json()
            ids += [i["point_id"] for i in listing["items"]]
        assert len(ids) == model["versions"][0]["n_train"]
        pick = random.Random(7).sample(ids, 50)
        resp = http.post("/forget", json={"model": "digits", "point_ids": pick, "reason": "gdpr art. 17",
                                          "requested_by": "governance-system"})
        assert resp.status_code == 202, resp.text
        body = resp.json()
        # the demo measured its reference pool: free means "in the certified set", whatever its size
        pool = model["reference"]
        assert pool["status"] == "completed" and pool["valid"], pool
        assert body["free_basis"] == "measured" and body["pool_id"] == pool["pool_id"]
        arrays = load_pool(Path(env["LETHE_DATA_DIR"]) / "artifacts" / "pools" / pool["pool_id"])
        certified = {f"d{int(r):04d}" for r in np.asarray(arrays.rows)[np.asarray(arrays.certified_by) >= 0]}
        assert len(certified) == pool["n_certified"] and set(body["free"]) <= certified
        assert set(body["free"]) | set(body["pending"]) == set(pick)
        assert resp.headers["location"] == f"/jobs/{body['job_id']}"
        deadline = time.monotonic() + 300
        while (job := http.get(f"/jobs/{body['job_id']}").json())["status"] not in ("completed", "failed"):
            assert time.monotonic() < deadline, job
            time.sleep(0.5)
        assert job["status"] == "completed", job["error"]
        assert http.get("/models/digits").json()["ref"] == "digits@2"
        req = http.get(f"/requests/{body['request_id']}").json()
        disp = {p["point_id"]: p["disposition"] for p in req["points"]}
        assert all(disp[p] == "free" for p in body["free"])
        assert {disp[p] for p in body["pending"]} <= {"unlearned", "pruned"}
        assert req["status"] == "completed"
        assert http.get("/ledger/verify").json()["ok"]
        assert http.get("/models/digits/versions/1/weights").status_code == 410
        # the next job trains without the forgotten points
        train = http.post("/models/digits/train", json={"promote": False}).json()
        while (tj := http.get(f"/jobs/{train['job_id']}").json())["status"] not in ("completed", "failed"):
            time.sleep(0.5)
        assert tj["status"] == "completed", tj["error"]
        v3 = http.get(f"/models/digits/versions/{tj['result']['version']}").json()
        assert v3["n_train"] == len(ids) - 50
        assert http.get("/models/digits").json()["current"] == 2  # promote=false
    _cli_drives_the_same_server(url, h, env, sorted(set(ids) - set(pick)))


def _cli_drives_the_same_server(url: str, h: dict[str, str], env: dict[str, str], unforgotten: list[str]) -> None:
    """`lethe forget --wait` and `lethe status` against the served API: digits@4 (v3 was trained unpromoted)."""
    cli = subprocess.run([sys.executable, "-m", "app.cli", "forget", "digits", "--points",
                          ",".join(np.random.default_rng(3).choice(unforgotten, 5, replace=False)),
                          "--wait", "--url", url, "--key", h["Authorization"].split()[1]],
                         env=env, capture_output=True, text=True, timeout=300)
    assert cli.returncode == 0, cli.stdout + cli.stderr
    assert "request" in cli.stdout and "job completed digits@4" in cli.stdout  # v3 was trained unpromoted
    # registering digits@4 queued its scoring: let the worker drain the queue, then the status says so
    with httpx.Client(base_url=url, headers=h, timeout=30) as http:
        deadline = time.monotonic() + 300
        while http.get("/jobs", params={"status": "queued"}).json()["total"] or \
                http.get("/jobs", params={"status": "running"}).json()["total"]:
            assert time.monotonic() < deadline, "the queue never drained"
            time.sleep(0.5)
    status = subprocess.run([sys.executable, "-m", "app.cli", "status", "--url", url,
                             "--key", h["Authorization"].split()[1]], env=env, capture_output=True, text=True,
                            timeout=120)
    assert status.returncode == 0, status.stdout + status.stderr
    assert "digits@4" in status.stdout and "0 queued" in status.stdout and "verified" in status.stdout
