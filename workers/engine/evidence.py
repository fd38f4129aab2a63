"""Measured evidence from a reference pool: φ statistics, per-point separation, group certification, the audit.

Numpy only (no torch, no scipy at import): the API process runs the cumulative free-set test at request time.

Vocabulary. A reference pool is K shadow models in a balanced design: models 2j and 2j+1 train on complementary
halves of the data, so every point is IN exactly K/2 models and OUT of the others. For each model and point the
pool keeps φ = z_y − logsumexp(z_≠y), the logit-scaled confidence that LiRA (Carlini et al. 2022) models as
Gaussian per point, IN and OUT. φ is standardised per model with that model's held-out test φ (median, IQR), which
removes each model's overall shift (a model trained on more data is more confident everywhere) before models are
compared point by point.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from statistics import NormalDist
from typing import Any

import numpy as np

_GRID = 32  # quantiles per distribution when a separation is integrated
_Z = np.array([NormalDist().inv_cdf((j + 0.5) / _GRID) for j in range(_GRID)])
_VAR_FLOOR = 1e-4  # standardised units: φ of saturated points varies by ~1e-3 between models
# Certification bounds group LiRA by resampling the certifying half's models: with 2 of them (K = 4) the bootstrap
# has three model multisets and its 95% bound means nothing. K = 8 (4 per half) agreed with 16 fresh shadow models
# in every replicate of bench/certify_k.py; K = 4 was never measured, so it serves audits but certifies nothing.
MIN_CERTIFY_MODELS = 4


@dataclass(frozen=True)
class Limits:
    """When a group of points counts as unidentifiable: group LiRA AUC and TPR at a low FPR, 95% upper bounds."""

    auc_max: float = 0.55
    tpr_max: float = 0.02
    fpr: float = 0.01
    confidence: float = 0.95

    def as_dict(self) -> dict[str, float]:
        return {"auc_max": self.auc_max, "tpr_max": self.tpr_max, "fpr": self.fpr, "confidence": self.confidence}


# ----------------------------------------------------------------------------- design and standardisation

def design(n_points: int, k: int, seed: int) -> np.ndarray:
    """(k, n) IN mask: models 2j and 2j+1 train on complementary random halves, so each point is IN k/2 models."""
    if k < 4 or k % 2:
        raise ValueError(f"a reference pool needs an even number of models ≥ 4 (got {k})")
    rng = np.random.default_rng(seed)
    mask = np.zeros((k, n_points), dtype=bool)
    for j in range(k // 2):
        half = np.zeros(n_points, dtype=bool)
        half[rng.permutation(n_points)[: n_points // 2]] = True
        mask[2 * j], mask[2 * j + 1] = half, ~half
    return mask


def halves(k: int) -> np.ndarray:
    """Which half each model belongs to: whole complementary pairs alternate, so each half is balanced too."""
    return np.array([(m // 2) % 2 for m in range(k)], dtype=np.int8)


def standardise(phi: np.ndarray, phi_test: np.ndarray) -> np.ndarray:
    """φ per model minus the median of its test φ, over their IQR/1.349 (robust: mislabelled points are tails)."""
    phi, phi_test = np.atleast_2d(phi).astype(np.float64), np.atleast_2d(phi_test).astype(np.float64)
    q1, med, q3 = np.quantile(phi_test, [0.25, 0.5, 0.75], axis=1)
    scale = np.maximum((q3 - q1) / 1.349, 1e-6)
    return (phi - med[:, None]) / scale[:, None]


# ----------------------------------------------------------------------------- per-point Gaussians

@dataclass
class Stats:
    """Per-point IN/OUT means and variances, the variances shrunk toward the pool-wide ones (few samples each)."""

    mu_in: np.ndarray
    var_in: np.ndarray
    mu_out: np.ndarray
    var_out: np.ndarray
    n_in: np.ndarray
    n_out: np.ndarray


def _moments(values: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    values = np.asarray(values, dtype=np.float64)  # pools are stored as float32
    n = mask.sum(0).astype(np.float64)
    s1 = np.where(mask, values, 0.0).sum(0)
    s2 = np.where(mask, values * values, 0.0).sum(0)
    return n, s1, s2


def _from_moments(n_in: np.ndarray, s1_in: np.ndarray, s2_in: np.ndarray, n_out: np.ndarray, s1_out: np.ndarray,
                  s2_out: np.ndarray, *, prior: float, pooled: tuple[float, float] | None = None) -> Stats:
    def side(n: np.ndarray, s1: np.ndarray, s2: np.ndarray, pool: float | None) -> tuple[np.ndarray, np.ndarray, float]:
        with np.errstate(invalid="ignore", divide="ignore"):
            mu = np.where(n > 0, s1 / np.maximum(n, 1), np.nan)
            ss = np.maximum(s2 - n * np.nan_to_num(mu) ** 2, 0.0)
            raw = np.where(n > 1, ss / np.maximum(n - 1, 1), np.nan)
        if pool is None:
            pool = float(np.nanmedian(raw)) if np.isfinite(raw).any() else 1.0
        dof = np.maximum(n - 1, 0)
        var = (np.nan_to_num(raw) * dof + prior * pool) / (dof + prior)
        return mu, np.maximum(var, _VAR_FLOOR), pool

    mu_in, var_in, _ = side(n_in, s1_in, s2_in, pooled[0] if pooled else None)
    mu_out, var_out, _ = side(n_out, s1_out, s2_out, pooled[1] if pooled else None)
    return Stats(mu_in, var_in, mu_out, var_out, n_in, n_out)


def point_stats(phi_std: np.ndarray, in_mask: np.ndarray, *, prior: float = 4.0) -> Stats:
    """Gaussian IN/OUT fits per point from the given models (rows of phi_std)."""
    return _from_moments(*_moments(phi_std, in_mask), *_moments(phi_std, ~in_mask), prior=prior)


def pooled_variances(phi_std: np.ndarray, in_mask: np.ndarray) -> tuple[float, float]:
    """The pool-wide (median) IN and OUT variances the per-point ones shrink toward."""
    n_in, s1_in, s2_in = _moments(phi_std, in_mask)
    n_out, s1_out, s2_out = _moments(phi_std, ~in_mask)
    out = []
    for n, s1, s2 in ((n_in, s1_in, s2_in), (n_out, s1_out, s2_out)):
        with np.errstate(invalid="ignore", divide="ignore"):
            raw = np.where(n > 1, (s2 - s1 * s1 / np.maximum(n, 1)) / np.maximum(n - 1, 1), np.nan)
        out.append(float(np.nanmedian(raw)) if np.isfinite(raw).any() else 1.0)
    return out[0], out[1]


def llr(v: np.ndarray, s: Stats) -> np.ndarray:
    """LiRA's score: log N(v; IN) − log N(v; OUT), unequal variances (IN can be ~10× tighter than OUT)."""
    return (-0.5 * (v - s.mu_in) ** 2 / s.var_in - 0.5 * np.log(s.var_in)
            + 0.5 * (v - s.mu_out) ** 2 / s.var_out + 0.5 * np.log(s.var_out))


