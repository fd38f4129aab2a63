"""One scorer of the influence benchmark in a process of its own, so that its peak RSS is its own:

    python -m bench.influence_worker FOLDER SPEC OUT

FOLDER holds what bench.influence prepared (weights, data, checkpoints, setup.json); SPEC is the job as JSON
(method, options, and optionally threads, subset, rows); OUT receives the timings and OUT.npy the scores.
"""

from __future__ import annotations

import json
import os
import resource
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from workers.engine.architectures import build_model
from workers.engine.data import ArraySet, batches, to_tensors
from workers.engine.influence import compute_self_influence

CPU = torch.device("cpu")
MLP, CNN = "digits mlp 64-512-512-10", "cnn conv32-conv64-fc128"
SETUPS: dict[str, dict[str, Any]] = {
    MLP: {"spec": {"kind": "mlp", "hidden": [512, 512]}, "shape": (64,), "epochs": 6},
    CNN: {"spec": {"kind": "cnn", "channels": [32, 64], "hidden": 128}, "shape": (3, 32, 32), "epochs": 3},
}


BATCH = 256


def plain_epoch(model: torch.nn.Module, data: ArraySet, batch_size: int = BATCH) -> None:
    x, y = to_tensors(data, CPU)
    for idx in batches(len(data), batch_size, shuffle=False):
        model.zero_grad(set_to_none=True)
        F.cross_entropy(model(x[idx]), y[idx]).backward()


def kronfluence_self_scores(model: torch.nn.Module, data: ArraySet, out_dir: Path, *, batch_size: int,
                            info: dict[str, Any]) -> np.ndarray:
    """Kronfluence's EK-FAC self-influence, by its documented API: Task, prepare_model, Analyzer."""
    import logging
    import warnings

    import kronfluence
    from kronfluence.analyzer import Analyzer, prepare_model
    from kronfluence.arguments import FactorArguments, ScoreArguments
    from kronfluence.task import Task

    class Classification(Task):
        def compute_train_loss(self, batch: Any, model: torch.nn.Module, sample: bool = False) -> torch.Tensor:
            x, y = batch
            logits = model(x)
            if sample:  # the true Fisher: labels drawn from the model's own predictions
                with torch.no_grad():
                    y = torch.multinomial(torch.softmax(logits.detach(), -1), 1).flatten()
            return F.cross_entropy(logits, y, reduction="sum")

        def compute_measurement(self, batch: Any, model: torch.nn.Module) -> torch.Tensor:
            x, y = batch
            return F.cross_entropy(model(x), y, reduction="sum")

    warnings.filterwarnings("ignore", category=FutureWarning)  # torch.cuda.amp.GradScaler deprecation
    torch.manual_seed(0)
    task = Classification()
    dataset = torch.utils.data.TensorDataset(*to_tensors(data, CPU))
    factor_args = FactorArguments(strategy="ekfac")
    score_args = ScoreArguments(damping_factor=None)  # None: 0.1 × mean eigenvalue per module, as ours
    began = time.perf_counter()
    analyzer = Analyzer("bench", prepare_model(model, task), task, cpu=True, disable_tqdm=True,
                        output_dir=str(out_dir), log_level=logging.WARNING)
    analyzer.fit_all_factors("ekfac", dataset, per_device_batch_size=batch_size, factor_args=factor_args,
                             overwrite_output_dir=True)
    fitted = time.perf_counter()
    analyzer.compute_self_scores("self", "ekfac", dataset, per_device_train_batch_size=batch_size,
                                 score_args=score_args, overwrite_output_dir=True)
    scores = analyzer.load_self_scores("self")["all_modules"].double().numpy()
    info.update({"kronfluence": kronfluence.__version__, "strategy": "ekfac", "damping": "heuristic 0.1 × mean",
                 "fisher": "mc (sampled labels)", "batch_size": batch_size,
                 "factor_seconds": fitted - began, "score_seconds": time.perf_counter() - fitted,
                 "factor_args": factor_args.to_str_dict(), "score_args": score_args.to_str_dict()})
    return scores


def _peak_rss_mb() -> float:
    """This process image's peak RSS: VmHWM, which starts afresh at exec. (getrusage's ru_maxrss does not:
    Linux carries the parent's high-water mark into a forked-and-exec'd child, so every worker would report
    at least the bench process's own peak.)"""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def worker(folder: Path, spec: dict[str, Any], out: Path) -> None:
    """One scorer in a fresh process: seconds, CPU seconds, peak RSS and the scores (out.npy).

    spec: method, options, and optionally threads (torch intra-op threads), subset (first n points only),
    rows ([a, b): one shard, as compute_self_influence's `rows`).
    """
    if spec.get("threads"):
        torch.set_num_threads(int(spec["threads"]))
    setup = SETUPS[json.loads((folder / "setup.json").read_text())["name"]]
    with np.load(folder / "data.npz") as npz:
        data = ArraySet(npz["x"], npz["y"])
    if spec.get("subset"):
        data = ArraySet(data.x[:spec["subset"]], data.y[:spec["subset"]])
    model = build_model(setup["spec"], input_shape=setup["shape"], n_classes=10)
    model.load_state_dict(load_file(str(folder / "weights.safetensors")))
    method = spec["method"]
    options = {k: folder / v if k.endswith("_dir") else v for k, v in spec.get("options", {}).items()}
    if spec.get("rows") is not None:
        options["rows"] = slice(*spec["rows"])
    info: dict[str, Any] = {}
    load = os.getloadavg()[0]
    scores = None
    cpu, started = _cpu_seconds(), time.time()
    if method == "epoch":  # the best of two: the unit every other cost is divided by
        seconds = float("inf")
        for _ in range(2):
            began, cpu = time.perf_counter(), _cpu_seconds()
            plain_epoch(model, data)
            if time.perf_counter() - began < seconds:
                seconds, epoch_cpu = time.perf_counter() - began, _cpu_seconds() - cpu
        cpu = _cpu_seconds() - epoch_cpu  # cpu_seconds below: the best epoch's
    elif method == "kronfluence":
        began = time.perf_counter()
        scores = kronfluence_self_scores(model, data, folder / f"kronfluence-{out.stem}", batch_size=BATCH,
                                         info=info)
        seconds = time.perf_counter() - began
    else:
        began = time.perf_counter()
        scores = compute_self_influence(method, model, data, device=CPU, batch_size=BATCH, info=info, **options)
        seconds = time.perf_counter() - began
    finished, cpu = time.time(), _cpu_seconds() - cpu
    if scores is not None:
        np.save(out.with_suffix(".npy"), scores)
    info = {k: v for k, v in info.items() if k != "damping"}
    peak = _peak_rss_mb()
    out.write_text(json.dumps({"seconds": seconds, "cpu_seconds": cpu, "started": started, "finished": finished,
                               "threads": torch.get_num_threads(), "load_before": load,
                               "load_after": os.getloadavg()[0], "peak_rss_mb": peak, "info": info}, default=str))


if __name__ == "__main__":
    worker(Path(sys.argv[1]), json.loads(sys.argv[2]), Path(sys.argv[3]))
