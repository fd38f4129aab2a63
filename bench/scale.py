"""Scale: synthetic Parquet datasets of 10 k to 1 M rows registered, validated, trained, scored with gradnorm and
one subject forgotten, through the real HTTP path and a real worker; peak RSS of each process.

    .venv/bin/python -m bench.scale [--sizes 10000 100000 1000000] [--features 16] [--lookups 3]

Starts `lethe serve --no-worker` (API + outbox relay, embedded SQLite or LETHE_DATABASE_URL) and one separate
`lethe worker` in a temporary data dir, so that each process's peak RSS (VmHWM, cumulative: the sizes run in
rising order) is its own. Per size: a Parquet file (`x` = `--features` floats, 10 points per subject, 1 % test
rows) is written to the tenant's import directory and registered by reference (the API reads its index columns
and records every point), its validation job decodes it; a linear model trains for one epoch and its gradnorm
scoring job runs (points/second from the job's timing). Then `--lookups` subjects are forgotten one request at a
time, back to back: the POST /forget latency is the free lookup (provisional rule, no pool: LETHE_REFERENCE_K=0);
then their unlearning job (imu on the forget set, audit; the requests coalesce into the lineage's queued job) runs
to completion, and the relay's erasure sweep then rewrites the Parquet file without the subjects' rows (the wait
for it is timed). Prints a table,
writes bench/results/scale.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from bench import load
from tests.support import free_port, stop, wait_until_up

KEY = "lethe_bench_scale_key"
PER_SUBJECT = 10
WRITE_ROWS = 100_000


def write_parquet(path: Path, n: int, d: int, seed: int = 0) -> None:
    """n train rows and n/100 test rows of a linearly separable 2-class task, written a slice at a time."""
    rng = np.random.default_rng(seed)
    n_test = max(200, n // 100)
    schema = pa.schema([("point_id", pa.string()), ("label", pa.int64()), ("subject_id", pa.string()),
                        ("split", pa.string()), ("x", pa.list_(pa.float32(), d))],
                       metadata={"lethe.shape": json.dumps([d])})
    path.parent.mkdir(parents=True, exist_ok=True)
    with pq.ParquetWriter(path, schema) as writer:
        for start in range(0, n + n_test, WRITE_ROWS):
            rows = np.arange(start, min(n + n_test, start + WRITE_ROWS))
            x = rng.normal(size=(len(rows), d)).astype(np.float32)
            train = rows < n
            writer.write_table(pa.table({
                "point_id": [f"p{i:07d}" if t else f"t{i:07d}" for i, t in zip(rows, train, strict=True)],
                "label": (x[:, 0] + 0.5 * x[:, 1] > 0).astype(np.int64),
                "subject_id": [f"s{i // PER_SUBJECT:06d}" if t else None for i, t in zip(rows, train, strict=True)],
                "split": np.where(train, "train", "test"),
                "x": pa.FixedSizeListArray.from_arrays(pa.array(x.ravel()), d),
            }, schema=schema))


def peak_rss_mib(pid: int) -> dict[str, float]:
    """The process's current and peak resident set (VmRSS, VmHWM) in MiB."""
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    return {k: round(int(fields[k].split()[0]) / 1024, 1) for k in ("VmRSS", "VmHWM")}


def wait_job(http: httpx.Client, job_id: str, timeout: float = 7200) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = http.get(f"/jobs/{job_id}").json()
        if job["status"] in ("completed", "failed", "cancelled"):
            if job["status"] != "completed":
                raise RuntimeError(f"job {job_id} ({job['kind']}) {job['status']}: {job['error']}")
            return job
        time.sleep(0.5)
    raise RuntimeError(f"job {job_id} still running after {timeout} s")


