"""Unlearning algorithms against both ends — doing nothing and retraining — on a memorising model, with the pool
audit a Lethe job runs, several seeds and intervals (issue 16).

    .venv/bin/python -m bench.unlearning [--setting digits|fashion] [--quick|--large] [--seeds 5] [--fa-seeds 100]
                                         [--out bench/results/unlearning.json]

Sizes (PRESETS; printed at the start): the default run of each setting fits in 60 minutes on 2 cores, --quick is a
smoke run (≤ 5 min), --large more seeds and a larger pool.

Setting `fashion` (bench.evidence.fashion): 5,000 Fashion-MNIST images with 10% of the labels flipped, a CNN (conv
8, conv 16, dense 256) that fits them, 2,000 test images; forget sets of 100 random, 100 mislabelled and 150 images
of one class (30% of it: concentrated). The code path is the same as the digits'; only PRESETS["fashion"] sizes it.

Setting `digits` (bench/evidence.py's memorisation fixture, shared with tests/integration/test_evidence.py):
scikit-learn digits, 400 training points of which 100 carry a wrong label, 350 test points, MLP [128], Adam lr 3e-3, 100
epochs, batch 32: the parent fits every flipped label, a model that never saw them does not. No augmentation,
so no forget point has near-duplicates left in the retain set. The parent (seed 0, all 400 points, 3 Adam
checkpoints kept for LESS) and its reference pool (K=16 + 4 size-shift models, `reference.fit_pool`/`score_pool`
as a `reference` job) are fitted once.

Forget sets (per seed): `random` (40 points drawn at random), `mislabelled` (40 of the flipped points) and
`class_slice` (20 points of one class, half of it: a concentrated request, which the pipeline audits against a
retrain reference, here one more retrain with another seed). Per seed and forget set: the two references —
`do_nothing` (the parent) and `retrain` (from scratch on the retain set, a new seed) — and every algorithm
(VARIANTS: the engine's defaults, plus the per-point options of papers.md: iau step=scaled, imu
selection=per_point) at each pruning level (PRUNING: q_forget then q_retain of the lowest gradnorm
self-influence, the policy's default scorer, dropped before unlearning; the audit covers the whole request).

Per row: forget/retain/test accuracy (FA/RA/TA) on the full sets, loss-MIA AUC and confidence-MIA efficacy
(workers.engine.audit.audit_model), the pool audit's statistic and verdict (evidence.audit on the request's pool
columns with the parent, the measured size shift, and for the class slice the reference; the pipeline's accuracy
rule, RA and TA within 2 points of the parent, is applied first, as workers/jobs/verdict.py `judge` does), the gap to
the same seed's retrain per metric and Avg Gap (mean over UA, RA, TA, MIA efficacy: the NeurIPS 2023 challenge's
summary as SalUn reports it), and the unlearning call's wall time. Summaries: mean and 95% t-interval over seeds,
verdict counts with Clopper–Pearson intervals.

Also: retrain false alarms over `--fa-seeds` (seed, request) pairs of 40 random and 40 flipped points
(bench.evidence.replicate); the less scorer before/after the own-term fix (negative share, the lowest decile's
gradnorm percentiles); Fig 4.1 of 000: retrain without the n lowest points per scorer and random, accuracy on the
removed points and their group LiRA AUC on the pool. Writes the JSON, a PNG next to it (Fig 5.1/5.2: wall time
against the audit statistic as q_forget and q_retain grow, do nothing and retrain marked; Fig 4.1), and prints the
tables.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench import evidence as evb
from workers.engine import evidence as ev
from workers.engine.audit import accuracy_reasons, audit_model
from workers.engine.data import ArraySet
from workers.engine.influence import compute_self_influence
from workers.engine.params import escalation, validate_params
from workers.engine.unlearning import unlearn

CPU = evb.CPU
FORGET_KINDS = ("random", "mislabelled", "class_slice")
# (label, algorithm, params): the engine's defaults are the paper forms; the fixes are named options.
VARIANTS: list[tuple[str, str, dict[str, Any]]] = [
    ("finetune", "finetune", {}), ("neggrad", "neggrad", {}), ("scrub", "scrub", {}), ("rank1", "rank1", {}),
    ("rank2", "rank2", {}), ("iau", "iau", {}), ("iau_scaled", "iau", {"step": "scaled"}),
    ("imu", "imu", {}), ("imu_per_point", "imu", {"selection": "per_point"})]
PRUNING: list[tuple[float, float]] = [(0.0, 0.0), (0.2, 0.0), (0.4, 0.0), (0.6, 0.0), (0.0, 0.2), (0.0, 0.4),
                                      (0.0, 0.6)]
FIG41_SCORERS = ("gradnorm", "hessian", "less", "less_own", "random")
MAX_ACC_DROP = 0.02  # AuditPolicy's default: RA and TA may fall at most this much
REF_SEED = 200_000  # the class slice's retrain reference (never a retrain row's, pool's or parent's seed)
PRUNE_SCORER = "gradnorm"  # the policy's default scorer


@dataclass
class Config:
    seeds: int = 5
    forget_size: int = 40
    slice_size: int = 20
    variants: tuple[str, ...] = tuple(v[0] for v in VARIANTS)
    pruning: tuple[tuple[float, float], ...] = tuple(PRUNING)
    kinds: tuple[str, ...] = FORGET_KINDS
    strengths: int = 3  # 1: defaults only; 2: + the job's stronger attempt; 3: + once stronger again
    fa_seeds: int = 100  # retrain-only false-alarm replicates per request kind
    fig41_n: tuple[int, ...] = (20, 40, 80, 160)
    k: int = 16
    shift_models: int = 4
    epochs: int | None = None  # override the recipe (the unit test's smallest run)
    quick: bool = False
    setting: str = "memorisation"  # bench.evidence.SETTINGS: memorisation (digits) or fashion
    fashion_n: int = 5000
    size: str = "default"  # default, quick or large (the preset the run was sized from)

    def __post_init__(self) -> None:
        if self.quick and self.size == "default":
            self.size = "quick"


# Per setting: the default run (≤ 60 min on 2 cores), --quick (a smoke run, ≤ 5 min) and --large. A fashion CNN
# retrain costs ~40 s here (the digits MLP ~0.5 s): fewer seeds and pruning levels, the job's ladder only, a pool of
# K=8 + 2, no stronger attempts (so no job ladder), Fig 4.1 at one size, and the retrain false alarms left to
# `bench.evidence --setting fashion`.
PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    "memorisation": {
        "default": {},
        "quick": {"seeds": 3, "pruning": ((0.0, 0.0), (0.4, 0.0), (0.0, 0.4)), "fa_seeds": 20, "fig41_n": (40,)},
        "large": {"seeds": 10, "fa_seeds": 300}},
    "fashion": {
        "default": {"setting": "fashion", "seeds": 3, "forget_size": 100, "slice_size": 150,
                    "pruning": ((0.0, 0.0), (0.0, 0.5)), "strengths": 1, "fa_seeds": 0,
                    "fig41_n": (250,), "k": 8, "shift_models": 2},
        "quick": {"setting": "fashion", "seeds": 2, "forget_size": 30, "slice_size": 40, "pruning": ((0.0, 0.0),),
                  "strengths": 1, "fa_seeds": 0, "fig41_n": (50,), "k": 4, "shift_models": 2, "fashion_n": 1000,
                  "epochs": 30},
        "large": {"setting": "fashion", "seeds": 5, "forget_size": 100, "slice_size": 150, "strengths": 2,
                  "fa_seeds": 20, "fig41_n": (100, 250, 500), "k": 16, "shift_models": 4}},
}


def preset(setting: str, size: str = "default") -> Config:
    """The Config of a setting's default, quick or large run."""
    return Config(**PRESETS[setting][size], quick=size == "quick", size=size)


