"""The engine's Kronfluence-shaped entry point: fit once, score (whole or by rows), save and load by name."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from workers.engine.architectures import build_model
from workers.engine.data import ArraySet
from workers.engine.influence import compute_self_influence
from workers.engine.influence.self_influence import SelfInfluence
from workers.engine.training import train_model

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def trained() -> tuple[torch.nn.Module, ArraySet]:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(90, 6)).astype(np.float32)
    y = (x[:, 0] + 0.5 * x[:, 1] > 0).astype(np.int64) + (x[:, 2] > 1).astype(np.int64)
    torch.manual_seed(0)
    net = build_model({"kind": "mlp", "hidden": [16]}, input_shape=(6,), n_classes=3)
    data = ArraySet(x, y)
    train_model(net, data, recipe={"epochs": 5, "lr": 1e-2, "batch_size": 32, "seed": 0}, device=CPU)
    return net, data


def test_scores_are_the_scorers_and_shards_are_slices_of_them(trained: tuple, tmp_path: Path) -> None:
    net, data = trained
    si = SelfInfluence(tmp_path, net, data, device=CPU)
    whole = si.score("gradnorm")
    assert whole.method == "gradnorm" and whole.scores.shape == (90,) and whole.info["norm_policy"]
    np.testing.assert_allclose(whole.scores, compute_self_influence("gradnorm", net, data, device=CPU), rtol=1e-6)
    np.testing.assert_allclose(si.score("gradnorm", rows=slice(30, 60)).scores, whole.scores[30:60], rtol=1e-6)

    si.fit("hessian")  # the factors every shard shares, fitted once under root
    assert any((tmp_path / "kfac").iterdir())
    full = si.score("hessian").scores
    np.testing.assert_allclose(si.score("hessian", rows=slice(0, 45)).scores, full[:45], rtol=1e-5, atol=1e-9)


def test_what_it_saves_it_loads(trained: tuple, tmp_path: Path) -> None:
    net, data = trained
    si = SelfInfluence(tmp_path, net, data, device=CPU)
    assert si.load("gradnorm") is None
    result = si.score("gradnorm")
    meta = si.save(result, meta={"method": "gradnorm"})
    assert len(meta["sha256"]) == 64 and meta["n"] == 90
    np.testing.assert_array_equal(np.asarray(si.load("gradnorm")), result.scores)