def run_size(http: httpx.Client, imports: Path, n: int, d: int, lookups: int) -> dict[str, Any]:
    name = f"scale{n}"
    began = time.perf_counter()
    write_parquet(imports / f"{name}.parquet", n, d)
    row: dict[str, Any] = {"rows": n, "write_seconds": round(time.perf_counter() - began, 2)}

    began = time.perf_counter()
    r = http.post("/datasets", json={"name": name, "uri": f"{name}.parquet"})
    assert r.status_code == 201, r.text
    row["register_seconds"] = round(time.perf_counter() - began, 2)
    validation = wait_job(http, r.json()["validation_job"])
    row["validate_seconds"] = validation["timings"].get("decoding")

    r = http.post("/models", json={
        "name": name, "dataset": name, "architecture": {"kind": "linear"},
        "recipe": {"epochs": 1, "batch_size": 1024, "lr": 0.01, "checkpoints": 0},
        "policy": {"scorer": "gradnorm", "algorithm": "imu", "reference": {"k": 0},
                   "audit": {"on_inconclusive": "accept"}}})
    assert r.status_code == 201, r.text
    trained = wait_job(http, http.post(f"/models/{name}/train").json()["job_id"])
    row["train_seconds"] = trained["timings"].get("training")
    scored = wait_job(http, trained["result"]["score_job_id"])
    seconds = scored["result"].get("seconds") or scored["timings"].get("scoring")
    wall = scored["result"].get("wall_seconds") or seconds  # sharded: shards' compute vs the job's wall time
    row["score_seconds"], row["score_wall_seconds"] = seconds, wall
    row["score_points_per_second"] = round(n / seconds) if seconds else None
    row["score_points_per_wall_second"] = round(n / wall) if wall else None
    row["score_shards"] = scored["result"].get("shards")

    latencies, job_ids, free = [], [], 0
    for k in range(lookups):  # back to back: requests to one lineage coalesce into its queued job
        subject = f"s{(k * 7919) % (n // PER_SUBJECT):06d}"
        began = time.perf_counter()
        r = http.post("/forget", json={"model": name, "subject_ids": [subject], "reason": "bench",
                                       "requested_by": "bench"})
        latencies.append((time.perf_counter() - began) * 1000)
        assert r.status_code in (200, 202), r.text
        body = r.json()
        free += len(body["free"])
        if body.get("job_id") and body["job_id"] not in job_ids:
            job_ids.append(body["job_id"])
    job_seconds = []
    for job_id in job_ids:
        job = wait_job(http, job_id)
        job_seconds.append(round(sum(v for v in job["timings"].values() if isinstance(v, int | float)), 2))
    row["forget_lookup_ms"] = {"median": round(statistics.median(latencies), 1),
                               "all": [round(v, 1) for v in latencies]}
    row["forget_job_seconds"] = job_seconds
    row["forget_points_free"] = free
    # the relay's erasure sweep (every LETHE_ERASURE_INTERVAL s) rewrites the file without the forgotten rows
    began, expected = time.perf_counter(), lookups * PER_SUBJECT
    while (erased := http.get(f"/datasets/{name}").json()["n_erased"]) < expected \
            and time.perf_counter() - began < 1800:
        time.sleep(1)
    row["n_erased"], row["erasure_wait_seconds"] = erased, round(time.perf_counter() - began, 1)
    return row


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    p.add_argument("--features", type=int, default=16)
    p.add_argument("--lookups", type=int, default=3, help="subjects forgotten per size, one request at a time")
    p.add_argument("--out", type=Path, default=Path("bench/results/scale.json"))
    args = p.parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="lethe-scale-"))
    env = os.environ | {"LETHE_DATA_DIR": str(tmp), "LETHE_BOOTSTRAP_KEY": KEY, "LETHE_DEVICE": "cpu",
                        # erasure by the relay's sweep, as deployed: with 0 each request with a free point would
                        # rewrite the file inside the request, and the lookup would time the rewrite
                        "LETHE_FREE_PROVISIONAL": "true", "LETHE_REFERENCE_K": "0", "LETHE_ERASURE_INTERVAL": "2",
                        "LETHE_RATE_LIMIT_PER_SECOND": "0"}
    subprocess.run([sys.executable, "-m", "app.cli", "migrate"], env=env, check=True, capture_output=True)
    port = free_port()
    api = subprocess.Popen([sys.executable, "-m", "app.cli", "serve", "--no-worker", "--port", str(port)], env=env,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    log = (tmp / "worker.log").open("wb")  # never a pipe nobody reads: a full pipe would stall the worker
    worker = subprocess.Popen([sys.executable, "-m", "app.cli", "worker", "--loglevel", "WARNING", "--quiet"],
                              env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    rows: list[dict[str, Any]] = []
    try:
        wait_until_up(api, url, path="/readyz")
        baseline = {"api": peak_rss_mib(api.pid), "worker": peak_rss_mib(worker.pid)}
        with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {KEY}"}, timeout=3600) as http:
            tenant = http.get("/keys").json()["items"][0]["tenant_id"]
            imports = tmp / "artifacts" / "imports" / tenant
            for n in sorted(args.sizes):
                row = run_size(http, imports, n, args.features, args.lookups)
                row["api_rss_mib"], row["worker_rss_mib"] = peak_rss_mib(api.pid), peak_rss_mib(worker.pid)
                rows.append(row)
                print(f"{n:>9,} rows: register {row['register_seconds']:7.1f} s, validate {row['validate_seconds']}"
                      f" s, score {row['score_points_per_second']} points/s, lookup median "
                      f"{row['forget_lookup_ms']['median']} ms, API peak {row['api_rss_mib']['VmHWM']} MiB, "
                      f"worker peak {row['worker_rss_mib']['VmHWM']} MiB", flush=True)
                (imports / f"scale{n}.parquet").unlink()
    finally:
        stop(api)
        stop(worker)
    header = (f"{'rows':>9} | {'register s':>10} | {'validate s':>10} | {'train s':>7} | {'score pts/s':>11} | "
              f"{'lookup ms':>9} | {'forget job s':>14} | {'API peak MiB':>12} | {'worker peak MiB':>15}")
    print("\n" + header + "\n" + "-" * len(header))
    for r in rows:
        print(f"{r['rows']:>9,} | {r['register_seconds']:>10} | {r['validate_seconds']:>10} | "
              f"{r['train_seconds']:>7} | {r['score_points_per_second']!s:>11} | "
              f"{r['forget_lookup_ms']['median']:>9} | "
              f"{','.join(map(str, r['forget_job_seconds'])):>14} | {r['api_rss_mib']['VmHWM']:>12} | "
              f"{r['worker_rss_mib']['VmHWM']:>15}")
    return load.save({"rows": rows, "baseline_rss_mib": baseline, "features": args.features,
                      "note": "peak RSS is VmHWM, cumulative over the sizes (run in rising order); it includes each "
                              "process's imports (torch in the worker)"}, args.out)


if __name__ == "__main__":
    main()