def draw_forget(setting: evb.Setting, kind: str, cfg: Config, seed: int) -> np.ndarray:
    rng = np.random.default_rng([seed, FORGET_KINDS.index(kind), 16])
    if kind == "random":
        return np.sort(rng.choice(setting.n, cfg.forget_size, replace=False))
    if kind == "mislabelled":
        return np.sort(rng.choice(setting.flipped, min(cfg.forget_size, len(setting.flipped)), replace=False))
    cls = int(rng.integers(setting.n_classes))
    members = np.flatnonzero(setting.y == cls)
    return np.sort(rng.choice(members, min(cfg.slice_size, len(members)), replace=False))


def prune(scores: np.ndarray, rows: np.ndarray, q: float) -> np.ndarray:
    """All but the lowest-scoring fraction q of rows (what a job's q_forget / q_retain drop)."""
    if q <= 0:
        return rows
    order = rows[np.argsort(scores[rows], kind="stable")]
    return np.sort(order[int(q * len(rows)):])


def measure(net: torch.nn.Module, s: evb.Setting, forget: np.ndarray, retain: np.ndarray) -> dict[str, Any]:
    a = audit_model(net, forget=ArraySet(s.x[forget], s.y[forget]), retain=ArraySet(s.x[retain], s.y[retain]),
                    test=ArraySet(s.x_test, s.y_test), device=CPU, seed=0)
    return {"fa": a["fa"], "ua": a["ua"], "ra": a["ra"], "ta": a["ta"], "mia_auc": a["mia"].get("auc"),
            "mia_efficacy": (a.get("mia_conf") or {}).get("efficacy")}


