"""Influence pruning vs unlearning quality and time: the source paper's Figure 5.1/5.2 on our data.

    .venv/bin/python -m bench.unlearning [--quick] [--out bench/results/unlearning.json]

Setup: scikit-learn digits, augmented by one-pixel shifts and pixel noise (`--copies` noisy copies of the
9 shifts), a wide MLP trained with Adam (the model's recipe); forget 10% of the training set at random.
The retrain reference trains from scratch on the retain set with the same recipe and seed. Scores are
gradnorm self-influence at the original weights (what a Lethe job prunes with). For each algorithm:
q_forget ∈ {0, 20, 40, 60}% (Figure 5.1), then q_retain ∈ {20, 40, 60}% (Figure 5.2): the lowest-scoring
fraction is dropped before unlearning; the audit always covers the whole forget set.

Metrics (all on the full sets): UA = 1 − forget accuracy, RA, TA, loss-MIA AUC (forget vs test, 10-fold CV),
confidence-MIA efficacy (SVC on retain vs test, share of forget predicted non-member), and Avg Gap =
mean |Δ| to the retrain reference over UA, RA, TA and MIA efficacy (SalUn's summary). Wall seconds
are the unlearning call only. Prints a table, writes JSON and a PNG (time on x, accuracy on y).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from workers.engine.architectures import build_model
from workers.engine.audit import audit_model
from workers.engine.data import ArraySet
from workers.engine.influence import compute_self_influence
from workers.engine.params import validate_params
from workers.engine.training import train_model
from workers.engine.unlearning import unlearn

CPU = torch.device("cpu")
ALGORITHMS = ["rank1", "rank2", "finetune", "neggrad", "iau", "imu"]
Q_FORGET = [0.0, 0.2, 0.4, 0.6]
Q_RETAIN = [0.2, 0.4, 0.6]
DEFAULT_POLICY = "finetune"  # app.registry.schemas.Policy's default algorithm


def augmented_digits(copies: int, seed: int = 0) -> tuple[ArraySet, ArraySet]:
    """Digits ×9 one-pixel shifts × `copies` noisy draws; 20% of the original images held out (all variants)."""
    from sklearn.datasets import load_digits

    d = load_digits()
    rng = np.random.default_rng(seed)
    img = (d.images / 16).astype(np.float32)
    test_idx = rng.permutation(len(img))[: len(img) // 5]
    is_test = np.zeros(len(img), bool)
    is_test[test_idx] = True
    xs, ys, ts = [], [], []
    for c in range(copies):
        for dy in (-1, 0, 1):
            for dx in (-1, 0, 1):
                shifted = np.roll(np.roll(img, dy, 1), dx, 2).reshape(len(img), -1)
                noise = 0.0 if c == 0 else 0.08 * rng.normal(size=shifted.shape).astype(np.float32)
                xs.append(shifted + noise)
                ys.append(d.target)
                ts.append(is_test)
    x, y, t = np.concatenate(xs), np.concatenate(ys).astype(np.int64), np.concatenate(ts)
    return ArraySet(x[~t], y[~t]), ArraySet(x[t], y[t])


def subset(data: ArraySet, rows: np.ndarray) -> ArraySet:
    return ArraySet(data.x[rows], data.y[rows])


def prune(scores: np.ndarray, rows: np.ndarray, q: float) -> np.ndarray:
    """Keep all but the lowest-scoring fraction q of rows."""
    if q <= 0:
        return rows
    order = rows[np.argsort(scores[rows], kind="stable")]
    return np.sort(order[int(q * len(rows)):])


def measure(model: torch.nn.Module, forget: ArraySet, retain: ArraySet, test: ArraySet) -> dict[str, Any]:
    a = audit_model(model, forget=forget, retain=retain, test=test, device=CPU, seed=0)
    return {"ua": a["ua"], "ra": a["ra"], "ta": a["ta"], "mia_auc": a["mia"]["auc"],
            "mia_efficacy": (a.get("mia_conf") or {}).get("efficacy")}


def avg_gap(m: dict[str, Any], ref: dict[str, Any]) -> float:
    keys = [k for k in ("ua", "ra", "ta", "mia_efficacy") if m.get(k) is not None and ref.get(k) is not None]
    return float(np.mean([abs(m[k] - ref[k]) for k in keys]))


def run(args: argparse.Namespace) -> dict[str, Any]:
    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    train, test = augmented_digits(args.copies)
    rng = np.random.default_rng(1)
    n = len(train)
    forget_rows = np.sort(rng.choice(n, n // 10, replace=False))
    retain_rows = np.setdiff1d(np.arange(n), forget_rows)
    forget, retain = subset(train, forget_rows), subset(train, retain_rows)
    spec = {"kind": "mlp", "hidden": args.hidden}
    recipe = {"optimizer": "adam", "lr": 1e-3, "epochs": args.epochs, "batch_size": 128, "seed": 0}

    def build() -> torch.nn.Module:
        torch.manual_seed(0)
        return build_model(spec, input_shape=(64,), n_classes=10)

    print(f"train {n} (forget {len(forget)}, retain {len(retain)}), test {len(test)}; mlp {args.hidden}; "
          f"{args.epochs} epochs; {torch.get_num_threads()} threads")
    original = build()
    began = time.perf_counter()
    train_model(original, train, recipe=recipe, device=CPU)
    train_seconds = time.perf_counter() - began
    began = time.perf_counter()
    scores = compute_self_influence("gradnorm", original, train, device=CPU)
    score_seconds = time.perf_counter() - began
    reference = unlearn("retrain", original, forget=forget, retain=retain, params={}, device=CPU, build=build,
                        recipe=recipe)
    ref_seconds = reference.metrics["seconds"]
    ref = measure(reference.model, forget, retain, test)
    base = measure(original, forget, retain, test)
    print(f"trained in {train_seconds:.1f}s, scored in {score_seconds:.1f}s, retrained in {ref_seconds:.1f}s")
    rows = [{"algorithm": "original", "q_forget": 0.0, "q_retain": 0.0, "seconds": 0.0, **base,
             "avg_gap": avg_gap(base, ref)},
            {"algorithm": "retrain", "q_forget": 0.0, "q_retain": 0.0, "seconds": ref_seconds, **ref, "avg_gap": 0.0}]
    configs = [(q, 0.0) for q in Q_FORGET] + [(0.0, q) for q in Q_RETAIN]
    for algorithm in args.algorithms:
        params = validate_params(algorithm, {})
        for q_f, q_r in configs:
            kept_f, kept_r = prune(scores, forget_rows, q_f), prune(scores, retain_rows, q_r)
            result = unlearn(algorithm, copy.deepcopy(original), forget=subset(train, kept_f),
                             retain=None if algorithm == "imu" else subset(train, kept_r), params=params,
                             device=CPU, seed=0, build=build, recipe=recipe)
            m = measure(result.model, forget, retain, test)
            row = {"algorithm": algorithm, "q_forget": q_f, "q_retain": q_r, "seconds": result.metrics["seconds"],
                   "n_forget_used": int(len(kept_f)), "n_retain_used": 0 if algorithm == "imu" else int(len(kept_r)),
                   **m, "avg_gap": avg_gap(m, ref)}
            rows.append(row)
            if args.out:  # a partial file after every row: a long run cut short still leaves its measurements
                args.out.parent.mkdir(parents=True, exist_ok=True)
                args.out.write_text(json.dumps({"partial": True, "retrain_seconds": ref_seconds, "rows": rows},
                                               indent=1))
            print(f"{algorithm:9s} q_f={q_f:.1f} q_r={q_r:.1f} {row['seconds']:7.2f}s UA {m['ua']:.3f} "
                  f"RA {m['ra']:.3f} TA {m['ta']:.3f} AUC {m['mia_auc']} eff {m['mia_efficacy']} "
                  f"gap {row['avg_gap']:.3f}", flush=True)
    return {"setup": {"n_train": n, "n_forget": int(len(forget)), "n_test": len(test), "hidden": args.hidden,
                      "epochs": args.epochs, "copies": args.copies, "threads": torch.get_num_threads(),
                      "train_seconds": train_seconds, "score_seconds": score_seconds,
                      "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                                  "torch": torch.__version__}},
            "retrain_seconds": ref_seconds, "rows": rows, "targets": targets(rows, ref_seconds)}


def targets(rows: list[dict[str, Any]], retrain_seconds: float) -> dict[str, Any]:
    """The issue's targets, measured: pruning savings at unchanged quality, speed-ups over retrain."""
    out: dict[str, Any] = {"per_algorithm": {}}
    for algorithm in sorted({r["algorithm"] for r in rows} - {"original", "retrain"}):
        mine = [r for r in rows if r["algorithm"] == algorithm]
        unpruned = next(r for r in mine if r["q_forget"] == 0 and r["q_retain"] == 0)
        ok = [r for r in mine if r is not unpruned
              and abs(r["ra"] - unpruned["ra"]) <= 0.01 and abs(r["ta"] - unpruned["ta"]) <= 0.01
              and (r["mia_auc"] is None or unpruned["mia_auc"] is None
                   or abs(r["mia_auc"] - unpruned["mia_auc"]) <= 0.02)]
        best = max(ok, key=lambda r: 1 - r["seconds"] / unpruned["seconds"], default=None)
        saved = None if best is None else 1 - best["seconds"] / unpruned["seconds"]
        out["per_algorithm"][algorithm] = {
            "unpruned_seconds": unpruned["seconds"], "speedup_vs_retrain": retrain_seconds / unpruned["seconds"],
            "best_saving_at_equal_quality": saved,
            "best_config": None if best is None else {"q_forget": best["q_forget"], "q_retain": best["q_retain"]},
            "meets_50pct": saved is not None and saved >= 0.5}
    per = out["per_algorithm"]
    if DEFAULT_POLICY in per:
        out["default_policy"] = {"algorithm": DEFAULT_POLICY, "speedup_vs_retrain": per[DEFAULT_POLICY][
            "speedup_vs_retrain"], "meets_5x": per[DEFAULT_POLICY]["speedup_vs_retrain"] >= 5}
    if per:
        fastest = max(per, key=lambda a: per[a]["speedup_vs_retrain"])
        out["fastest"] = {"algorithm": fastest, "speedup_vs_retrain": per[fastest]["speedup_vs_retrain"],
                          "aim_20x": per[fastest]["speedup_vs_retrain"] >= 20}
    return out


