"""Factories for test data: npz datasets, safetensors weights, and API setup through HTTP."""

from __future__ import annotations

import io
import tracemalloc
from collections.abc import Callable
from typing import Any, TypeVar

import numpy as np
from fastapi.testclient import TestClient

T = TypeVar("T")


def npz_bytes(n: int = 120, n_test: int = 40, d: int = 8, classes: int = 3, seed: int = 0,
              subjects: bool = True, **extra: np.ndarray) -> bytes:
    """A small separable classification set with ids p0000… and 4 points per subject."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(0, 3, size=(classes, d))
    y = rng.integers(0, classes, size=n + n_test)
    x = (centers[y] + rng.normal(0, 1, size=(n + n_test, d))).astype(np.float32)
    arrays: dict[str, np.ndarray] = {
        "x": x[:n], "y": y[:n].astype(np.int64), "ids": np.array([f"p{i:04d}" for i in range(n)]),
        "x_test": x[n:], "y_test": y[n:].astype(np.int64),
    }
    if subjects:
        arrays["subjects"] = np.array([f"s{i // 4:03d}" for i in range(n)])
    arrays.update(extra)
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def upload_dataset(client: TestClient, headers: dict[str, str], name: str = "toy", data: bytes | None = None,
                   **kw: Any) -> dict[str, Any]:
    resp = client.post("/datasets", headers=headers, data={"name": name},
                       files={"file": ("data.npz", data or npz_bytes(**kw), "application/octet-stream")})
    assert resp.status_code == 201, resp.text
    return resp.json()


def create_model(client: TestClient, headers: dict[str, str], name: str = "toy", dataset: str = "toy",
                 **body: Any) -> dict[str, Any]:
    payload = {"name": name, "dataset": dataset, "architecture": {"kind": "mlp", "hidden": [16]},
               "recipe": {"epochs": 5, "batch_size": 32, "lr": 0.01}} | body
    resp = client.post("/models", headers=headers, json=payload)
    assert resp.status_code == 201, resp.text
    return resp.json()


def safetensors_bytes(d: int = 8, hidden: int = 16, classes: int = 3) -> bytes:
    """Weights shaped like the mlp factory's model, written with safetensors' numpy API (no torch)."""
    from safetensors.numpy import save

    rng = np.random.default_rng(0)
    tensors = {"net.0.weight": rng.normal(size=(hidden, d)).astype(np.float32),
               "net.0.bias": np.zeros(hidden, np.float32),
               "net.2.weight": rng.normal(size=(classes, hidden)).astype(np.float32),
               "net.2.bias": np.zeros(classes, np.float32)}
    return save(tensors)


def upload_version(client: TestClient, headers: dict[str, str], model: str = "toy", data: bytes | None = None,
                   **params: Any) -> Any:
    return client.post(f"/models/{model}/versions", headers=headers, params=params,
                       files={"weights": ("w.safetensors", data or safetensors_bytes(), "application/octet-stream")})


def drain(max_rounds: int = 20) -> list[str]:
    """Run every queued job in this process (what a worker would do), until none is left."""
    from sqlalchemy import select

    from app.db import session_scope
    from app.jobs.tables import Job
    from workers.jobs import runner

    ran: list[str] = []
    for _ in range(max_rounds):
        with session_scope() as s:
            queued = list(s.scalars(select(Job.id).where(Job.status == "queued").order_by(Job.created_at)))
        if not queued:
            return ran
        for job_id in queued:
            runner.run_inline(job_id)
            ran.append(job_id)
    raise AssertionError("jobs keep coming: drain() gave up")


def tenant_headers(client: TestClient, headers: dict[str, str], tenant: str,
                   scopes: tuple[str, ...] = ("admin",)) -> dict[str, str]:
    """Headers of a new key of another tenant, created by `headers` (a key allowed to create tenants)."""
    resp = client.post("/keys", headers=headers, json={"scopes": list(scopes), "tenant": tenant})
    assert resp.status_code == 201, resp.text
    return {"Authorization": f"Bearer {resp.json()['key']}"}


def parquet_bytes(n: int = 120, n_test: int = 40, *, features: str = "image", side: int = 8, classes: int = 3,
                  seed: int = 0, subjects: bool = True, shape_meta: str | None = None,
                  mutate: Any = None) -> bytes:
    """A Parquet dataset in Lethe's format: ids p0000…, 4 points per subject, a test split, and features as
    PNG images (class-dependent stripes plus noise: learnable by a small cnn) or `x` float lists.

    `mutate(columns)` may change the column dict (a malformed file) before the table is written."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from PIL import Image

    rng = np.random.default_rng(seed)
    total = n + n_test
    y = rng.integers(0, classes, size=total)
    base = np.zeros((classes, side, side), np.float32)
    for k in range(classes):
        base[k, :, k * side // classes:(k + 1) * side // classes] = 1.0
    pixels = np.clip(base[y] * 0.8 + rng.uniform(0, 0.3, size=(total, side, side)), 0, 1)
    columns: dict[str, Any] = {
        "point_id": [f"p{i:04d}" if i < n else f"t{i - n:04d}" for i in range(total)],
        "label": pa.array(y, pa.int64()), "split": ["train"] * n + ["test"] * n_test,
    }
    if subjects:
        columns["subject_id"] = [f"s{i // 4:03d}" if i < n else None for i in range(total)]
    if features == "image":
        def png(a: np.ndarray) -> bytes:
            buf = io.BytesIO()
            Image.fromarray((a * 255).astype(np.uint8), mode="L").save(buf, format="PNG")
            return buf.getvalue()

        columns["image"] = pa.array([png(p) for p in pixels], pa.binary())
    else:
        flat = pixels.reshape(total, -1).astype(np.float32)
        columns["x"] = pa.FixedSizeListArray.from_arrays(pa.array(flat.ravel()), side * side)
    if mutate is not None:
        mutate(columns)
    table = pa.table(columns)
    if features == "x":
        table = table.replace_schema_metadata({"lethe.shape": shape_meta or f"[1, {side}, {side}]"})
    buf = io.BytesIO()
    pq.write_table(table, buf, row_group_size=50)
    return buf.getvalue()


def text_parquet_bytes(n: int = 160, n_test: int = 60, *, classes: int = 3, seed: int = 0,
                       subjects: bool = True) -> bytes:
    """A text dataset in Lethe's Parquet format: ids p0000…, 4 points per subject, a test split, and sentences
    whose class shows in some of their words (each class has its own vocabulary, mixed with shared filler)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(seed)
    total = n + n_test
    y = rng.integers(0, classes, size=total)
    vocab = [[f"{w}{k}" for w in ("alpha", "bravo", "delta", "omega", "sigma", "kappa")] for k in range(classes)]
    filler = ["the", "a", "report", "said", "today", "about", "some", "new", "Items", "and"]
    texts = []
    for label in y:
        words = list(rng.choice(filler, size=rng.integers(3, 9))) + list(rng.choice(vocab[label], size=2))
        texts.append(" ".join(rng.permutation(words)) + ("." if rng.random() < 0.5 else "!"))
    columns: dict[str, Any] = {
        "point_id": [f"p{i:04d}" if i < n else f"t{i - n:04d}" for i in range(total)],
        "label": pa.array(y, pa.int64()), "split": ["train"] * n + ["test"] * n_test, "text": texts,
    }
    if subjects:
        columns["subject_id"] = [f"s{i // 4:03d}" if i < n else None for i in range(total)]
    buf = io.BytesIO()
    pq.write_table(pa.table(columns), buf, row_group_size=50)
    return buf.getvalue()


def upload_parquet(client: TestClient, headers: dict[str, str], name: str = "pq", **kw: Any) -> dict[str, Any]:
    resp = client.post("/datasets", headers=headers, data={"name": name},
                       files={"file": ("data.parquet", parquet_bytes(**kw), "application/octet-stream")})
    assert resp.status_code == 201, resp.text
    return resp.json()


def peak_allocated(call: Callable[[], T]) -> tuple[T, int]:
    """`call()`'s result and the peak bytes Python allocated while it ran (tracemalloc)."""
    tracemalloc.start()
    try:
        result = call()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return result, peak
