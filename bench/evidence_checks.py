"""Parts 4 and 5 of the evidence benchmark: self-influence scorers against the pool's measured separation, and the
certified free set checked on fresh shadow models the pool never saw."""

from __future__ import annotations

from typing import Any

import numpy as np

from bench.settings import CPU, Fitted, raw_phi, train
from workers.engine import evidence as ev
from workers.engine.data import ArraySet
from workers.engine.influence import compute_self_influence

SHADOW_SEED = 5_000  # the independent check's shadow models (as tests/integration/test_evidence.py)


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
