"""A real Prometheus scrapes `lethe serve` while a worker runs a forget; every dashboard panel then returns data.

Prometheus comes from the project's own scripts/install-prometheus.sh (Debian's package); the test skips only
when no binary exists after it ran. The stack has the shape of docker-compose.yml: `lethe serve --no-worker`
(API + outbox relay), a separate `lethe worker`, and a Prometheus whose config is docker/prometheus.yml with
its targets pointed at localhost and a 1 s scrape interval. Embedded variant: SQLite ledger and broker;
production variant: Postgres ledger and Redis broker.
"""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.conftest import BOOTSTRAP
from tests.factories import npz_bytes
from tests.support import free_port, stop

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "docker" / "grafana" / "dashboards" / "unlearning-cost.json"
REDIS = os.environ.get("LETHE_TEST_REDIS", "redis://127.0.0.1:6379")


def prometheus_binary() -> str | None:
    """Run the install script (quick when installed), then look for the binary."""
    script = ROOT / "scripts" / "install-prometheus.sh"
    done = subprocess.run(["bash", str(script)], capture_output=True, text=True, timeout=900)
    found = done.stdout.strip().splitlines()[-1] if done.returncode == 0 and done.stdout.strip() else None
    if found and Path(found).is_file():
        return found
    print(f"install-prometheus.sh exited {done.returncode}: {done.stderr.strip()}")
    return shutil.which("prometheus")


def wait_for(what: str, check: Callable[[], Any], timeout: float, every: float = 0.5) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        try:
            result = check()
            if result:
                return result
        except (httpx.HTTPError, KeyError, ValueError):
            pass
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(every)


def prometheus_config(port: int, prom_port: int) -> dict[str, Any]:
    """docker/prometheus.yml with every target on localhost and a 1 s scrape interval."""
    cfg = yaml.safe_load((ROOT / "docker" / "prometheus.yml").read_text())
    cfg["global"].update(scrape_interval="1s", evaluation_interval="1s", scrape_timeout="1s")
    rewrite = {"api:8000": f"127.0.0.1:{port}", "localhost:9090": f"127.0.0.1:{prom_port}"}
    for job in cfg["scrape_configs"]:
        for static in job["static_configs"]:
            assert all(t in rewrite for t in static["targets"]), static["targets"]
            static["targets"] = [rewrite[t] for t in static["targets"]]
    return cfg


@pytest.fixture
def stack(lethe_env: dict[str, str], tmp_path: Path) -> Iterator[tuple[str, str]]:
    """(Lethe URL, Prometheus URL): API, worker and Prometheus as subprocesses, all stopped afterwards."""
    binary = prometheus_binary()
    if binary is None:
        pytest.skip("Prometheus is not installed and scripts/install-prometheus.sh could not install it "
                    "(needs apt-get and root or passwordless sudo)")
    env = os.environ.copy() | {"LETHE_RELAY_INTERVAL": "0.5"}
    redis_url = None
    if lethe_env["backend"] == "postgres":  # the production shape: Postgres ledger, Redis broker
        import redis

        redis_url = f"{REDIS}/{random.randint(1, 15)}"
        try:
            redis.Redis.from_url(redis_url, socket_connect_timeout=2).ping()
        except Exception:  # noqa: BLE001
            pytest.skip(f"Redis is not reachable at {REDIS}; production variant skipped")
        env["LETHE_BROKER_URL"] = redis_url
    port, prom_port = free_port(), free_port()
    lethe = [sys.executable, "-m", "app.cli"]
    logs = {name: (tmp_path / f"{name}.log").open("wb") for name in ("api", "worker", "prometheus")}
    procs: list[subprocess.Popen[bytes]] = []
    try:
        procs.append(subprocess.Popen([*lethe, "serve", "--no-worker", "--port", str(port)], env=env,
                                      stdout=logs["api"], stderr=subprocess.STDOUT))
        procs.append(subprocess.Popen([*lethe, "worker", "--loglevel", "WARNING"], env=env,
                                      stdout=logs["worker"], stderr=subprocess.STDOUT))
        url = f"http://127.0.0.1:{port}"
        wait_for("lethe serve /readyz", lambda: httpx.get(f"{url}/readyz", timeout=2).status_code == 200, 120)
        config = tmp_path / "prometheus.yml"
        config.write_text(yaml.safe_dump(prometheus_config(port, prom_port)))
        procs.append(subprocess.Popen([binary, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                                       f"--web.listen-address=127.0.0.1:{prom_port}", "--log.level=warn"],
                                      cwd=tmp_path, stdout=logs["prometheus"], stderr=subprocess.STDOUT))
        prom = f"http://127.0.0.1:{prom_port}"
        wait_for("Prometheus to scrape Lethe", lambda: query(prom, 'up{job="lethe"} == 1'), 60)
        yield url, prom
    finally:
        for proc in reversed(procs):
            stop(proc)
        for fh in logs.values():
            fh.close()
        if redis_url:
            import redis

            redis.Redis.from_url(redis_url).flushdb()
        for name in ("api", "worker", "prometheus"):
            text = (tmp_path / f"{name}.log").read_text(errors="replace")[-3000:]
            if text.strip():
                print(f"--- {name} log (tail) ---\n{text}")


