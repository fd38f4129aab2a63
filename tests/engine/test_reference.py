"""workers/engine/reference.py: the pool's fit keeps each model's φ as it goes, so a re-run trains only what is
missing (a worker killed after 15 of 16 shadow models must not start over)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from workers.engine.reference import fit_pool

RECIPE = {"optimizer": "adam", "lr": 1e-2, "epochs": 2, "batch_size": 32, "seed": 0}


def _data(n: int = 120) -> tuple[np.ndarray, ...]:
    rng = np.random.default_rng(0)
    y, yt = rng.integers(0, 3, n), rng.integers(0, 3, 60)
    centers = rng.normal(0, 2, (3, 4))
    return ((centers[y] + rng.normal(0, 1, (n, 4))).astype(np.float32), y,
            (centers[yt] + rng.normal(0, 1, (60, 4))).astype(np.float32), yt)


def test_a_rerun_reuses_every_measured_model(tmp_path: Path) -> None:
    x, y, xt, yt = _data()
    built: list[int] = []

    def build(seed: int) -> nn.Module:
        built.append(seed)
        torch.manual_seed(seed)
        return nn.Linear(4, 3)

    kwargs = {"rows": np.arange(len(y)), "k": 4, "seed": 0, "recipe": RECIPE, "device": torch.device("cpu"),
              "shift_models": 2, "cache": tmp_path / "partial"}
    first, shift = fit_pool(build, x, y, xt, yt, **kwargs)
    assert len(built) == 6 and len(list((tmp_path / "partial").glob("*.npz"))) == 6
    (tmp_path / "partial" / "shadow-2.npz").unlink()  # as if the worker died before measuring model 2
    built.clear()
    again, shift_again = fit_pool(build, x, y, xt, yt, **kwargs)
    assert built == [102]  # only the missing model is trained again
    np.testing.assert_array_equal(first.phi, again.phi)
    np.testing.assert_array_equal(first.shift_offsets, again.shift_offsets)
    assert shift == shift_again
    built.clear()
    fit_pool(build, x, y, xt, yt, **(kwargs | {"rows": np.arange(100)}))  # other rows: nothing reused
    assert len(built) == 6