def separation(s: Stats, *, chunk: int = 20_000) -> np.ndarray:
    """Each point's IN/OUT LiRA AUC: P(LLR of an IN draw > LLR of an OUT draw) under its two Gaussians.

    Integrated on a quantile grid of each Gaussian (the exact binormal AUC of the likelihood-ratio test, which
    sees unequal variances: equal means do not make a point unidentifiable)."""
    n = len(s.mu_in)
    out = np.empty(n)
    for a in range(0, n, chunk):
        mi, vi, mo, vo = (np.asarray(v, dtype=np.float64)[a:a + chunk, None, None]
                          for v in (s.mu_in, s.var_in, s.mu_out, s.var_out))

        def score(v: np.ndarray, mi=mi, vi=vi, mo=mo, vo=vo) -> np.ndarray:  # noqa: ANN001 - bound per chunk
            return -0.5 * (v - mi) ** 2 / vi - 0.5 * np.log(vi) + 0.5 * (v - mo) ** 2 / vo + 0.5 * np.log(vo)

        l_in = score(mi + np.sqrt(vi) * _Z[None, :, None])  # (c, G, 1)
        l_out = score(mo + np.sqrt(vo) * _Z[None, None, :])  # (c, 1, G)
        out[a:a + chunk] = (l_in > l_out).mean((1, 2)) + 0.5 * (l_in == l_out).mean((1, 2))
    return out


# ----------------------------------------------------------------------------- group LiRA on held-out models