GAP_KEYS = ("ua", "ra", "ta", "mia_efficacy")


def gaps(m: dict[str, Any], ref: dict[str, Any]) -> dict[str, Any]:
    g = {k: abs(m[k] - ref[k]) for k in GAP_KEYS if m.get(k) is not None and ref.get(k) is not None}
    return {"gap": g, "avg_gap": float(np.mean(list(g.values()))) if g else None}


def judge(f: evb.Fitted, forget: np.ndarray, phi: np.ndarray, m: dict[str, Any], parent_m: dict[str, Any], *,
          concentrated: bool, reference_phi: np.ndarray | None) -> dict[str, Any]:
    """The pipeline's verdict: accuracy outside policy fails first, then the pool's evidence."""
    cols = np.sort(forget)
    a = ev.audit(f.pool.phi_std[:, cols], f.pool.in_mask[:, cols], phi[cols], shift=f.shift_arg,
                 parent_phi_std=f.parent_phi[cols],
                 reference_phi_std=None if reference_phi is None else reference_phi[cols],
                 concentrated=concentrated, rule=evb.AUDIT_RULE)
    reasons = accuracy_reasons(m, parent_m, max_acc_drop=MAX_ACC_DROP)
    return {"evidence_verdict": a["verdict"], "verdict": "failed" if reasons else a["verdict"],
            "statistic": a.get("statistic"), "power": a.get("power"), "accuracy_reasons": reasons,
            "null": [(a.get("null") or {}).get("lo"), (a.get("null") or {}).get("hi")]}


def run_seed(f: evb.Fitted, scores: np.ndarray, kind: str, seed: int, cfg: Config,
             log: Callable[[str], None]) -> list[dict[str, Any]]:
    s = f.setting
    forget = draw_forget(s, kind, cfg, seed)
    retain = np.setdiff1d(np.arange(s.n), forget)
    conc = evb.concentration(f, forget)["concentrated"]  # the pipeline's rule (evidence.concentration)
    base = {"kind": kind, "seed": seed, "n_forget": int(len(forget)), "concentrated": conc}
    began = time.perf_counter()
    retrained = evb.train(s, retain, evb.RETRAIN_SEED + seed)
    retrain_seconds = time.perf_counter() - began
    ref_phi = evb.std_phi(evb.train(s, retain, REF_SEED + seed), s) if conc else None
    parent_m = measure(f.parent, s, forget, retain)
    retrain_m = measure(retrained, s, forget, retain)
    rows = [base | {"label": "do_nothing", "algorithm": "do_nothing", "q_forget": 0.0, "q_retain": 0.0,
                    "seconds": 0.0, **parent_m, **gaps(parent_m, retrain_m),
                    **judge(f, forget, f.parent_phi, parent_m, parent_m, concentrated=conc, reference_phi=ref_phi)},
            base | {"label": "retrain", "algorithm": "retrain", "q_forget": 0.0, "q_retain": 0.0,
                    "seconds": retrain_seconds, **retrain_m, **gaps(retrain_m, retrain_m),
                    **judge(f, forget, evb.std_phi(retrained, s), retrain_m, parent_m, concentrated=conc,
                            reference_phi=ref_phi)}]
    variants = [v for v in VARIANTS if v[0] in cfg.variants]
    for label, algorithm, params in variants:
        for q_f, q_r in cfg.pruning:
            kept_f, kept_r = prune(scores, forget, q_f), prune(scores, retain, q_r)
            res = unlearn(algorithm, f.parent, forget=ArraySet(s.x[kept_f], s.y[kept_f]),
                          retain=ArraySet(s.x[kept_r], s.y[kept_r]), params=params, device=CPU, seed=seed,
                          build=lambda: s.build(evb.RETRAIN_SEED + seed), recipe=s.recipe)
            net = res.model.eval()
            m = measure(net, s, forget, retain)
            rows.append(base | {"label": label, "variant": label, "strength": 1, "algorithm": algorithm,
                                "params": params, "q_forget": q_f,
                                "q_retain": q_r, "n_forget_used": int(len(kept_f)),
                                "n_retain_used": 0 if algorithm == "imu" else int(len(kept_r)),
                                "seconds": res.metrics["seconds"], **m, **gaps(m, retrain_m),
                                **judge(f, forget, evb.std_phi(net, s), m, parent_m, concentrated=conc,
                                        reference_phi=ref_phi)})
    # A job's escalation: as asked, then once stronger (then retrain); and once more, beyond the job's ladder.
    for label, algorithm, params in variants if cfg.strengths > 1 else ():
        ladder = escalation(algorithm, params)[1:-1]
        if cfg.strengths > 2 and ladder:
            ladder += escalation(algorithm, ladder[-1][1])[1:-1]
        for strength, (_, stronger) in enumerate(ladder[: cfg.strengths - 1], start=2):
            res = unlearn(algorithm, f.parent, forget=ArraySet(s.x[forget], s.y[forget]),
                          retain=ArraySet(s.x[retain], s.y[retain]), params=stronger, device=CPU, seed=seed)
            net = res.model.eval()
            m = measure(net, s, forget, retain)
            rows.append(base | {"label": f"{label}@{strength}", "variant": label, "strength": strength,
                                "algorithm": algorithm, "params": stronger, "q_forget": 0.0, "q_retain": 0.0,
                                "n_forget_used": int(len(forget)), "n_retain_used": int(len(retain)),
                                "seconds": res.metrics["seconds"], **m, **gaps(m, retrain_m),
                                **judge(f, forget, evb.std_phi(net, s), m, parent_m, concentrated=conc,
                                        reference_phi=ref_phi)})
    passed = {r["label"] for r in rows if r["verdict"] == "passed" and r["q_forget"] == 0 and r["q_retain"] == 0}
    log(f"  {kind:11s} seed {seed}: {len(rows)} rows; passed unpruned: {sorted(passed) or 'none'}")
    return rows


