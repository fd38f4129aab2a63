"""Evidence (issue 13): the audit's false-alarm rate on retrains, its power by request size, the size-mismatch
correction, influence scorers vs the measured separation, and the certified free set checked independently.

    .venv/bin/python -m bench.evidence [--setting digits|fashion] [--quick|--large] [--seeds 100] [--sweep-seeds 30]
                                       [--out bench/results/evidence.json]

Settings (bench/settings.py, also the fixtures of tests/evidence/test_evidence.py):
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
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench.common import VERDICTS, command_line, machine, mean_sd, rate, run_and_report
from bench.evidence_checks import certified, scorers_vs_separation
from bench.evidence_report import FALSE_ALARM_MAX, print_tables, write
from bench.settings import Fitted, Setting, fit, make_setting, std_phi, train
from workers.engine import evidence as ev

RETRAIN_SEED = 100_000  # replicate i retrains with seed RETRAIN_SEED + i: never a pool, shift or parent seed
REFERENCE_SEED = 200_000  # replicate i's retrain reference (concentrated requests): never a retrain's seed
KINDS = ("random", "flipped")
AUDIT_RULE = ev.AuditRule()  # the settings' defaults (audit_alpha 0.01, audit_min_power 0.8)


# ----------------------------------------------------------------------------- the pool


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


def summarise(reps: list[dict[str, Any]]) -> dict[str, Any]:
    """Verdict shares of the retrains (corrected, uncorrected, the pipeline's) and of doing nothing."""
    out: dict[str, Any] = {"n": len(reps), "concentrated": float(np.mean([r["concentrated"] for r in reps]))
                           if reps else 0.0,
                           "depletion": mean_sd([r["concentration"]["depletion"] for r in reps])}
    for key in ("retrain", "retrain_uncorrected", "do_nothing", "do_nothing_uncorrected", "retrain_with_reference",
                "do_nothing_with_reference"):
        verdicts = [r[key]["verdict"] for r in reps]
        out[key] = {v: rate(verdicts, v) for v in VERDICTS}
        out[key]["statistic"] = mean_sd([r[key]["statistic"] for r in reps])
        out[key]["sides"] = {s: sum(r[key]["side"] == s for r in reps) for s in ("remembers", "over-forgets")}
    out["retrain_pipeline"] = {v: rate([r["retrain_pipeline_verdict"] for r in reps], v) for v in VERDICTS}
    out["power"] = mean_sd([r["retrain"]["power"] for r in reps])
    out["null_center"] = mean_sd([r["retrain"]["null_center"] for r in reps])
    out["null_half_width"] = mean_sd([None if r["retrain"]["null_hi"] is None else
                                       (r["retrain"]["null_hi"] - r["retrain"]["null_lo"]) / 2 for r in reps])
    out["power_ge_0.8"] = float(np.mean([(r["retrain"]["power"] or 0) >= 0.8 for r in reps])) if reps else None
    out["size_shift_effect"] = mean_sd([r["retrain"]["size_shift_effect"] for r in reps])
    out["retrain_seconds"] = mean_sd([r["retrain_seconds"] for r in reps])
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
    p = command_line(__doc__, setting="digits: the memorisation and blobs settings; fashion: Fashion-MNIST with a CNN "
                                      "(FASHION_CONFIG; writes evidence-fashion.json unless --out)",
                     quick="a smoke run (≤ 5 min): digits 20 seeds, 3 per sweep size, 16 fresh shadows, no "
                           "pipeline-seed retrains; fashion 2,000 images, 3 seeds, K=4",
                     large="digits 300 seeds, 50 per sweep size, K=32; fashion 100 seeds, K=16 + 4 (hours)")
    p.add_argument("--seeds", type=int, help=f"replicates per request kind at the main size (default {Config.seeds})")
    p.add_argument("--sweep-seeds", type=int,
                   help=f"replicates per kind at the other sizes (default {Config.sweep_seeds})")
    p.add_argument("--pipeline-seeds", type=int,
                   help=f"replicates per kind retrained with a job's fixed seeds (default {Config.pipeline_seeds})")
    p.add_argument("--sizes", type=int, nargs="+")
    p.add_argument("--k", type=int)
    p.add_argument("--no-blobs", action="store_true")
    args = p.parse_args(argv)
    cfg = configure(args)
    out = args.out or Path(__file__).parent / "results" / (
        "evidence-fashion.json" if args.setting == "fashion" else "evidence.json")
    print(f"{'quick' if args.quick else 'large' if args.large else 'default'} run: settings {list(cfg.settings)}"
          + (f" ({cfg.fashion_n} images)" if "fashion" in cfg.settings else "")
          + f"; {cfg.seeds} seeds per kind at {cfg.main_size} points, {cfg.sweep_seeds} at sizes "
            f"{sorted(set(cfg.sizes) - {cfg.main_size})}; {cfg.pipeline_seeds} with a job's seeds; pool "
            f"K={cfg.k}+{cfg.shift_models}; {cfg.shadow_k} fresh shadows", flush=True)
    return run_and_report(run, cfg, out, write=write, print_tables=print_tables)


if __name__ == "__main__":
    main()
