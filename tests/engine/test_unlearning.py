"""The paper's unlearning algorithms (scrub, rank1, rank2, iau, imu) and the confidence MIA, on sklearn digits.

The model is an mlp overfit to 600 digits, so the forget set (10% of them, at random) is measurably 'member': its
loss is far below the test loss, and a model retrained without it scores the forget set like test points.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from tests.engine.digits import digits_split
from workers.engine.architectures import build_model
from workers.engine.audit import accuracy, audit_model, confidence_mia, predict_losses
from workers.engine.data import ArraySet
from workers.engine.params import escalation, validate_params
from workers.engine.training import per_sample_grad_norms, train_model
from workers.engine.unlearning import ALGORITHMS, unlearn
from workers.engine.unlearning.imu import head_influences, head_inputs, head_of, imu_weights
from workers.engine.unlearning.rank2 import target_weights

CPU = torch.device("cpu")
MLP = {"kind": "mlp", "hidden": [128]}
RECIPE = {"optimizer": "adam", "lr": 3e-3, "epochs": 60, "batch_size": 64, "seed": 0}
NEW = ["scrub", "rank1", "rank2", "iau", "imu"]


@pytest.fixture(scope="module", autouse=True)
def _one_thread() -> object:
    """Tiny models run fastest on one thread, and do not stall when other processes hold the cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def digits() -> dict[str, ArraySet]:
    return digits_split(600)


def build() -> torch.nn.Module:
    torch.manual_seed(1)
    return build_model(MLP, input_shape=(64,), n_classes=10)


@pytest.fixture(scope="module")
def trained(digits: dict[str, ArraySet]) -> torch.nn.Module:
    torch.manual_seed(0)
    model = build_model(MLP, input_shape=(64,), n_classes=10)
    assert train_model(model, digits["train"], recipe=RECIPE, device=CPU)["train_accuracy"] == 1.0
    return model


@pytest.fixture(scope="module")
def retrained(digits: dict[str, ArraySet], trained: torch.nn.Module) -> torch.nn.Module:
    return unlearn("retrain", trained, forget=digits["forget"], retain=digits["retain"], params={}, device=CPU,
                   build=build, recipe=RECIPE).model


def _loss(model: torch.nn.Module, data: ArraySet) -> float:
    return float(predict_losses(model, data, device=CPU).mean())


def test_every_algorithm_is_registered_with_params() -> None:
    assert set(NEW) <= set(ALGORITHMS)
    for algorithm in NEW:
        assert validate_params(algorithm, {}) == validate_params(algorithm, None)


@pytest.mark.parametrize("algorithm", NEW)
def test_forgets_toward_retrain_keeps_utility_is_deterministic(
        algorithm: str, digits: dict[str, ArraySet], trained: torch.nn.Module, retrained: torch.nn.Module) -> None:
    before = copy.deepcopy(trained.state_dict())
    retain = None if algorithm == "imu" else digits["retain"]  # IMU is forget-set only
    seen: list[float] = []
    result = unlearn(algorithm, trained, forget=digits["forget"], retain=retain, params={}, device=CPU, seed=3,
                     progress=seen.append)
    assert all(torch.equal(before[k], v) for k, v in trained.state_dict().items()), "input model changed"
    assert seen and seen[-1] == pytest.approx(1.0) and seen == sorted(seen) and 0 < seen[0]
    assert result.metrics["algorithm"] == algorithm and result.metrics["params"] == validate_params(algorithm, {})

    # Forgetting: the forget loss rises, toward (not past twice) the loss a model that never saw it has.
    f_before, f_after, f_ref = (_loss(m, digits["forget"]) for m in (trained, result.model, retrained))
    assert f_before < f_ref
    assert f_after > 1.05 * f_before, (f_before, f_after)
    assert abs(f_after - f_ref) < abs(f_before - f_ref)
    # Utility: retain and test accuracy hold (the default audit policy allows 2 points; 5 here).
    for split in ("retain", "test"):
        parent, after = (accuracy(m, digits[split], device=CPU) for m in (trained, result.model))
        assert after >= parent - 0.05, (split, parent, after)

    again = unlearn(algorithm, trained, forget=digits["forget"], retain=retain, params={}, device=CPU, seed=3)
    for a, b in zip(result.model.parameters(), again.model.parameters(), strict=True):
        assert torch.equal(a, b)