# ----------------------------------------------------------------------------- summaries

def interval(values: list[float | None]) -> dict[str, Any]:
    """Mean and the 95% t-interval over seeds (None when fewer than two values)."""
    from scipy.stats import t

    v = np.asarray([x for x in values if x is not None], dtype=np.float64)
    if not len(v):
        return {"mean": None, "ci95": [None, None], "n": 0}
    if len(v) < 2:
        return {"mean": float(v.mean()), "ci95": [None, None], "n": 1}
    half = float(t.ppf(0.975, len(v) - 1) * v.std(ddof=1) / np.sqrt(len(v)))
    return {"mean": float(v.mean()), "ci95": [float(v.mean() - half), float(v.mean() + half)], "n": int(len(v))}


METRICS = ("fa", "ra", "ta", "mia_auc", "mia_efficacy", "statistic", "avg_gap", "seconds")


def summarise(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    groups: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r["kind"], r["label"], r["q_forget"], r["q_retain"]), []).append(r)
    out = []
    for (kind, label, q_f, q_r), rs in groups.items():
        verdicts = [r["verdict"] for r in rs]
        out.append({"kind": kind, "label": label, "q_forget": q_f, "q_retain": q_r, "n": len(rs),
                    **{k: interval([r.get(k) for r in rs]) for k in METRICS},
                    "gap": {k: interval([r["gap"].get(k) for r in rs]) for k in GAP_KEYS},
                    "verdicts": {v: evb.rate(verdicts, v) for v in evb.VERDICTS}})
    return out


