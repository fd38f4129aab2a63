"""Self-influence scorers: throughput, cost relative to one training epoch, peak memory, agreement.

    .venv/bin/python -m bench.influence [--n-cnn 20000] [--out bench/results/influence.json]

Two setups: the digits MLP (64-512-512-10, digits ×9 one-pixel shifts = 16,173 points) and a CNN
(conv32-conv64-fc128) on synthetic 32×32×3 images. Each is trained briefly with Adam keeping 3 LESS
checkpoints; then every scorer runs in its own subprocess so that its peak RSS (getrusage) is its own.
"epoch" is one plain batched forward+backward pass over the same points (batch 256, no optimizer step),
the unit the costs are expressed in. Agreement is against hessian EK-FAC (GGN): Spearman and the overlap
of the lowest deciles, which is what pruning by self-influence needs.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from scipy.stats import spearmanr

from workers.engine.architectures import build_model
from workers.engine.data import ArraySet, batches, to_tensors
from workers.engine.influence import compute_self_influence
from workers.engine.influence.less import CheckpointRecorder, save_checkpoints
from workers.engine.training import train_model

CPU = torch.device("cpu")
REFERENCE = "hessian ekfac ggn"
# name -> (method, options); factors_dir / checkpoints_dir are filled in per setup.
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


SETUPS: dict[str, dict[str, Any]] = {
    "digits mlp 64-512-512-10": {"spec": {"kind": "mlp", "hidden": [512, 512]}, "shape": (64,), "epochs": 6},
    "cnn conv32-conv64-fc128": {"spec": {"kind": "cnn", "channels": [32, 64], "hidden": 128},
                                "shape": (3, 32, 32), "epochs": 3},
}


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


def plain_epoch(model: torch.nn.Module, data: ArraySet, batch_size: int = 256) -> None:
    x, y = to_tensors(data, CPU)
    for idx in batches(len(data), batch_size, shuffle=False):
        model.zero_grad(set_to_none=True)
        F.cross_entropy(model(x[idx]), y[idx]).backward()


def worker(folder: Path, job: str, out: Path) -> None:
    """One scorer in a fresh process: seconds, peak RSS and the scores."""
    setup = SETUPS[json.loads((folder / "setup.json").read_text())["name"]]
    with np.load(folder / "data.npz") as npz:
        data = ArraySet(npz["x"], npz["y"])
    model = build_model(setup["spec"], input_shape=setup["shape"], n_classes=10)
    model.load_state_dict(load_file(str(folder / "weights.safetensors")))
    method, options = JOBS[job]
    options = {k: folder / v if k.endswith("_dir") else v for k, v in options.items()}
    info: dict[str, Any] = {}
    load = os.getloadavg()[0]
    scores = None
    if method == "epoch":  # the best of two: the unit every other cost is divided by
        seconds = float("inf")
        for _ in range(2):
            began = time.perf_counter()
            plain_epoch(model, data)
            seconds = min(seconds, time.perf_counter() - began)
    else:
        began = time.perf_counter()
        scores = compute_self_influence(method, model, data, device=CPU, batch_size=256, info=info, **options)
        seconds = time.perf_counter() - began
    if scores is not None:
        np.save(out.with_suffix(".npy"), scores)
    info = {k: v for k, v in info.items() if k != "damping"}
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    out.write_text(json.dumps({"seconds": seconds, "load_before": load, "peak_rss_mb": peak, "info": info},
                              default=str))


def run_setup(name: str, data: ArraySet, root: Path) -> dict[str, Any]:
    folder = root / name.split()[0]
    summary = prepare(name, data, folder)
    rows: dict[str, dict[str, Any]] = {}
    for job in JOBS:
        out = folder / f"{job.replace(' ', '_').replace(',', '')}.json"
        subprocess.run([sys.executable, "-m", "bench.influence", "--worker", str(folder), job, str(out)], check=True)
        rows[job] = json.loads(out.read_text())
        rows[job]["scores"] = out.with_suffix(".npy")
        print(f"  {name} / {job}: {rows[job]['seconds']:.1f} s", flush=True)
    epoch = rows["epoch"]["seconds"]
    ref = np.load(rows[REFERENCE]["scores"])
    k = len(ref) // 10
    ref_low = set(np.argsort(ref)[:k])
    for row in rows.values():
        path = row.pop("scores")
        row["points_per_second"] = summary["n"] / row["seconds"]
        row["epochs"] = row["seconds"] / epoch
        if path.exists():
            s = np.load(path)
            row["spearman_vs_reference"] = float(spearmanr(s, ref)[0])
            row["low_decile_overlap_vs_reference"] = len(set(np.argsort(s)[:k]) & ref_low) / k
    return {**summary, "rows": rows}


def print_table(results: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    for name, res in results["setups"].items():
        table = Table(title=f"{name}: {res['n']:,} points, {res['params']:,} parameters "
                            f"(one epoch = {res['rows']['epoch']['seconds']:.2f} s)")
        for col in ("scorer", "seconds", "points/s", "× epoch", "peak RSS MB", "ρ vs ref", "low-decile ∩ ref",
                    "load"):
            table.add_column(col, justify="left" if col == "scorer" else "right")
        for job, row in res["rows"].items():
            table.add_row(job, f"{row['seconds']:.2f}", f"{row['points_per_second']:,.0f}", f"{row['epochs']:.1f}",
                          f"{row['peak_rss_mb']:.0f}", f"{row.get('spearman_vs_reference', float('nan')):.3f}",
                          f"{row.get('low_decile_overlap_vs_reference', float('nan')):.2f}",
                          f"{row['load_before']:.1f}")
        Console().print(table)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n-cnn", type=int, default=20_000)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "influence.json")
    parser.add_argument("--worker", nargs=3, metavar=("FOLDER", "JOB", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(Path(args.worker[0]), args.worker[1], Path(args.worker[2]))
        return
    results: dict[str, Any] = {"machine": {"cpus": torch.get_num_threads(), "torch": torch.__version__,
                                           "python": platform.python_version()}, "reference": REFERENCE,
                               "setups": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for name, data in (("digits mlp 64-512-512-10", digits_shifted()),
                           ("cnn conv32-conv64-fc128", synthetic_images(args.n_cnn))):
            results["setups"][name] = run_setup(name, data, Path(tmp))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1, default=str))
    print_table(results)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