def _without_pair(moments: tuple[np.ndarray, ...], phi_std: np.ndarray, in_mask: np.ndarray, k: int, *,
                  prior: float, pooled: tuple[float, float]) -> Stats:
    """Per-point Gaussians refitted without model k and its complementary partner k^1. Leaving the pair out keeps
    the IN and OUT fits the same size for every point (one sample fewer each): leaving out one model alone makes
    its own side's mean noisier than the other's, which biases held-out scores toward 'OUT' (AUC < 0.5)."""
    n_in, s1_in, s2_in, n_out, s1_out, s2_out = (m.copy() for m in moments)
    for j in (k, k ^ 1):
        if j >= phi_std.shape[0]:
            continue
        v, is_in = phi_std[j], in_mask[j]
        n_in, s1_in, s2_in = n_in - is_in, s1_in - np.where(is_in, v, 0), s2_in - np.where(is_in, v * v, 0)
        n_out, s1_out, s2_out = n_out - ~is_in, s1_out - np.where(~is_in, v, 0), s2_out - np.where(~is_in, v * v, 0)
    return _from_moments(n_in, s1_in, s2_in, n_out, s1_out, s2_out, prior=prior, pooled=pooled)


def loo_scores(phi_std: np.ndarray, in_mask: np.ndarray, *, prior: float = 4.0) -> np.ndarray:
    """(m, n) LiRA scores of each model's φ, each point's Gaussians fitted on the other pairs of models (rows come
    in complementary pairs 2j, 2j+1)."""
    moments = (*_moments(phi_std, in_mask), *_moments(phi_std, ~in_mask))
    pooled = pooled_variances(phi_std, in_mask)
    scores = np.empty_like(phi_std, dtype=np.float64)
    for k in range(phi_std.shape[0]):
        scores[k] = llr(phi_std[k], _without_pair(moments, phi_std, in_mask, k, prior=prior, pooled=pooled))
    return scores


def cross_scores(phi_std: np.ndarray, in_mask: np.ndarray, *, prior: float = 4.0) -> np.ndarray:
    """(K, n) LiRA scores of each half's models under Gaussians fitted on the other half only: no scored sample
    is ever part of the fit that scores it, so a point the models cannot tell apart has an expected AUC of
    exactly 0.5 (leave-one-out fits are biased below chance: removing a sample pulls its own side's mean away)."""
    half = halves(phi_std.shape[0])
    scores = np.empty_like(phi_std, dtype=np.float64)
    for h in (0, 1):
        fit = point_stats(phi_std[half != h], in_mask[half != h], prior=prior)
        scores[half == h] = llr(phi_std[half == h], fit)
    return scores