def print_table(result: dict[str, Any]) -> None:
    head = f"{'algorithm':10s} {'q_f':>4s} {'q_r':>4s} {'sec':>7s} {'UA':>6s} {'RA':>6s} {'TA':>6s} " \
           f"{'AUC':>6s} {'eff':>6s} {'gap':>6s}"
    print(head)
    print("-" * len(head))

    def f(v: Any) -> str:
        return "   n/a" if v is None else f"{v:6.3f}"

    for r in result["rows"]:
        print(f"{r['algorithm']:10s} {r['q_forget']:4.1f} {r['q_retain']:4.1f} {r['seconds']:7.2f} {f(r['ua'])} "
              f"{f(r['ra'])} {f(r['ta'])} {f(r['mia_auc'])} {f(r['mia_efficacy'])} {f(r['avg_gap'])}")
    t = result["targets"]
    print("\ntargets (pruning: RA/TA within 1 point and MIA AUC within 0.02 of the unpruned run)")
    for a, v in t["per_algorithm"].items():
        saved = "none" if v["best_saving_at_equal_quality"] is None else f"{v['best_saving_at_equal_quality']:.0%}"
        print(f"  {a:9s} {v['speedup_vs_retrain']:6.1f}x faster than retrain; best saving at equal quality "
              f"{saved} {v['best_config'] or ''} -> {'PASS' if v['meets_50pct'] else 'MISS'} (>= 50%)")
    if "default_policy" in t:
        d = t["default_policy"]
        print(f"  default policy ({d['algorithm']}): {d['speedup_vs_retrain']:.1f}x retrain -> "
              f"{'PASS' if d['meets_5x'] else 'MISS'} (>= 5x)")
    if "fastest" in t:
        print(f"  fastest: {t['fastest']['algorithm']} {t['fastest']['speedup_vs_retrain']:.1f}x "
              f"({'meets' if t['fastest']['aim_20x'] else 'below'} the 20x aim)")


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5), sharey=True)
    for ax, key, title in ((axes[0], "q_forget", "pruning the forget set (Fig 5.1)"),
                           (axes[1], "q_retain", "pruning the retain set (Fig 5.2)")):
        other = "q_retain" if key == "q_forget" else "q_forget"
        for a in result["targets"]["per_algorithm"]:
            pts = sorted((r for r in result["rows"] if r["algorithm"] == a and r[other] == 0), key=lambda r: r[key])
            line, = ax.plot([r["seconds"] for r in pts], [r["ta"] for r in pts], "o-", label=f"{a} TA")
            ax.plot([r["seconds"] for r in pts], [1 - r["ua"] for r in pts], "x--", color=line.get_color(),
                    alpha=0.6, label=f"{a} forget acc")
        ref = next(r for r in result["rows"] if r["algorithm"] == "retrain")
        ax.axhline(ref["ta"], color="k", lw=0.8, ls=":", label="retrain TA")
        ax.axhline(1 - ref["ua"], color="grey", lw=0.8, ls=":", label="retrain forget acc")
        ax.set_xscale("log")
        ax.set_xlabel("unlearning seconds (log)")
        ax.set_title(title)
    axes[0].set_ylabel("accuracy")
    axes[1].legend(fontsize=6, ncol=2, loc="lower right")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--copies", type=int, default=4, help="noisy copies of the 9 shifted digit sets")
    p.add_argument("--hidden", type=int, nargs="+", default=[1024, 1024])
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    p.add_argument("--algorithms", nargs="+", default=ALGORITHMS)
    p.add_argument("--quick", action="store_true", help="a small smoke run (seconds), not the measurement")
    p.add_argument("--out", type=Path, default=Path("bench/results/unlearning.json"))
    args = p.parse_args(argv)
    if args.quick:
        args.copies, args.hidden, args.epochs = 1, [32], 3
    result = run(args)
    print()
    print_table(result)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    plot(result, args.out.with_suffix(".png"))
    print(f"\nwrote {args.out} and {args.out.with_suffix('.png')}")
    return result


if __name__ == "__main__":
    main()
