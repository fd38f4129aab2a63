"""Should a small reference pool certify points free? The certified set of pools of K = 8 and K = 16 shadow models,
checked on fresh shadow models no pool or selection ever saw.

Per replicate r, one design of 16 models (8 complementary pairs) is trained; its first 4 pairs are a valid K = 8
pool, all 8 pairs the K = 16 pool, so both sizes are certified from the same models (paired comparison). Every
certified set is then measured on the same `fresh` shadow models of an independent design: group LiRA AUC and
TPR at 1% FPR with their bootstrap bounds (the certification's own test, on models it never looked at). A
certification is *contradicted* when the fresh measurement's 95% lower bound lies beyond a limit (AUC 0.55, TPR
2%): the set is measurably identifiable although the pool certified it.

Settings: `demo` is `lethe demo --dataset fashion-mnist` (1,000 images, the demo cnn, 4 epochs: underfit, test
accuracy ≈ 0.70); `memorising` is the same cnn on 1,000 images of which 10% have a flipped label, trained 30
epochs until it fits them (a model that remembers); `overfit` trains the demo's clean 1,000 images 15 epochs, in
between: some points leak, others may not, the regime where a small pool could certify too much.

    python -m bench.certify_k [--replicates 4] [--fresh 16] [--settings demo overfit memorising]

Prints a table and writes bench/results/certify_k.json.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from bench.settings import Setting, fashion, raw_phi, train
from workers.engine import evidence as ev

POOL_SEED = 300_000  # replicate r's pool design and model seeds: never a fresh shadow's
FRESH_SEED = 7_000
SETTINGS = ("demo", "overfit", "memorising")
DEMO_ARCH = {"kind": "cnn", "channels": [8, 16], "hidden": 64}  # app/demo.py's fashion-mnist model


def setting(name: str, n: int = 1000) -> Setting:
    """The benchmarks' Fashion-MNIST setting (bench.settings.fashion) with the demo's cnn and this recipe's labels
    and epochs."""
    epochs, flip = {"demo": (4, 0.0), "overfit": (15, 0.0), "memorising": (30, 0.1)}[name]
    s = fashion(n, flip=flip, n_test=1000, epochs=epochs)
    return replace(s, name=name, arch=dict(DEMO_ARCH), kinds=("random",))


def shadows(s: Setting, k: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """k models of a balanced design: their standardised φ on every training point, and the IN mask."""
    mask = ev.design(s.n, k, seed=seed)
    phi, phi_test = np.empty((k, s.n)), np.empty((k, len(s.y_test)))
    for m in range(k):
        phi[m], phi_test[m] = raw_phi(train(s, np.flatnonzero(mask[m]), seed + 1 + m), s)
    return ev.standardise(phi, phi_test), mask


def check(cols: np.ndarray, fresh_std: np.ndarray, fresh_mask: np.ndarray, limits: ev.Limits) -> dict[str, Any]:
    if not len(cols):
        return {"n": 0}
    stats = ev.group_test(ev.loo_scores(fresh_std[:, cols], fresh_mask[:, cols]), fresh_mask[:, cols],
                          limits=limits, boot=400, seed=1)
    return stats | {"contradicted": bool(ev.significantly_identifiable(stats, limits)),
                    "within": bool(ev.within(stats, limits))}


def run(name: str, *, replicates: int, fresh: int, n: int = 1000) -> dict[str, Any]:
    s = setting(name, n)
    limits = ev.Limits()
    began = time.monotonic()
    fresh_std, fresh_mask = shadows(s, fresh, FRESH_SEED)
    everything = ev.group_test(ev.loo_scores(fresh_std, fresh_mask), fresh_mask, limits=limits, boot=200, seed=1)
    rows = []
    for r in range(replicates):
        std, mask = shadows(s, 16, POOL_SEED + 1000 * r)
        for k in (8, 16):
            cert, _ = ev.certify(std[:k], mask[:k], limits=limits, seed=r)
            cols = np.flatnonzero(cert.certified)
            rows.append({"replicate": r, "k": k, "n_certified": len(cols),
                         "flipped_certified": int(np.isin(s.flipped, cols).sum()),
                         "fresh": check(cols, fresh_std, fresh_mask, limits)})
            print(f"{name} r={r} K={k}: {len(cols)} certified; fresh {rows[-1]['fresh']}", flush=True)
    return {"setting": s.describe(), "fresh_models": fresh, "all_points_fresh": everything, "rows": rows,
            "seconds": round(time.monotonic() - began, 1)}


def table(results: dict[str, Any]) -> None:
    print(f"\n{'setting':<11} {'K':>3} {'certified (per replicate)':<28} {'fresh AUC [95% lo, hi]':<44} contradicted")
    for name, res in results["settings"].items():
        for k in (8, 16):
            rows = [r for r in res["rows"] if r["k"] == k]
            cert = ", ".join(str(r["n_certified"]) for r in rows)
            aucs = "; ".join(f"{r['fresh']['auc']:.3f} [{r['fresh']['auc_lo']:.3f}, {r['fresh']['auc_hi']:.3f}]"
                             if r["fresh"].get("n") else "—" for r in rows)
            bad = sum(r["fresh"].get("contradicted", False) for r in rows)
            print(f"{name:<11} {k:>3} {cert:<28} {aucs:<44} {bad}/{len(rows)}")
        a = res["all_points_fresh"]
        print(f"{name:<11} all points on the fresh models: AUC {a['auc']:.3f} [{a['auc_lo']:.3f}, {a['auc_hi']:.3f}]"
              f", TPR@1% {a['tpr']:.3f}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--replicates", type=int, default=4)
    p.add_argument("--fresh", type=int, default=16, help="fresh shadow models (an even number ≥ 4)")
    p.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "certify_k.json")
    a = p.parse_args()
    results = {"config": {"replicates": a.replicates, "fresh": a.fresh, "limits": ev.Limits().as_dict()},
               "settings": {name: run(name, replicates=a.replicates, fresh=a.fresh) for name in a.settings}}
    results["machine"] = {"cores": os.cpu_count(), "load_at_end": os.getloadavg()}
    table(results)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(results, indent=1, default=int))
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