def test_imu_ignores_retain_data_and_offers_other_weightings(
        digits: dict[str, ArraySet], trained: torch.nn.Module) -> None:
    without = unlearn("imu", trained, forget=digits["forget"], retain=None, params={}, device=CPU)
    with_retain = unlearn("imu", trained, forget=digits["forget"], retain=digits["retain"], params={}, device=CPU)
    for a, b in zip(without.model.parameters(), with_retain.model.parameters(), strict=True):
        assert torch.equal(a, b)
    # Only the head moves.
    head = head_of(without.model)
    head_ids = {id(p) for p in head.parameters()}
    for p, q in zip(trained.parameters(), without.model.parameters(), strict=True):
        assert torch.equal(p, q) != (id(q) in head_ids)
    assert 1 <= without.metrics["n_ascended"] < len(digits["forget"])  # the top share of negative influences
    for weighting in ("gradnorm", "uniform"):
        r = unlearn("imu", trained, forget=digits["forget"], retain=None, params={"weighting": weighting}, device=CPU)
        assert r.metrics["n_ascended"] == len(digits["forget"]) and r.metrics["weighting"] == weighting


def test_imu_influences_match_autograd(digits: dict[str, ArraySet], trained: torch.nn.Module) -> None:
    """I_i = −g_iᵀ F⁻¹ ḡ over the head's weight and bias, against per-sample gradients from autograd."""
    forget = ArraySet(digits["forget"].x[:12], digits["forget"].y[:12])
    head = head_of(trained)
    x, y = torch.as_tensor(forget.x), torch.as_tensor(forget.y, dtype=torch.long)
    feats = head_inputs(trained, head, x)
    head64, feats64 = copy.deepcopy(head).double(), feats.double()
    grads = []
    for i in range(len(y)):
        g = torch.autograd.grad(F.cross_entropy(head64(feats64[i:i + 1]), y[i:i + 1]), list(head64.parameters()))
        grads.append(torch.cat([t.flatten() for t in g]))
    G = torch.stack(grads)
    fisher = (G ** 2).mean(0) + 0.01
    expected = -(G @ (G.mean(0) / fisher))
    influence, gradnorm = head_influences(head, feats, y, 0.01)
    assert torch.allclose(influence, expected, rtol=1e-9, atol=1e-12)
    assert torch.allclose(gradnorm, G.norm(dim=1), rtol=1e-9)
    params = validate_params("imu", {"top_fraction": 0.5})
    w, how = imu_weights(influence.numpy(), gradnorm.numpy(), params)
    negative = (influence < 0).numpy()
    assert how == "influence" and not w[~negative].any()
    assert (w > 0).sum() == max(int(negative.sum() * 0.5), 1)


def test_retain_based_algorithms_need_retain(digits: dict[str, ArraySet], trained: torch.nn.Module) -> None:
    for algorithm in ("scrub", "rank1", "rank2", "iau"):
        with pytest.raises(ValueError, match="needs retain"):
            unlearn(algorithm, trained, forget=digits["forget"], retain=None, params={}, device=CPU)


@pytest.mark.parametrize(("algorithm", "params"), [
    ("scrub", {"lr": 0}), ("scrub", {"max_epochs": -1}), ("rank1", {"rounds": 0}), ("rank1", {"temperature": 0}),
    ("rank2", {"reinit_fraction": 1.5}), ("rank2", {"target": "attention"}), ("iau", {"steps": 0}),
    ("iau", {"lr": "fast"}), ("imu", {"weighting": "random"}), ("imu", {"top_fraction": 0}), ("imu", {"warp": 1}),
])
def test_invalid_params_are_refused(algorithm: str, params: dict, digits: dict[str, ArraySet],
                                    trained: torch.nn.Module) -> None:
    with pytest.raises(ValueError, match=f"invalid params for {algorithm}"):
        unlearn(algorithm, trained, forget=digits["forget"], retain=digits["retain"], params=params, device=CPU)


