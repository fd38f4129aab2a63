"""The engine over numpy arrays, row sets and files: arrays and paths in, networks and plain dicts out.

Datasets reach the engine as row sets (`rows`: a dataset's arrays, memory-mapped for Parquet, and the rows a job
uses), never as copies of their features: every engine path reads them a batch at a time (workers/engine/rows.py).

What workers/jobs/ calls (through `workers.jobs.context.engine()`, so importing a job module never imports torch).
Like the rest of the engine it knows nothing of the service: the caller names the device once with `use()`.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from workers.engine import audit as audit_mod
from workers.engine import parquet
from workers.engine.architectures import build_model
from workers.engine.calibration import removal_curve
from workers.engine.catalog import DEFAULT_REFERENCE_MARGIN
from workers.engine.data import ArraySet, load_npz
from workers.engine.device import resolve_device
from workers.engine.evidence import Limits, standardise
from workers.engine.influence.less import CheckpointRecorder
from workers.engine.influence.self_influence import SelfInfluence
from workers.engine.influence.self_influence import save as save_influence
from workers.engine.reference import fit_pool as _fit_pool
from workers.engine.reference import phi_of
from workers.engine.reference import score_pool as _score_pool
from workers.engine.training import DEFAULT_RECIPE, train_model
from workers.engine.unlearning import unlearn as _unlearn
from workers.engine.weights import load_weights, save_weights

Progress = Callable[[float], None]


_DEVICE = ["auto"]  # the device name this process computes on (the worker sets LETHE_DEVICE through use())


def use(device_name: str) -> None:
    """Compute on `device_name` ("auto": CUDA when available, else CPU) from now on."""
    _DEVICE[0] = device_name


def device() -> torch.device:
    return resolve_device(_DEVICE[0])


def load_arrays(path: Path) -> dict[str, np.ndarray]:
    """An .npz's arrays, or a Parquet dataset's decoded feature cache memory-mapped (its validation job wrote it)."""
    return parquet.load_cache(path) if path.suffix == ".parquet" else load_npz(path)


def rows(arrays: dict[str, np.ndarray], which: Any = None, *, test: bool = False) -> ArraySet:
    """Train rows `which` (None: all) of a dataset's arrays, or its test split, as a row set (nothing copied)."""
    if test:
        return ArraySet(arrays["x_test"], arrays["y_test"]) if "x_test" in arrays else ArraySet(
            arrays["x"][:0], arrays["y"][:0])
    return ArraySet(arrays["x"], arrays["y"], which)


