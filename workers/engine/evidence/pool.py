"""A reference pool's measurements and their files: one memory-mapped .npy per array and meta.json."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

ARRAYS = ("rows", "in_mask", "phi", "phi_test", "phi_std", "scores", "certified_by", "separation", "shift_cols",
          "shift_offsets")


@dataclass
class Pool:
    """What a pool measured, column j describing dataset row rows[j]."""

    rows: np.ndarray  # (n,) dataset rows the pool measured (the live rows when it was fitted)
    in_mask: np.ndarray  # (K, n) bool
    phi: np.ndarray  # (K, n) raw φ
    phi_test: np.ndarray  # (K, n_test)
    phi_std: np.ndarray  # (K, n) standardised per model by its test φ
    scores: np.ndarray  # (K, n) held-out LiRA scores within each half (for group tests)
    certified_by: np.ndarray  # (n,) int8, −1 not certified
    separation: np.ndarray  # (n,)
    # The size-mismatch measurement: columns left out of full-size models, and their φ offsets from the pool's
    # OUT means in units of each point's OUT spread.
    shift_cols: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=np.int64))
    shift_offsets: np.ndarray = field(default_factory=lambda: np.empty(0))
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def k(self) -> int:
        return int(self.in_mask.shape[0])

    def columns(self, rows: np.ndarray) -> np.ndarray:
        """Pool columns of dataset rows (−1 where the pool did not measure the row)."""
        rows = np.asarray(rows, dtype=np.int64)
        pos = np.searchsorted(self.rows, rows)
        pos = np.clip(pos, 0, max(len(self.rows) - 1, 0))
        hit = (len(self.rows) > 0) & (self.rows[pos] == rows)
        return np.where(hit, pos, -1)


def save_pool(pool: Pool, root: Path) -> None:
    """One .npy per array (memory-mapped when loaded) and meta.json, each replaced atomically: requests may be
    reading the pool while erasure rewrites it."""
    root.mkdir(parents=True, exist_ok=True)
    for name in ARRAYS:
        tmp = root / f"{name}.npy.tmp"
        value = np.asarray(getattr(pool, name))
        if value.dtype.kind == "f":
            # float32 on disk: 4 bytes per model and point for each (K, n) array (64 MB per million points at
            # K = 16). Pool spreads are ≥ 1e-2 in φ units; float32 resolves 1e-6 of a φ of 30. Arithmetic is float64
            # (_moments, standardise cast on the way in).
            value = value.astype(np.float32)
        with open(tmp, "wb") as fh:
            np.save(fh, value)
        os.replace(tmp, root / f"{name}.npy")
    (root / "meta.json.tmp").write_text(json.dumps(pool.meta, sort_keys=True))
    os.replace(root / "meta.json.tmp", root / "meta.json")


def load_pool(root: Path, *, mmap: bool = True) -> Pool:
    arrays = {name: np.load(root / f"{name}.npy", mmap_mode="r" if mmap else None) for name in ARRAYS}
    return Pool(**arrays, meta=json.loads((root / "meta.json").read_text()))