@pytest.mark.parametrize(("algorithm", "stronger"), [
    ("scrub", "max_epochs"), ("rank1", "contrast_lr"), ("rank2", "reinit_fraction"), ("iau", "lr"), ("imu", "lr"),
])
def test_escalation_is_once_stronger_then_retrain(algorithm: str, stronger: str) -> None:
    ladder = escalation(algorithm, {})
    assert [a for a, _ in ladder] == [algorithm, algorithm, "retrain"]
    assert ladder[1][1][stronger] > ladder[0][1][stronger]
    assert ladder[1][1] == validate_params(algorithm, ladder[1][1])
    assert ladder[-1] == ("retrain", {"epochs": None})
    top = escalation(algorithm, ladder[1][1])[1][1]  # escalating an escalation stays valid
    assert top == validate_params(algorithm, top)
    assert escalation("scrub", {"epochs": 3, "max_epochs": 3})[1][1]["epochs"] >= 7  # repair epochs remain


def test_rank2_targets_conv_weights_when_the_model_has_them(digits: dict[str, ArraySet]) -> None:
    torch.manual_seed(0)
    cnn = build_model({"kind": "cnn", "channels": [4, 8], "hidden": 16}, input_shape=(64,), n_classes=10)
    convs = [m.weight for m in cnn.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [id(w) for w in target_weights(cnn, "auto")] == [id(w) for w in convs]
    assert len(target_weights(cnn, "linear")) == 2 and len(target_weights(cnn, "all")) == 4
    mlp = build()
    assert len(target_weights(mlp, "auto")) == 2 and target_weights(mlp, "conv") == []
    r = unlearn("rank2", cnn, forget=digits["forget"], retain=digits["retain"], params={"epochs": 1}, device=CPU)
    assert r.metrics["reinit_tensors"] == 2
    assert r.metrics["reinitialised"] == sum(int(0.3 * w.numel()) for w in convs)
    with pytest.raises(ValueError, match="no conv weights"):
        unlearn("rank2", mlp, forget=digits["forget"], retain=digits["retain"], params={"target": "conv"},
                device=CPU)


def test_confidence_mia_sees_the_retrained_model_forget(
        digits: dict[str, ArraySet], trained: torch.nn.Module, retrained: torch.nn.Module) -> None:
    sets = {k: digits[k] for k in ("forget", "retain", "test")}
    original = confidence_mia(trained, **sets, device=CPU)
    reference = confidence_mia(retrained, **sets, device=CPU)
    for m in (original, reference):
        assert m["status"] == "ok" and 0 <= m["efficacy"] <= 1 and 0 <= m["by_entropy"] <= 1
        assert m["n_shadow"] == len(digits["retain"]) and m["n_forget"] == len(digits["forget"])
        assert m["attack_accuracy"] > 0.5  # an overfit model leaks membership through its confidence
    # The original calls its training points members; the retrained model's forget points look like test points.
    assert original["efficacy"] < 0.05 and reference["efficacy"] >= original["efficacy"] + 0.05, (original, reference)
    assert confidence_mia(trained, **sets, device=CPU) == original  # seeded
    bounded = confidence_mia(trained, **sets, device=CPU, max_points=100)
    assert bounded["n_shadow"] == 100
    tiny = confidence_mia(trained, forget=ArraySet(digits["forget"].x[:5], digits["forget"].y[:5]),
                          retain=digits["retain"], test=digits["test"], device=CPU)
    assert tiny["status"] == "insufficient"
    report = audit_model(trained, **sets, device=CPU)
    assert {"ua", "fa", "ra", "ta", "forget_loss", "mia", "mia_conf"} <= set(report)
    assert report["mia_conf"] == original and report["mia"]["status"] == "ok"


def test_gradient_restriction_recipe_option(digits: dict[str, ArraySet]) -> None:
    """IAU's training loss CE + α·mean_i ‖∇θ CE_i‖₂ (recipe grad_restriction), by double backprop: one full-batch
    SGD step equals the loop-computed one; α = 0 is the plain recipe, bit for bit."""
    small = ArraySet(digits["train"].x[:16], digits["train"].y[:16])
    recipe = {"optimizer": "sgd", "lr": 0.1, "epochs": 1, "batch_size": 16, "seed": 0}
    models = {}
    for alpha in (None, 0.0, 0.5):
        torch.manual_seed(0)
        models[alpha] = build_model({"kind": "mlp", "hidden": [16]}, input_shape=(64,), n_classes=10)
        train_model(models[alpha], small, recipe=recipe if alpha is None else recipe | {"grad_restriction": alpha},
                    device=CPU)
    for a, b in zip(models[None].parameters(), models[0.0].parameters(), strict=True):
        assert torch.equal(a, b)
    torch.manual_seed(0)
    manual = build_model({"kind": "mlp", "hidden": [16]}, input_shape=(64,), n_classes=10)
    params = list(manual.parameters())
    x, y = torch.as_tensor(small.x), torch.as_tensor(small.y, dtype=torch.long)
    norms = []
    for i in range(len(y)):
        g = torch.autograd.grad(F.cross_entropy(manual(x[i:i + 1]), y[i:i + 1]), params, create_graph=True)
        norms.append(torch.sqrt(sum((t ** 2).sum() for t in g)))
    assert torch.allclose(per_sample_grad_norms(manual, x, y), torch.stack(norms), rtol=1e-5)
    loss = F.cross_entropy(manual(x), y) + 0.5 * torch.stack(norms).mean()
    with torch.no_grad():
        for p, g in zip(params, torch.autograd.grad(loss, params), strict=True):
            p -= 0.1 * g
    for a, b, c in zip(models[0.5].parameters(), manual.parameters(), models[0.0].parameters(), strict=True):
        assert torch.allclose(a, b, atol=1e-6) and not torch.allclose(a, c, atol=1e-6)


# --- the per-point options (papers.md): the paper's forms stay the defaults ---

def test_imu_per_point_selection_ascends_every_requested_point(
        digits: dict[str, ArraySet], trained: torch.nn.Module) -> None:
    paper = unlearn("imu", trained, forget=digits["forget"], retain=None, params={}, device=CPU)
    per_point = unlearn("imu", trained, forget=digits["forget"], retain=None,
                        params={"selection": "per_point"}, device=CPU)
    assert paper.metrics["n_ascended"] < len(digits["forget"])
    assert per_point.metrics["n_ascended"] == len(digits["forget"])
    assert per_point.metrics["weighting"] == "influence per point"
    xf, yf = torch.as_tensor(digits["forget"].x), torch.as_tensor(digits["forget"].y)
    head = head_of(trained)
    influence, gradnorm = head_influences(head, head_inputs(trained, head, xf), yf, 0.01)
    w, _ = imu_weights(influence.numpy(), gradnorm.numpy(), validate_params("imu", {"selection": "per_point"}))
    mag = np.sqrt(np.abs(influence.numpy()))
    assert (w > 0).all() and w.min() >= np.quantile(mag, 0.1) - 1e-12 and w.max() <= np.quantile(mag, 1.0)


def test_iau_scaled_step_grows_with_the_forget_set(digits: dict[str, ArraySet], trained: torch.nn.Module) -> None:
    def moved(n: int, params: dict) -> tuple[float, dict]:
        forget = ArraySet(digits["forget"].x[:n], digits["forget"].y[:n])
        r = unlearn("iau", trained, forget=forget, retain=digits["retain"], params=params, device=CPU)
        return float(sum(((a - b) ** 2).sum() for a, b in zip(trained.parameters(), r.model.parameters(),
                                                               strict=True)).detach()) ** 0.5, r.metrics

    adam = [moved(n, {})[0] for n in (6, 60)]
    scaled = [moved(n, {"step": "scaled"}) for n in (6, 60)]
    # The paper's step is a sign step: the same size for 6 points as for 60 (within 5%).
    assert abs(adam[1] - adam[0]) < 0.05 * adam[0]
    # The scaled one is eta·|F|/n (n = |F| + |R|): ten times the points, a ~10× scale and a longer step.
    n_r = len(digits["retain"])
    for n, (_, metrics) in zip((6, 60), scaled, strict=True):
        assert metrics["step_scale"] == pytest.approx(3.0 * n / (n + n_r))
    assert scaled[1][1]["step"] == "scaled" and scaled[1][0] > 2 * scaled[0][0]


@pytest.mark.parametrize("algorithm,params", [("iau", {"step": "newton"}), ("imu", {"selection": "all"}),
                                              ("imu", {"floor_quantile": 1.5})])
def test_unknown_option_values_are_refused(algorithm: str, params: dict) -> None:
    with pytest.raises(ValueError, match=f"invalid params for {algorithm}"):
        validate_params(algorithm, params)
