"""The structured gradient norms equal brute-force per-sample autograd norms."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from workers.engine.architectures import build_model
from workers.engine.data import ArraySet
from workers.engine.influence import compute_self_influence
from workers.engine.influence.gradnorm import gradnorm_self_influence

CPU = torch.device("cpu")


def brute_force(model: nn.Module, data: ArraySet) -> np.ndarray:
    out = []
    for xi, yi in zip(data.x, data.y, strict=True):
        model.zero_grad()
        loss = F.cross_entropy(model(torch.as_tensor(xi[None])), torch.as_tensor([yi]))
        grads = torch.autograd.grad(loss, [p for p in model.parameters()])
        out.append(float(torch.sqrt(sum((g.double() ** 2).sum() for g in grads))))
    return np.array(out)


def data(shape: tuple[int, ...], n: int = 37, classes: int = 4, seed: int = 0) -> ArraySet:
    rng = np.random.default_rng(seed)
    return ArraySet(rng.normal(size=(n, *shape)).astype(np.float32), rng.integers(0, classes, n))


@pytest.mark.parametrize("spec, shape", [
    ({"kind": "linear"}, (10,)),
    ({"kind": "mlp", "hidden": [16, 8]}, (10,)),
    ({"kind": "cnn", "channels": [4, 6], "hidden": 12}, (64,)),
    ({"kind": "cnn", "channels": [3], "hidden": 5}, (2, 6, 6)),
])
def test_structured_equals_brute_force(spec: dict, shape: tuple[int, ...]) -> None:
    torch.manual_seed(0)
    model = build_model(spec, input_shape=shape, n_classes=4)
    ds = data(shape)
    fast = gradnorm_self_influence(model, ds, device=CPU, batch_size=8)
    np.testing.assert_allclose(fast, brute_force(model, ds), rtol=1e-4, atol=1e-7)


def test_fallback_for_other_parameterised_layers() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.LayerNorm(8), nn.ReLU(), nn.Linear(8, 3))
    ds = data((6,), classes=3)
    np.testing.assert_allclose(gradnorm_self_influence(model, ds, device=CPU), brute_force(model, ds), rtol=1e-4)


def test_sequence_inputs_to_linear_layers() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 7), nn.ReLU(), nn.Flatten(), nn.Linear(21, 3))
    ds = data((3, 5), classes=3)
    np.testing.assert_allclose(gradnorm_self_influence(model, ds, device=CPU), brute_force(model, ds), rtol=1e-4)


def test_unknown_method() -> None:
    with pytest.raises(ValueError, match="unknown influence method"):
        compute_self_influence("tea-leaves", nn.Linear(2, 2), data((2,)), device=CPU)
