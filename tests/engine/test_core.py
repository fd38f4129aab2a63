"""Architectures, training, unlearning, audit and the score cache on real data (sklearn digits)."""

from __future__ import annotations

import copy
import warnings

import numpy as np
import pytest
import torch

from tests.engine.digits import digits_split
from workers.engine.architectures import build_model
from workers.engine.audit import audit_model, audit_passes, cv_auc, loss_mia, predict_losses
from workers.engine.cache import load_meta, load_scores, save_scores
from workers.engine.data import ArraySet
from workers.engine.params import escalation, validate_params
from workers.engine.training import train_model
from workers.engine.unlearning import unlearn
from workers.engine.weights import load_weights, save_weights

CPU = torch.device("cpu")
MLP = {"kind": "mlp", "hidden": [64]}
RECIPE = {"optimizer": "adam", "lr": 3e-3, "epochs": 12, "batch_size": 64, "seed": 0}


@pytest.fixture(scope="module")
def digits() -> dict[str, ArraySet]:
    return digits_split(1400)


@pytest.fixture(scope="module")
def trained(digits: dict[str, ArraySet]) -> torch.nn.Module:
    torch.manual_seed(0)
    model = build_model(MLP, input_shape=(64,), n_classes=10)
    metrics = train_model(model, digits["train"], recipe=RECIPE, device=CPU)
    assert metrics["train_accuracy"] > 0.97
    return model


def build() -> torch.nn.Module:
    torch.manual_seed(1)
    return build_model(MLP, input_shape=(64,), n_classes=10)


def test_builders_validate() -> None:
    with pytest.raises(ValueError, match="unknown architecture kind"):
        build_model({"kind": "transformer"}, input_shape=(4,), n_classes=2)
    with pytest.raises(ValueError, match="not a square"):
        build_model({"kind": "cnn"}, input_shape=(10,), n_classes=2)
    cnn = build_model({"kind": "cnn"}, input_shape=(64,), n_classes=10)
    assert cnn(torch.zeros(3, 64)).shape == (3, 10)


def test_training_is_deterministic_and_generalises(digits: dict[str, ArraySet], trained: torch.nn.Module) -> None:
    torch.manual_seed(0)
    again = build_model(MLP, input_shape=(64,), n_classes=10)
    train_model(again, digits["train"], recipe=RECIPE, device=CPU)
    for a, b in zip(trained.parameters(), again.parameters(), strict=True):
        assert torch.equal(a, b)
    report = audit_model(trained, forget=digits["forget"], retain=digits["retain"], test=digits["test"], device=CPU)
    assert report["ta"] > 0.93 and report["ra"] > 0.97


@pytest.mark.parametrize("algorithm", ["finetune", "neggrad", "retrain"])
def test_unlearning_keeps_utility_and_leaves_the_input_alone(
        algorithm: str, digits: dict[str, ArraySet], trained: torch.nn.Module) -> None:
    before = copy.deepcopy(trained.state_dict())
    seen: list[float] = []
    result = unlearn(algorithm, trained, forget=digits["forget"], retain=digits["retain"], params={}, device=CPU,
                     progress=seen.append, build=build, recipe=RECIPE)
    assert all(torch.equal(before[k], v) for k, v in trained.state_dict().items())
    assert seen and seen[-1] == pytest.approx(1.0)
    assert result.metrics["algorithm"] == algorithm and result.metrics["seconds"] > 0
    after = audit_model(result.model, forget=digits["forget"], retain=digits["retain"], test=digits["test"],
                        device=CPU)
    parent = audit_model(trained, forget=digits["forget"], retain=digits["retain"], test=digits["test"], device=CPU)
    assert after["ta"] >= parent["ta"] - 0.03
    assert any(not torch.equal(a, b) for a, b in zip(trained.parameters(), result.model.parameters(), strict=True))


def test_neggrad_raises_the_forget_loss(digits: dict[str, ArraySet], trained: torch.nn.Module) -> None:
    result = unlearn("neggrad", trained, forget=digits["forget"], retain=digits["retain"],
                     params={"alpha": 0.7, "epochs": 2}, device=CPU)
    before = predict_losses(trained, digits["forget"], device=CPU).mean()
    after = predict_losses(result.model, digits["forget"], device=CPU).mean()
    assert after > before * 2


def test_retain_is_required(digits: dict[str, ArraySet], trained: torch.nn.Module) -> None:
    with pytest.raises(ValueError, match="needs retain"):
        unlearn("finetune", trained, forget=digits["forget"], retain=None, params={}, device=CPU)