def _build(arch: dict[str, Any], shape: tuple[int, ...], n_classes: int, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_model(arch, input_shape=tuple(shape), n_classes=n_classes)


def load_network(arch: dict[str, Any], shape: tuple[int, ...], n_classes: int, path: Path) -> torch.nn.Module:
    return load_weights(_build(arch, shape, n_classes), path)


def save_network(net: torch.nn.Module, path: Path) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    return save_weights(net, path)


def train(arch: dict[str, Any], shape: tuple[int, ...], n_classes: int, data: ArraySet, *,
          recipe: dict[str, Any], progress: Progress,
          checkpoints_to: Path | None = None) -> tuple[torch.nn.Module, dict[str, Any]]:
    """Train from the recipe; with checkpoints_to, keep `recipe.checkpoints` (default 3) for LESS scoring."""
    net = _build(arch, shape, n_classes, seed=int(recipe.get("seed", 0)))
    keep, epochs = int(recipe.get("checkpoints", 3)), int({**DEFAULT_RECIPE, **recipe}["epochs"])
    recorder = CheckpointRecorder(epochs, k=keep) if checkpoints_to and keep > 0 else None
    metrics = train_model(net, data, recipe=recipe, device=device(), progress=progress,
                          on_epoch_end=recorder)
    if recorder is not None and checkpoints_to is not None:
        recorder.save(checkpoints_to)
        metrics["checkpoints"] = len(recorder.checkpoints)
    return net.cpu(), metrics


def accuracy(net: torch.nn.Module, data: ArraySet) -> float:
    return float(audit_mod.accuracy(net, data, device=device()))


def self_influence(method: str, net: torch.nn.Module, data: ArraySet, *, progress: Progress,
                   work_dir: Path, checkpoints_dir: Path | None = None,
                   rows: slice | None = None) -> tuple[np.ndarray, dict[str, Any]]:
    """Scores and what produced them; work_dir caches fitted factors (hessian), checkpoints feed LESS.

    With `rows`, one shard's scores (a sharded job calls this once per shard, after prepare_scoring)."""
    result = SelfInfluence(work_dir, net, data, device=device(), checkpoints=checkpoints_dir).score(
        method, rows=rows, progress=progress)
    return result.scores, result.info


def prepare_scoring(method: str, net: torch.nn.Module, data: ArraySet, *, work_dir: Path) -> None:
    """What every shard of a sharded scoring job shares, computed once: hessian's factors (cached)."""
    SelfInfluence(work_dir, net, data, device=device()).fit(method)


def save_scores(root: Path, name: str, scores: np.ndarray, *, meta: dict[str, Any]) -> dict[str, Any]:
    return save_influence(root, name, scores, meta=meta)


def unlearn(algorithm: str, net: torch.nn.Module, *, forget: ArraySet, retain: ArraySet | None,
            params: dict[str, Any], recipe: dict[str, Any],
            arch: dict[str, Any], shape: tuple[int, ...], n_classes: int,
            progress: Progress) -> tuple[torch.nn.Module, dict[str, Any]]:
    result = _unlearn(
        algorithm, net, forget=forget, retain=retain, params=params, device=device(), seed=int(recipe.get("seed", 0)),
        progress=progress,
        build=lambda: _build(arch, shape, n_classes, seed=int(recipe.get("seed", 0)) + 1), recipe=recipe)
    return result.model.cpu(), dict(result.metrics)


def audit(net: torch.nn.Module, parent: torch.nn.Module, *, forget: ArraySet, retain: ArraySet, test: ArraySet,
          rule: dict[str, float], min_points: int, retrained: bool = False,
          policy: dict[str, Any] | None = None, reference: torch.nn.Module | None = None) -> dict[str, Any]:
    """Audit the new network against its parent on the request's points: `passed` says whether retain and test
    accuracy stayed within the policy's max_acc_drop (the pool's verdict is workers/jobs/verdict.py's, on top). The MIAs
    are reported as informational. With a retrain `reference` (a model retrained without the forget set) the
    report adds its numbers and the gap of each metric to them."""
    if len(test) == 0:
        raise ValueError("the dataset has no test split (x_test, y_test): the audit cannot run")
    rule = dict(rule) | {k: v for k, v in (policy or {}).items() if k in rule and v is not None}
    dev = device()
    sets = {"forget": forget, "retain": retain, "test": test}
    kw = {"device": dev, "min_points": min_points}
    after = audit_mod.audit_model(net, forget=sets["forget"], retain=sets["retain"], test=sets["test"], **kw)
    before = audit_mod.audit_model(parent, forget=sets["forget"], retain=sets["retain"], test=sets["test"], **kw)
    extra: dict[str, Any] = {}
    mia_reference = "self (retrained without the forget set)" if retrained else "test sample"
    if reference is not None and not retrained:
        ref = audit_mod.audit_model(reference, forget=sets["forget"], retain=sets["retain"], test=sets["test"], **kw)
        gap = audit_mod.gaps(after, ref)
        extra["reference"] = {"metrics": ref, "gap": gap,
                              "avg_gap": round(float(np.mean(list(gap.values()))), 6) if gap else None}
        if (ref.get("mia") or {}).get("status") == "ok":
            rule["reference_auc"] = ref["mia"]["auc"]
            rule["reference_margin"] = (policy or {}).get("reference_margin") or DEFAULT_REFERENCE_MARGIN
            mia_reference = "retrain reference (retrained without the forget set in this job)"
    # Accuracy decides here; the loss-MIA (forget vs test) and the SVC efficacy are informational: forget and
    # test points differ in class and difficulty, so they pass doing nothing and fail correct retrains.
    reasons = audit_mod.accuracy_reasons(after, before, max_acc_drop=rule["max_acc_drop"])
    return {"passed": not reasons, "reasons": reasons, "after": after, "before": before,
            "mia_reference": mia_reference, "n_audit": len(forget), "policy": rule,
            "informational": ["after.mia", "after.mia_conf", "before.mia", "before.mia_conf"], **extra}


def fit_pool(arch: dict[str, Any], shape: tuple[int, ...], n_classes: int, arrays: dict[str, np.ndarray], *,
             rows: list[int], k: int, recipe: dict[str, Any], shift_models: int, target: torch.nn.Module | None,
             progress: Progress, cache: Path | None = None) -> tuple[Any, dict[str, Any]]:
    """Train the lineage's reference pool on the dataset rows `rows` (see workers.engine.reference); `cache`
    keeps each model's φ so a re-run trains only what is missing."""
    seed = int(recipe.get("seed", 0))
    return _fit_pool(lambda s: _build(arch, shape, n_classes, seed=s), arrays["x"], arrays["y"], arrays["x_test"],
                arrays["y_test"], rows=np.asarray(rows), k=k, seed=seed, recipe=recipe, device=device(),
                progress=progress, shift_models=shift_models, target=target, cache=cache)


def score_pool(pool: Any, *, auc_max: float, tpr_max: float, seed: int) -> dict[str, Any]:
    return _score_pool(pool, limits=Limits(auc_max=auc_max, tpr_max=tpr_max), seed=seed)


def standardised_phi(net: torch.nn.Module, data: ArraySet, test: ArraySet) -> np.ndarray:
    """The network's φ on `data`, standardised by its own φ on `test` as the pool's models are."""
    dev = device()
    return standardise(phi_of(net, data, device=dev)[None], phi_of(net, test, device=dev)[None])[0]


def calibrate(net: torch.nn.Module, arch: dict[str, Any], shape: tuple[int, ...], n_classes: int, data: ArraySet,
              *, orders: dict[str, np.ndarray], grid: list[int], recipe: dict[str, Any],
              progress: Progress) -> dict[str, list[dict[str, Any]]]:
    """Removal curves (Figure 4.1) for each ordering of the training points."""
    curves = {}
    for k, (name, order) in enumerate(orders.items()):
        def part(f: float, k: int = k) -> None:
            progress((k + f) / len(orders))

        # Same initialisation and data order as the version's own training: only the removal differs.
        curves[name] = removal_curve(net, lambda: _build(arch, shape, n_classes, seed=int(recipe.get("seed", 0))),
                                     data, order, grid=grid, recipe=recipe, device=device(), progress=part)
    return curves
