"""The resnet built-in kind: shapes, parameter arithmetic the API uses, the BatchNorm policy, and every scorer
and unlearning algorithm running on it."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from workers.engine import plugins
from workers.engine.architectures import build_model
from workers.engine.data import ArraySet
from workers.engine.influence import compute_self_influence
from workers.engine.influence.kfac import tracked_layers, untracked_parameters
from workers.engine.kinds import RESNET
from workers.engine.params import PARAMS
from workers.engine.training import train_model
from workers.engine.unlearning import unlearn

CPU = torch.device("cpu")
TINY = {"kind": "resnet", "width": 4, "blocks": [1, 1]}


def test_resnet18_shapes_and_parameter_count_match_the_torch_free_arithmetic() -> None:
    net = build_model({"kind": "resnet"}, input_shape=(3, 32, 32), n_classes=10)
    assert net(torch.zeros(2, 3, 32, 32)).shape == (2, 10)
    params = sum(p.numel() for p in net.parameters())
    assert params == RESNET.parameter_count({}, input_shape=[3, 32, 32], n_classes=10) == 11_173_962  # ResNet-18
    assert sum(isinstance(m, nn.BatchNorm2d) for m in net.modules()) == 20
    tiny = build_model(TINY, input_shape=(64,), n_classes=3)  # a flat square input is one channel
    assert tiny(torch.zeros(5, 64)).shape == (5, 3)
    assert sum(p.numel() for p in tiny.parameters()) == RESNET.parameter_count(
        {"width": 4, "blocks": [1, 1]}, input_shape=[64], n_classes=3)


def test_unknown_kind_names_the_installed_ones() -> None:
    with pytest.raises(ValueError, match=r"unknown architecture kind 'vit' \(installed: .*resnet"):
        build_model({"kind": "vit"}, input_shape=(4,), n_classes=2)
    with pytest.raises(ValueError, match=r"unknown architecture kind 'mpl'; did you mean 'mlp'\? \(installed"):
        build_model({"kind": "mpl"}, input_shape=(4,), n_classes=2)
    assert {"linear", "mlp", "cnn", "resnet"} <= set(plugins.installed_kinds())
    with pytest.raises(ValueError, match="blocks"):
        build_model({"kind": "resnet", "blocks": []}, input_shape=(64,), n_classes=2)


@pytest.fixture(scope="module")
def data() -> dict[str, ArraySet]:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 90)
    x = (rng.normal(size=(90, 1, 8, 8)) + y[:, None, None, None]).astype(np.float32)
    return {"train": ArraySet(x, y), "forget": ArraySet(x[:10], y[:10]), "retain": ArraySet(x[10:], y[10:])}


@pytest.fixture(scope="module")
def trained(data: dict[str, ArraySet]) -> nn.Module:
    torch.manual_seed(0)
    net = build_model(TINY, input_shape=(1, 8, 8), n_classes=3)
    train_model(net, data["train"], recipe={"epochs": 3, "batch_size": 16, "lr": 1e-2}, device=CPU)
    return net


def running_stats(net: nn.Module) -> list[torch.Tensor]:
    return [b.clone() for n, b in net.named_buffers() if "running" in n]


@pytest.mark.parametrize("algorithm", sorted(PARAMS))
def test_every_algorithm_runs_with_batchnorm_frozen(algorithm: str, trained: nn.Module,
                                                    data: dict[str, ArraySet]) -> None:
    before = running_stats(trained)

    def build() -> nn.Module:
        return build_model(TINY, input_shape=(1, 8, 8), n_classes=3)

    out = unlearn(algorithm, trained, forget=data["forget"], retain=data["retain"], params={"epochs": 1}
                  if "epochs" in PARAMS[algorithm].model_fields else {}, device=CPU, build=build,
                  recipe={"epochs": 1, "batch_size": 16})
    policy = out.metrics["norm_policy"]
    assert policy["batchnorm_layers"] == 6  # stem, two per block, the shortcut's
    after = running_stats(out.model)
    changed = any(not torch.equal(a, b) for a, b in zip(before, after, strict=True))
    if algorithm == "retrain":  # a fresh model trained from the recipe fits its own statistics
        assert changed and policy["applied"].startswith("train mode")
    else:  # frozen: the forget set's batch statistics never reach the running ones
        assert not changed, f"{algorithm} changed BatchNorm running statistics"
        assert policy["applied"].startswith("BatchNorm frozen")
    assert all(not m.training for m in out.model.modules())
    assert all(m.train.__func__ is nn.Module.train for m in out.model.modules())  # the freeze is undone


@pytest.mark.parametrize("method", ["gradnorm", "hessian", "less"])
def test_every_scorer_runs_and_hessian_names_what_it_ignores(method: str, trained: nn.Module,
                                                             data: dict[str, ArraySet], tmp_path) -> None:
    info: dict = {}
    options = {"factors_dir": tmp_path} if method == "hessian" else {}
    scores = compute_self_influence(method, trained, data["train"], device=CPU, info=info, **options)
    assert scores.shape == (90,) and np.isfinite(scores).all() and scores.std() > 0
    assert all(b.training is False for b in trained.modules())
    if method == "hessian":
        assert any("bn" in n for n in info["untracked"])  # BatchNorm affine parameters: said, not fitted
    layers = tracked_layers(trained)
    assert "fc" in layers and all(isinstance(m, nn.Linear | nn.Conv2d) for m in layers.values())
    assert set(untracked_parameters(trained)) == {n for n, _ in trained.named_parameters() if "bn" in n
                                                  or "shortcut.1" in n}


@pytest.mark.parametrize(("spec", "shape"), [
    ({"kind": "linear"}, (64,)), ({"kind": "mlp", "hidden": [9, 5], "dropout": 0.2}, (6,)), ({"kind": "mlp"}, (2, 3)),
    ({"kind": "cnn"}, (64,)), ({"kind": "cnn", "channels": [3, 4, 5], "hidden": [7]}, (2, 6, 6)),
    ({"kind": "resnet", "width": 4, "blocks": [1, 2, 1]}, (3, 8, 8)), ({"kind": "resnet"}, (32, 32)),
])
def test_the_torch_free_state_shapes_the_api_checks_uploads_with_are_the_built_models(spec: dict,
                                                                                      shape: tuple) -> None:
    net = build_model(spec, input_shape=shape, n_classes=4)
    config = {k: v for k, v in spec.items() if k != "kind"}
    expected = plugins.plugin(spec["kind"]).state_shapes(config, input_shape=list(shape), n_classes=4)
    assert expected == {k: list(v.shape) for k, v in net.state_dict().items()}
    # the size limits' torch-free arithmetic counts the same model (a flat input to a cnn is a square image)
    count = plugins.plugin(spec["kind"]).parameter_count(config, input_shape=list(shape), n_classes=4)
    assert count == sum(p.numel() for p in net.parameters())


def test_a_kind_with_its_own_loss_is_accepted_and_rules_out_the_cross_entropy_only_methods(
        monkeypatch: pytest.MonkeyPatch) -> None:
    class WithLoss:
        unsupported = {"rank1": "the plugin says so"}

        def build(self, config: dict, *, input_shape: tuple, n_classes: int) -> nn.Module:
            return nn.Linear(4, n_classes)

        def loss(self, model: nn.Module, inputs: dict, y: torch.Tensor) -> torch.Tensor:
            raise AssertionError("never called")

    monkeypatch.setattr(plugins, "plugin", lambda kind: WithLoss())
    assert plugins.validate_config({"kind": "custom"}) == {"kind": "custom"}
    assert set(plugins.cannot_apply("custom")) == {"hessian", "imu", "rank1"}
    plugins.check_applies("custom", ["gradnorm", "less", "scrub"])
    with pytest.raises(ValueError, match=r"hessian cannot apply to a 'custom' model: K-FAC/EK-FAC"):
        plugins.check_applies("custom", ["gradnorm", "hessian"])


def test_a_plugin_that_fails_to_load_is_a_value_error_naming_it(monkeypatch: pytest.MonkeyPatch) -> None:
    from importlib.metadata import EntryPoint

    broken = EntryPoint(name="broken-kind", value="no_such_module_anywhere:PLUGIN", group=plugins.GROUP)
    monkeypatch.setattr(plugins, "entry_points", lambda group: [broken])
    with pytest.raises(ValueError, match=r"'broken-kind' \(no_such_module_anywhere:PLUGIN\) failed to load: "
                                         "ModuleNotFoundError"):
        plugins.validate_config({"kind": "broken-kind"})