def point_auc(scores: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Each point's own empirical AUC of its held-out scores, IN vs OUT (a column per point): its separation.
    Unbiased at chance (0.5 for a point the models cannot tell apart), unlike a fitted-Gaussian AUC."""
    s, lab = np.asarray(scores, dtype=np.float64), np.asarray(labels, dtype=bool)
    out = np.full(s.shape[1], np.nan)
    for a in range(0, s.shape[1], 20_000):
        sc, lb = s[:, a:a + 20_000], lab[:, a:a + 20_000]
        greater = (sc[:, None, :] > sc[None, :, :]) & lb[:, None, :] & ~lb[None, :, :]
        ties = (sc[:, None, :] == sc[None, :, :]) & lb[:, None, :] & ~lb[None, :, :]
        pairs = lb.sum(0) * (~lb).sum(0)
        with np.errstate(invalid="ignore", divide="ignore"):
            out[a:a + 20_000] = (greater.sum((0, 1)) + 0.5 * ties.sum((0, 1))) / pairs
    return out


def per_point_pvalues(scores: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """One-sided exact Mann–Whitney p-values of 'IN scores above OUT scores', per point (scipy: worker side)."""
    from scipy.stats import mannwhitneyu

    s, lab = np.asarray(scores, dtype=np.float64), np.asarray(labels, dtype=bool)
    return np.array([mannwhitneyu(s[lab[:, j], j], s[~lab[:, j], j], alternative="greater", method="exact").pvalue
                     for j in range(s.shape[1])])


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


# ----------------------------------------------------------------------------- the audit

# Σ d² below this (e.g. fewer than four points one OUT-spread apart) carries no measurable separation: the ratio
# Σ d·z / Σ d² would be noise over noise (measured on 5-point requests of near-chance points: null ranges of ±2000).
MIN_WEIGHT = 4.0


@dataclass(frozen=True)
class AuditRule:
    alpha: float = 0.01  # the null's two-sided (1 − alpha) prediction range
    min_power: float = 0.8
    prior: float = 4.0
    # Concentration limits (see `concentration`): beyond them the per-point null does not hold.
    max_data_share: float = 0.10  # the size-shift models measure a full-data model missing 10%, no more
    max_class_share: float = 0.25
    max_depletion: float = 0.10


def concentration(mu_out: np.ndarray, labels: np.ndarray, cols: np.ndarray, *, weights: np.ndarray | None = None,
                  neighbours: int = 25, rule: AuditRule = AuditRule()) -> dict[str, Any]:
    """Does removing the request change the composition of the data, not only its size?

    The per-point null compares the candidate with pool models that lost about half of the request's
    neighbours; a retrain loses all of them. Removing a random tenth leaves proportions as they were (the
    size-shift models measure the rest), but removing most of the mislabelled points of a dataset makes the
    retrain a cleaner model than any pool model and pushes every removed point below the pool's OUT range
    (measured on digits with 100 flipped labels: a retrain's statistic moves −0.02, −0.09, −0.13, −0.19, −0.46
    for 5, 10, 20, 40, 80 flipped points removed; random requests up to 80 points, none). The depletion is the
    request's share among the `neighbours` pool points nearest each request point in the pool's eyes (its OUT
    mean), weighted like the audit statistic, minus its share of all the data: ≈ 0 for a random request, the
    removed fraction of a sub-population for a targeted one. mu_out, labels: every pool column; cols: the
    request's pool columns; weights: the audit's per-point weights d² over cols (default equal)."""
    mu_out = np.asarray(mu_out, dtype=np.float64)
    labels = np.asarray(labels)
    cols = np.asarray(cols, dtype=np.int64)
    n, m = len(mu_out), len(cols)
    if not m or n < 2:
        return {"data_share": 0.0, "class_share": 0.0, "depletion": 0.0, "concentrated": False, "why": None}
    data_share = m / n
    n_classes = int(labels.max()) + 1
    class_share = float((np.bincount(labels[cols], minlength=n_classes)
                         / np.maximum(np.bincount(labels, minlength=n_classes), 1)).max())
    finite = np.isfinite(mu_out)
    order = np.flatnonzero(finite)[np.argsort(mu_out[finite], kind="stable")]
    sorted_mu = mu_out[order]
    in_request = np.zeros(n, dtype=bool)
    in_request[cols] = True
    k = min(neighbours, len(order) - 1)
    local = np.full(m, np.nan)
    for i, c in enumerate(cols):  # the k nearest in one dimension lie within k places either side in sort order
        if not finite[c] or k < 1:
            continue
        at = int(np.searchsorted(sorted_mu, mu_out[c]))
        window = order[max(0, at - k - 1): at + k + 1]
        window = window[window != c]
        near = window[np.argsort(np.abs(mu_out[window] - mu_out[c]), kind="stable")[:k]]
        local[i] = in_request[near].mean()
    w = np.ones(m) if weights is None else np.nan_to_num(np.asarray(weights, dtype=np.float64))
    ok = np.isfinite(local) & (w > 0)
    depletion = float((local[ok] * w[ok]).sum() / w[ok].sum() - data_share) if ok.any() else 0.0
    why = None
    if data_share > rule.max_data_share:
        why = f"the request is {data_share:.0%} of the measured data (limit {rule.max_data_share:.0%})"
    elif class_share > rule.max_class_share:
        why = f"the request is {class_share:.0%} of one class (limit {rule.max_class_share:.0%})"
    elif depletion > rule.max_depletion:
        why = (f"the request removes {depletion:.0%} more of the points the pool sees as similar to it than of the "
               f"data as a whole (limit {rule.max_depletion:.0%}): a retrain without it changes the data's "
               "composition, not only its size")
    return {"data_share": _r(data_share), "class_share": _r(class_share), "depletion": _r(depletion),
            "concentrated": why is not None, "why": why}


def _aggregate(phi_std: np.ndarray, s: Stats, shift: float | np.ndarray = 0.0) -> tuple[float, float]:
    """(Σ d·z, Σ d²) with d = (μ_in − μ_out)/σ_out, z = (φ − μ_out)/σ_out − shift over the given points."""
    sd = np.sqrt(s.var_out)
    d = (s.mu_in - s.mu_out) / sd
    z = (phi_std - s.mu_out) / sd - shift
    ok = np.isfinite(d) & np.isfinite(z)
    return float((d[ok] * z[ok]).sum()), float((d[ok] ** 2).sum())


def statistic(phi_std: np.ndarray, s: Stats, *, shift: float | np.ndarray = 0.0) -> float | None:
    """The weighted mean of a model's OUT-standardised φ over a request, in units where a model retrained without
    the points scores about 0 and one still trained on them about 1 (an equal-variance likelihood ratio; weights
    grow with each point's separation, so near-chance points add little noise). On near-chance points a retrain
    scores nearer 0.5, because the weights and z share the estimation error of the OUT means; the null is
    computed the same way from the pool's own models, so verdicts compare like with like. shift: the measured
    size-mismatch offset of a full-data model's z on OUT points (per point or one number), subtracted."""
    num, den = _aggregate(phi_std, s, shift)
    return num / den if den >= MIN_WEIGHT else None


def size_shift(mu_out: np.ndarray, shift_mu_out: np.ndarray, shift_offsets: np.ndarray, *,
               neighbours: int = 25) -> tuple[np.ndarray, np.ndarray]:
    """Per request point, the expected offset (in OUT-spread units) of a full-data retrain's φ from the half-data
    pool's OUT mean, and its standard error: the mean offset of the `neighbours` size-shift points whose OUT means
    are closest. The mismatch depends on the kind of point (measured: ≈ 0 on typical points, −0.5σ on mislabelled
    ones, which a full-data model contradicts more confidently), so one global number would not do."""
    mu_out = np.asarray(mu_out, dtype=np.float64)
    ok = np.isfinite(shift_mu_out) & np.isfinite(shift_offsets)
    ref_mu, ref_off = np.asarray(shift_mu_out)[ok], np.asarray(shift_offsets)[ok]
    if len(ref_mu) < 3:
        return np.zeros(len(mu_out)), np.zeros(len(mu_out))
    k = min(neighbours, len(ref_mu))
    near = np.argsort(np.abs(mu_out[:, None] - ref_mu[None, :]), axis=1)[:, :k]
    vals = ref_off[near]
    return vals.mean(1), vals.std(1, ddof=1) / np.sqrt(k)


def per_model_aggregates(phi_std: np.ndarray, in_mask: np.ndarray, *, prior: float = 4.0) -> tuple[
        np.ndarray, np.ndarray]:
    """Each pool model's statistic over its OUT subset (the null: truly retrained) and its IN subset (not
    unlearned: the power), each point's Gaussians refitted without that model and its partner."""
    moments = (*_moments(phi_std, in_mask), *_moments(phi_std, ~in_mask))
    pooled = pooled_variances(phi_std, in_mask)
    null, alt = [], []
    for k in range(phi_std.shape[0]):
        v, is_in = phi_std[k], in_mask[k]
        s = _without_pair(moments, phi_std, in_mask, k, prior=prior, pooled=pooled)
        for mask, sink in ((~is_in, null), (is_in, alt)):
            sub = Stats(*(np.asarray(a)[mask] for a in (s.mu_in, s.var_in, s.mu_out, s.var_out, s.n_in, s.n_out)))
            num, den = _aggregate(v[mask], sub)
            sink.append(num / den if den >= MIN_WEIGHT / 4 else np.nan)
    return np.asarray(null), np.asarray(alt)


def request_concentration(pool: Pool, labels: np.ndarray, cols: np.ndarray, *,
                          rule: AuditRule = AuditRule()) -> dict[str, Any]:
    """`concentration` of a request (its pool columns) measured on the whole pool; labels: one per pool column."""
    cols = np.asarray(cols, dtype=np.int64)
    phi_std, in_mask = np.asarray(pool.phi_std, dtype=np.float64), np.asarray(pool.in_mask)
    s = point_stats(phi_std, in_mask, prior=rule.prior)
    d2 = ((s.mu_in[cols] - s.mu_out[cols]) ** 2) / s.var_out[cols]
    return concentration(s.mu_out, labels, cols, weights=d2, rule=rule)


def audit(pool_phi_std: np.ndarray, in_mask: np.ndarray, new_phi_std: np.ndarray, *,
          shift: tuple[np.ndarray, np.ndarray] | None = None, parent_phi_std: np.ndarray | None = None,
          reference_phi_std: np.ndarray | None = None, concentrated: bool = False,
          rule: AuditRule = AuditRule()) -> dict[str, Any]:
    """Does the new version treat the request's points like a model retrained without them?

    pool_phi_std, in_mask: (K, n) over the request's points; new_phi_std: the candidate's standardised φ on them.
    The null range is a t_{K−1} prediction interval of the pool models' OUT aggregates; the power is the share
    of the IN aggregates' normal fit outside it. The parent (which still holds the points) is scored too: when
    doing nothing would pass, the audit cannot tell and says so. A concentrated request (e.g. most of a class)
    breaks the per-point null: it is judged against a retrain reference when one was trained, else inconclusive.
    Returns the measurements and a verdict without the accuracy rule (the caller applies it first)."""
    from scipy.stats import norm, t

    k, n = pool_phi_std.shape
    s = point_stats(pool_phi_std, in_mask, prior=rule.prior)
    # shift: (OUT means, offsets) of the pool's size-shift points; the new version and the parent are full-data
    # models, the pool's are half-data: their expected OUT position moves by the measured, point-dependent offset.
    offset, offset_se = size_shift(s.mu_out, *shift) if shift is not None else (np.zeros(n), np.zeros(n))
    t_new = statistic(new_phi_std, s, shift=offset)
    d = (s.mu_in - s.mu_out) / np.sqrt(s.var_out)
    den = float(np.nansum(d * d))
    # The correction's effect on the statistic, and its uncertainty counted as if fully correlated across points
    # (conservative): both in statistic units.
    shift_t = float(np.nansum(d * offset) / den) if den > 0 else 0.0
    shift_se = float(np.nansum(np.abs(d) * offset_se) / den) if den > 0 else 0.0
    null, alt = per_model_aggregates(pool_phi_std, in_mask, prior=rule.prior)
    null, alt = null[np.isfinite(null)], alt[np.isfinite(alt)]
    out: dict[str, Any] = {"n_points": int(n), "k": int(k), "statistic": _r(t_new),
                           "size_shift": {"effect": _r(shift_t), "se": _r(shift_se),
                                          "measured": shift is not None},
                           "alpha": rule.alpha, "min_power": rule.min_power, "concentrated": concentrated}
    if t_new is None or len(null) < 3 or len(alt) < 3:
        return out | {"verdict": "inconclusive", "side": None, "power": 0.0, "null": None,
                      "why": "the request's points carry no measurable separation in the pool"}
    q = float(t.ppf(1 - rule.alpha / 2, len(null) - 1))
    center = float(null.mean())
    spread = float(np.hypot(float(null.std(ddof=1)) * np.sqrt(1 + 1 / len(null)), shift_se))
    lo, hi = center - q * spread, center + q * spread
    m_alt, s_alt = float(alt.mean()), max(float(alt.std(ddof=1)), 1e-9)
    power = float(norm.sf((hi - m_alt) / s_alt) + norm.cdf((lo - m_alt) / s_alt))
    out |= {"null": {"center": _r(center), "lo": _r(lo), "hi": _r(hi), "models": int(len(null))},
            "alternative": {"mean": _r(m_alt), "sd": _r(s_alt), "models": int(len(alt))}, "power": _r(power)}
    if parent_phi_std is not None:
        t_parent = statistic(parent_phi_std, s, shift=offset)
        out["parent"] = {"statistic": _r(t_parent), "outside_null": bool(t_parent is not None
                                                                          and not lo <= t_parent <= hi)}
    if concentrated:
        if reference_phi_std is None:
            if t_new > hi:
                # One side still holds: a retrain without the whole request lost more of the points' support than
                # any pool model, so it sits at or below the per-point range (bench/evidence.py: every retrain of
                # a concentrated request that left the range left it below). Above it, the candidate remembers.
                return out | {"verdict": "failed", "side": "remembers",
                              "why": f"statistic {t_new:.3f} above the retrained range [{lo:.3f}, {hi:.3f}] (the "
                                     "request is concentrated: a retrain would sit at or below it)"}
            return out | {"verdict": "inconclusive", "side": None,
                          "why": "the request is concentrated (a large share of the data, of a class, or of the points "
                                 "like it): the per-point null does not hold; set policy.audit.retrain_reference to "
                                 "judge it against a model retrained without the whole request"}
        t_ref = statistic(reference_phi_std, s, shift=offset)
        half_width = q * spread
        out["reference"] = {"statistic": _r(t_ref)}
        lo, hi = (t_ref - half_width, t_ref + half_width) if t_ref is not None else (lo, hi)
        out["null"] |= {"lo": _r(lo), "hi": _r(hi), "center": _r(t_ref), "around": "retrain reference"}
    if t_new > hi:
        return out | {"verdict": "failed", "side": "remembers",
                      "why": f"statistic {t_new:.3f} above the retrained range [{lo:.3f}, {hi:.3f}]"}
    if t_new < lo:
        return out | {"verdict": "failed", "side": "over-forgets",
                      "why": f"statistic {t_new:.3f} below the retrained range [{lo:.3f}, {hi:.3f}]"}
    if power < rule.min_power:
        return out | {"verdict": "inconclusive", "side": None,
                      "why": f"power {power:.2f} < {rule.min_power}: doing nothing could not be told apart"}
    if "parent" in out and not out["parent"]["outside_null"]:
        return out | {"verdict": "inconclusive", "side": None,
                      "why": "the unchanged parent model would also fall inside the retrained range"}
    return out | {"verdict": "passed", "side": None,
                  "why": f"statistic {t_new:.3f} inside the retrained range [{lo:.3f}, {hi:.3f}], power {power:.2f}"}


def _r(v: float | None) -> float | None:
    return None if v is None else round(float(v), 6)


# ----------------------------------------------------------------------------- the pool's arrays on disk

ARRAYS = ("rows", "in_mask", "phi", "phi_test", "phi_std", "scores", "certified_by", "separation", "shift_cols",
          "shift_offsets")


@dataclass
class Pool:
    """What a pool measured, column j describing dataset row rows[j]."""

    rows: np.ndarray  # (n,) dataset rows the pool measured (the live rows when it was fitted)
    in_mask: np.ndarray  # (K, n) bool
    phi: np.ndarray  # (K, n) raw φ
    phi_test: np.ndarray  # (K, n_test)
    phi_std: np.ndarray  # (K, n) standardised per model by its test φ
    scores: np.ndarray  # (K, n) held-out LiRA scores within each half (for group tests)
    certified_by: np.ndarray  # (n,) int8, −1 not certified
    separation: np.ndarray  # (n,)
    # The size-mismatch measurement: columns left out of full-size models, and their φ offsets from the pool's
    # OUT means in units of each point's OUT spread.
    shift_cols: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=np.int64))
    shift_offsets: np.ndarray = field(default_factory=lambda: np.empty(0))
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def k(self) -> int:
        return int(self.in_mask.shape[0])

    def columns(self, rows: np.ndarray) -> np.ndarray:
        """Pool columns of dataset rows (−1 where the pool did not measure the row)."""
        rows = np.asarray(rows, dtype=np.int64)
        pos = np.searchsorted(self.rows, rows)
        pos = np.clip(pos, 0, max(len(self.rows) - 1, 0))
        hit = (len(self.rows) > 0) & (self.rows[pos] == rows)
        return np.where(hit, pos, -1)