def test_params_validated_and_escalation() -> None:
    assert validate_params("finetune", {})["epochs"] == 3
    with pytest.raises(ValueError, match="invalid params for finetune"):
        validate_params("finetune", {"epochs": 0})
    with pytest.raises(ValueError, match="invalid params"):
        validate_params("neggrad", {"warp": 9})
    with pytest.raises(ValueError, match=r"epoch: Extra inputs are not permitted \(did you mean 'epochs'\?\).*"
                                         r"\(its params: epochs\)"):
        validate_params("retrain", {"epoch": 3})
    with pytest.raises(ValueError, match="unknown algorithm"):
        validate_params("magic", {})
    ladder = escalation("finetune", {"epochs": 2})
    assert [a for a, _ in ladder] == ["finetune", "finetune", "retrain"]
    assert ladder[1][1]["epochs"] == 4 and ladder[1][1]["lr"] == 2 * ladder[0][1]["lr"]
    assert escalation("retrain", {}) == [("retrain", {"epochs": None})]


def test_loss_mia_detects_separation_not_noise() -> None:
    rng = np.random.default_rng(0)
    same = loss_mia(rng.exponential(1, 200), rng.exponential(1, 400), seed=1)
    assert 0.4 < same["auc"] < 0.6 and same["p_value"] > 0.05 and same["status"] == "ok"
    apart = loss_mia(rng.exponential(0.05, 200), rng.exponential(1, 400), seed=1)
    assert apart["auc"] > 0.85 and apart["p_value"] < 0.01
    few = loss_mia(rng.exponential(1, 10), rng.exponential(1, 50))
    assert few["status"] == "insufficient" and few["n"] == 10


def test_cv_auc_equals_sklearn_logistic_regression() -> None:
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_score

    rng = np.random.default_rng(4)
    for scale in (1.0, 0.4):
        feats = np.log(np.r_[rng.exponential(scale, 70), rng.exponential(1, 70)])
        labels = np.r_[np.ones(70), np.zeros(70)]
        cv = StratifiedKFold(10, shuffle=True, random_state=2)
        kit = cross_val_score(LogisticRegression(), feats.reshape(-1, 1), labels, cv=cv, scoring="roc_auc").mean()
        assert cv_auc(feats, labels, list(cv.split(feats.reshape(-1, 1), labels))) == pytest.approx(kit)


def test_audit_policy() -> None:
    base = {"ra": 0.95, "ta": 0.93, "mia": {"status": "ok", "auc": 0.5, "p_value": 0.6}}
    assert audit_passes(base, base) == (True, [])
    worse = base | {"ta": 0.90}
    ok, reasons = audit_passes(worse, base)
    assert not ok and "test accuracy" in reasons[0]
    leaky = base | {"mia": {"status": "ok", "auc": 0.7, "p_value": 0.01}}
    assert not audit_passes(leaky, base)[0]
    assert audit_passes(leaky | {"mia": {"status": "ok", "auc": 0.7, "p_value": 0.2}}, base)[0]  # not significant
    assert audit_passes(leaky, base, retrained=True)[0]
    assert audit_passes(leaky, base, reference_auc=0.69)[0] and not audit_passes(leaky, base, reference_auc=0.6)[0]
    assert audit_passes(base | {"mia": {"status": "insufficient", "auc": 0.9, "p_value": 0.0}}, base)[0]


def test_weights_and_score_cache_round_trip(tmp_path, trained: torch.nn.Module) -> None:  # noqa: ANN001
    sha = save_weights(trained, tmp_path / "w.safetensors")
    assert len(sha) == 64 and not list(tmp_path.glob("*.tmp"))
    loaded = load_weights(build(), tmp_path / "w.safetensors")
    assert all(torch.equal(a, b) for a, b in zip(trained.parameters(), loaded.parameters(), strict=True))
    with pytest.raises(RuntimeError):
        load_weights(build_model({"kind": "linear"}, input_shape=(64,), n_classes=10), tmp_path / "w.safetensors")
    scores = np.arange(5, dtype=np.float64)
    meta = save_scores(tmp_path, "gradnorm", scores, meta={"method": "gradnorm"})
    assert meta["n"] == 5 and load_meta(tmp_path, "gradnorm")["sha256"] == meta["sha256"]
    mm = load_scores(tmp_path, "gradnorm")
    assert isinstance(mm, np.memmap) and mm.tolist() == scores.tolist()
    assert load_scores(tmp_path, "hessian") is None


def test_cv_auc_with_a_one_class_training_fold_is_a_number() -> None:
    # 2 members among 12: a fold split can leave a training fold without members (the audit of a tiny request)
    feats, labels = np.arange(12.0), np.r_[np.ones(2), np.zeros(10)]
    folds = [(np.arange(2, 12), np.arange(0, 4)), (np.r_[0:2, 4:12], np.arange(2, 4))]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no 'mean of empty slice'
        auc = cv_auc(feats, labels, folds)
    assert np.isfinite(auc)
