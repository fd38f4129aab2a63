"""Unlearning algorithms against both ends — doing nothing and retraining — on a memorising model, with the pool
audit a Lethe job runs, several seeds and intervals (issue 16).

    .venv/bin/python -m bench.unlearning [--setting digits|fashion] [--quick|--large] [--seeds 5] [--fa-seeds 100]
                                         [--out bench/results/unlearning.json]

Sizes (PRESETS; printed at the start): the default run of each setting fits in 60 minutes on 2 cores, --quick is a
smoke run (≤ 5 min), --large more seeds and a larger pool.

Setting `fashion` (bench.settings.fashion): 5,000 Fashion-MNIST images with 10% of the labels flipped, a CNN (conv
8, conv 16, dense 256) that fits them, 2,000 test images; forget sets of 100 random, 100 mislabelled and 150 images
of one class (30% of it: concentrated). The code path is the same as the digits'; only PRESETS["fashion"] sizes it.

Setting `digits` (bench/settings.py's memorisation fixture, shared with tests/integration/test_evidence.py):
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

import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench import common, settings
from bench import evidence as evb
from bench.unlearning_report import GAP_KEYS, fastest_passing, ladders, print_tables, summarise, write
from workers.engine import evidence as ev
from workers.engine.audit import accuracy_reasons, audit_model
from workers.engine.data import ArraySet
from workers.engine.influence import compute_self_influence
from workers.engine.params import escalation, validate_params
from workers.engine.unlearning import unlearn

CPU = settings.CPU
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


def draw_forget(setting: settings.Setting, kind: str, cfg: Config, seed: int) -> np.ndarray:
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


def measure(net: torch.nn.Module, s: settings.Setting, forget: np.ndarray, retain: np.ndarray) -> dict[str, Any]:
    a = audit_model(net, forget=ArraySet(s.x[forget], s.y[forget]), retain=ArraySet(s.x[retain], s.y[retain]),
                    test=ArraySet(s.x_test, s.y_test), device=CPU, seed=0)
    return {"fa": a["fa"], "ua": a["ua"], "ra": a["ra"], "ta": a["ta"], "mia_auc": a["mia"].get("auc"),
            "mia_efficacy": (a.get("mia_conf") or {}).get("efficacy")}


def gaps(m: dict[str, Any], ref: dict[str, Any]) -> dict[str, Any]:
    g = {k: abs(m[k] - ref[k]) for k in GAP_KEYS if m.get(k) is not None and ref.get(k) is not None}
    return {"gap": g, "avg_gap": float(np.mean(list(g.values()))) if g else None}


def judge(f: settings.Fitted, forget: np.ndarray, phi: np.ndarray, m: dict[str, Any], parent_m: dict[str, Any], *,
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


def run_seed(f: settings.Fitted, scores: np.ndarray, kind: str, seed: int, cfg: Config,
             log: Callable[[str], None]) -> list[dict[str, Any]]:
    s = f.setting
    forget = draw_forget(s, kind, cfg, seed)
    retain = np.setdiff1d(np.arange(s.n), forget)
    conc = evb.concentration(f, forget)["concentrated"]  # the pipeline's rule (evidence.concentration)
    base = {"kind": kind, "seed": seed, "n_forget": int(len(forget)), "concentrated": conc}
    began = time.perf_counter()
    retrained = settings.train(s, retain, evb.RETRAIN_SEED + seed)
    retrain_seconds = time.perf_counter() - began
    ref_phi = settings.std_phi(settings.train(s, retain, REF_SEED + seed), s) if conc else None
    parent_m = measure(f.parent, s, forget, retain)
    retrain_m = measure(retrained, s, forget, retain)
    rows = [base | {"label": "do_nothing", "algorithm": "do_nothing", "q_forget": 0.0, "q_retain": 0.0,
                    "seconds": 0.0, **parent_m, **gaps(parent_m, retrain_m),
                    **judge(f, forget, f.parent_phi, parent_m, parent_m, concentrated=conc, reference_phi=ref_phi)},
            base | {"label": "retrain", "algorithm": "retrain", "q_forget": 0.0, "q_retain": 0.0,
                    "seconds": retrain_seconds, **retrain_m, **gaps(retrain_m, retrain_m),
                    **judge(f, forget, settings.std_phi(retrained, s), retrain_m, parent_m, concentrated=conc,
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
                                **judge(f, forget, settings.std_phi(net, s), m, parent_m, concentrated=conc,
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
                                **judge(f, forget, settings.std_phi(net, s), m, parent_m, concentrated=conc,
                                        reference_phi=ref_phi)})
    passed = {r["label"] for r in rows if r["verdict"] == "passed" and r["q_forget"] == 0 and r["q_retain"] == 0}
    log(f"  {kind:11s} seed {seed}: {len(rows)} rows; passed unpruned: {sorted(passed) or 'none'}")
    return rows


# ----------------------------------------------------------------------------- summaries


def less_fix(f: settings.Fitted) -> dict[str, Any]:
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


def fig41(f: settings.Fitted, cfg: Config) -> list[dict[str, Any]]:
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
            net = settings.train(s, np.setdiff1d(np.arange(s.n), removed), evb.RETRAIN_SEED + 41)
            with torch.no_grad():
                acc = float((net(torch.as_tensor(s.x[removed])).argmax(1).numpy() == s.y[removed]).mean())
            g = ev.group_test(f.pool.scores[:, removed], f.pool.in_mask[:, removed], boot=200, seed=1)
            out.append({"scorer": name, "n": n, "removed_accuracy": acc, "lira_auc": g.get("auc"),
                        "lira_auc_ci": [g.get("auc_lo"), g.get("auc_hi")],
                        "flipped_removed": int(np.isin(removed, s.flipped).sum())})
    return out


def false_alarms(f: settings.Fitted, cfg: Config, log: Callable[[str], None]) -> dict[str, Any]:
    """Retrain-only audits over many (seed, request) pairs: bench.evidence.replicate, 40 random / 40 flipped."""
    out: dict[str, Any] = {}
    for kind in ("random", "flipped"):
        reps = [evb.replicate(f, kind, cfg.forget_size, seed) for seed in range(cfg.fa_seeds)]
        # the pipeline's verdicts: concentrated requests judged against a retrain reference (another seed)
        out[kind] = {"retrain_failed": common.rate([r["retrain_with_reference"]["verdict"] for r in reps], "failed"),
                     "retrain_inconclusive": common.rate([r["retrain_with_reference"]["verdict"] for r in reps],
                                                      "inconclusive"),
                     "do_nothing_failed": common.rate([r["do_nothing_with_reference"]["verdict"] for r in reps],
                                                   "failed"),
                     "concentrated": float(np.mean([r["concentrated"] for r in reps])),
                     "per_point_null_retrain_failed": common.rate([r["retrain"]["verdict"] for r in reps], "failed")}
        log(f"  false alarms {kind}: {out[kind]['retrain_failed']['count']}/{cfg.fa_seeds}")
    pooled = [v["retrain_failed"] for v in out.values()]
    lo, hi = common.clopper_pearson(sum(p["count"] for p in pooled), sum(p["n"] for p in pooled))
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
    setting = settings.make_setting(cfg.setting, cfg.epochs, fashion_n=cfg.fashion_n)
    f = settings.fit(setting, k=cfg.k, shift_models=cfg.shift_models)
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
    res = Result(asdict(cfg), setting.describe(), common.machine() | {"load_at_start": load_at_start},
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


def describe(cfg: Config) -> str:
    """What the run will do (printed at its start)."""
    return (f"{cfg.size} run, setting {cfg.setting}" + (f" ({cfg.fashion_n} images)" if cfg.setting == "fashion"
                                                         else "")
            + f": {cfg.seeds} seeds, forget sets {cfg.kinds} ({cfg.forget_size} points; class slice "
              f"{cfg.slice_size}), {len(cfg.variants)} variants × {len(cfg.pruning)} pruning levels "
              f"{list(cfg.pruning)}, strengths 1..{cfg.strengths}, {cfg.fa_seeds} false-alarm seeds per kind, "
              f"Fig 4.1 n={list(cfg.fig41_n)}, pool K={cfg.k}+{cfg.shift_models}")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = common.command_line(__doc__, setting="digits: flipped-label digits, MLP; fashion: Fashion-MNIST, CNN (writes "
                                             "unlearning-fashion.json unless --out)",
                            quick="a smoke run (≤ 5 min), not the measurement",
                            large="more seeds, the full grid, a larger pool (PRESETS)")
    p.add_argument("--seeds", type=int, help="seeds per forget set")
    p.add_argument("--fa-seeds", type=int, help="retrain false-alarm runs per kind")
    p.add_argument("--variants", nargs="+", choices=[v[0] for v in VARIANTS])
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
    return common.run_and_report(run, cfg, out, write=write, print_tables=print_tables)


if __name__ == "__main__":
    main()
