"""Hessian (K-FAC / EK-FAC / exact) and LESS self-influence: exact algebra, and fidelity to leave-one-out."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.linalg import cho_factor, cho_solve
from scipy.stats import spearmanr
from sklearn.datasets import load_digits
from torch import nn

from workers.engine.architectures import build_model
from workers.engine.data import ArraySet
from workers.engine.influence import SCORERS, compute_self_influence
from workers.engine.influence.gradnorm import gradnorm_self_influence
from workers.engine.influence.hessian import hessian_self_influence
from workers.engine.influence.kfac import fit_factors, load_factors, save_factors
from workers.engine.influence.less import (
    Checkpoint,
    CheckpointRecorder,
    less_self_influence,
    load_checkpoints,
    save_checkpoints,
)
from workers.engine.training import train_model

CPU = torch.device("cpu")
L2 = 1e-3


def random_set(shape: tuple[int, ...], n: int = 23, classes: int = 4, seed: int = 0) -> ArraySet:
    rng = np.random.default_rng(seed)
    return ArraySet(rng.normal(size=(n, *shape)).astype(np.float32), rng.integers(0, classes, n))


def per_sample_grads(model: nn.Module, data: ArraySet) -> list[dict[str, torch.Tensor]]:
    out = []
    for xi, yi in zip(data.x, data.y, strict=True):
        loss = F.cross_entropy(model(torch.as_tensor(xi[None])), torch.as_tensor([yi]))
        names, params = zip(*model.named_parameters(), strict=True)
        out.append({n: g.double() for n, g in zip(names, torch.autograd.grad(loss, params), strict=True)})
    return out


def layer_grad(grads: dict[str, torch.Tensor], name: str) -> torch.Tensor:
    w, b = grads[f"{name}.weight"], grads[f"{name}.bias"]
    return torch.cat([w.reshape(w.shape[0], -1), b[:, None]], 1)


def decile_overlap(scores: np.ndarray, truth: np.ndarray) -> float:
    k = len(truth) // 10
    return len(set(np.argsort(scores)[:k]) & set(np.argsort(truth)[:k])) / k


@pytest.mark.parametrize("spec, shape", [({"kind": "mlp", "hidden": [7, 5]}, (6,)),
                                         ({"kind": "cnn", "channels": [3], "hidden": 5}, (2, 6, 6))])
@pytest.mark.parametrize("ekfac", [False, True])
def test_rotated_form_equals_dense_kronecker_solve(spec: dict, shape: tuple[int, ...], ekfac: bool) -> None:
    torch.manual_seed(0)
    model = build_model(spec, input_shape=shape, n_classes=4)
    ds, lam = random_set(shape), 0.05
    factors = fit_factors(model, ds, device=CPU, batch_size=8, fisher="empirical", ekfac=ekfac)
    fast = hessian_self_influence(model, ds, device=CPU, batch_size=8, damping=lam, fisher="empirical",
                                  ekfac=ekfac)
    grads = per_sample_grads(model, ds)
    dense = np.zeros(len(ds))
    for name, f in factors.layers.items():
        if ekfac:  # EK-FAC eigenvalues are the mean squared per-sample gradients in the Kronecker eigenbasis
            rotated = torch.stack([f.s_eigvecs.T @ layer_grad(g, name) @ f.a_eigvecs for g in grads])
            np.testing.assert_allclose(f.corrected.numpy(), (rotated ** 2).mean(0).numpy(), rtol=1e-4, atol=1e-9)
            basis = torch.kron(f.s_eigvecs, f.a_eigvecs)
            block = basis @ torch.diag(f.corrected.flatten()) @ basis.T
        else:
            block = torch.kron(f.s_matrix(), f.a_matrix())  # row-major vec(G): (S ⊗ A) vec(G) = vec(S G A)
        inv = torch.linalg.inv(block + lam * torch.eye(len(block), dtype=block.dtype))
        for i, g in enumerate(grads):
            vec = layer_grad(g, name).flatten()
            dense[i] += float(vec @ inv @ vec)
    np.testing.assert_allclose(fast, dense, rtol=1e-5)


# --- fidelity: L2 multinomial logistic regression on digits against exact leave-one-out retraining ---

@pytest.fixture(scope="module")
def logistic() -> dict:
    """Objective (1/N) Σ_i w_i ℓ_i(W) + (L2/2)‖W‖² (bias included), solved by Newton to machine precision."""
    d = load_digits()
    x, y = d.data / 16, d.target
    n, c = len(x), 10
    xa, onehot = np.hstack([x, np.ones((n, 1))]), np.eye(c)[y]

    def probs(w: np.ndarray) -> np.ndarray:
        z = xa @ w.T
        e = np.exp(z - z.max(1, keepdims=True))
        return e / e.sum(1, keepdims=True)

    def gradient(w: np.ndarray, weights: np.ndarray) -> np.ndarray:
        return ((probs(w) - onehot) * weights[:, None]).T @ xa / n + L2 * w

    def hessian(w: np.ndarray) -> np.ndarray:
        p, dim = probs(w), xa.shape[1]
        h = np.zeros((c, dim, c, dim))
        for k in range(c):
            h[k, :, k, :] = (xa * p[:, k:k + 1]).T @ xa
        m = (p[:, :, None] * xa[:, None, :]).reshape(n, -1)
        return (h.reshape(c * dim, c * dim) - m.T @ m) / n + L2 * np.eye(c * dim)

    def own_loss(w: np.ndarray) -> np.ndarray:
        return -np.log(probs(w)[np.arange(n), y])

    w, ones = np.zeros((c, xa.shape[1])), np.ones(n)
    for _ in range(30):
        g = gradient(w, ones)
        if np.abs(g).max() < 1e-14:
            break
        w -= np.linalg.solve(hessian(w), g.ravel()).reshape(w.shape)
    assert np.abs(gradient(w, ones)).max() < 1e-12
    # Leave one out, warm-started from the optimum; the full Hessian is a fixed preconditioner that
    # converges in a few steps, since removing one of 1,797 points barely changes the curvature.
    chol, base = cho_factor(hessian(w)), own_loss(w)
    points = np.sort(np.random.default_rng(0).choice(n, 200, replace=False))
    loo = np.empty(len(points))
    for j, i in enumerate(points):
        weights, v = ones.copy(), w.copy()
        weights[i] = 0
        for _ in range(60):
            g = gradient(v, weights)
            if np.abs(g).max() < 1e-13:
                break
            v -= cho_solve(chol, g.ravel()).reshape(v.shape)
        assert np.abs(gradient(v, weights)).max() < 1e-13
        loo[j] = own_loss(v)[i] - base[i]
    model = build_model({"kind": "linear"}, input_shape=(64,), n_classes=c)
    with torch.no_grad():
        model.net[0].weight.copy_(torch.as_tensor(w[:, :-1]))
        model.net[0].bias.copy_(torch.as_tensor(w[:, -1]))
    return {"model": model, "data": ArraySet(x.astype(np.float32), y), "points": points, "loo": loo}


def test_hessian_matches_leave_one_out(logistic: dict) -> None:
    model, ds, points, loo = logistic["model"], logistic["data"], logistic["points"], logistic["loo"]
    assert (loo > 0).all()
    report = {}
    for label, opts in [("exact", {"exact": True}), ("kfac", {"ekfac": False}), ("ekfac", {"ekfac": True})]:
        s = hessian_self_influence(model, ds, device=CPU, damping=L2, **opts)[points]
        report[label] = (spearmanr(s, loo)[0], decile_overlap(s, loo))
    g = gradnorm_self_influence(model, ds, device=CPU)[points]
    report["gradnorm"] = (spearmanr(g, loo)[0], decile_overlap(g, loo))
    less, info = less_self_influence(model, ds, device=CPU, checkpoints=None)
    report["less (final weights)"] = (spearmanr(less[points], loo)[0], decile_overlap(less[points], loo))
    # LESS proper: the same objective trained by Adam (weight decay = the L2 term), three checkpoints.
    torch.manual_seed(0)
    adam_model = build_model({"kind": "linear"}, input_shape=(64,), n_classes=10)
    recorder = CheckpointRecorder(epochs=40, k=3)
    train_model(adam_model, ds, device=CPU, on_epoch_end=recorder, recipe={
        "optimizer": "adam", "lr": 1e-2, "epochs": 40, "batch_size": 64, "weight_decay": L2, "seed": 0})
    less_ck, _ = less_self_influence(adam_model, ds, device=CPU, checkpoints=recorder.checkpoints)
    report["less (adam checkpoints)"] = (spearmanr(less_ck[points], loo)[0], decile_overlap(less_ck[points], loo))
    for label, (rho, overlap) in report.items():
        print(f"{label:24s} spearman {rho:.5f}  lowest-decile overlap {overlap:.2f}")
    assert report["exact"][0] >= 0.99 and report["exact"][1] >= 0.95
    assert report["ekfac"][0] >= 0.99 and report["kfac"][0] >= 0.99
    for label in ("gradnorm", "less (final weights)", "less (adam checkpoints)"):
        assert report[label][0] >= 0.9


# --- LESS ---

def brute_force_adam(model: nn.Module, data: ArraySet, checkpoints: list[Checkpoint],
                     own_term: bool = False) -> np.ndarray:
    total = np.zeros(len(data))
    for ck in checkpoints:
        model.load_state_dict(ck.state_dict)
        b1, b2 = ck.betas
        for i, g in enumerate(per_sample_grads(model, data)):
            for name, gi in g.items():
                shared = 0.0 if own_term else b1 * ck.exp_avg[name].double()
                m = (shared + (1 - b1) * gi) / (1 - b1 ** ck.step)
                v = (b2 * ck.exp_avg_sq[name].double() + (1 - b2) * gi ** 2) / (1 - b2 ** ck.step)
                total[i] += ck.lr * float((m / (v.sqrt() + ck.eps) * gi).sum())
    return total


def tiny_models() -> list[tuple[nn.Module, tuple[int, ...]]]:
    torch.manual_seed(0)
    return [(build_model({"kind": "mlp", "hidden": [9]}, input_shape=(6,), n_classes=4), (6,)),
            (build_model({"kind": "cnn", "channels": [3], "hidden": 5}, input_shape=(2, 6, 6), n_classes=4),
             (2, 6, 6)),
            (nn.Sequential(nn.Linear(5, 7), nn.ReLU(), nn.Flatten(), nn.Linear(21, 4)), (3, 5)),
            (nn.Sequential(nn.Linear(6, 8), nn.LayerNorm(8), nn.ReLU(), nn.Linear(8, 4)), (6,))]


@pytest.mark.parametrize("case", range(4), ids=["mlp", "cnn", "sequence", "layernorm-vmap"])
def test_less_adam_equals_brute_force(case: int, tmp_path) -> None:
    model, shape = tiny_models()[case]
    ds = random_set(shape, n=29)
    recorder = CheckpointRecorder(epochs=4, k=2)
    train_model(model, ds, device=CPU, on_epoch_end=recorder,
                recipe={"optimizer": "adam", "lr": 1e-2, "epochs": 4, "batch_size": 8, "seed": 0})
    assert [ck.step for ck in recorder.checkpoints] == [8, 16]
    recorder.save(tmp_path)
    loaded = load_checkpoints(tmp_path)
    assert [(ck.step, ck.lr, ck.betas, ck.optimizer) for ck in loaded] == [
        (ck.step, ck.lr, ck.betas, ck.optimizer) for ck in recorder.checkpoints]
    scores, info = less_self_influence(model, ds, device=CPU, checkpoints=loaded, batch_size=7)
    assert info["source"] == "checkpoints" and info["n"] == 2
    np.testing.assert_allclose(scores, brute_force_adam(model, ds, recorder.checkpoints), rtol=1e-4)
    own, info = less_self_influence(model, ds, device=CPU, checkpoints=loaded, batch_size=7, own_term=True)
    assert info["term"] == "own"
    np.testing.assert_allclose(own, brute_force_adam(model, ds, recorder.checkpoints, own_term=True), rtol=1e-4)


def test_less_own_term_is_never_negative_where_the_paper_form_is() -> None:
    """The shared momentum makes the paper's LESS self-influence negative for points against it, and fills the
    lowest decile with them; the own-term option (scorer "less_own") scores every point ≥ 0."""
    d = load_digits()
    ds = ArraySet((d.data[:500] / 16).astype(np.float32), d.target[:500])
    torch.manual_seed(0)
    model = build_model({"kind": "mlp", "hidden": [128]}, input_shape=(64,), n_classes=10)
    recorder = CheckpointRecorder(epochs=60, k=3)  # trained to convergence: gradients small beside the momentum
    train_model(model, ds, device=CPU, on_epoch_end=recorder,
                recipe={"optimizer": "adam", "lr": 3e-3, "epochs": 60, "batch_size": 32, "seed": 0})
    paper = compute_self_influence("less", model, ds, device=CPU, checkpoints=recorder.checkpoints)
    own = compute_self_influence("less_own", model, ds, device=CPU, checkpoints=recorder.checkpoints)
    assert (paper < 0).mean() > 0.03, (paper < 0).mean()  # 7.4% measured
    assert (own >= 0).all()
    # The own term tracks the gradient size; the paper form's lowest decile does not.
    norms = gradnorm_self_influence(model, ds, device=CPU)
    low = len(ds) // 10
    own_low, paper_low = (np.argsort(s, kind="stable")[:low] for s in (own, paper))
    assert spearmanr(own, norms)[0] > spearmanr(paper, norms)[0]
    assert np.median(norms[own_low]) < np.median(norms[paper_low])


def test_less_sgd_is_lr_weighted_squared_gradnorm(tmp_path) -> None:
    torch.manual_seed(0)
    model = build_model({"kind": "mlp", "hidden": [9]}, input_shape=(6,), n_classes=4)
    ds = random_set((6,), n=40)
    recorder = CheckpointRecorder(epochs=4, k=3)
    train_model(model, ds, device=CPU, on_epoch_end=recorder,
                recipe={"optimizer": "sgd", "lr": 0.05, "epochs": 4, "batch_size": 8, "seed": 0})
    assert len(recorder.checkpoints) == 3 and recorder.keep == {0, 2, 3}
    save_checkpoints(tmp_path, recorder.checkpoints)
    scores, info = less_self_influence(model, ds, device=CPU, checkpoints=load_checkpoints(tmp_path))
    expected = np.zeros(len(ds))
    for ck in recorder.checkpoints:
        probe = build_model({"kind": "mlp", "hidden": [9]}, input_shape=(6,), n_classes=4)
        probe.load_state_dict(ck.state_dict)
        expected += ck.lr * gradnorm_self_influence(probe, ds, device=CPU) ** 2
    np.testing.assert_allclose(scores, expected, rtol=1e-6)
    assert info == {"source": "checkpoints", "n": 3, "optimizers": ["sgd"], "steps": [0, 0, 0]}


def test_less_without_checkpoints_says_so() -> None:
    torch.manual_seed(0)
    model = build_model({"kind": "mlp", "hidden": [9]}, input_shape=(6,), n_classes=4)
    ds = random_set((6,))
    scores, info = less_self_influence(model, ds, device=CPU, checkpoints=None)
    assert info == {"source": "final-weights (no checkpoints)"}
    np.testing.assert_allclose(scores, gradnorm_self_influence(model, ds, device=CPU) ** 2, rtol=1e-12)
    meta: dict = {}
    via_registry = compute_self_influence("less", model, ds, device=CPU, info=meta)
    assert meta["source"] == "final-weights (no checkpoints)"
    np.testing.assert_allclose(via_registry, scores)


# --- registry, cache, and the cnn ---

def test_registry_and_factor_cache(tmp_path) -> None:
    assert {"gradnorm", "hessian", "less", "less_own"} <= set(SCORERS)
    torch.manual_seed(0)
    model = build_model({"kind": "cnn", "channels": [3], "hidden": 5}, input_shape=(2, 6, 6), n_classes=4)
    ds = random_set((2, 6, 6))
    first: dict = {}
    s1 = compute_self_influence("hessian", model, ds, device=CPU, factors_dir=tmp_path, info=first)
    again: dict = {}
    s2 = compute_self_influence("hessian", model, ds, device=CPU, factors_dir=tmp_path, info=again)
    assert (first["factors"], again["factors"]) == ("fitted", "loaded")
    np.testing.assert_allclose(s1, s2, rtol=1e-6)
    factors = load_factors(tmp_path)
    assert factors is not None and set(factors.layers) == {"net.0", "net.4", "net.6"}
    save_factors(factors, tmp_path / "copy")
    copy = load_factors(tmp_path / "copy")
    for name, f in factors.layers.items():
        torch.testing.assert_close(copy.layers[name].corrected, f.corrected)
    with torch.no_grad():  # new weights (a new version): the cached factors no longer apply
        model.net[6].bias.add_(1.0)
    changed: dict = {}
    compute_self_influence("hessian", model, ds, device=CPU, factors_dir=tmp_path, info=changed)
    assert changed["factors"] == "fitted"
    with pytest.raises(TypeError):
        compute_self_influence("gradnorm", model, ds, device=CPU, damping=0.1)


def test_hessian_on_cnn_tracks_gradnorm() -> None:
    d = load_digits()
    ds = ArraySet((d.data / 16).astype(np.float32), d.target)
    torch.manual_seed(0)
    model = build_model({"kind": "cnn", "channels": [8, 16], "hidden": 32}, input_shape=(64,), n_classes=10)
    train_model(model, ds, device=CPU, recipe={"optimizer": "adam", "lr": 3e-3, "epochs": 3, "batch_size": 64})
    info: dict = {}
    s = compute_self_influence("hessian", model, ds, device=CPU, info=info)
    g = compute_self_influence("gradnorm", model, ds, device=CPU)
    assert info["method"] == "ekfac" and set(info["damping"]) == {"net.0", "net.3", "net.7", "net.9"}
    assert np.isfinite(s).all() and (s >= 0).all()
    assert spearmanr(s, g)[0] > 0.5
