"""A plugin's encode() and loss() are what the engine trains, scores, unlearns and audits with."""

from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn

from workers.engine import model_hooks, plugins
from workers.engine.architectures import build_model
from workers.engine.audit import predict_losses
from workers.engine.data import ArraySet
from workers.engine.influence import compute_self_influence
from workers.engine.influence.gradnorm import _structured, _vmap
from workers.engine.training import train_model
from workers.engine.unlearning import unlearn

CPU = torch.device("cpu")


class KeywordNet(nn.Module):
    """Takes `features` and `bias` keywords only: calling it as model(x) fails."""

    def __init__(self, d: int, n_classes: int) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(d, 16), nn.Linear(16, n_classes)

    def forward(self, *, features: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.relu(self.fc1(features + bias)))


class Plugin:
    def __init__(self) -> None:
        self.calls: Counter[str] = Counter()

    def build(self, config: dict, *, input_shape: tuple, n_classes: int) -> nn.Module:
        return KeywordNet(int(np.prod(input_shape)), n_classes)

    def encode(self, batch: torch.Tensor) -> dict[str, torch.Tensor]:
        self.calls["encode"] += 1
        return {"features": batch.flatten(1), "bias": batch.new_zeros(())}

    def loss(self, model: nn.Module, inputs: dict[str, torch.Tensor], y: torch.Tensor) -> torch.Tensor:
        self.calls["loss"] += 1
        return 2.0 * F.cross_entropy(model(**inputs), y, reduction="none")  # twice CE: distinguishable


@pytest.fixture
def plugin(monkeypatch: pytest.MonkeyPatch) -> Plugin:
    obj = Plugin()
    monkeypatch.setattr(plugins, "plugin", lambda kind: obj)
    return obj


def _data(n: int = 96, seed: int = 0) -> ArraySet:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    x = (rng.normal(size=(n, 2, 3)) + y[:, None, None]).astype(np.float32)
    return ArraySet(x, y.astype(np.int64))


def test_training_scoring_unlearning_and_the_audit_go_through_encode_and_loss(plugin: Plugin) -> None:
    torch.manual_seed(0)
    net = build_model({"kind": "kw"}, input_shape=(2, 3), n_classes=3)
    data = _data()
    metrics = train_model(net, data, recipe={"epochs": 5, "batch_size": 32, "lr": 0.01}, device=CPU)
    assert plugin.calls["loss"] > 0 and metrics["train_accuracy"] > 0.5

    losses = predict_losses(net, data, device=CPU)
    with torch.no_grad():
        ce = F.cross_entropy(net(features=torch.as_tensor(data.x).flatten(1), bias=torch.zeros(())),
                             torch.as_tensor(data.y), reduction="none").numpy()
    np.testing.assert_allclose(losses, 2.0 * ce, rtol=1e-5)  # the audit's losses are the plugin's

    scores = compute_self_influence("gradnorm", net, data, device=CPU)
    assert np.isfinite(scores).all() and (scores > 0).all()
    before = plugin.calls["loss"]
    for algorithm in ("finetune", "neggrad", "scrub", "rank1", "iau"):
        result = unlearn(algorithm, net, forget=ArraySet(data.x[:8], data.y[:8]),
                         retain=ArraySet(data.x[8:], data.y[8:]), params={}, device=CPU)
        assert isinstance(result.model, KeywordNet), algorithm
    assert plugin.calls["loss"] > before and plugin.calls["encode"] > 0


def test_per_example_gradients_of_the_plugin_loss_agree_between_the_two_gradnorm_paths(plugin: Plugin) -> None:
    """The structured path (one backward of the summed losses) and vmap (functional_losses per example)."""
    torch.manual_seed(1)
    net = build_model({"kind": "kw"}, input_shape=(2, 3), n_classes=3).eval()
    data = _data(20)
    x, y = torch.as_tensor(data.x), torch.as_tensor(data.y)
    structured = _structured(net, x, y)
    net.zero_grad(set_to_none=True)
    np.testing.assert_allclose(structured.numpy(), _vmap(net, x, y).numpy(), rtol=1e-4)


def test_methods_a_plugin_loss_rules_out_fail_in_the_engine_too(plugin: Plugin) -> None:
    net = build_model({"kind": "kw"}, input_shape=(2, 3), n_classes=3)
    data = _data(24)
    with pytest.raises(ValueError, match="hessian cannot score a 'kw' model: K-FAC"):
        compute_self_influence("hessian", net, data, device=CPU)
    with pytest.raises(ValueError, match="imu cannot unlearn a 'kw' model"):
        unlearn("imu", net, forget=ArraySet(data.x[:4], data.y[:4]), retain=None, params={}, device=CPU)


def test_without_hooks_the_engine_feeds_x_and_scores_cross_entropy() -> None:
    net = build_model({"kind": "mlp", "hidden": [8]}, input_shape=(4,), n_classes=3)
    x, y = torch.randn(5, 4), torch.tensor([0, 1, 2, 0, 1])
    assert model_hooks.encode(net, x).keys() == {"x"}
    expected: Any = F.cross_entropy(net(x), y, reduction="none")
    torch.testing.assert_close(model_hooks.losses(net, x, y), expected)
