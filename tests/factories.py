"""Factories for test data: npz datasets, safetensors weights, and API setup through HTTP."""

from __future__ import annotations

import io
from typing import Any

import numpy as np
from fastapi.testclient import TestClient


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
