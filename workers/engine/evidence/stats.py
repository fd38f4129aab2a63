"""Per-point statistics of a reference pool: its design, standardised φ, IN/OUT Gaussians and held-out scores.

Numpy only (no torch, no scipy at import): the API process runs the cumulative free-set test at request time.
"""

from __future__ import annotations

from dataclasses import dataclass
from statistics import NormalDist

import numpy as np

_GRID = 32  # quantiles per distribution when a separation is integrated
_Z = np.array([NormalDist().inv_cdf((j + 0.5) / _GRID) for j in range(_GRID)])
_VAR_FLOOR = 1e-4  # standardised units: φ of saturated points varies by ~1e-3 between models


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


def masked_moments(values: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
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
    return _from_moments(*masked_moments(phi_std, in_mask), *masked_moments(phi_std, ~in_mask), prior=prior)


def pooled_variances(phi_std: np.ndarray, in_mask: np.ndarray) -> tuple[float, float]:
    """The pool-wide (median) IN and OUT variances the per-point ones shrink toward."""
    n_in, s1_in, s2_in = masked_moments(phi_std, in_mask)
    n_out, s1_out, s2_out = masked_moments(phi_std, ~in_mask)
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

def without_pair(moments: tuple[np.ndarray, ...], phi_std: np.ndarray, in_mask: np.ndarray, k: int, *,
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
    moments = (*masked_moments(phi_std, in_mask), *masked_moments(phi_std, ~in_mask))
    pooled = pooled_variances(phi_std, in_mask)
    scores = np.empty_like(phi_std, dtype=np.float64)
    for k in range(phi_std.shape[0]):
        scores[k] = llr(phi_std[k], without_pair(moments, phi_std, in_mask, k, prior=prior, pooled=pooled))
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
