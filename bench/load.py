"""Load: all-free POST /forget and GET /jobs polling against GET /healthz, at rising concurrency, in one run.

    .venv/bin/python -m bench.load [--points 20000] [--levels 1 8 32] [--seconds 10]

Starts its own `lethe serve --no-worker` (embedded SQLite, or LETHE_DATABASE_URL if set) in a temporary data
dir configured for the load: a synthetic dataset of `--points` points with a free budget and rate limit that
allow it, and a version whose every score is below the free threshold (so every POST /forget is answered
at once, no job). Each level runs `concurrency` httpx async clients in a closed loop for `--seconds` per
endpoint. Prints p50/p99/throughput per endpoint and level and the ratio of forget p99 to healthz p99
(target ≤ 3), writes bench/results/load.json.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from tests.support import free_port, stop, wait_until_up

KEY = "lethe_bench_load_key"


def dataset(n: int, d: int = 16, seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n + 200, d)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int64)
    buf = io.BytesIO()
    np.savez(buf, x=x[:n], y=y[:n], ids=np.array([f"p{i:07d}" for i in range(n)]), x_test=x[n:], y_test=y[n:])
    return buf.getvalue()


def setup(url: str, n: int) -> None:
    """A dataset, a model and a trained+scored version, via the API and an inline pipeline run."""
    h = {"Authorization": f"Bearer {KEY}"}
    with httpx.Client(base_url=url, headers=h, timeout=600) as http:
        r = http.post("/datasets", data={"name": "load"}, files={"file": ("d.npz", dataset(n))})
        assert r.status_code == 201, r.text
        r = http.post("/models", json={"name": "load", "dataset": "load", "architecture": {"kind": "linear"},
                                       "recipe": {"epochs": 1, "checkpoints": 0}})
        assert r.status_code == 201, r.text
        job = http.post("/models/load/train").json()["job_id"]
        while http.get(f"/jobs/{job}").json()["status"] not in ("completed", "failed"):
            time.sleep(0.5)
        while http.get("/models/load/versions/1/influence", params={"limit": 1}).json()["status"] != "completed":
            time.sleep(0.5)


async def closed_loop(url: str, concurrency: int, seconds: float, make: Any) -> dict[str, Any]:
    latencies: list[float] = []
    errors = 0
    stop_at = time.perf_counter() + seconds
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, headers={"Authorization": f"Bearer {KEY}"}, timeout=60,
                                 limits=limits) as client:
        async def one(worker: int) -> None:
            nonlocal errors
            k = 0
            while time.perf_counter() < stop_at:
                method, path, body = make(worker, k)
                k += 1
                began = time.perf_counter()
                r = await client.request(method, path, json=body)
                latencies.append(time.perf_counter() - began)
                errors += r.status_code >= 400
        began = time.perf_counter()
        await asyncio.gather(*(one(w) for w in range(concurrency)))
        wall = time.perf_counter() - began
    lat = np.array(latencies) * 1000
    return {"requests": len(lat), "errors": errors, "rps": len(lat) / wall,
            "p50_ms": float(np.percentile(lat, 50)), "p99_ms": float(np.percentile(lat, 99))}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--points", type=int, default=50_000, help="enough for every forget to take unused ids")
    p.add_argument("--levels", type=int, nargs="+", default=[1, 8, 32])
    p.add_argument("--seconds", type=float, default=8.0)
    p.add_argument("--out", type=Path, default=Path("bench/results/load.json"))
    args = p.parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="lethe-load-"))
    port = free_port()
    env = os.environ | {"LETHE_DATA_DIR": str(tmp), "LETHE_BOOTSTRAP_KEY": KEY, "LETHE_DEVICE": "cpu",
                        # the request path under load, on the provisional rule (no pool to fit: a measured free
                        # answer adds memory-mapped pool reads and one group estimate, a few ms)
                        "LETHE_FREE_PROVISIONAL": "true", "LETHE_REFERENCE_K": "0",
                        "LETHE_FREE_QUANTILE": "1.0", "LETHE_FREE_BUDGET": "1.0",
                        "LETHE_RATE_LIMIT_PER_SECOND": "0"}
    subprocess.run([sys.executable, "-m", "app.cli", "migrate"], env=env, check=True, capture_output=True)
    proc = subprocess.Popen([sys.executable, "-m", "app.cli", "serve", "--port", str(port)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_up(proc, url, path="/readyz")
        setup(url, args.points)
        # all-free forgets never repeat a point: each request takes the next 2 unused ids of its worker
        counter = {"next": 0}

        def forget(_: int, __: int) -> tuple[str, str, dict[str, Any]]:
            i = counter["next"]
            counter["next"] += 2
            return "POST", "/forget", {"model": "load", "point_ids": [f"p{i:07d}", f"p{i + 1:07d}"],
                                       "reason": "load", "requested_by": "bench"}

        rows = []
        for level in args.levels:
            for name, make in (("healthz", lambda w, k: ("GET", "/healthz", None)),
                               ("forget (all free)", forget),
                               ("jobs (polling)", lambda w, k: ("GET", "/jobs?limit=20", None))):
                r = asyncio.run(closed_loop(url, level, args.seconds, make))
                rows.append({"endpoint": name, "concurrency": level, **r})
                print(f"{name:18s} c={level:3d} {r['rps']:8.1f} req/s p50 {r['p50_ms']:7.1f} ms "
                      f"p99 {r['p99_ms']:7.1f} ms errors {r['errors']}", flush=True)
    finally:
        stop(proc)
    ratios = {}
    for level in args.levels:
        by = {r["endpoint"]: r for r in rows if r["concurrency"] == level}
        if "forget (all free)" in by:
            ratios[level] = by["forget (all free)"]["p99_ms"] / by["healthz"]["p99_ms"]
    print("\nforget p99 / healthz p99 (target <= 3):",
          ", ".join(f"c={k}: {v:.1f}x {'PASS' if v <= 3 else 'MISS'}" for k, v in ratios.items()))
    return save({"rows": rows, "p99_ratio_forget_to_healthz": ratios,
                 "errors": sum(r["errors"] for r in rows), "points": args.points}, args.out)


def save(result: dict[str, Any], out: Path) -> dict[str, Any]:
    """A service benchmark's result with the database and machine it ran on, written as JSON to `out`."""
    result = result | {"database": "postgres" if "LETHE_DATABASE_URL" in os.environ else "sqlite",
                       "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count()}}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    print(f"wrote {out}")
    return result


if __name__ == "__main__":
    main()