def ladders(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """What a Lethe job would do with each variant (unpruned): the attempt as asked, on a failed or inconclusive
    audit the stronger attempt, then retrain (promoted regardless). Seconds to the promoted version (unlearning
    calls only; each attempt's audit costs the same for every variant) and how often the job ends at retrain."""
    by: dict[tuple[str, int], dict[str, dict[str, Any]]] = {}
    for r in rows:
        if r["q_forget"] == 0 and r["q_retain"] == 0:
            by.setdefault((r["kind"], r["seed"]), {})[r["label"]] = r
    out: dict[str, Any] = {}
    for (kind, _seed), labels in by.items():
        retrain = labels["retrain"]
        for label in {r.get("variant") for r in labels.values()} - {None, "retrain", "do_nothing"}:
            seconds, ended = 0.0, "retrain"
            for attempt in (labels.get(label), labels.get(f"{label}@2")):
                if attempt is None:
                    continue
                seconds += attempt["seconds"]
                if attempt["verdict"] == "passed":
                    ended = "attempt 1" if attempt is labels.get(label) else "attempt 2"
                    break
            else:
                seconds += retrain["seconds"]
            o = out.setdefault(label, {"by_kind": {}, "seconds": [], "ended": []})
            o["seconds"].append(seconds)
            o["ended"].append(ended)
            k = o["by_kind"].setdefault(kind, {"seconds": [], "ended_at_retrain": 0, "n": 0})
            k["seconds"].append(seconds)
            k["ended_at_retrain"] += ended == "retrain"
            k["n"] += 1
    for o in out.values():
        o["seconds_to_promote"] = interval(o.pop("seconds"))
        ended = o.pop("ended")
        o["ended_at"] = {e: ended.count(e) for e in ("attempt 1", "attempt 2", "retrain")}
        o["ended_at_retrain"] = evb.rate(ended, "retrain")
        for k in o["by_kind"].values():
            k["seconds_to_promote"] = interval(k.pop("seconds"))
    return out


def fastest_passing(summary: list[dict[str, Any]]) -> dict[str, Any]:
    """Per variant (unpruned, all forget kinds pooled): the share of audits passed and the mean seconds; the
    recommendation is the fastest among those passing every non-concentrated audit (random and mislabelled)."""
    per: dict[str, Any] = {}
    for r in summary:
        if r["q_forget"] or r["q_retain"] or r["label"] in ("do_nothing",):
            continue
        p = per.setdefault(r["label"], {"passed": 0, "n": 0, "passed_per_point": 0, "n_per_point": 0,
                                        "seconds": []})
        p["passed"] += r["verdicts"]["passed"]["count"]
        p["n"] += r["n"]
        if r["kind"] != "class_slice":
            p["passed_per_point"] += r["verdicts"]["passed"]["count"]
            p["n_per_point"] += r["n"]
        p["seconds"].append(r["seconds"]["mean"])
    for p in per.values():
        p["seconds"] = float(np.mean(p["seconds"]))
        p["pass_rate"] = p["passed"] / p["n"] if p["n"] else None
    ok = [k for k, p in per.items() if k != "retrain" and p["n_per_point"] and p["passed_per_point"] ==
          p["n_per_point"]]
    best = min(ok, key=lambda k: per[k]["seconds"], default=None)
    return {"per_variant": per, "fastest_always_passing": best,
            "rule": "unpruned, passes every random and mislabelled audit (all seeds), least mean seconds"}


def less_fix(f: evb.Fitted) -> dict[str, Any]:
    """The less scorer before and after the own-term fix, on the parent's Adam checkpoints."""
    s = f.setting
    data = ArraySet(s.x, s.y)
    norms = compute_self_influence("gradnorm", f.parent, data, device=CPU)
    pct = np.argsort(np.argsort(norms)) / (len(norms) - 1)  # each point's gradnorm percentile
    out: dict[str, Any] = {}
    for name in ("less", "less_own"):
        sc = compute_self_influence(name, f.parent, data, device=CPU, checkpoints=f.checkpoints)
        low = np.argsort(sc, kind="stable")[: len(sc) // 10]
        out[name] = {"negative_share": float((sc < 0).mean()),
                     "lowest_decile_gradnorm_percentile_max": float(pct[low].max()),
                     "lowest_decile_gradnorm_percentile_mean": float(pct[low].mean()),
                     "lowest_decile_flipped": int(np.isin(low, s.flipped).sum())}
    return out


def fig41(f: evb.Fitted, cfg: Config) -> list[dict[str, Any]]:
    """000's Fig 4.1: retrain without the n lowest points by each scorer (and at random); accuracy on the removed
    points and their group LiRA AUC on the pool (how much the pool's models remember them)."""
    s = f.setting
    data = ArraySet(s.x, s.y)
    score = {name: compute_self_influence(name, f.parent, data, device=CPU,
                                          **({"checkpoints": f.checkpoints} if name.startswith("less") else {}))
             for name in FIG41_SCORERS if name != "random"}
    score["random"] = np.random.default_rng(41).random(s.n)
    out = []
    for name in FIG41_SCORERS:
        order = np.argsort(score[name], kind="stable")
        for n in cfg.fig41_n:
            removed = np.sort(order[:n])
            net = evb.train(s, np.setdiff1d(np.arange(s.n), removed), evb.RETRAIN_SEED + 41)
            with torch.no_grad():
                acc = float((net(torch.as_tensor(s.x[removed])).argmax(1).numpy() == s.y[removed]).mean())
            g = ev.group_test(f.pool.scores[:, removed], f.pool.in_mask[:, removed], boot=200, seed=1)
            out.append({"scorer": name, "n": n, "removed_accuracy": acc, "lira_auc": g.get("auc"),
                        "lira_auc_ci": [g.get("auc_lo"), g.get("auc_hi")],
                        "flipped_removed": int(np.isin(removed, s.flipped).sum())})
    return out


def false_alarms(f: evb.Fitted, cfg: Config, log: Callable[[str], None]) -> dict[str, Any]:
    """Retrain-only audits over many (seed, request) pairs: bench.evidence.replicate, 40 random / 40 flipped."""
    out: dict[str, Any] = {}
    for kind in ("random", "flipped"):
        reps = [evb.replicate(f, kind, cfg.forget_size, seed) for seed in range(cfg.fa_seeds)]
        # the pipeline's verdicts: concentrated requests judged against a retrain reference (another seed)
        out[kind] = {"retrain_failed": evb.rate([r["retrain_with_reference"]["verdict"] for r in reps], "failed"),
                     "retrain_inconclusive": evb.rate([r["retrain_with_reference"]["verdict"] for r in reps],
                                                      "inconclusive"),
                     "do_nothing_failed": evb.rate([r["do_nothing_with_reference"]["verdict"] for r in reps],
                                                   "failed"),
                     "concentrated": float(np.mean([r["concentrated"] for r in reps])),
                     "per_point_null_retrain_failed": evb.rate([r["retrain"]["verdict"] for r in reps], "failed")}
        log(f"  false alarms {kind}: {out[kind]['retrain_failed']['count']}/{cfg.fa_seeds}")
    pooled = [v["retrain_failed"] for v in out.values()]
    lo, hi = evb.clopper_pearson(sum(p["count"] for p in pooled), sum(p["n"] for p in pooled))
    out["pooled"] = {"count": sum(p["count"] for p in pooled), "n": sum(p["n"] for p in pooled), "ci95": [lo, hi]}
    return out


@dataclass
class Result:
    config: dict[str, Any]
    setting: dict[str, Any]
    machine: dict[str, Any]
    seconds: dict[str, float] = field(default_factory=dict)
    rows: list[dict[str, Any]] = field(default_factory=list)


def run(cfg: Config, log: Callable[[str], None] = print) -> dict[str, Any]:
    torch.set_num_threads(1)
    began, load_at_start = time.perf_counter(), os.getloadavg()
    setting = evb.make_setting(cfg.setting, cfg.epochs, fashion_n=cfg.fashion_n)
    f = evb.fit(setting, k=cfg.k, shift_models=cfg.shift_models)
    log(f"parent {f.seconds['parent']:.1f}s (train accuracy {f.parent_train_accuracy:.3f}), pool K={cfg.k}"
        f"+{cfg.shift_models} {f.seconds['pool']:.1f}s")
    scores = compute_self_influence(PRUNE_SCORER, f.parent, ArraySet(setting.x, setting.y), device=CPU)
    rows: list[dict[str, Any]] = []
    for kind in cfg.kinds:
        for seed in range(cfg.seeds):
            rows += run_seed(f, scores, kind, seed, cfg, log)
    t_rows = time.perf_counter() - began
    fa = false_alarms(f, cfg, log) if cfg.fa_seeds else None
    less = less_fix(f)
    fig = fig41(f, cfg) if cfg.fig41_n else []
    summary = summarise(rows)
    res = Result(asdict(cfg), setting.describe(), evb.machine() | {"load_at_start": load_at_start},
                 {"parent": f.seconds["parent"], "pool": f.seconds["pool"], "rows": t_rows}, rows)
    out = asdict(res) | {"size": cfg.size, "prune_scorer": PRUNE_SCORER,
                         "variants": {label: {"algorithm": a, "params": validate_params(a, p)}
                                      for label, a, p in VARIANTS if label in cfg.variants},
                         "audit_rule": asdict(evb.AUDIT_RULE), "max_acc_drop": MAX_ACC_DROP,
                         "summary": summary, "fastest_passing": fastest_passing(summary), "ladders": ladders(rows),
                         "false_alarms": fa,
                         "less_fix": less, "fig41": fig}
    out["targets"] = targets(out)
    out["seconds"]["total"] = time.perf_counter() - began
    out["machine"]["load_at_end"] = os.getloadavg()
    return out


def targets(r: dict[str, Any]) -> list[dict[str, Any]]:
    """The issue's acceptance lines that this run measures."""
    out = []
    dn = [x for x in r["rows"] if x["label"] == "do_nothing" and x["kind"] in ("random", "mislabelled")]
    for kind in ("random", "mislabelled"):
        mine = [x for x in dn if x["kind"] == kind]
        failed = sum(x["verdict"] == "failed" for x in mine)
        out.append({"target": f"do nothing fails the audit in every seed ({kind})", "shown": f"{failed}/{len(mine)}",
                    "status": "PASS" if mine and failed == len(mine) else "MISS"})
    fa = r.get("false_alarms")
    if fa:
        for kind in ("random", "flipped"):
            x = fa[kind]["retrain_failed"]
            out.append({"target": f"retrain false alarms, CP95 upper ≤ 5% ({kind}, ≥ 100 runs)",
                        "shown": f"{x['count']}/{x['n']} [{x['ci95'][0]:.3f}, {x['ci95'][1]:.3f}]",
                        "status": "n/a" if x["n"] < 100 else "PASS" if x["ci95"][1] <= 0.05 else "MISS"})
    return out


# ----------------------------------------------------------------------------- output

def _ci(v: dict[str, Any], fmt: str = ".3f") -> str:
    if v["mean"] is None:
        return "n/a"
    if v["ci95"][0] is None:
        return f"{v['mean']:{fmt}}"
    return f"{v['mean']:{fmt}}±{(v['ci95'][1] - v['ci95'][0]) / 2:{fmt}}"


def print_tables(r: dict[str, Any]) -> None:
    print(f"\n{r['size']} run: {r['config']['seeds']} seeds × {len(r['config']['kinds'])} forget sets × "
          f"({len(r['config']['variants'])} variants × {len(r['config']['pruning'])} pruning levels + 2 references); "
          f"pool K={r['config']['k']}; {r['seconds']['total'] / 60:.1f} min")
    head = (f"{'kind':11s} {'row':14s} {'q_f':>4s} {'q_r':>4s} {'FA':>11s} {'RA':>11s} {'TA':>11s} "
            f"{'stat':>11s} {'AvgGap':>11s} {'sec':>11s}  pass/fail/inc")
    print(head)
    print("-" * len(head))
    for s in r["summary"]:
        v = s["verdicts"]
        print(f"{s['kind']:11s} {s['label']:14s} {s['q_forget']:4.1f} {s['q_retain']:4.1f} {_ci(s['fa']):>11s} "
              f"{_ci(s['ra']):>11s} {_ci(s['ta']):>11s} {_ci(s['statistic'], '.2f'):>11s} "
              f"{_ci(s['avg_gap']):>11s} {_ci(s['seconds'], '.2f'):>11s}  "
              f"{v['passed']['count']}/{v['failed']['count']}/{v['inconclusive']['count']}")
    fp = r["fastest_passing"]
    print("\npass rates (unpruned, all forget sets):")
    for k, p in sorted(fp["per_variant"].items(), key=lambda kv: -(kv[1]["pass_rate"] or 0)):
        print(f"  {k:14s} {p['passed']}/{p['n']} passed ({p['passed_per_point']}/{p['n_per_point']} random+"
              f"mislabelled), {p['seconds']:.2f}s")
    print(f"  fastest always passing: {fp['fastest_always_passing']}")
    print("\na job's ladder (as asked → stronger → retrain), unpruned: seconds to a promoted version, where it ended")
    for k, o in sorted(r["ladders"].items(), key=lambda kv: kv[1]["seconds_to_promote"]["mean"]):
        print(f"  {k:14s} {_ci(o['seconds_to_promote'], '.2f'):>11s}s  ended at {o['ended_at']}")
    print("\nless before/after the own-term fix:", json.dumps(r["less_fix"]))
    if r["fig41"]:
        print("\nFig 4.1 (retrain without the n lowest): scorer n removed_acc lira_auc flipped_removed")
        for x in r["fig41"]:
            print(f"  {x['scorer']:9s} {x['n']:4d} {x['removed_accuracy']:.3f} {x['lira_auc']} {x['flipped_removed']}")
    print()
    for t in r["targets"]:
        print(f"  [{t['status']}] {t['target']}: {t['shown']}")


def fig5_points(summary: list[dict[str, Any]], kind: str, label: str, axis: str) -> list[dict[str, Any]]:
    """One curve of 000's Fig 5.1 (axis q_forget) or 5.2 (q_retain): the variant's rows with the other fraction at 0,
    by the growing fraction; per point the mean seconds and the audit statistic's mean and 95% interval (forget
    quality: 0 treats the request like a model that never saw it, 1 like one trained on it)."""
    other = "q_retain" if axis == "q_forget" else "q_forget"
    rows = sorted((x for x in summary if x["kind"] == kind and x["label"] == label and x[other] == 0),
                  key=lambda x: x[axis])
    return [{"q": x[axis], "seconds": x["seconds"]["mean"], "statistic": x["statistic"]["mean"],
             "ci95": x["statistic"]["ci95"], "passed": x["verdicts"]["passed"]["count"], "n": x["n"]}
            for x in rows if x["statistic"]["mean"] is not None]


def plot(r: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    kinds = r["config"]["kinds"]
    fig, axes = plt.subplots(2, len(kinds) + 1, figsize=(5 * (len(kinds) + 1), 9), squeeze=False)
    for col, kind in enumerate(kinds):
        for row, axis in enumerate(("q_forget", "q_retain")):
            ax = axes[row][col]
            for label in r["config"]["variants"]:
                pts = fig5_points(r["summary"], kind, label, axis)
                if pts:
                    y = np.array([p["statistic"] for p in pts])
                    err = np.array([[0.0 if p["ci95"][0] is None else p["statistic"] - p["ci95"][0] for p in pts],
                                    [0.0 if p["ci95"][1] is None else p["ci95"][1] - p["statistic"] for p in pts]])
                    line = ax.errorbar([max(p["seconds"], 1e-3) for p in pts], y, yerr=err, fmt="o-", ms=3,
                                       capsize=2, lw=1, label=label).lines[0]
                    ax.annotate(f"{axis[2]}={pts[-1]['q']:g}", (max(pts[-1]["seconds"], 1e-3), y[-1]), fontsize=5,
                                color=line.get_color())
            for ref, mark in (("do_nothing", "kx"), ("retrain", "k*")):
                pts = fig5_points(r["summary"], kind, ref, axis)[:1]
                if pts:
                    ax.plot([max(pts[0]["seconds"], 1e-3)], [pts[0]["statistic"]], mark, ms=11, label=ref)
            ax.axhline(0, color="grey", lw=0.6, ls=":")
            ax.set_xscale("log")
            ax.set_title(f"{r['setting'].get('name', '')} {kind}: {axis} grows (Fig 5.{row + 1})", fontsize=9)
            ax.set_xlabel("unlearning wall time, s (log; do nothing drawn at 1 ms)")
            ax.set_ylabel("audit statistic (0 ≈ never saw it, 1 ≈ trained on it)")
        axes[0][0].legend(fontsize=6)
    for row, key in enumerate(("removed_accuracy", "lira_auc")):
        ax = axes[row][-1]
        for name in FIG41_SCORERS:
            pts = [x for x in r["fig41"] if x["scorer"] == name]
            if pts:
                ax.plot([x["n"] for x in pts], [x[key] for x in pts], "o-", label=name)
        if key == "lira_auc":
            ax.axhline(0.5, color="grey", lw=0.6, ls=":")
        ax.set_title(f"Fig 4.1: retrain without the n lowest — {key}", fontsize=9)
        ax.set_xlabel("n removed")
        ax.legend(fontsize=6)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write(r: dict[str, Any], out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(r, indent=1, default=evb._default, ensure_ascii=False))
    plot(r, out.with_suffix(".png"))


def describe(cfg: Config) -> str:
    """What the run will do (printed at its start)."""
    return (f"{cfg.size} run, setting {cfg.setting}" + (f" ({cfg.fashion_n} images)" if cfg.setting == "fashion"
                                                         else "")
            + f": {cfg.seeds} seeds, forget sets {cfg.kinds} ({cfg.forget_size} points; class slice "
              f"{cfg.slice_size}), {len(cfg.variants)} variants × {len(cfg.pruning)} pruning levels "
              f"{list(cfg.pruning)}, strengths 1..{cfg.strengths}, {cfg.fa_seeds} false-alarm seeds per kind, "
              f"Fig 4.1 n={list(cfg.fig41_n)}, pool K={cfg.k}+{cfg.shift_models}")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--setting", choices=("digits", "fashion"), default="digits",
                   help="digits: flipped-label digits, MLP; fashion: Fashion-MNIST, CNN (writes "
                        "unlearning-fashion.json unless --out)")
    size = p.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="a smoke run (≤ 5 min), not the measurement")
    size.add_argument("--large", action="store_true", help="more seeds, the full grid, a larger pool (PRESETS)")
    p.add_argument("--seeds", type=int, help="seeds per forget set")
    p.add_argument("--fa-seeds", type=int, help="retrain false-alarm runs per kind")
    p.add_argument("--variants", nargs="+", choices=[v[0] for v in VARIANTS])
    p.add_argument("--out", type=Path)
    args = p.parse_args(argv)
    cfg = preset("fashion" if args.setting == "fashion" else "memorisation",
                 "quick" if args.quick else "large" if args.large else "default")
    cfg.seeds = args.seeds or cfg.seeds
    cfg.fa_seeds = cfg.fa_seeds if args.fa_seeds is None else args.fa_seeds
    if args.variants:
        cfg.variants = tuple(args.variants)
    out = args.out or Path(__file__).parent / "results" / (
        "unlearning-fashion.json" if args.setting == "fashion" else "unlearning.json")
    print(describe(cfg), flush=True)
    r = run(cfg, log=lambda m: print(m, flush=True))
    write(r, out)
    print_tables(r)
    print(f"\nwrote {out} and {out.with_suffix('.png')}")
    return r


if __name__ == "__main__":
    main()
