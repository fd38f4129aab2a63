"""Evidence (issue 13): the audit's false-alarm rate on retrains, its power by request size, the size-mismatch
correction, influence scorers vs the measured separation, and the certified free set checked independently.

    .venv/bin/python -m bench.evidence [--setting digits|fashion] [--quick|--large] [--seeds 100] [--sweep-seeds 30]
                                       [--out bench/results/evidence.json]

Settings (the fixtures of tests/integration/test_evidence.py):
- memorisation: scikit-learn digits, 400 training points with 25% of the labels flipped (seeded), 350 test points,
  MLP [128], Adam lr 3e-3, 100 epochs, batch 32. The target ("parent") is trained on all 400 points with seed 0.
- blobs (non-memorising): 1000 points from 4 Gaussian classes in 8 dimensions, a linear model, Adam lr 1e-2,
  10 epochs, batch 64.
- fashion (`--setting fashion`, alone; writes evidence-fashion.json): 5,000 Fashion-MNIST images (Debian's
  dataset-fashion-mnist), 10% of the labels flipped, 2,000 test images, a CNN (conv 8, conv 16, dense 256), Adam
  lr 2e-3, 40 epochs, batch 64. Sized for 2 cores (FASHION_CONFIG): 10 replicates per kind at 100 points, no sweep,
  K = 8 + 2, no fresh-shadow check.

One reference pool per setting (K=16 in the balanced design, 4 size-shift models, `reference.fit_pool` and
`score_pool`, as a `reference` job runs them). Then, per replicate seed: draw a request (random points, or flipped
points), retrain from scratch without it with a new seed (initialisation and batch order), and audit as
workers/jobs/verdict.py `evidence_audit` does (`evidence.audit` on the pool's columns of the request, the parent as
parent_phi_std, the pool's measured size shift). The do-nothing candidate is the parent itself.

1. False alarms: share of retrains the audit calls "failed" (two-sided 95% Clopper-Pearson interval; PASS when
   its upper end ≤ 5%), inconclusive share; the do-nothing failure rate (the power realised). Requests the
   pipeline calls concentrated (evidence.concentration: above 10% of the data, 25% of a class, or depleting the
   points the pool sees as like them by 10 points of percentage more than the data) are judged, as the pipeline
   does under policy.audit.retrain_reference, against a model retrained without the whole request (another
   seed); the target counts that verdict. The per-point null's own verdict is reported beside it.
2. Request-size sweep: per size, the mean power and the verdict shares of retrains and of doing nothing (the
   per-point null's own verdicts), the share called concentrated and the mean depletion.
3. Size mismatch: fit_pool's measured shift, and the retrains' mean statistic with and without the correction.
4. Scorers vs separation: Spearman of gradnorm, hessian, less and hessian/(1-p_y)^2 (the self-influence on φ)
   with each point's pool separation; lowest decile's mean separation vs random deciles.
5. Certified free set: n_certified and its group stats; its group LiRA on 32 fresh shadow models (a new design).

Writes the JSON (every number, the settings, machine info, PASS/MISS) and a PNG next to it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from workers.engine import evidence as ev
from workers.engine.architectures import build_model
from workers.engine.data import ArraySet
from workers.engine.influence import compute_self_influence
from workers.engine.influence.less import CheckpointRecorder
from workers.engine.reference import fit_pool, logit_confidence, score_pool
from workers.engine.training import train_model

CPU = torch.device("cpu")
RETRAIN_SEED = 100_000  # replicate i retrains with seed RETRAIN_SEED + i: never a pool, shift or parent seed
SHADOW_SEED = 5_000  # the independent check's shadow models (as tests/integration/test_evidence.py)
REFERENCE_SEED = 200_000  # replicate i's retrain reference (concentrated requests): never a retrain's seed
FALSE_ALARM_MAX = 0.05
VERDICTS = ("passed", "failed", "inconclusive")
KINDS = ("random", "flipped")
AUDIT_RULE = ev.AuditRule()  # the settings' defaults (audit_alpha 0.01, audit_min_power 0.8)


# ----------------------------------------------------------------------------- settings

@dataclass
class Setting:
    name: str
    x: np.ndarray
    y: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    arch: dict[str, Any]
    recipe: dict[str, Any]
    flipped: np.ndarray  # rows whose label was flipped (empty: none)
    kinds: tuple[str, ...]  # request kinds drawn in this setting

    @property
    def n(self) -> int:
        return len(self.y)

    @property
    def n_classes(self) -> int:
        return int(max(self.y.max(), self.y_test.max())) + 1

    def build(self, seed: int) -> nn.Module:
        torch.manual_seed(seed)
        return build_model(self.arch, input_shape=self.x.shape[1:], n_classes=self.n_classes)

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "n_train": self.n, "n_test": len(self.y_test), "n_flipped": len(self.flipped),
                "arch": self.arch, "recipe": self.recipe, "request_kinds": list(self.kinds)}


def memorisation(epochs: int = 100) -> Setting:
    """The memorising fixture (also the tests'): 400 digits, 100 of them with a wrong label, 350 held out."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x, y = (d.data / 16.0).astype(np.float32), d.target.astype(np.int64)
    rng = np.random.default_rng(0)
    order = rng.permutation(len(x))
    train, test = order[:400], order[400:750]
    ytr = y[train].copy()
    flipped = rng.choice(400, 100, replace=False)
    ytr[flipped] = (ytr[flipped] + rng.integers(1, 10, 100)) % 10
    recipe = {"optimizer": "adam", "lr": 3e-3, "epochs": epochs, "batch_size": 32, "seed": 0, "checkpoints": 0}
    return Setting("memorisation", x[train], ytr, x[test], y[test].astype(np.int64), {"kind": "mlp", "hidden": [128]},
                   recipe, np.sort(flipped), ("random", "flipped"))


def blobs(n: int = 1000, epochs: int = 10, seed: int = 0) -> Setting:
    """The non-memorising fixture (also the tests'): 4 well-separated Gaussian classes in 8 dimensions, linear."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(0, 1, (4, 8)) * 2.0

    def draw(m: int) -> tuple[np.ndarray, np.ndarray]:
        y = rng.integers(0, 4, m)
        return (centers[y] + rng.normal(0, 1, (m, 8))).astype(np.float32), y.astype(np.int64)

    x, y = draw(n)
    xt, yt = draw(400)
    recipe = {"optimizer": "adam", "lr": 1e-2, "epochs": epochs, "batch_size": 64, "seed": 0, "checkpoints": 0}
    return Setting("blobs", x, y, xt, yt, {"kind": "linear"}, recipe, np.empty(0, dtype=np.int64), ("random",))


FASHION_ARCH = {"kind": "cnn", "channels": [8, 16], "hidden": 256}


def fashion(n: int = 5000, *, flip: float = 0.1, n_test: int = 2000, epochs: int = 40) -> Setting:
    """Fashion-MNIST (Debian's dataset-fashion-mnist, workers/engine/fashion_mnist.py): a class-stratified subset
    of n training images with a known share `flip` of the labels changed to another class before training, n_test
    held-out test images, a small CNN (conv 8, conv 16, dense 256: 205k parameters, sized for 2 CPU cores) trained
    with Adam lr 2e-3 for 40 epochs, batch 64: it fits the wrong labels (train accuracy 0.996, 97% of the flipped
    ones) while test accuracy falls from 0.84 at epoch 10 to 0.80, the train/test gap a memorising model has."""
    from workers.engine import fashion_mnist

    x, y = fashion_mnist.subset(n, split="train", seed=0)
    xt, yt = fashion_mnist.subset(n_test, split="test", seed=0)
    y, flipped = flip_labels(y, flip, n_classes=len(fashion_mnist.CLASSES), seed=0)
    recipe = {"optimizer": "adam", "lr": 2e-3, "epochs": epochs, "batch_size": 64, "seed": 0, "checkpoints": 0}
    return Setting("fashion", x, y, xt, yt, dict(FASHION_ARCH), recipe, flipped, ("random", "flipped"))


def flip_labels(y: np.ndarray, share: float, *, n_classes: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A copy of y with round(share·n) rows, drawn at random, moved to another class (each wrong class equally
    likely), and those rows, sorted."""
    rng = np.random.default_rng([seed, 16])
    rows = np.sort(rng.choice(len(y), int(round(share * len(y))), replace=False))
    out = y.copy()
    out[rows] = (out[rows] + rng.integers(1, n_classes, len(rows))) % n_classes
    return out, rows


SETTINGS: dict[str, Callable[..., Setting]] = {"memorisation": memorisation, "blobs": blobs, "fashion": fashion}


def train(setting: Setting, rows: np.ndarray, seed: int, *, order_seed: int | None = None,
          on_epoch_end: Callable[..., None] | None = None) -> nn.Module:
    """A model of the setting's recipe on x[rows]: initialisation from `seed`, batch order from `order_seed`
    (default: `seed`)."""
    net = setting.build(seed)
    train_model(net, ArraySet(setting.x[rows], setting.y[rows]),
                recipe={**setting.recipe, "seed": seed if order_seed is None else order_seed},
                device=CPU, on_epoch_end=on_epoch_end)
    return net.eval()


def raw_phi(net: nn.Module, setting: Setting) -> tuple[np.ndarray, np.ndarray]:
    return (logit_confidence(net, setting.x, setting.y, device=CPU),
            logit_confidence(net, setting.x_test, setting.y_test, device=CPU))


def std_phi(net: nn.Module, setting: Setting) -> np.ndarray:
    """The model's φ on every training point, standardised by its own test φ (workers.engine.api.standardised_phi)."""
    phi, phi_test = raw_phi(net, setting)
    return ev.standardise(phi[None], phi_test[None])[0]


# ----------------------------------------------------------------------------- the pool

@dataclass
class Fitted:
    setting: Setting
    pool: ev.Pool
    shift: dict[str, Any]  # fit_pool's size-mismatch measurement
    report: dict[str, Any]  # score_pool's certification report
    parent: nn.Module
    parent_phi: np.ndarray  # standardised, every training point
    shift_arg: tuple[np.ndarray, np.ndarray] | None  # what _evidence_audit passes as `shift`
    seconds: dict[str, float] = field(default_factory=dict)
    checkpoints: list[Any] = field(default_factory=list)
    parent_train_accuracy: float | None = None


def fit(setting: Setting, *, k: int, shift_models: int, checkpoints: int = 3) -> Fitted:
    """The parent (seed 0, all points; `checkpoints` Adam checkpoints kept on the side for LESS) and its pool."""
    began = time.perf_counter()
    recorder = CheckpointRecorder(int(setting.recipe["epochs"]), k=checkpoints) if checkpoints else None
    parent = train(setting, np.arange(setting.n), int(setting.recipe["seed"]), on_epoch_end=recorder)
    parent_seconds = time.perf_counter() - began
    with torch.no_grad():
        acc = float((parent(torch.as_tensor(setting.x)).argmax(1).numpy() == setting.y).mean())
    began = time.perf_counter()
    pool, shift = fit_pool(setting.build, setting.x, setting.y, setting.x_test, setting.y_test,
                           rows=np.arange(setting.n), k=k, seed=int(setting.recipe["seed"]), recipe=setting.recipe,
                           device=CPU, shift_models=shift_models, target=parent)
    pool_seconds = time.perf_counter() - began
    began = time.perf_counter()
    report = score_pool(pool, seed=int(setting.recipe["seed"]))
    shift_arg = None
    if len(pool.shift_cols):  # as workers/jobs/verdict.py evidence_audit
        at = pool.shift_cols
        shift_arg = (ev.point_stats(pool.phi_std[:, at], pool.in_mask[:, at]).mu_out, pool.shift_offsets)
    return Fitted(setting, pool, shift, report, parent, std_phi(parent, setting), shift_arg,
                  {"parent": parent_seconds, "pool": pool_seconds, "score": time.perf_counter() - began},
                  recorder.checkpoints if recorder else [], acc)


def concentration(f: Fitted, cols: np.ndarray) -> dict[str, Any]:
    """workers/jobs/verdict.py's rule (evidence.request_concentration): more than 10% of the pool's points, 25% of one
    class, or a depletion of the points like the request's beyond 10 points of percentage."""
    return ev.request_concentration(f.pool, f.setting.y, np.sort(cols), rule=AUDIT_RULE)


def audit(f: Fitted, cols: np.ndarray, candidate: np.ndarray, *, corrected: bool = True,
          concentrated: bool = False, reference: np.ndarray | None = None) -> dict[str, Any]:
    """evidence.audit on the request's pool columns, the parent as parent_phi_std (the pipeline's call)."""
    cols = np.sort(cols)
    return ev.audit(f.pool.phi_std[:, cols], f.pool.in_mask[:, cols], candidate[cols],
                    shift=f.shift_arg if corrected else None, parent_phi_std=f.parent_phi[cols],
                    reference_phi_std=None if reference is None else reference[cols],
                    concentrated=concentrated, rule=AUDIT_RULE)


def draw(setting: Setting, kind: str, size: int, rng: np.random.Generator) -> np.ndarray:
    pool = setting.flipped if kind == "flipped" else np.arange(setting.n)
    return np.sort(rng.choice(pool, min(size, len(pool)), replace=False))


def _brief(a: dict[str, Any]) -> dict[str, Any]:
    null = a.get("null") or {}
    return {"verdict": a["verdict"], "side": a.get("side"), "statistic": a.get("statistic"), "power": a.get("power"),
            "null_lo": null.get("lo"), "null_hi": null.get("hi"), "null_center": null.get("center"),
            "size_shift_effect": (a.get("size_shift") or {}).get("effect"),
            "parent_statistic": (a.get("parent") or {}).get("statistic")}


def replicate(f: Fitted, kind: str, size: int, seed: int, *, pipeline_seeds: bool = False) -> dict[str, Any]:
    """One request, one retrain without it, the audits of the retrain and of doing nothing. The retrain has a new
    seed; with pipeline_seeds, the seeds a Lethe retrain job uses instead (workers.engine.api.unlearn: initialisation
    from recipe seed + 1, batch order from the recipe seed, the same for every job), so that only the request
    varies between replicates."""
    rng = np.random.default_rng([seed, size, KINDS.index(kind)])
    cols = draw(f.setting, kind, size, rng)
    keep = np.setdiff1d(np.arange(f.setting.n), cols)
    began = time.perf_counter()
    base = int(f.setting.recipe["seed"])
    net = (train(f.setting, keep, base + 1, order_seed=base) if pipeline_seeds
           else train(f.setting, keep, RETRAIN_SEED + seed))
    seconds = time.perf_counter() - began
    phi = std_phi(net, f.setting)
    conc = concentration(f, cols)
    retrain = _brief(audit(f, cols, phi))
    out = {"seed": seed, "kind": kind, "size": size, "n_points": int(len(cols)),
           "concentrated": conc["concentrated"], "concentration": conc, "retrain_seconds": seconds,
           "retrain": retrain,
           "retrain_uncorrected": _brief(audit(f, cols, phi, corrected=False)),
           "do_nothing": _brief(audit(f, cols, f.parent_phi)),
           "do_nothing_uncorrected": _brief(audit(f, cols, f.parent_phi, corrected=False)),
           # the pipeline's verdict without a retrain reference: a concentrated request is inconclusive
           "retrain_pipeline_verdict": "inconclusive" if conc["concentrated"] else retrain["verdict"]}
    if conc["concentrated"]:
        # policy.audit.retrain_reference: the range is centred on a model retrained without the whole request
        # (another seed), as the pipeline's reference phase does; the retrain and doing nothing judged against it
        ref = std_phi(train(f.setting, keep, REFERENCE_SEED + seed), f.setting)
        out["retrain_with_reference"] = _brief(audit(f, cols, phi, concentrated=True, reference=ref))
        out["do_nothing_with_reference"] = _brief(audit(f, cols, f.parent_phi, concentrated=True, reference=ref))
    else:
        out["retrain_with_reference"], out["do_nothing_with_reference"] = out["retrain"], out["do_nothing"]
    return out


# ----------------------------------------------------------------------------- summaries

def clopper_pearson(x: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Two-sided exact binomial interval."""
    from scipy.stats import beta

    a = (1 - confidence) / 2
    lo = 0.0 if x == 0 else float(beta.ppf(a, x, n - x + 1))
    hi = 1.0 if x == n else float(beta.ppf(1 - a, x + 1, n - x))
    return lo, hi


def rate(verdicts: list[str], which: str) -> dict[str, Any]:
    x, n = sum(v == which for v in verdicts), len(verdicts)
    lo, hi = clopper_pearson(x, n) if n else (None, None)
    return {"count": x, "n": n, "rate": x / n if n else None, "ci95": [lo, hi]}


def _mean_sd(values: list[float | None]) -> dict[str, Any]:
    v = np.array([a for a in values if a is not None], dtype=np.float64)
    if not len(v):
        return {"mean": None, "sd": None, "se": None, "n": 0}
    sd = float(v.std(ddof=1)) if len(v) > 1 else 0.0
    return {"mean": float(v.mean()), "sd": sd, "se": sd / np.sqrt(len(v)), "n": int(len(v))}


def summarise(reps: list[dict[str, Any]]) -> dict[str, Any]:
    """Verdict shares of the retrains (corrected, uncorrected, the pipeline's) and of doing nothing."""
    out: dict[str, Any] = {"n": len(reps), "concentrated": float(np.mean([r["concentrated"] for r in reps]))
                           if reps else 0.0,
                           "depletion": _mean_sd([r["concentration"]["depletion"] for r in reps])}
    for key in ("retrain", "retrain_uncorrected", "do_nothing", "do_nothing_uncorrected", "retrain_with_reference",
                "do_nothing_with_reference"):
        verdicts = [r[key]["verdict"] for r in reps]
        out[key] = {v: rate(verdicts, v) for v in VERDICTS}
        out[key]["statistic"] = _mean_sd([r[key]["statistic"] for r in reps])
        out[key]["sides"] = {s: sum(r[key]["side"] == s for r in reps) for s in ("remembers", "over-forgets")}
    out["retrain_pipeline"] = {v: rate([r["retrain_pipeline_verdict"] for r in reps], v) for v in VERDICTS}
    out["power"] = _mean_sd([r["retrain"]["power"] for r in reps])
    out["null_center"] = _mean_sd([r["retrain"]["null_center"] for r in reps])
    out["null_half_width"] = _mean_sd([None if r["retrain"]["null_hi"] is None else
                                       (r["retrain"]["null_hi"] - r["retrain"]["null_lo"]) / 2 for r in reps])
    out["power_ge_0.8"] = float(np.mean([(r["retrain"]["power"] or 0) >= 0.8 for r in reps])) if reps else None
    out["size_shift_effect"] = _mean_sd([r["retrain"]["size_shift_effect"] for r in reps])
    out["retrain_seconds"] = _mean_sd([r["retrain_seconds"] for r in reps])
    return out


# ----------------------------------------------------------------------------- scorers vs separation

def scorers_vs_separation(f: Fitted, *, seed: int = 0, draws: int = 2000) -> dict[str, Any]:
    """How well each self-influence score ranks the pool's measured separation (the target model's scores)."""
    from scipy.stats import spearmanr

    s = f.setting
    data = ArraySet(s.x, s.y)
    info: dict[str, dict[str, Any]] = {k: {} for k in ("gradnorm", "hessian", "less", "less_ckpt")}
    scores = {"gradnorm": compute_self_influence("gradnorm", f.parent, data, device=CPU, info=info["gradnorm"]),
              "hessian": compute_self_influence("hessian", f.parent, data, device=CPU, info=info["hessian"]),
              # what the engine does for a model without checkpoints (the fixture's recipe keeps none)
              "less": compute_self_influence("less", f.parent, data, device=CPU, info=info["less"])}
    if f.checkpoints:  # what it does with the 3 Adam checkpoints a default recipe keeps
        scores["less_ckpt"] = compute_self_influence("less", f.parent, data, device=CPU, checkpoints=f.checkpoints,
                                                     info=info["less_ckpt"])
    phi, _ = raw_phi(f.parent, s)
    # self-influence on φ: ∇ℓ = −(1 − p_y)∇φ and 1 − p_y = sigmoid(−φ), so s_φ = s_ℓ (1 + e^φ)²; in logs, since
    # saturated points have φ of tens and the ratio would overflow where ranks need none of its digits
    scores["hessian_phi"] = np.log(np.maximum(scores["hessian"], 1e-300)) + 2 * np.logaddexp(0.0, phi)
    sep = np.asarray(f.pool.separation, dtype=np.float64)
    ok = np.isfinite(sep)
    rng = np.random.default_rng(seed)
    decile = max(1, s.n // 10)
    random_means = np.array([sep[rng.choice(np.flatnonzero(ok), decile, replace=False)].mean() for _ in range(draws)])
    clean = np.ones(s.n, dtype=bool)
    clean[s.flipped] = False
    rows: dict[str, Any] = {}
    for name, sc in scores.items():
        sc = np.asarray(sc, dtype=np.float64)
        order = np.argsort(sc[ok], kind="stable")
        low, high = sep[ok][order[:decile]], sep[ok][order[-decile:]]
        row = {"spearman": float(spearmanr(sc[ok], sep[ok])[0]),
               "lowest_decile_separation": float(low.mean()), "highest_decile_separation": float(high.mean()),
               "lowest_decile_flipped": int(np.isin(np.flatnonzero(ok)[order[:decile]], s.flipped).sum()),
               "info": {k: v for k, v in info.get(name, {}).items() if k != "damping"}}
        if len(s.flipped):
            m = ok & clean
            row["spearman_clean_only"] = float(spearmanr(sc[m], sep[m])[0])
        rows[name] = row
    rows["less"]["note"] = ("no checkpoints: the engine falls back to the final weights, Γ = g, i.e. gradnorm², "
                            "the same ranks as gradnorm")
    out = {"decile": decile, "random_decile_separation": {
        "mean": float(random_means.mean()), "lo": float(np.quantile(random_means, 0.025)),
        "hi": float(np.quantile(random_means, 0.975)), "draws": draws},
        "separation": {"mean": float(sep[ok].mean()), "median": float(np.median(sep[ok]))}, "scorers": rows}
    if len(s.flipped):
        out["separation"] |= {"flipped_mean": float(sep[s.flipped].mean()), "clean_mean": float(sep[clean].mean())}
    out["_scores"] = scores  # for the plot; dropped from the JSON
    return out


# ----------------------------------------------------------------------------- the certified set

def own_shadow_check(f: Fitted, *, k: int = 32, design_seed: int = 12345) -> dict[str, Any]:
    """The certified set's group LiRA on k shadow models trained here with a new design (as the integration
    test's _own_shadow_auc): none of them is a pool model, so selection and certification cannot favour it."""
    cols = np.flatnonzero(f.pool.certified_by >= 0)
    if not len(cols):
        return {"n": 0, "models": k, "auc": None, "note": "nothing certified: nothing to check"}
    s = f.setting
    mask = ev.design(s.n, k, seed=design_seed)
    phi, phi_test = np.empty((k, s.n)), np.empty((k, len(s.y_test)))
    for m in range(k):
        net = train(s, np.flatnonzero(mask[m]), SHADOW_SEED + m)
        phi[m], phi_test[m] = raw_phi(net, s)
    std = ev.standardise(phi, phi_test)
    stats = ev.group_test(ev.loo_scores(std[:, cols], mask[:, cols]), mask[:, cols], boot=400, seed=1)
    se = (stats["auc_hi"] - stats["auc_lo"]) / (2 * 1.645)  # the bootstrap's 90% band as ±1.645 se
    every = ev.group_test(ev.loo_scores(std, mask), mask, boot=200, seed=1)  # all points, for contrast
    return stats | {"auc_se": se, "within_0.55_plus_2se": bool(stats["auc"] <= 0.55 + 2 * se),
                    "all_points_auc": every["auc"], "design_seed": design_seed}


def certified(f: Fitted, *, shadow_k: int) -> dict[str, Any]:
    cert = f.pool.certified_by >= 0
    out = {"n_certified": int(cert.sum()), "n_points": f.setting.n, "certified_set": f.report["certified_set"],
           "halves": [{k: v for k, v in h.items() if k != "curve"} | {"curve": [
               {c: p.get(c) for c in ("n", "auc", "auc_hi", "tpr", "tpr_hi", "within", "max_separation")}
               for p in h["curve"]]} for h in f.report["halves"]],
           "separation_of_certified": float(np.mean(f.pool.separation[cert])) if cert.any() else None,
           "independent": own_shadow_check(f, k=shadow_k) if shadow_k else None}
    if len(f.setting.flipped):
        out["flipped_certified"] = int(cert[f.setting.flipped].sum())
    return out


# ----------------------------------------------------------------------------- the run

@dataclass
class Config:
    seeds: int = 100  # replicates per request kind at the main size (part 1)
    sweep_seeds: int = 20  # replicates per kind at the other sizes (part 2)
    main_size: int = 40
    sizes: tuple[int, ...] = (5, 10, 20, 40, 80)
    k: int = 16
    shift_models: int = 4
    shadow_k: int = 32
    settings: tuple[str, ...] = ("memorisation", "blobs")  # names in SETTINGS
    blobs_seeds: int | None = None  # default: seeds
    fashion_n: int = 5000  # training images of the fashion setting
    pipeline_seeds: int = 20  # replicates per kind at the main size retrained with a Lethe job's fixed seeds
    epochs: int | None = None  # override the recipes' epochs (the unit test's smallest configuration)


def run_setting(setting: Setting, cfg: Config, log: Callable[[str], None] = print) -> dict[str, Any]:
    began = time.perf_counter()
    f = fit(setting, k=cfg.k, shift_models=cfg.shift_models)
    log(f"[{setting.name}] parent {f.seconds['parent']:.1f}s, pool K={cfg.k}+{cfg.shift_models} "
        f"{f.seconds['pool']:.1f}s, certification {f.seconds['score']:.1f}s: {f.report['n_certified']} certified")
    main_seeds = cfg.blobs_seeds if setting.name == "blobs" and cfg.blobs_seeds else cfg.seeds
    reps: list[dict[str, Any]] = []
    for kind in setting.kinds:
        for size in sorted({*cfg.sizes, cfg.main_size}):
            n_seeds = main_seeds if size == cfg.main_size else cfg.sweep_seeds
            t0 = time.perf_counter()
            done = [replicate(f, kind, size, seed) for seed in range(n_seeds)]
            reps += done
            fails = sum(r["retrain"]["verdict"] == "failed" for r in done)
            caught = sum(r["do_nothing"]["verdict"] == "failed" for r in done)
            log(f"[{setting.name}] {kind:7s} size {size:3d}: {n_seeds} retrains in {time.perf_counter() - t0:.0f}s, "
                f"{fails} false alarms, do-nothing caught {caught}/{n_seeds}")
    by_size: dict[str, Any] = {}
    for kind in setting.kinds:
        by_size[kind] = {str(size): summarise([r for r in reps if r["kind"] == kind and r["size"] == size])
                         for size in sorted({*cfg.sizes, cfg.main_size})}
    main = {kind: by_size[kind][str(cfg.main_size)] for kind in setting.kinds}
    main["all_kinds"] = summarise([r for r in reps if r["size"] == cfg.main_size])
    fixed: dict[str, Any] = {}
    for kind in setting.kinds if cfg.pipeline_seeds else ():
        done = [replicate(f, kind, cfg.main_size, seed, pipeline_seeds=True) for seed in range(cfg.pipeline_seeds)]
        fixed[kind] = summarise(done)
        log(f"[{setting.name}] {kind:7s} size {cfg.main_size:3d}, pipeline seeds: {len(done)} retrains, "
            f"{fixed[kind]['retrain']['failed']['count']} false alarms")
        reps += [r | {"pipeline_seeds": True} for r in done]
    shift_by_kind = {kind: {
        "retrain_statistic_corrected": main[kind]["retrain"]["statistic"],
        "retrain_statistic_uncorrected": main[kind]["retrain_uncorrected"]["statistic"],
        "retrain_failed_corrected": main[kind]["retrain"]["failed"],
        "retrain_failed_uncorrected": main[kind]["retrain_uncorrected"]["failed"],
        "do_nothing_statistic_corrected": main[kind]["do_nothing"]["statistic"],
        "do_nothing_statistic_uncorrected": main[kind]["do_nothing_uncorrected"]["statistic"],
        "correction_effect": main[kind]["size_shift_effect"]} for kind in setting.kinds}
    stats = scorers_vs_separation(f)
    scores = stats.pop("_scores")
    cert = certified(f, shadow_k=cfg.shadow_k)
    return {"setting": setting.describe(), "seconds": f.seconds | {"total": time.perf_counter() - began},
            "parent_train_accuracy": f.parent_train_accuracy,
            "pool": {"k": cfg.k, "shift_models": cfg.shift_models, "n_certified": f.report["n_certified"],
                     "separation": f.report["separation"]},
            "false_alarms": main, "false_alarms_pipeline_seeds": fixed, "sweep": by_size,
            "size_shift": {"measured": f.shift, "by_kind": shift_by_kind},
            "scorers": stats, "certified": cert, "replicates": reps,
            "_plot": {"separation": np.asarray(f.pool.separation), "scores": scores, "flipped": setting.flipped}}


def targets(results: dict[str, Any], cfg: Config) -> list[dict[str, Any]]:
    """The issue's marks, measured."""
    out = []

    def add(target: str, setting: str, value: Any, ok: bool | None, shown: str) -> None:
        out.append({"target": target, "setting": setting, "value": value, "shown": shown,
                    "status": "n/a" if ok is None else "PASS" if ok else "MISS"})

    for name, res in results["settings"].items():
        for kind, s in res["false_alarms"].items():
            # the pipeline's verdict: concentrated requests judged against a retrain reference (policy), the rest
            # by the per-point null
            fa = s["retrain_with_reference"]["failed"]
            enough = fa["n"] >= 100
            conc = f"; {s['concentrated']:.0%} concentrated, judged against a retrain reference" \
                if s["concentrated"] else ""
            add(f"false alarms on retrains, CP95 upper ≤ 5% ({cfg.main_size} {kind} points, ≥ 100 seeds{conc})", name,
                fa["ci95"][1], (fa["ci95"][1] <= FALSE_ALARM_MAX) if enough else None,
                f"{fa['count']}/{fa['n']} = {fa['rate']:.3f} [{fa['ci95'][0]:.3f}, {fa['ci95'][1]:.3f}]"
                + ("" if enough else " (fewer than 100 seeds)"))
            if s["concentrated"]:
                dn = s["do_nothing_with_reference"]["failed"]
                add(f"do nothing fails against the retrain reference ({cfg.main_size} {kind} points)", name,
                    dn["rate"], dn["rate"] == 1.0, f"{dn['count']}/{dn['n']} failed")
        reps = res["replicates"]
        dn_passed = sum(r["do_nothing"]["verdict"] == "passed" for r in reps)
        add("doing nothing never passes (every size and kind)", name, dn_passed, dn_passed == 0,
            f"{dn_passed} of {len(reps)} do-nothing audits passed")
        strong = [r for r in reps if (r["do_nothing"]["power"] or 0) >= AUDIT_RULE.min_power]
        missed = sum(r["do_nothing"]["verdict"] != "failed" for r in strong)
        add("doing nothing fails whenever power ≥ 0.8", name, missed, (missed == 0) if strong else None,
            f"{len(strong) - missed} of {len(strong)} failed")
        mem = res["false_alarms"].get("flipped")
        if mem:
            caught = mem["do_nothing"]["failed"]
            add(f"do nothing fails on {cfg.main_size} flipped points (power ≥ 0.99)", name, caught["rate"],
                caught["rate"] == 1.0 and (mem["power"]["mean"] or 0) >= 0.99,
                f"{caught['count']}/{caught['n']} failed, mean power {mem['power']['mean']:.3f}")
        cert = res["certified"]
        if "flipped_certified" in cert:
            add("no flipped point certified free", name, cert["flipped_certified"], cert["flipped_certified"] == 0,
                f"{cert['flipped_certified']} of {res['setting']['n_flipped']} flipped certified "
                f"({cert['n_certified']} certified in all)")
        if name == "blobs":
            add("non-memorising: certified free set ≥ 100 points", name, cert["n_certified"],
                cert["n_certified"] >= 100, f"{cert['n_certified']} of {cert['n_points']}")
        ind = cert.get("independent")
        if ind and ind.get("auc") is not None:
            add("certified set's AUC on fresh shadows ≤ 0.55 + 2 se", name, ind["auc"], ind["within_0.55_plus_2se"],
                f"AUC {ind['auc']:.3f} [{ind['auc_lo']:.3f}, {ind['auc_hi']:.3f}] on {ind['models']} models, "
                f"{ind['n']} points")
    return out


def machine() -> dict[str, Any]:
    info: dict[str, Any] = {"cpus": os.cpu_count(), "torch": torch.__version__,
                            "torch_threads": torch.get_num_threads(), "python": platform.python_version(),
                            "platform": platform.platform(), "numpy": np.__version__}
    try:
        info["cpu"] = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                           if line.startswith("model name"))
        info["memory_gb"] = round(int(Path("/proc/meminfo").read_text().split()[1]) / 2**20, 1)
    except (OSError, StopIteration, IndexError, ValueError):
        pass
    return info


def make_setting(name: str, epochs: int | None = None, *, fashion_n: int = 5000) -> Setting:
    """SETTINGS[name] with its recipe's epochs overridden (blobs: at most 10) and fashion's subset size."""
    kwargs: dict[str, Any] = {} if not epochs else {"epochs": min(epochs, 10) if name == "blobs" else epochs}
    if name == "fashion":
        kwargs["n"] = fashion_n
    return SETTINGS[name](**kwargs)


# Fashion-MNIST's run (--setting fashion): a CNN retrain costs ~40 s here against ~0.5 s for the digits MLP, so
# one request size, fewer replicates, a pool of K=8 + 2 and no fresh-shadow check (32 more CNNs).
FASHION_CONFIG = {"settings": ("fashion",), "seeds": 10, "main_size": 100, "sizes": (100,), "sweep_seeds": 0,
                  "k": 8, "shift_models": 2, "shadow_k": 0, "pipeline_seeds": 0}


def run(cfg: Config, log: Callable[[str], None] = print) -> dict[str, Any]:
    torch.set_num_threads(1)
    began = time.perf_counter()
    settings = [make_setting(name, cfg.epochs, fashion_n=cfg.fashion_n) for name in cfg.settings]
    results: dict[str, Any] = {"config": asdict(cfg), "machine": machine(), "load_at_start": os.getloadavg(),
                               "audit_rule": asdict(AUDIT_RULE), "limits": ev.Limits().as_dict(),
                               "retrain_seeds": f"{RETRAIN_SEED} + replicate (initialisation and batch order)",
                               "settings": {}}
    for setting in settings:
        results["settings"][setting.name] = run_setting(setting, cfg, log)
    results["targets"] = targets(results, cfg)
    results["total_seconds"] = time.perf_counter() - began
    results["load_at_end"] = os.getloadavg()
    return results


# ----------------------------------------------------------------------------- output

def _pct(r: dict[str, Any]) -> str:
    lo, hi = r["ci95"]
    return f"{r['count']:3d}/{r['n']:<3d} {100 * r['rate']:5.1f}% [{100 * lo:4.1f}, {100 * hi:4.1f}]"


def _num(v: float | None, fmt: str = ".3f") -> str:
    return "n/a" if v is None else format(v, fmt)


def print_tables(results: dict[str, Any]) -> None:
    for name, res in results["settings"].items():
        print(f"\n=== {name}: {res['setting']['n_train']} points, K={res['pool']['k']}, "
              f"{res['pool']['n_certified']} certified, {res['seconds']['total'] / 60:.1f} min")
        print("\n1. false alarms: audit verdicts of retrains without the request (new seed) and of doing nothing")
        print("   (job): retrained with the fixed seeds of a Lethe retrain job, only the request varies")
        print("   conc.: share of requests the pipeline calls concentrated; pipeline: the verdict with a retrain "
              "reference for those (policy.audit.retrain_reference), the per-point null's own verdict for the rest")
        print(f"{'request':15s} {'retrain failed (CP95)':29s} {'inconcl.':>8s} {'passed':>7s} "
              f"{'do-nothing failed':>19s} {'d-n inconcl.':>12s} {'power':>6s} {'conc.':>5s} "
              f"{'pipeline: retrain failed (CP95)':>33s} {'do-nothing failed':>18s}")
        rows = [*res["false_alarms"].items(),
                *((f"{kind} (job)", s) for kind, s in res["false_alarms_pipeline_seeds"].items())]
        for kind, s in rows:
            r, d = s["retrain"], s["do_nothing"]
            rr, dr = s["retrain_with_reference"], s["do_nothing_with_reference"]
            print(f"{kind:15s} {_pct(r['failed']):29s} {r['inconclusive']['rate']:8.3f} {r['passed']['rate']:7.3f} "
                  f"{d['failed']['rate']:19.3f} {d['inconclusive']['rate']:12.3f} {_num(s['power']['mean']):>6s} "
                  f"{s['concentrated']:5.2f} {_pct(rr['failed']):>33s} {dr['failed']['rate']:18.3f}")
        print("\n2. request sizes (pipeline: concentrated requests are inconclusive without a retrain reference; "
              "shares below are the per-point null's own; depl.: the mean depletion of similar points)")
        print(f"{'kind':8s} {'size':>4s} {'n':>4s} {'conc':>4s} {'depl.':>6s} {'power':>6s} {'P≥.8':>5s} "
              f"{'retrain F/I/P':>17s} "
              f"{'do-nothing F/I/P':>17s} {'retrain failed CP95':>22s} {'F sides R/O':>11s} {'retrain stat':>12s} "
              f"{'null c ± hw':>13s}")
        for kind, sizes in res["sweep"].items():
            for size, s in sizes.items():
                r, d = s["retrain"], s["do_nothing"]
                print(f"{kind:8s} {size:>4s} {s['n']:4d} {s['concentrated']:4.2f} "
                      f"{_num(s['depletion']['mean'], '+.3f'):>6s} "
                      f"{_num(s['power']['mean']):>6s} {s['power_ge_0.8']:5.2f} "
                      f"{r['failed']['rate']:5.2f}/{r['inconclusive']['rate']:4.2f}/{r['passed']['rate']:4.2f} "
                      f"{d['failed']['rate']:6.2f}/{d['inconclusive']['rate']:4.2f}/{d['passed']['rate']:4.2f} "
                      f"{'':4s}[{100 * r['failed']['ci95'][0]:4.1f}, {100 * r['failed']['ci95'][1]:5.1f}]% "
                      f"{r['sides']['remembers']:5d}/{r['sides']['over-forgets']:<5d} "
                      f"{_num(r['statistic']['mean'], '+.3f'):>12s} "
                      f"{_num(s['null_center']['mean'], '+.2f'):>6s} ± {_num(s['null_half_width']['mean'], '.2f')}")
        m = res["size_shift"]["measured"]
        print(f"\n3. size mismatch: measured shift_out median {_num(m.get('shift_out'))}, mean "
              f"{_num(m.get('shift_out_mean'))} ± {_num(m.get('shift_out_se'))} (OUT-spread units, "
              f"{m.get('n_points')} points, {m.get('models')} full-size models); target vs IN: shift_in median "
              f"{_num(m.get('shift_in'))}")
        print(f"{'kind':8s} {'retrain stat corr.':>20s} {'uncorr.':>16s} {'failed corr.':>13s} {'uncorr.':>8s} "
              f"{'do-nothing corr.':>17s} {'uncorr.':>8s} {'effect':>7s}")
        for kind, s in res["size_shift"]["by_kind"].items():
            c, u = s["retrain_statistic_corrected"], s["retrain_statistic_uncorrected"]
            print(f"{kind:8s} {c['mean']:+8.3f} ± {c['sd']:.3f} {u['mean']:+8.3f} ± {u['sd']:.3f} "
                  f"{s['retrain_failed_corrected']['rate']:13.3f} {s['retrain_failed_uncorrected']['rate']:8.3f} "
                  f"{s['do_nothing_statistic_corrected']['mean']:+17.3f} "
                  f"{s['do_nothing_statistic_uncorrected']['mean']:+8.3f} {s['correction_effect']['mean']:+7.3f}")
        sc = res["scorers"]
        rd = sc["random_decile_separation"]
        print(f"\n4. scorers vs the pool's separation (mean {sc['separation']['mean']:.3f}; random decile "
              f"{rd['mean']:.3f} [{rd['lo']:.3f}, {rd['hi']:.3f}])")
        print(f"{'scorer':12s} {'spearman':>9s} {'clean only':>10s} {'lowest decile':>14s} {'highest decile':>15s}"
              f" {'flipped in lowest':>18s}")
        for scorer, row in sc["scorers"].items():
            print(f"{scorer:12s} {row['spearman']:+9.3f} {_num(row.get('spearman_clean_only'), '+.3f'):>10s} "
                  f"{row['lowest_decile_separation']:14.3f} {row['highest_decile_separation']:15.3f} "
                  f"{row['lowest_decile_flipped']:18d}")
        c = res["certified"]
        cs, ind = c["certified_set"], c["independent"] or {}
        print(f"\n5. certified free set: {c['n_certified']} of {c['n_points']}"
              + (f" ({c['flipped_certified']} flipped)" if "flipped_certified" in c else "")
              + f"; pool group AUC {_num(cs.get('auc'))} (≤ {_num(cs.get('auc_hi'))}), TPR@1% {_num(cs.get('tpr'))} "
                f"(≤ {_num(cs.get('tpr_hi'))})")
        for h in c["halves"]:
            first = h["curve"][0] if h["curve"] else None
            if first:
                print(f"   select half {h['select_half']}: {h['n_certified']} certified; smallest prefix tried "
                      f"({first['n']} least separated points): AUC {_num(first['auc'])} (≤ {_num(first['auc_hi'])}), "
                      f"TPR@1% {_num(first['tpr'])} (≤ {_num(first['tpr_hi'])})")
        if ind.get("auc") is not None:
            print(f"   on {ind['models']} fresh shadow models: AUC {ind['auc']:.3f} [{ind['auc_lo']:.3f}, "
                  f"{ind['auc_hi']:.3f}], TPR@1% {ind['tpr']:.3f} [{ind['tpr_lo']:.3f}, {ind['tpr_hi']:.3f}]; "
                  f"all points {ind['all_points_auc']:.3f}")
    print("\ntargets")
    for t in results["targets"]:
        print(f"  {t['status']:4s}  {t['setting']:12s} {t['target']}: {t['shown']}")


def plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib
    import matplotlib.ticker

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from scipy.stats import rankdata

    fig, axes = plt.subplots(2, 2, figsize=(14, 9.5))
    (ax_fa, ax_pow), (ax_rho, ax_sc) = axes
    series = [(name, kind, sizes) for name, res in results["settings"].items() for kind, sizes in res["sweep"].items()]
    for j, (name, kind, sizes) in enumerate(series):
        xs = np.array([int(s) for s in sizes]) * 1.04 ** (j - (len(series) - 1) / 2)  # side by side on a log axis
        conc = np.array([s["concentrated"] > 0.5 for s in sizes.values()])
        fa = [s["retrain"]["failed"] for s in sizes.values()]
        y = np.array([r["rate"] for r in fa])
        err = np.array([[r["rate"] - r["ci95"][0] for r in fa], [r["ci95"][1] - r["rate"] for r in fa]])
        line = ax_fa.errorbar(xs, y, yerr=err, marker="o", capsize=3, label=f"{name} {kind}: failed").lines[0]
        if conc.any():
            ax_fa.scatter(xs[conc], y[conc], s=110, facecolors="none", edgecolors="k", zorder=5)
        ax_fa.plot(xs, [s["retrain"]["inconclusive"]["rate"] for s in sizes.values()], ":", color=line.get_color(),
                   alpha=0.6, label=f"{name} {kind}: inconclusive")
        pw = [s["power"] for s in sizes.values()]
        ax_pow.errorbar(xs, [p["mean"] for p in pw], yerr=[p["sd"] for p in pw], marker="o", capsize=3,
                        color=line.get_color(), label=f"{name} {kind}: power (mean ± sd)")
        ax_pow.plot(xs, [s["do_nothing"]["failed"]["rate"] for s in sizes.values()], "x--", color=line.get_color(),
                    label=f"{name} {kind}: do nothing failed")
    ax_fa.axhline(FALSE_ALARM_MAX, color="grey", ls="--", lw=1, label="5% bound")
    ax_fa.scatter([], [], s=110, facecolors="none", edgecolors="k",
                  label="mostly concentrated (pipeline: retrain reference or inconclusive)")
    ax_pow.axhline(results["audit_rule"]["min_power"], color="grey", ls=":", lw=1, label="min power")
    for ax, title, ylabel in ((ax_fa, "retrains without the request: verdict 'failed' (false alarms, CP 95%)",
                               "share of retrains"),
                              (ax_pow, "power vs 'not unlearned', and the parent audited as the candidate",
                               "power / share failed")):
        ax.set_xscale("log")
        sizes_ = sorted({int(s) for *_, sz in series for s in sz})
        ax.set_xticks(sizes_, [str(s) for s in sizes_])
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set_xlabel("request size (points)")
        ax.set_ylabel(ylabel)
        ax.set_ylim(-0.05, 1.05)
        ax.set_title(title, fontsize=10)
        ax.legend(fontsize=7, loc="center" if ax is ax_fa else "center right")
    names = list(next(iter(results["settings"].values()))["scorers"]["scorers"])
    bars = [(f"{n} all", r["scorers"]["scorers"]) for n, r in results["settings"].items()]
    mem = results["settings"].get("memorisation")
    if mem:
        bars.insert(1, ("memorisation clean only", {k: {"spearman": v.get("spearman_clean_only")}
                                                   for k, v in mem["scorers"]["scorers"].items()}))
    width = 0.8 / len(bars)
    for j, (label, rows) in enumerate(bars):
        ax_rho.bar(np.arange(len(names)) + (j - (len(bars) - 1) / 2) * width,
                   [rows[n]["spearman"] or 0.0 for n in names], width, label=label)
    labels = {"less": "less\n(no ckpts)", "less_ckpt": "less\n(3 Adam ckpts)",
              "hessian_phi": "hessian/(1−p_y)²"}
    ax_rho.set_xticks(np.arange(len(names)), [labels.get(n, n) for n in names])
    ax_rho.axhline(0, color="k", lw=0.8)
    ax_rho.set_ylabel("Spearman ρ with the pool's separation")
    ax_rho.set_title("self-influence scorers vs measured separation (they rank; they never decide)", fontsize=10)
    ax_rho.legend(fontsize=7)
    # the scatter needs a setting with flipped labels: memorisation in a digits run, fashion in a Fashion-MNIST one
    shown = next(((n, r) for n, r in results["settings"].items() if len(r.get("_plot", {}).get("flipped", []))),
                 None)
    if shown is None:
        ax_sc.set_axis_off()
        ax_sc.text(0.5, 0.5, "no setting with flipped labels in this run", ha="center", va="center")
    else:
        shown_name, shown_res = shown
        p = shown_res["_plot"]
        sep, score = p["separation"], p["scores"]["hessian"]
        flip = np.zeros(len(sep), dtype=bool)
        flip[p["flipped"]] = True
        q = rankdata(score) / len(score)
        ax_sc.scatter(q[~flip], sep[~flip], s=6, alpha=0.5, label="clean")
        ax_sc.scatter(q[flip], sep[flip], s=6, alpha=0.7, label="flipped")
        ax_sc.axvline(0.1, color="grey", ls="--", lw=1, label="lowest decile")
        rho = shown_res["scorers"]["scorers"]["hessian"]["spearman"]
        ax_sc.set_title(f"{shown_name}: separation vs hessian self-influence rank (ρ = {rho:.2f})", fontsize=10)
        ax_sc.set_xlabel("hessian self-influence (rank quantile)")
        ax_sc.set_ylabel("pool separation (per-point LiRA AUC)")
        ax_sc.axhline(0.5, color="grey", ls=":", lw=1)
        ax_sc.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _default(o: Any) -> Any:
    return o.tolist() if hasattr(o, "tolist") else str(o)


def write(results: dict[str, Any], out: Path) -> None:
    """JSON without the plot's arrays (one line per replicate: hundreds of them), PNG next to it."""
    plot(results, out.with_suffix(".png"))
    lines: list[str] = []
    settings = {}
    for name, res in results["settings"].items():
        tokens = []
        for rep in res["replicates"]:
            tokens.append(f"@@replicate{len(lines)}@@")
            lines.append(json.dumps(rep, default=_default, ensure_ascii=False))
        settings[name] = {k: v for k, v in res.items() if k != "_plot"} | {"replicates": tokens}
    text = json.dumps({**results, "settings": settings}, indent=1, default=_default, ensure_ascii=False)
    for i, line in enumerate(lines):
        text = text.replace(f'"@@replicate{i}@@"', line, 1)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)


def configure(args: argparse.Namespace) -> Config:
    """The run's Config: the setting's default size, or --quick's (a smoke run) or --large's, then the flags."""
    fashion = args.setting == "fashion"
    cfg = Config(**FASHION_CONFIG) if fashion else Config(settings=("memorisation",) if args.no_blobs else
                                                         ("memorisation", "blobs"))
    if args.quick:  # fashion: 2,000 images, 30 epochs, K=4 + 2; digits: fewer seeds and shadows
        changes = ({"seeds": 3, "main_size": 50, "sizes": (50,), "k": 4, "fashion_n": 2000, "epochs": 30}
                   if fashion else {"seeds": 20, "sweep_seeds": 3, "shadow_k": 16, "pipeline_seeds": 0})
    elif args.large:
        changes = ({"seeds": 100, "k": 16, "shift_models": 4} if fashion else
                   {"seeds": 300, "sweep_seeds": 50, "pipeline_seeds": 50, "k": 32})
    else:
        changes = {}
    for key, value in changes.items():
        setattr(cfg, key, value)
    for key in ("seeds", "sweep_seeds", "pipeline_seeds", "k"):
        if getattr(args, key) is not None:
            setattr(cfg, key, getattr(args, key))
    if args.sizes:
        cfg.sizes = tuple(args.sizes)
    return cfg


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--setting", choices=("digits", "fashion"), default="digits",
                   help="digits: the memorisation and blobs settings; fashion: Fashion-MNIST with a CNN "
                        "(FASHION_CONFIG; writes evidence-fashion.json unless --out)")
    size = p.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true",
                      help="a smoke run (≤ 5 min): digits 20 seeds, 3 per sweep size, 16 fresh shadows, no "
                           "pipeline-seed retrains; fashion 2,000 images, 3 seeds, K=4")
    size.add_argument("--large", action="store_true",
                      help="digits 300 seeds, 50 per sweep size, K=32; fashion 100 seeds, K=16 + 4 (hours)")
    p.add_argument("--seeds", type=int, help=f"replicates per request kind at the main size (default {Config.seeds})")
    p.add_argument("--sweep-seeds", type=int,
                   help=f"replicates per kind at the other sizes (default {Config.sweep_seeds})")
    p.add_argument("--pipeline-seeds", type=int,
                   help=f"replicates per kind retrained with a job's fixed seeds (default {Config.pipeline_seeds})")
    p.add_argument("--sizes", type=int, nargs="+")
    p.add_argument("--k", type=int)
    p.add_argument("--no-blobs", action="store_true")
    p.add_argument("--out", type=Path)
    args = p.parse_args(argv)
    cfg = configure(args)
    out = args.out or Path(__file__).parent / "results" / (
        "evidence-fashion.json" if args.setting == "fashion" else "evidence.json")
    print(f"{'quick' if args.quick else 'large' if args.large else 'default'} run: settings {list(cfg.settings)}"
          + (f" ({cfg.fashion_n} images)" if "fashion" in cfg.settings else "")
          + f"; {cfg.seeds} seeds per kind at {cfg.main_size} points, {cfg.sweep_seeds} at sizes "
            f"{sorted(set(cfg.sizes) - {cfg.main_size})}; {cfg.pipeline_seeds} with a job's seeds; pool "
            f"K={cfg.k}+{cfg.shift_models}; {cfg.shadow_k} fresh shadows", flush=True)
    results = run(cfg, log=lambda m: print(m, flush=True))
    write(results, out)
    print_tables(results)
    print(f"\ntotal {results['total_seconds'] / 60:.1f} min; wrote {out} and {out.with_suffix('.png')}")
    return results


if __name__ == "__main__":
    main()
