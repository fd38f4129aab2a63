"""Memory bounded by the batch: every job on a Parquet dataset (training, the reference pool, the three scorers,
calibration, each unlearning algorithm with its audit and a retrain reference) reads the memory-mapped feature
cache a batch of rows at a time; no path takes all of a dataset's features into memory.

The cache reader is wrapped: every read of the features records how many rows it took, and asking for the whole
array at once (np.asarray, np.array, a tensor made of it) fails the job. Jobs run through HTTP and the worker's own
code (runner.run_inline, what a worker's task calls), in this process so the wrapper sees every read."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

from tests.factories import drain, upload_parquet

N, N_TEST, LARGEST_BATCH = 3000, 400, 1024


class Watched:
    """A memory-mapped cache array that records the rows of every read; it cannot be taken whole."""

    def __init__(self, array: np.ndarray, reads: list[int]) -> None:
        self.array, self.reads = array, reads
        self.shape, self.dtype, self.ndim = array.shape, array.dtype, array.ndim

    def __len__(self) -> int:
        return len(self.array)

    def __getitem__(self, key: Any) -> np.ndarray:
        out = np.asarray(self.array[key])
        self.reads.append(len(out) if out.ndim == self.ndim else 1)
        return out

    def __array__(self, *_: Any, **__: Any) -> np.ndarray:
        raise AssertionError("the whole feature array was taken into memory")


@pytest.fixture
def watched(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[int]]:
    from workers.engine import parquet

    reads: list[int] = []
    real = parquet.load_cache

    def load_cache(path: Any) -> dict[str, Any]:
        arrays = real(path)
        assert all(isinstance(a, np.memmap) for a in arrays.values())  # the cache is memory-mapped, not loaded
        return {k: Watched(a, reads) if k.startswith("x") else a for k, a in arrays.items()}

    monkeypatch.setattr(parquet, "load_cache", load_cache)
    yield reads


def test_no_job_takes_all_of_a_parquet_datasets_features_into_memory(
        client: TestClient, admin_headers: dict[str, str], watched: list[int]) -> None:
    h = admin_headers
    upload_parquet(client, h, name="big", n=N, n_test=N_TEST, features="x", side=4)
    drain()
    assert client.get("/datasets/big", headers=h).json()["status"] == "ready"
    created = client.post("/models", headers=h, json={
        "name": "m", "dataset": "big", "architecture": {"kind": "mlp", "hidden": [16]},
        "recipe": {"epochs": 2, "batch_size": 64, "lr": 0.01, "checkpoints": 2},
        "policy": {"scorer": "gradnorm", "algorithm": "finetune", "params": {"epochs": 1},
                   "reference": {"k": 4, "shift_models": 1}, "audit": {"retrain_reference": True}}})
    assert created.status_code == 201, created.text
    assert client.post("/models/m/train", headers=h).status_code == 202
    drain()
    for method in ("hessian", "less"):
        assert client.post("/models/m/versions/1/influence", headers=h, json={"method": method}).status_code == 202
    assert client.post("/models/m/versions/1/calibrate", headers=h,
                       json={"grid": [30], "compare": []}).status_code == 202
    drain()
    v1 = client.get("/models/m/versions/1", headers=h).json()
    assert {r["method"]: r["status"] for r in v1["influence"]} == dict.fromkeys(("gradnorm", "hessian", "less"),
                                                                                 "completed")
    assert "calibration" in v1["metrics"]
    assert client.get("/models/m", headers=h).json()["reference"]["status"] == "completed"
    trained = len(watched)

    from workers.engine.params import PARAMS

    # Another model on the same data, without a pool (nothing measured free: the requests go to jobs), audited
    # against a retrain reference as well: every algorithm in turn, each on points of its own.
    created = client.post("/models", headers=h, json={
        "name": "u", "dataset": "big", "architecture": {"kind": "mlp", "hidden": [16]},
        "recipe": {"epochs": 2, "batch_size": 64, "lr": 0.01},
        "policy": {"scorer": "gradnorm", "algorithm": "finetune", "audit": {"retrain_reference": True}}})
    assert created.status_code == 201, created.text
    assert client.post("/models/u/train", headers=h).status_code == 202
    drain()
    ids = [i["point_id"] for i in client.get("/models/u/versions/1/influence", headers=h,
                                             params={"limit": 1000}).json()["items"]]
    for k, algorithm in enumerate(sorted(PARAMS)):
        params = {"epochs": 1} if "epochs" in PARAMS[algorithm].model_fields else {}
        resp = client.post("/forget", headers=h, json={
            "model": "u", "point_ids": ids[-6 * (k + 1):len(ids) - 6 * k], "reason": "gdpr", "requested_by": "dpo",
            "algorithm": algorithm, "params": params})
        assert resp.status_code == 202, resp.text
        drain()
        job = client.get(f"/jobs/{resp.json()['job_id']}", headers=h).json()
        assert job["status"] in ("completed", "failed"), job
        assert job["error"] is None or job["error"].startswith("audit failed"), job["error"]
        assert job["result"]["metrics"]["attempts"][0]["algorithm"] == algorithm
        assert algorithm == "retrain" or "reference" in job["result"]["audit"], algorithm

    # every job read the features, and none read more than a batch of rows at once
    assert trained > 0 and len(watched) > trained
    assert sum(watched) > 10 * N  # epochs, pool models, scorers, audits: many passes over the rows
    assert max(watched) <= LARGEST_BATCH < N, max(watched)