def save_pool(pool: Pool, root: Path) -> None:
    """One .npy per array (memory-mapped when loaded) and meta.json, each replaced atomically: requests may be
    reading the pool while erasure rewrites it."""
    import os

    root.mkdir(parents=True, exist_ok=True)
    for name in ARRAYS:
        tmp = root / f"{name}.npy.tmp"
        value = np.asarray(getattr(pool, name))
        if value.dtype.kind == "f":
            # float32 on disk: 4 bytes per model and point for each (K, n) array (64 MB per million points at
            # K = 16). Pool spreads are ≥ 1e-2 in φ units; float32 resolves 1e-6 of a φ of 30. Arithmetic is float64
            # (_moments, standardise cast on the way in).
            value = value.astype(np.float32)
        with open(tmp, "wb") as fh:
            np.save(fh, value)
        os.replace(tmp, root / f"{name}.npy")
    (root / "meta.json.tmp").write_text(json.dumps(pool.meta, sort_keys=True))
    os.replace(root / "meta.json.tmp", root / "meta.json")


def load_pool(root: Path, *, mmap: bool = True) -> Pool:
    arrays = {name: np.load(root / f"{name}.npy", mmap_mode="r" if mmap else None) for name in ARRAYS}
    return Pool(**arrays, meta=json.loads((root / "meta.json").read_text()))
