"""Erasing rows rewrites the dataset file streamed: the API process never holds its features."""

from __future__ import annotations

import numpy as np

from app import artifacts
from app.datasets.npz_erasure import erased_copy
from tests.factories import peak_allocated

MiB = 1024 * 1024


def test_erased_copy_zeroes_rows_streamed(sqlite_env: dict[str, str]) -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(4096, 2048)).astype(np.float32)  # 32 MiB
    subjects = np.array([f"s{i}" for i in range(4096)])
    src = artifacts.path_of("datasets/src.npz")
    src.parent.mkdir(parents=True, exist_ok=True)
    np.savez(src, x=x, y=np.arange(4096) % 3, ids=np.array([f"p{i}" for i in range(4096)]), subjects=subjects,
             xf=np.asfortranarray(x[:8]))
    rows = {0, 7, 4095}
    sha, peak = peak_allocated(lambda: erased_copy(src, "datasets/dst.npz", rows=rows))
    assert peak < 16 * MiB, f"{peak / MiB:.0f} MiB for a 32 MiB x"
    assert sha == artifacts.sha256_file(artifacts.path_of("datasets/dst.npz"))
    with np.load(artifacts.path_of("datasets/dst.npz")) as out:
        keep = sorted(set(range(4096)) - rows)
        assert not out["x"][sorted(rows)].any() and np.array_equal(out["x"][keep], x[keep])
        assert set(out["subjects"][sorted(rows)]) == {""} and np.array_equal(out["subjects"][keep], subjects[keep])
        assert np.array_equal(out["xf"], x[:8])  # other arrays copied as they were
        assert np.array_equal(out["y"], np.arange(4096) % 3)


def test_a_fortran_ordered_x_is_erased_too(sqlite_env: dict[str, str]) -> None:
    x = np.asfortranarray(np.arange(60, dtype=np.float64).reshape(10, 6))
    src = artifacts.path_of("datasets/f.npz")
    src.parent.mkdir(parents=True, exist_ok=True)
    np.savez(src, x=x, y=np.zeros(10, np.int64))
    erased_copy(src, "datasets/f2.npz", rows={2, 9})
    with np.load(artifacts.path_of("datasets/f2.npz")) as out:
        expected = np.array(x)
        expected[[2, 9]] = 0
        assert np.array_equal(out["x"], expected)
