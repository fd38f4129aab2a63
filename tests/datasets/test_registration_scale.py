"""Registering a large Parquet dataset streams its index columns: the API holds ids and subjects as Arrow arrays
and turns them into Python values one slice at a time as it records the points (COPY on PostgreSQL, executemany
on SQLite), so its Python allocations stay bounded by the slice, not the dataset; every point is recorded with
its row and its subject's keyed hash."""

from __future__ import annotations

import io

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from app.datasets import service
from tests.factories import peak_allocated

MiB = 1024 * 1024
N = 150_000


def big_parquet(n: int) -> bytes:
    rows = np.arange(n + 100)
    train = rows < n
    table = pa.table({
        "point_id": [f"point-{i:08d}" for i in rows], "label": (rows % 2).astype(np.int64),
        "subject_id": [f"subject-{i // 10:07d}" if t else None for i, t in zip(rows, train, strict=True)],
        "split": np.where(train, "train", "test"),
        "x": pa.FixedSizeListArray.from_arrays(pa.array(np.zeros(2 * len(rows), np.float32)), 2)})
    buf = io.BytesIO()
    pq.write_table(table, buf, row_group_size=10_000)
    return buf.getvalue()


def test_registration_records_every_point_with_bounded_python_memory(client: TestClient,
                                                                     admin_headers: dict[str, str]) -> None:
    from app.datasets.tables import Point
    from app.db import session_scope
    from app.identity import keyed_hash

    data = big_parquet(N)
    r, peak = peak_allocated(lambda: client.post("/datasets", headers=admin_headers, data={"name": "big"},
                                                 files={"file": ("d.parquet", data)}))
    assert r.status_code == 201, r.text
    assert r.json()["n_points"] == N and r.json()["n_test"] == 100 and r.json()["has_subjects"]
    # the upload's own bytes and one slice of points: not a Python string a point for the whole dataset
    assert service.INSERT_ROWS < N and peak < len(data) + 24 * MiB, f"registering allocated {peak / MiB:.0f} MiB"
    with session_scope(readonly=True) as s:
        ds_id = r.json()["id"]
        assert s.scalar(select(func.count()).where(Point.dataset_id == ds_id)) == N
        for row in (0, service.INSERT_ROWS - 1, service.INSERT_ROWS, N - 1):  # each side of a slice boundary
            p = s.scalar(select(Point).where(Point.dataset_id == ds_id, Point.row == row))
            assert p.point_id == f"point-{row:08d}" and p.subject_hash == keyed_hash(f"subject-{row // 10:07d}")
        by_subject = s.scalars(select(Point.row).where(Point.dataset_id == ds_id,
                                                       Point.subject_hash == keyed_hash("subject-0012345")))
        assert sorted(by_subject) == list(range(123450, 123460))  # as a forget request finds a subject's points
