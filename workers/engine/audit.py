"""Audit: UA/RA/TA, the loss-based membership-inference attack and the confidence-based MIA efficacy."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from workers.engine import model_hooks as hooks
from workers.engine.data import ArraySet


@torch.no_grad()
def _outputs(model: nn.Module, data: ArraySet, device: torch.device, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
    model = model.to(device).eval()
    losses, correct = [], []
    for _, xb, yb in data.loader(batch_size, device):
        logits, loss = hooks.logits_and_losses(model, xb, yb)
        losses.append(loss.cpu().numpy())
        correct.append((logits.argmax(1) == yb).cpu().numpy())
    if not losses:
        return np.empty(0), np.empty(0, dtype=bool)
    return np.concatenate(losses).astype(np.float64), np.concatenate(correct)


def predict_losses(model: nn.Module, data: ArraySet, *, device: torch.device, batch_size: int = 512) -> np.ndarray:
    """Per-example cross-entropy."""
    return _outputs(model, data, device, batch_size)[0]


def accuracy(model: nn.Module, data: ArraySet, *, device: torch.device) -> float:
    correct = _outputs(model, data, device, 512)[1]
    return float(correct.mean()) if len(correct) else float("nan")


def loss_mia(member_losses: np.ndarray, nonmember_losses: np.ndarray, *, seed: int = 0, folds: int = 10,
             permutations: int = 500, min_points: int = 20) -> dict[str, Any]:
    """The challenge starter kit's attack: logistic regression on the loss, members vs an equal sample of
    non-members, k-fold CV AUC; a permutation test says whether the AUC is above chance."""
    from sklearn.model_selection import StratifiedKFold

    rng = np.random.default_rng(seed)
    n = min(len(member_losses), len(nonmember_losses))
    if n < 2:
        return {"auc": None, "p_value": None, "n": int(n), "status": "insufficient"}
    m = rng.choice(member_losses, n, replace=False)
    o = rng.choice(nonmember_losses, n, replace=False)
    feats = np.log(np.concatenate([m, o]) + 1e-12)  # log-loss spreads the tiny losses out
    labels = np.concatenate([np.ones(n), np.zeros(n)])
    folds_idx = list(StratifiedKFold(n_splits=max(2, min(folds, n)), shuffle=True, random_state=seed)
                     .split(feats.reshape(-1, 1), labels))
    auc = cv_auc(feats, labels, folds_idx)
    # Permutation test of the same procedure: how often do shuffled labels score as well?
    null = np.array([cv_auc(feats, rng.permutation(labels), folds_idx) for _ in range(permutations)])
    p_value = (1 + int((null >= auc).sum())) / (permutations + 1)
    return {"auc": round(auc, 6), "p_value": round(p_value, 6), "n": int(n),
            "status": "ok" if n >= min_points else "insufficient"}


def _auc(scores: np.ndarray, labels: np.ndarray) -> float:
    from scipy.stats import rankdata

    pos = labels == 1
    n_pos, n_neg = int(pos.sum()), int((~pos).sum())
    if n_pos == 0 or n_neg == 0:
        return 0.5
    ranks = rankdata(scores)
    return float((ranks[pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def cv_auc(feats: np.ndarray, labels: np.ndarray, folds_idx: list[tuple[np.ndarray, np.ndarray]]) -> float:
    """Mean test-fold AUC of a logistic regression on one feature fitted on the other folds.

    Exactly the starter kit's number, without fitting: with one feature the fitted decision function is
    monotone in the feature, its direction the sign of the coefficient, which (the profile likelihood
    being concave) is the sign of the training folds' class-mean difference; AUC ignores the rest.
    """
    aucs = []
    for train, test in folds_idx:
        lab = labels[train]
        # a training fold holding one class only (tiny sets) has no direction to learn: keep the feature's own
        direction = 1.0
        if (lab == 1).any() and (lab == 0).any():
            direction = float(np.sign(feats[train][lab == 1].mean() - feats[train][lab == 0].mean())) or 1.0
        aucs.append(_auc(direction * feats[test], labels[test]))
    return float(np.mean(aucs))


@torch.no_grad()
def confidence_features(model: nn.Module, data: ArraySet, *, device: torch.device,
                        batch_size: int = 512) -> np.ndarray:
    """Per example: the softmax confidence in the true class and the prediction entropy (SalUn's features)."""
    model = model.to(device).eval()
    rows = []
    for _, xb, yb in data.loader(batch_size, device):
        logp = F.log_softmax(hooks.forward(model, xb).double(), dim=1)
        conf = logp.gather(1, yb[:, None]).exp().squeeze(1)
        entropy = -(logp.exp() * logp).sum(1)
        rows.append(torch.stack([conf, entropy], 1).cpu().numpy())
    return np.concatenate(rows) if rows else np.empty((0, 2))


def confidence_mia(model: nn.Module, *, forget: ArraySet, retain: ArraySet, test: ArraySet, device: torch.device,
                   seed: int = 0, max_points: int = 1000, max_forget: int = 5000, min_points: int = 20,
                   ) -> dict[str, Any]:
    """MIA-efficacy (SalUn/IMU): an RBF SVC (C=3) learns member (retain) vs non-member (test) from the model's
    confidence, then classifies the forget set; `efficacy` is the fraction of forget predicted non-member (higher
    = more forgotten; compare with a retrained model's value). Retain is subsampled to the test size, both to at
    most max_points, so the SVC stays small. `by_entropy` repeats it on the prediction entropy; `attack_accuracy`
    is the SVC's accuracy on its own training points (≈ 0.5: the model leaks little through confidence)."""
    from sklearn.svm import SVC

    rng = np.random.default_rng(seed)
    n = min(len(retain), len(test), max_points)
    if n < 2 or len(forget) == 0:
        return {"efficacy": None, "by_entropy": None, "attack_accuracy": None, "n_shadow": int(n),
                "n_forget": len(forget), "status": "insufficient"}

    def sample(data: ArraySet, k: int) -> ArraySet:
        if len(data) <= k:
            return data
        return data.subset(np.sort(rng.choice(len(data), k, replace=False)))

    members = confidence_features(model, sample(retain, n), device=device)
    outsiders = confidence_features(model, sample(test, n), device=device)
    target = confidence_features(model, sample(forget, max_forget), device=device)
    labels = np.r_[np.ones(n), np.zeros(n)]
    out: dict[str, Any] = {}
    for name, col in (("efficacy", 0), ("by_entropy", 1)):
        feats = np.r_[members[:, col], outsiders[:, col]].reshape(-1, 1)
        if np.ptp(feats) == 0:  # nothing to learn: every point looks the same
            out[name], acc = 0.5, 0.5
        else:
            svc = SVC(C=3, kernel="rbf", gamma="auto").fit(feats, labels)
            out[name] = float(1 - svc.predict(target[:, col].reshape(-1, 1)).mean())
            acc = float((svc.predict(feats) == labels).mean())
        if col == 0:
            out["attack_accuracy"] = round(acc, 6)
        out[name] = round(out[name], 6)
    return {**out, "n_shadow": int(n), "n_forget": int(len(target)),
            "status": "ok" if min(n, len(target)) >= min_points else "insufficient"}


def audit_model(model: nn.Module, *, forget: ArraySet, retain: ArraySet, test: ArraySet, device: torch.device,
                seed: int = 0, retain_sample: int = 2000, min_points: int = 20) -> dict[str, Any]:
    """UA (1 - forget accuracy), RA on a seeded retain sample, TA, the loss MIA forget vs test, and the
    confidence MIA efficacy (retain vs test SVC, fraction of forget predicted non-member) under `mia_conf`."""
    rng = np.random.default_rng(seed)
    if len(retain) > retain_sample:
        retain = retain.subset(np.sort(rng.choice(len(retain), retain_sample, replace=False)))
    f_losses, f_correct = _outputs(model, forget, device, 512)
    t_losses, t_correct = _outputs(model, test, device, 512)
    fa = float(f_correct.mean()) if len(f_correct) else None
    return {
        "ua": None if fa is None else round(1 - fa, 6), "fa": None if fa is None else round(fa, 6),
        "ra": round(accuracy(model, retain, device=device), 6),
        "ta": round(float(t_correct.mean()), 6) if len(t_correct) else None,
        "forget_loss": round(float(f_losses.mean()), 6) if len(f_losses) else None,
        "mia": loss_mia(f_losses, t_losses, seed=seed, min_points=min_points),
        "mia_conf": confidence_mia(model, forget=forget, retain=retain, test=test, device=device, seed=seed,
                                   min_points=min_points),
    }


GAP_METRICS = (("ua", None), ("ra", None), ("ta", None), ("mia", "auc"), ("mia_conf", "efficacy"))


def gaps(after: dict[str, Any], reference: dict[str, Any]) -> dict[str, float]:
    """|after − reference| per metric (UA, RA, TA, loss-MIA AUC, confidence-MIA efficacy): the terms of the
    seed paper's Avg Gap. Metrics missing on either side (too few points) are left out."""
    out = {}
    for key, sub in GAP_METRICS:
        a, r = after.get(key), reference.get(key)
        if sub is not None:
            a = a.get(sub) if isinstance(a, dict) and a.get("status") == "ok" else None
            r = r.get(sub) if isinstance(r, dict) and r.get("status") == "ok" else None
        if a is not None and r is not None:
            out[f"{key}.{sub}" if sub else key] = round(abs(float(a) - float(r)), 6)
    return out


def accuracy_reasons(after: dict[str, Any], before: dict[str, Any], *, max_acc_drop: float = 0.02) -> list[str]:
    """Why the new model's retain (RA) or test (TA) accuracy is outside policy: more than max_acc_drop below the
    parent's. Empty when both hold."""
    reasons = []
    for key, name in (("ra", "retain"), ("ta", "test")):
        if after.get(key) is not None and before.get(key) is not None and after[key] < before[key] - max_acc_drop:
            reasons.append(f"{name} accuracy fell {before[key] - after[key]:.3f} (> {max_acc_drop})")
    return reasons


def audit_passes(after: dict[str, Any], before: dict[str, Any], *, max_acc_drop: float = 0.02,
                 mia_auc_max: float = 0.55, mia_alpha: float = 0.05, reference_auc: float | None = None,
                 reference_margin: float = 0.03, retrained: bool = False) -> tuple[bool, list[str]]:
    """DESIGN's default policy: RA and TA within max_acc_drop of the parent, and the loss-MIA not
    significantly above mia_auc_max, or within reference_margin of a retrain reference's AUC when one
    exists. A retrained model is its own reference (it never saw the forget set), so only accuracy
    decides for it: a forget set of easy points looks 'member-like' even to a model that never saw it.
    An insufficient MIA (too few points) also leaves the decision to the accuracy tests.

    Lethe's pipeline decides with the reference pool (workers.engine.evidence) and applies only
    accuracy_reasons from here; this rule stays for library users and reproduction."""
    reasons = accuracy_reasons(after, before, max_acc_drop=max_acc_drop)
    mia = after.get("mia") or {}
    if retrained or mia.get("status") != "ok":
        return not reasons, reasons
    if reference_auc is not None:
        if mia["auc"] > reference_auc + reference_margin:
            reasons.append(f"loss-MIA AUC {mia['auc']:.3f} > retrain reference "
                           f"{reference_auc:.3f} + {reference_margin}")
    elif mia["auc"] > mia_auc_max and mia["p_value"] < mia_alpha:
        reasons.append(f"loss-MIA AUC {mia['auc']:.3f} > {mia_auc_max} (p={mia['p_value']:.3f})")
    return not reasons, reasons
