"""Group tests over sets of points (group LiRA with bootstrap bounds) and the certification of a pool's free set:
select on one half of the pool, certify on the other."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from workers.engine.evidence.stats import Limits, cross_scores, halves, loo_scores, point_auc, point_stats, separation

# Certification bounds group LiRA by resampling the certifying half's models: with 2 of them (K = 4) the bootstrap
# has three model multisets and its 95% bound means nothing. K = 8 (4 per half) agreed with 16 fresh shadow models
# in every replicate of bench/certify_k.py; K = 4 was never measured, so it serves audits but certifies nothing.
MIN_CERTIFY_MODELS = 4


def _auc(scores: np.ndarray, labels: np.ndarray) -> float:
    order = np.argsort(scores, kind="stable")
    ranks = np.empty(len(scores))
    ranks[order] = np.arange(1, len(scores) + 1)
    pos = labels.astype(bool)
    n_pos, n_neg = int(pos.sum()), int((~pos).sum())
    if n_pos == 0 or n_neg == 0:
        return 0.5
    return float((ranks[pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def _tpr_at(scores: np.ndarray, labels: np.ndarray, fpr: float) -> float:
    pos = labels.astype(bool)
    if not pos.any() or pos.all():
        return 0.0
    threshold = np.quantile(scores[~pos], 1.0 - fpr)
    return float((scores[pos] > threshold).mean())


def group_test(scores: np.ndarray, labels: np.ndarray, *, limits: Limits = Limits(), boot: int = 200,
               seed: int = 0, max_points: int = 4000) -> dict[str, Any]:
    """Group LiRA over a set of points: AUC and TPR at `fpr` over every (model, point) score, with bootstrap
    intervals that resample models and points (points are not independent across models, nor models across
    points). scores/labels are (m, n): m held-out models, n points of the set."""
    m, n = scores.shape
    if n == 0:
        return {"n": 0, "auc": None, "tpr": None, "auc_lo": None, "auc_hi": None, "tpr_lo": None, "tpr_hi": None}
    rng = np.random.default_rng(seed)
    auc = _auc(scores.ravel(), labels.ravel())
    tpr = _tpr_at(scores.ravel(), labels.ravel(), limits.fpr)
    if boot == 0:  # point estimates only (a caller that needs a bound only when an estimate is beyond a limit)
        return {"n": int(n), "models": int(m), "auc": round(auc, 6), "tpr": round(tpr, 6), "auc_lo": None,
                "auc_hi": None, "tpr_lo": None, "tpr_hi": None}
    sub = rng.choice(n, max_points, replace=False) if n > max_points else np.arange(n)
    aucs, tprs = np.empty(boot), np.empty(boot)
    for b in range(boot):
        models = rng.integers(0, m, m)
        points = sub[rng.integers(0, len(sub), len(sub))]
        s, lab = scores[np.ix_(models, points)].ravel(), labels[np.ix_(models, points)].ravel()
        aucs[b], tprs[b] = _auc(s, lab), _tpr_at(s, lab, limits.fpr)
    lo, hi = 1.0 - limits.confidence, limits.confidence
    return {"n": int(n), "models": int(m), "auc": round(auc, 6), "tpr": round(tpr, 6),
            "auc_lo": round(float(np.quantile(aucs, lo)), 6), "auc_hi": round(float(np.quantile(aucs, hi)), 6),
            "tpr_lo": round(float(np.quantile(tprs, lo)), 6), "tpr_hi": round(float(np.quantile(tprs, hi)), 6)}


def within(stats: dict[str, Any], limits: Limits) -> bool:
    """Both 95% upper bounds inside the limits: the set is measured unidentifiable."""
    return stats.get("auc_hi") is not None and stats["auc_hi"] <= limits.auc_max and stats["tpr_hi"] <= limits.tpr_max


def significantly_identifiable(stats: dict[str, Any], limits: Limits) -> bool:
    """A lower bound beyond a limit: the set is measured identifiable (used for the growing cumulative set)."""
    return stats.get("auc_lo") is not None and (stats["auc_lo"] > limits.auc_max or stats["tpr_lo"] > limits.tpr_max)


def default_grid(n: int, *, start: int = 250) -> list[int]:
    """Prefix sizes tried when certifying: doubling from `start` points (below ~250 points a half's 4 OUT
    models give too few OUT scores to bound a TPR at 1% FPR), then the whole set."""
    sizes, s = [], start
    while s < n:
        sizes.append(s)
        s *= 2
    return [*sizes, n] if n else []


@dataclass
class Certification:
    """The certified free set of a pool: which columns, by which half's models, and the measured curves."""

    certified_by: np.ndarray  # (n,) int8: −1 not certified, else the half whose models certified the point
    separation: np.ndarray  # (n,) each point's held-out LiRA AUC over all K models (reported; never decides alone)
    halves: list[dict[str, Any]] = field(default_factory=list)

    @property
    def certified(self) -> np.ndarray:
        return self.certified_by >= 0


