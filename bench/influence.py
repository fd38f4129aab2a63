"""Self-influence scorers: throughput, cost in epochs, peak memory, agreement, two-worker speed-up, Kronfluence.

    make bench-deps        # kronfluence==1.0.1 --no-deps + what it imports, with torch pinned at 2.13.0
    .venv/bin/python -m bench.influence [--n-cnn 20000] [--n-kronfluence 2000] [--threads 1]
                                        [--scale 1x2,2x1,1x1] [--out bench/results/influence.json]

Two setups: the digits MLP (64-512-512-10, digits ×9 one-pixel shifts = 16,173 points) and a CNN
(conv32-conv64-fc128) on synthetic 32×32×3 images. Each is trained briefly with Adam keeping 3 LESS
checkpoints; then every scorer runs in its own subprocess so that its peak RSS (VmHWM) is its own.
"epoch" is one plain batched forward+backward pass over the same points (batch 256, no optimizer step),
the unit the costs are expressed in (best of two; so is any scorer run under a minute that has no factor
cache to reuse). Every job also records its CPU seconds: with --threads 1 they are what the job costs on
one free core whatever else the machine runs, which wall seconds on a shared machine are not.
Agreement is against hessian EK-FAC (GGN): Spearman and the overlap of the lowest deciles, which is what
pruning by self-influence needs.

On the CNN, two more measurements:
- two-worker speed-up: each scorer as a scoring job runs it, on all N points, by 1 worker process or by
  2 worker processes scoring the two halves in parallel (`compute_self_influence(..., rows=slice(a, b))`,
  the shard path of workers/sharding.py); for hessian a prepare step first fits the factors once on all
  points and caches them, every shard loads them (as `sharding.dispatch` does). Wall time = prepare +
  first shard start to last shard end (process start-up and data loading excluded). Configurations are
  workers × torch threads per worker: 1x2 and 2x1 use the machine's 2 cores either way, 1x1 vs 2x1 is
  the plain scaling figure.
- Kronfluence side by side: `kronfluence` 1.0.1 EK-FAC (`Analyzer.fit_all_factors` + `compute_self_scores`,
  heuristic damping 0.1 × mean eigenvalue, true Fisher with sampled labels) and our hessian on the same
  weights and the same first n points, factor fitting included on both sides, each in its own process.
  The matched comparison is our EK-FAC with the MC (sampled-label) Fisher, as Kronfluence's; our GGN is
  shown too.
The targets of issue 4 (N ≥ 20,000) are printed with the measured values and PASS/MISS.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import save_file
from scipy.stats import spearmanr

from bench import common
from bench.influence_report import plot, print_table
from bench.influence_worker import CNN, CPU, MLP, SETUPS
from workers.engine.architectures import build_model
from workers.engine.data import ArraySet
from workers.engine.influence.less import CheckpointRecorder, save_checkpoints
from workers.engine.training import train_model

REFERENCE = "hessian ekfac ggn"
# name -> (method, options); *_dir options are folders under the setup's folder.
JOBS: dict[str, tuple[str, dict[str, Any]]] = {
    "epoch": ("epoch", {}),
    "gradnorm": ("gradnorm", {}),
    "less final-weights": ("less", {}),
    "less 3 adam ckpts": ("less", {"checkpoints_dir": "ckpts"}),
    "hessian kfac mc": ("hessian", {"ekfac": False, "fisher": "mc"}),
    "hessian ekfac mc": ("hessian", {"ekfac": True, "fisher": "mc", "factors_dir": "factors-ekfac-mc"}),
    "hessian ekfac mc, cached factors": ("hessian", {"ekfac": True, "fisher": "mc",
                                                     "factors_dir": "factors-ekfac-mc"}),
    "hessian ekfac ggn": ("hessian", {"ekfac": True, "fisher": "ggn"}),
    "hessian default (auto)": ("hessian", {}),
}
# Two-worker speed-up: each scorer as a scoring job runs it (hessian: default options, factors fitted once).
SCALE_JOBS: dict[str, tuple[str, dict[str, Any]]] = {
    "gradnorm": ("gradnorm", {}),
    "less 3 adam ckpts": ("less", {"checkpoints_dir": "ckpts"}),
    "hessian default (auto)": ("hessian", {}),
}
SCALE_CONFIGS = {"1x2": (1, 2), "2x1": (2, 1), "1x1": (1, 1)}  # workers × torch threads per worker
# Kronfluence side by side on the first n points; our factors are fitted on those points too.
KRONFLUENCE = "kronfluence ekfac"
KRONFLUENCE_JOBS: dict[str, tuple[str, dict[str, Any]]] = {
    KRONFLUENCE: ("kronfluence", {}),
    "hessian ekfac mc": ("hessian", {"ekfac": True, "fisher": "mc"}),
    "hessian ekfac ggn": ("hessian", {"ekfac": True, "fisher": "ggn"}),
}
MATCHED = "hessian ekfac mc"  # same Fisher (sampled labels), EK-FAC, damping heuristic as Kronfluence's
TARGET_N = 20_000
# Scorer runs shorter than this are run twice and the faster kept, as the epoch is (best of two): on a
# shared machine single short runs are the noisiest. Longer runs are timed once.
REPEAT_BELOW = 60.0


def digits_shifted() -> ArraySet:
    from sklearn.datasets import load_digits

    d = load_digits()
    img = (d.images / 16).astype(np.float32)
    xs, ys = [], []
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            xs.append(np.roll(np.roll(img, dy, 1), dx, 2).reshape(len(img), -1))
            ys.append(d.target)
    return ArraySet(np.concatenate(xs), np.concatenate(ys))


def synthetic_images(n: int, seed: int = 0) -> ArraySet:
    """32×32×3 images: a smooth per-class template (4×4 upsampled) plus unit Gaussian noise."""
    rng = np.random.default_rng(seed)
    templates = np.kron(rng.normal(size=(10, 3, 4, 4)), np.ones((1, 1, 8, 8))).astype(np.float32)
    y = rng.integers(0, 10, n)
    return ArraySet((0.3 * templates[y] + rng.normal(size=(n, 3, 32, 32))).astype(np.float32), y)




def prepare(name: str, data: ArraySet, folder: Path) -> dict[str, Any]:
    """Train with 3 checkpoints kept; save weights, data and checkpoints for the worker processes."""
    setup = SETUPS[name]
    torch.manual_seed(0)
    model = build_model(setup["spec"], input_shape=setup["shape"], n_classes=10)
    recorder = CheckpointRecorder(epochs=setup["epochs"], k=3)
    began = time.perf_counter()
    stats = train_model(model, data, device=CPU, on_epoch_end=recorder, recipe={
        "optimizer": "adam", "lr": 1e-3, "epochs": setup["epochs"], "batch_size": 128, "seed": 0})
    folder.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(folder / "weights.safetensors"))
    np.savez(folder / "data.npz", x=data.x, y=data.y)
    save_checkpoints(folder / "ckpts", recorder.checkpoints)
    (folder / "setup.json").write_text(json.dumps({"name": name}))
    return {"n": len(data), "params": sum(p.numel() for p in model.parameters()),
            "train_seconds_per_epoch": (time.perf_counter() - began) / setup["epochs"],
            "train_accuracy": stats["train_accuracy"]}


def _command(folder: Path, spec: dict[str, Any], out: Path) -> list[str]:
    return [sys.executable, "-m", "bench.influence_worker", str(folder), json.dumps(spec), str(out)]


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in text)


def run_job(folder: Path, spec: dict[str, Any], out: Path, *, again_below: float = 0.0) -> dict[str, Any]:
    """Run one job in a fresh process; a run shorter than `again_below` seconds is repeated, best kept."""
    subprocess.run(_command(folder, spec, out), check=True)
    row = json.loads(out.read_text())
    if row["seconds"] < again_below and "factors_dir" not in spec.get("options", {}):  # a rerun would load them
        subprocess.run(_command(folder, spec, out), check=True)
        second = json.loads(out.read_text())
        row = min(row, second, key=lambda r: r["seconds"])
        row["runs"] = 2
    row["scores"] = out.with_suffix(".npy")
    return row


def agreement(rows: dict[str, dict[str, Any]], reference: str) -> None:
    """Spearman and lowest-decile overlap of every row that has scores, against the reference row's."""
    ref = np.load(rows[reference]["scores"])
    k = max(1, len(ref) // 10)
    ref_low = set(np.argsort(ref)[:k])
    for row in rows.values():
        path = row.pop("scores")
        if path.exists():
            s = np.load(path)
            row["spearman_vs_reference"] = float(spearmanr(s, ref)[0])
            row["low_decile_overlap_vs_reference"] = len(set(np.argsort(s)[:k]) & ref_low) / k


def run_setup(name: str, data: ArraySet, root: Path, threads: int) -> dict[str, Any]:
    folder = root / name.split()[0]
    summary = prepare(name, data, folder)
    rows: dict[str, dict[str, Any]] = {}
    for job, (method, options) in JOBS.items():
        rows[job] = run_job(folder, {"method": method, "options": options, "threads": threads},
                            folder / f"{_slug(job)}.json", again_below=REPEAT_BELOW)
        print(f"  {name} / {job}: {rows[job]['seconds']:.1f} s", flush=True)
    epoch = rows["epoch"]["seconds"]
    epoch_cpu = rows["epoch"]["cpu_seconds"]
    for row in rows.values():
        row["points_per_second"] = summary["n"] / row["seconds"]
        row["epochs"] = row["seconds"] / epoch
        row["epochs_cpu"] = row["cpu_seconds"] / epoch_cpu
    agreement(rows, REFERENCE)
    return {**summary, "folder": folder, "rows": rows}


def run_scale(folder: Path, n: int, epoch_seconds: float, configs: list[str]) -> dict[str, Any]:
    """Each scorer on all n points by 1 worker vs 2 workers in parallel on the two halves (shards)."""
    out: dict[str, Any] = {}
    for job, (method, options) in SCALE_JOBS.items():
        runs: dict[str, Any] = {}
        for cfg in configs:
            workers, threads = SCALE_CONFIGS[cfg]
            tag = f"scale-{_slug(job)}-{cfg}"
            opts = dict(options)
            prepare_seconds = prepare_cpu = 0.0
            if method == "hessian":  # sharding.dispatch: fit the factors once on all points, cache them
                opts["factors_dir"] = f"{tag}-factors"
                prep = run_job(folder, {"method": method, "options": opts, "rows": [0, 0], "threads": threads},
                               folder / f"{tag}-prepare.json")
                prepare_seconds, prepare_cpu = prep["seconds"], prep["cpu_seconds"]
            size = -(-n // workers)
            shards = [(a, min(a + size, n)) for a in range(0, n, size)]  # = workers.sharding.plan(n, size)
            procs = [(subprocess.Popen(_command(folder, {"method": method, "options": opts, "rows": [a, b],
                                                         "threads": threads}, folder / f"{tag}-{a}.json")),
                      folder / f"{tag}-{a}.json") for a, b in shards]
            for proc, _ in procs:
                if proc.wait() != 0:
                    raise RuntimeError(f"shard worker failed: {job} {cfg}")
            parts = [json.loads(path.read_text()) for _, path in procs]
            wall = max(p["finished"] for p in parts) - min(p["started"] for p in parts)
            scores = np.concatenate([np.load(path.with_suffix(".npy")) for _, path in procs])
            total = prepare_seconds + wall
            runs[cfg] = {"workers": workers, "threads_per_worker": threads, "shards": shards,
                         "prepare_seconds": prepare_seconds, "shard_seconds": [p["seconds"] for p in parts],
                         "prepare_cpu_seconds": prepare_cpu, "shard_cpu_seconds": [p["cpu_seconds"] for p in parts],
                         # on free cores, 1-thread workers take their CPU time: prepare + the longest shard
                         "critical_path_cpu_seconds": prepare_cpu + max(p["cpu_seconds"] for p in parts),
                         "parallel_wall_seconds": wall, "total_seconds": total, "points_per_second": n / total,
                         "epochs": total / epoch_seconds, "peak_rss_mb": max(p["peak_rss_mb"] for p in parts),
                         "load_before": parts[0]["load_before"],
                         "factors": parts[0]["info"].get("factors"), "scores": scores}
            print(f"  scale-out / {job} / {cfg}: {total:.1f} s", flush=True)
        base = next(iter(runs.values()))["scores"]
        for run in runs.values():
            s = run.pop("scores")
            run["max_abs_diff_vs_first"] = float(np.max(np.abs(s - base)) / max(np.max(np.abs(base)), 1e-30))
        speedups = {}
        if "2x1" in runs and "1x2" in runs:
            speedups["2 workers × 1 thread vs 1 worker × 2 threads"] = runs["1x2"]["total_seconds"] / runs["2x1"][
                "total_seconds"]
        if "2x1" in runs and "1x1" in runs:
            speedups["2 workers × 1 thread vs 1 worker × 1 thread"] = runs["1x1"]["total_seconds"] / runs["2x1"][
                "total_seconds"]
        cpu_based = {}
        if "2x1" in runs and "1x1" in runs:  # independent of other load, if two cores were free
            cpu_based["2 workers × 1 thread vs 1 worker × 1 thread"] = runs["1x1"]["critical_path_cpu_seconds"] / \
                runs["2x1"]["critical_path_cpu_seconds"]
        out[job] = {"runs": runs, "speedup": speedups, "speedup_from_cpu_time": cpu_based}
    return out


def run_kronfluence(folder: Path, n: int, threads: int) -> dict[str, Any]:
    """Kronfluence EK-FAC vs our hessian on the first n points, each fitting its factors on them."""
    rows: dict[str, dict[str, Any]] = {}
    for job, (method, options) in KRONFLUENCE_JOBS.items():
        rows[job] = run_job(folder, {"method": method, "options": options, "subset": n, "threads": threads},
                            folder / f"kf-{_slug(job)}.json")
        print(f"  kronfluence comparison / {job} on {n:,} points: {rows[job]['seconds']:.1f} s", flush=True)
    pair = (np.load(rows[KRONFLUENCE]["scores"]), np.load(rows[MATCHED]["scores"]))
    for job, row in rows.items():
        row["points_per_second"] = n / row["seconds"]
        if job != KRONFLUENCE:
            row["kronfluence_seconds_ratio"] = rows[KRONFLUENCE]["seconds"] / row["seconds"]
            row["kronfluence_cpu_seconds_ratio"] = rows[KRONFLUENCE]["cpu_seconds"] / row["cpu_seconds"]
    agreement(rows, KRONFLUENCE)
    mine = {job: row for job, row in rows.items() if job != KRONFLUENCE}
    return {"n": n, "matched": MATCHED, "rows": rows, "scores": pair,
            "note": "both fit EK-FAC factors on these n points and score them, heuristic damping "
                    "0.1 × mean eigenvalue per layer, one process each at the same torch threads; "
                    "the matched row uses sampled labels for the Fisher as Kronfluence does (different "
                    "random draws, so ρ < 1 even for identical maths)", "ours": list(mine)}


def targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Issue 4's targets with the measured values: PASS / MISS (N ≥ 20,000), else for information."""
    out = []

    def add(target: str, setup: str, value: float, limit: float, higher: bool, shown: str, n: int,
            cpu: float | None = None) -> None:
        def status(v: float) -> str:
            if n < TARGET_N:
                return f"info (N={n:,} < {TARGET_N:,})"
            return "PASS" if (v >= limit if higher else v <= limit) else "MISS"

        out.append({"target": target, "setup": setup, "n": n, "measured": value, "shown": shown, "limit": limit,
                    "status": status(value), "measured_cpu_time": cpu,
                    "status_cpu_time": None if cpu is None else status(cpu)})

    for name, res in results["setups"].items():
        rows, n = res["rows"], res["n"]
        g = rows["gradnorm"]
        add("gradnorm ≤ 1.5× one epoch", name, g["epochs"], 1.5, False, f"{g['epochs']:.2f}×", n, g["epochs_cpu"])
        less = rows["less 3 adam ckpts"]
        add("less ≤ 3× one epoch per checkpoint", name, less["epochs"] / 3, 3.0, False,
            f"{less['epochs'] / 3:.2f}× per ckpt (3 ckpts)", n, less["epochs_cpu"] / 3)
        h = rows["hessian default (auto)"]
        add("hessian ≤ 3× one epoch, factor fitting included", name, h["epochs"], 3.0, False,
            f"{h['epochs']:.2f}× ({h['info'].get('method')}, {h['info'].get('fisher')})", n, h["epochs_cpu"])
    kf = results.get("kronfluence")
    if kf:
        n_full = results["setups"][CNN]["n"]
        row = kf["rows"][MATCHED]
        add("hessian ≥ 20× faster than Kronfluence EK-FAC", f"{CNN}, first {kf['n']:,}", row[
            "kronfluence_seconds_ratio"], 20.0, True, f"{row['kronfluence_seconds_ratio']:.1f}× ({MATCHED})", n_full,
            row["kronfluence_cpu_seconds_ratio"])
        add("… at Spearman ≥ 0.95 with Kronfluence", f"{CNN}, first {kf['n']:,}", row["spearman_vs_reference"],
            0.95, True, f"ρ = {row['spearman_vs_reference']:.3f} ({MATCHED})", n_full)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n-cnn", type=int, default=20_000)
    parser.add_argument("--n-kronfluence", type=int, default=2_000,
                        help="CNN points for the Kronfluence comparison (0 skips it)")
    parser.add_argument("--scale", default="1x2,2x1,1x1",
                        help="worker configurations for the two-worker speed-up, workers x threads ('' skips)")
    parser.add_argument("--threads", type=int, default=0,
                        help="torch threads of the training and every single-process job (0: torch's default)")
    parser.add_argument("--skip-mlp", action="store_true")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "influence.json")
    args = parser.parse_args()
    began = time.perf_counter()
    host = common.machine() | {"kronfluence": _kronfluence_version()}
    if args.threads:
        torch.set_num_threads(args.threads)
    results: dict[str, Any] = {"machine": host, "threads_per_process": torch.get_num_threads(),
                               "load_at_start": os.getloadavg(),
                               "command": " ".join([Path(sys.executable).name, "-m", "bench.influence",
                                                    *sys.argv[1:]]),
                               "reference": REFERENCE, "setups": {}}
    kf_scores: tuple[np.ndarray, np.ndarray] | None = None
    with tempfile.TemporaryDirectory() as tmp:
        setups = [] if args.skip_mlp else [(MLP, digits_shifted())]
        for name, data in [*setups, (CNN, synthetic_images(args.n_cnn))]:
            results["setups"][name] = run_setup(name, data, Path(tmp), args.threads)
        cnn = results["setups"][CNN]
        folder = cnn.pop("folder")
        for res in results["setups"].values():
            res.pop("folder", None)
        configs = [c for c in args.scale.split(",") if c]
        if configs:
            results["scale_out"] = run_scale(folder, cnn["n"], cnn["rows"]["epoch"]["seconds"], configs)
            results["scale_out_setting"] = {
                "configs": {c: {"workers": SCALE_CONFIGS[c][0], "torch_threads_per_worker": SCALE_CONFIGS[c][1]}
                            for c in configs},
                "timing": "prepare (hessian: fit factors on all points, cache) + first shard start to last shard "
                          "end; worker start-up and data loading excluded", "cores": os.cpu_count()}
        if args.n_kronfluence:
            results["kronfluence"] = run_kronfluence(folder, min(args.n_kronfluence, cnn["n"]), args.threads)
            kf_scores = results["kronfluence"].pop("scores")
        results["targets"] = targets(results)
        results["total_seconds"] = time.perf_counter() - began
        results["load_at_end"] = os.getloadavg()
        args.out.parent.mkdir(parents=True, exist_ok=True)
        plot(results, kf_scores, args.out.with_suffix(".png"))
    args.out.write_text(json.dumps(results, indent=1, default=str))
    print_table(results)
    print(f"total {results['total_seconds'] / 60:.1f} min; wrote {args.out} and {args.out.with_suffix('.png')}")



def _kronfluence_version() -> str | None:
    try:
        import kronfluence
    except ImportError:
        return None
    return kronfluence.__version__


if __name__ == "__main__":
    main()
