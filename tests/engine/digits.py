"""The digits splits the engine tests train on: shuffled once (seed 0), the forget set the first train points."""

from __future__ import annotations

import numpy as np
from sklearn.datasets import load_digits

from workers.engine.data import ArraySet


def digits_split(n_train: int, n_forget: int = 60) -> dict[str, ArraySet]:
    """train (n_train points), its forget (the first n_forget) and retain (the rest) sets, and test (the others)."""
    d = load_digits()
    x, y = (d.data / 16).astype(np.float32), d.target
    order = np.random.default_rng(0).permutation(len(x))
    tr, te = order[:n_train], order[n_train:]
    forget, retain = tr[:n_forget], tr[n_forget:]
    return {"train": ArraySet(x[tr], y[tr]), "forget": ArraySet(x[forget], y[forget]),
            "retain": ArraySet(x[retain], y[retain]), "test": ArraySet(x[te], y[te])}