def query(prom: str, expr: str) -> list[dict[str, Any]]:
    """An instant query through Prometheus's HTTP API; the result vector."""
    resp = httpx.get(f"{prom}/api/v1/query", params={"query": expr}, timeout=10)
    body = resp.json()
    assert resp.status_code == 200 and body["status"] == "success", f"{expr}: {body}"
    return body["data"]["result"]


def finished(http: httpx.Client, job_id: str) -> dict[str, Any] | None:
    job = http.get(f"/jobs/{job_id}").json()
    return job if job["status"] in ("completed", "failed", "cancelled") else None


def test_every_dashboard_panel_returns_data(stack: tuple[str, str]) -> None:
    url, prom = stack
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {BOOTSTRAP}"}, timeout=30) as http:
        assert http.post("/datasets", data={"name": "toy"},
                         files={"file": ("d.npz", npz_bytes(n=300, n_test=100))}).status_code == 201
        assert http.post("/models", json={
            "name": "toy", "dataset": "toy", "architecture": {"kind": "mlp", "hidden": [16]},
            "recipe": {"epochs": 5, "batch_size": 32, "lr": 0.01},
            "policy": {"algorithm": "finetune", "q_forget": 0.5, "q_retain": 0.2}}).status_code == 201
        train = http.post("/models/toy/train").json()
        job = wait_for("training through the worker", lambda: finished(http, train["job_id"]), 300)
        assert job["status"] == "completed", job["error"]
        wait_for("scores of toy@1", lambda: http.get("/models/toy/versions/1/influence").json()["status"]
                 == "completed", 300)
        ids = [i["point_id"] for i in http.get("/models/toy/versions/1/influence", params={"limit": 1000}).json()
               ["items"]]
        # the demo forget: 3 free points, and 20 pending between the free threshold and the prune bound
        resp = http.post("/forget", json={"model": "toy", "point_ids": ids[:3] + ids[40:60], "reason": "gdpr",
                                          "requested_by": "dpo"})
        assert resp.status_code == 202, resp.text
        body = resp.json()
        assert len(body["free"]) == 3 and body["job_id"]
        job = wait_for("the unlearning job", lambda: finished(http, body["job_id"]), 300)
        assert job["status"] == "completed", job["error"]
        wait_for("scores of toy@2", lambda: http.get("/models/toy/versions/2/influence").json()["status"]
                 == "completed", 300)
    # Prometheus has scraped the final state
    wait_for("the completed job in Prometheus",
             lambda: query(prom, 'lethe_jobs_total{kind="unlearn",status="completed"} == 1'), 30)
    wait_for("the new version's scores in Prometheus",
             lambda: query(prom, 'lethe_jobs_total{kind="score",status="completed"} == 2'), 30)

    dashboard = json.loads(DASHBOARD.read_text())
    empty, checked = [], 0
    for panel in dashboard["panels"]:
        for target in panel["targets"]:
            result = query(prom, target["expr"])
            values = [float(r["value"][1]) for r in result]
            checked += 1
            print(f"{panel['title']} [{target['refId']}]: {[round(v, 4) for v in values]}")
            if not any(math.isfinite(v) for v in values):
                empty.append(f"{panel['title']} [{target['refId']}]: {target['expr']} -> {values}")
    assert checked >= len(dashboard["panels"])
    assert not empty, "panels without data:\n" + "\n".join(empty)

    # and the numbers are the flow's
    def one(expr: str) -> float:
        result = query(prom, expr)
        assert len(result) == 1, (expr, result)
        return float(result[0]["value"][1])

    assert one('sum(lethe_forget_points_total{disposition="free"})') == 3
    assert one('sum(lethe_forget_points_total{disposition=~"pruned|unlearned"})') == 20
    assert one('sum(lethe_saved_seconds_total{source="pruning"})') > 0
    assert one("sum(lethe_queue_depth)") == 0
    assert 0 <= one('lethe_mia_auc{stat="max"}') <= 1