def certify(phi_std: np.ndarray, in_mask: np.ndarray, *, limits: Limits = Limits(), seed: int = 0, boot: int = 200,
            swap: bool = True, eligible: np.ndarray | None = None, prior: float = 4.0,
            min_points: int = 250) -> tuple[Certification,
                                                                                               np.ndarray]:
    """Select on one half of the pool, certify on the other: rank points by their separation measured on the
    select half; on the certify half's held-out scores, take the largest prefix whose group bounds stay within
    the limits (grid sizes double from min_points). With swap, the halves trade roles and the union is certified.

    Returns the certification and the (K, n) held-out scores (each half's models scored by the other models of
    the same half), which the cumulative free-set test reuses."""
    k, n = phi_std.shape
    half = halves(k)
    eligible = np.ones(n, dtype=bool) if eligible is None else eligible
    scores = np.empty((k, n))
    for h in (0, 1):
        scores[half == h] = loo_scores(phi_std[half == h], in_mask[half == h], prior=prior)
    certified_by = np.full(n, -1, dtype=np.int8)
    reports = []
    for select_half in ((0, 1) if swap else (0,)):
        cert_half = 1 - select_half
        if (held := int((half == cert_half).sum())) < MIN_CERTIFY_MODELS:
            reports.append({"select_half": select_half, "certify_half": cert_half, "n_certified": 0, "curve": [],
                            "not_certified": f"the certifying half holds {held} models (K={k}); a group bound "
                                             f"resampled over fewer than {MIN_CERTIFY_MODELS} models is not a bound"})
            continue
        sel = half == select_half
        sep = point_auc(scores[sel], in_mask[sel])
        # ties (few models: AUC moves in steps of 1/(K/4)²) broken by the fitted Gaussians' separation
        fitted = separation(point_stats(phi_std[sel], in_mask[sel], prior=prior))
        cols = np.flatnonzero(eligible)
        order = cols[np.lexsort((cols, fitted[cols], sep[cols]))]
        curve, chosen = [], 0
        for size in default_grid(len(order), start=min_points):
            stats = group_test(scores[half == cert_half][:, order[:size]], in_mask[half == cert_half][:, order[:size]],
                               limits=limits, boot=boot, seed=seed + size)
            ok = within(stats, limits)
            curve.append({**stats, "within": ok, "max_separation": round(float(sep[order[size - 1]]), 6)})
            if ok:  # the largest passing prefix (prefixes are nested: bounds grow with the separation admitted)
                chosen = size
        newly = order[:chosen]
        certified_by[newly[certified_by[newly] < 0]] = cert_half
        reports.append({"select_half": select_half, "certify_half": cert_half, "n_certified": int(chosen),
                        "curve": curve})
    overall = point_auc(cross_scores(phi_std, in_mask, prior=prior), in_mask)
    return Certification(certified_by=certified_by, separation=overall, halves=reports), scores


def certified_group(scores: np.ndarray, in_mask: np.ndarray, certified_by: np.ndarray, cols: np.ndarray, *,
                    limits: Limits = Limits(), boot: int = 200, seed: int = 0, max_points: int = 4000
                    ) -> dict[str, Any]:
    """Group LiRA of a set of certified columns, each scored by the half that certified it."""
    k = scores.shape[0]
    half = halves(k)
    parts_s, parts_l = [], []
    for h in (0, 1):
        c = np.sort(cols[certified_by[cols] == h])
        if len(c):  # columns first: the arrays may be memory-mapped (K × n)
            parts_s.append(np.asarray(scores[:, c])[half == h])
            parts_l.append(np.asarray(in_mask[:, c])[half == h])
    if not parts_s:
        return group_test(np.empty((k // 2, 0)), np.empty((k // 2, 0), dtype=bool), limits=limits)
    return group_test(np.concatenate(parts_s, 1), np.concatenate(parts_l, 1), limits=limits, boot=boot, seed=seed,
                      max_points=max_points)
