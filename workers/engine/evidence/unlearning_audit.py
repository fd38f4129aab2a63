"""The pool-based audit: does a new version treat the request's points like a model retrained without them?

A per-point likelihood ratio aggregated over the request, compared with the same aggregate on the pool's OUT models
(the null: truly retrained) and IN models (the power), each refitted without the model scored.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from workers.engine.evidence.pool import Pool
from workers.engine.evidence.stats import Stats, masked_moments, point_stats, pooled_variances, without_pair

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
    moments = (*masked_moments(phi_std, in_mask), *masked_moments(phi_std, ~in_mask))
    pooled = pooled_variances(phi_std, in_mask)
    null, alt = [], []
    for k in range(phi_std.shape[0]):
        v, is_in = phi_std[k], in_mask[k]
        s = without_pair(moments, phi_std, in_mask, k, prior=prior, pooled=pooled)
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


def _shift_effect(s: Stats, offset: np.ndarray, offset_se: np.ndarray) -> tuple[float, float]:
    """The size-shift correction's effect on the statistic, and its uncertainty counted as if fully correlated
    across points (conservative): both in statistic units."""
    d = (s.mu_in - s.mu_out) / np.sqrt(s.var_out)
    den = float(np.nansum(d * d))
    if den <= 0:
        return 0.0, 0.0
    return float(np.nansum(d * offset) / den), float(np.nansum(np.abs(d) * offset_se) / den)


@dataclass(frozen=True)
class RetrainedRange:
    """Where a model retrained without the request scores: a t prediction interval of the pool's OUT aggregates
    (widened by the size-shift uncertainty), and the power against the IN aggregates' normal fit."""

    center: float
    half_width: float
    power: float

    @property
    def lo(self) -> float:
        return self.center - self.half_width

    @property
    def hi(self) -> float:
        return self.center + self.half_width

    @staticmethod
    def fit(null: np.ndarray, alt: np.ndarray, shift_se: float, rule: AuditRule) -> tuple[RetrainedRange,
                                                                                          dict[str, Any]]:
        """The range and what the report shows of it."""
        from scipy.stats import norm, t

        q = float(t.ppf(1 - rule.alpha / 2, len(null) - 1))
        spread = float(np.hypot(float(null.std(ddof=1)) * np.sqrt(1 + 1 / len(null)), shift_se))
        fitted = RetrainedRange(float(null.mean()), q * spread, 0.0)
        m_alt, s_alt = float(alt.mean()), max(float(alt.std(ddof=1)), 1e-9)
        power = float(norm.sf((fitted.hi - m_alt) / s_alt) + norm.cdf((fitted.lo - m_alt) / s_alt))
        report = {"null": {"center": _r(fitted.center), "lo": _r(fitted.lo), "hi": _r(fitted.hi),
                           "models": int(len(null))},
                  "alternative": {"mean": _r(m_alt), "sd": _r(s_alt), "models": int(len(alt))}, "power": _r(power)}
        return RetrainedRange(fitted.center, fitted.half_width, power), report

    def around(self, center: float | None) -> RetrainedRange:
        """The same width centred on a retrain reference's statistic (unchanged without one)."""
        return self if center is None else RetrainedRange(center, self.half_width, self.power)

    def bounds(self) -> str:
        return f"[{self.lo:.3f}, {self.hi:.3f}]"


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
    k, n = pool_phi_std.shape
    s = point_stats(pool_phi_std, in_mask, prior=rule.prior)
    # shift: (OUT means, offsets) of the pool's size-shift points; the new version and the parent are full-data
    # models, the pool's are half-data: their expected OUT position moves by the measured, point-dependent offset.
    offset, offset_se = size_shift(s.mu_out, *shift) if shift is not None else (np.zeros(n), np.zeros(n))
    t_new = statistic(new_phi_std, s, shift=offset)
    shift_t, shift_se = _shift_effect(s, offset, offset_se)
    null, alt = per_model_aggregates(pool_phi_std, in_mask, prior=rule.prior)
    null, alt = null[np.isfinite(null)], alt[np.isfinite(alt)]
    out: dict[str, Any] = {"n_points": int(n), "k": int(k), "statistic": _r(t_new),
                           "size_shift": {"effect": _r(shift_t), "se": _r(shift_se),
                                          "measured": shift is not None},
                           "alpha": rule.alpha, "min_power": rule.min_power, "concentrated": concentrated}
    if t_new is None or len(null) < 3 or len(alt) < 3:
        return out | {"verdict": "inconclusive", "side": None, "power": 0.0, "null": None,
                      "why": "the request's points carry no measurable separation in the pool"}
    retrained, report = RetrainedRange.fit(null, alt, shift_se, rule)
    out |= report
    if parent_phi_std is not None:
        t_parent = statistic(parent_phi_std, s, shift=offset)
        out["parent"] = {"statistic": _r(t_parent), "outside_null": bool(t_parent is not None and not
                                                                          retrained.lo <= t_parent <= retrained.hi)}
    if concentrated:
        if reference_phi_std is None:
            return out | _concentrated_without_reference(t_new, retrained)
        t_ref = statistic(reference_phi_std, s, shift=offset)
        retrained = retrained.around(t_ref)
        out["reference"] = {"statistic": _r(t_ref)}
        out["null"] |= {"lo": _r(retrained.lo), "hi": _r(retrained.hi), "center": _r(t_ref),
                        "around": "retrain reference"}
    return out | _verdict(t_new, retrained, rule, parent_inside=not out.get("parent", {}).get("outside_null", True))


def _concentrated_without_reference(t_new: float, retrained: RetrainedRange) -> dict[str, Any]:
    """A concentrated request with no retrain reference: only one side of the per-point range still holds."""
    if t_new > retrained.hi:
        # A retrain without the whole request lost more of the points' support than any pool model, so it sits at
        # or below the per-point range (bench/evidence.py: every retrain of a concentrated request that left the
        # range left it below). Above it, the candidate remembers.
        return {"verdict": "failed", "side": "remembers",
                "why": f"statistic {t_new:.3f} above the retrained range {retrained.bounds()} (the request is "
                       "concentrated: a retrain would sit at or below it)"}
    return {"verdict": "inconclusive", "side": None,
            "why": "the request is concentrated (a large share of the data, of a class, or of the points like it): "
                   "the per-point null does not hold; set policy.audit.retrain_reference to judge it against a "
                   "model retrained without the whole request"}


def _verdict(t_new: float, retrained: RetrainedRange, rule: AuditRule, *, parent_inside: bool) -> dict[str, Any]:
    """Failed outside the retrained range (on the side it left), inconclusive without power or when the unchanged
    parent would pass too, else passed."""
    if t_new > retrained.hi:
        return {"verdict": "failed", "side": "remembers",
                "why": f"statistic {t_new:.3f} above the retrained range {retrained.bounds()}"}
    if t_new < retrained.lo:
        return {"verdict": "failed", "side": "over-forgets",
                "why": f"statistic {t_new:.3f} below the retrained range {retrained.bounds()}"}
    if retrained.power < rule.min_power:
        return {"verdict": "inconclusive", "side": None,
                "why": f"power {retrained.power:.2f} < {rule.min_power}: doing nothing could not be told apart"}
    if parent_inside:
        return {"verdict": "inconclusive", "side": None,
                "why": "the unchanged parent model would also fall inside the retrained range"}
    return {"verdict": "passed", "side": None,
            "why": f"statistic {t_new:.3f} inside the retrained range {retrained.bounds()}, power "
                   f"{retrained.power:.2f}"}


def _r(v: float | None) -> float | None:
    return None if v is None else round(float(v), 6)
