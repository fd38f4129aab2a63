"""The reference pool of a lineage: K shadow models in a balanced IN/OUT design, the measuring instrument behind
"free" and the audit (see evidence.py for the statistics).

prepare (the design) → fit (train the shadows, keep φ only) → score (certify the free set) → save / load.
Shadow weights are never kept: only φ per model and point (K floats a point) and φ on the test split.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from workers.engine import evidence
from workers.engine import model_hooks as hooks
from workers.engine.data import ArraySet
from workers.engine.evidence import Pool
from workers.engine.training import train_model


def logit_confidence(model: nn.Module, x: np.ndarray, y: np.ndarray, *, device: torch.device,
                     batch_size: int = 1024) -> np.ndarray:
    """φ = z_y − logsumexp(z_≠y) per example of the arrays x, y (see phi_of)."""
    return phi_of(model, ArraySet(x, y), device=device, batch_size=batch_size)


@torch.no_grad()
def phi_of(model: nn.Module, data: ArraySet, *, device: torch.device, batch_size: int = 1024) -> np.ndarray:
    """φ = z_y − logsumexp(z_≠y) per row of `data` (float64 logits: saturated points differ in the last digits)."""
    model = model.to(device).eval()
    out = []
    for _, xb, yb in data.loader(batch_size, device):
        z = hooks.forward(model, xb).double()
        zy = z.gather(1, yb[:, None]).squeeze(1)
        others = z.scatter(1, yb[:, None], float("-inf"))
        out.append((zy - torch.logsumexp(others, 1)).cpu().numpy())
    return np.concatenate(out) if out else np.empty(0)


def fit_pool(build: Callable[[int], nn.Module], x: np.ndarray, y: np.ndarray, x_test: np.ndarray,
             y_test: np.ndarray, *, rows: np.ndarray, k: int, seed: int, recipe: dict[str, Any],
             device: torch.device, progress: Callable[[float], None] | None = None, shift_models: int = 4,
             shift_fraction: float = 0.1, target: nn.Module | None = None,
             cache: Path | None = None) -> tuple[Pool, dict[str, Any]]:
    """Train K shadow models on complementary halves of x[rows] (each its own seed: initialisation and batch
    order), keep φ on every row and on the test split. Then measure the size mismatch — shadows see half the
    data, the deployed model all of it — with `shift_models` full-size models each leaving out a disjoint
    `shift_fraction` of the rows: the mean offset of their standardised φ on the left-out rows from the pool's
    OUT means is `shift_out` (the audit subtracts it); the target's offset from the IN means is `shift_in`.
    cache: a directory where each model's φ is kept as it is measured, so a re-run (the worker died) trains
    only the models that are missing."""
    rows = np.asarray(rows, dtype=np.int64)
    n = len(rows)
    mask = evidence.design(n, k, seed)
    data, test = ArraySet(x, y, rows), ArraySet(x_test, y_test)  # row views: features are read a batch at a time
    total = k + shift_models

    def shadow(name: str, model_seed: int, keep: np.ndarray, on: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """φ on the rows `on` and on the test split of a model trained on the rows `keep` (cached by name)."""
        measured_on = data.subset(on)
        return _measured(cache, name, model_seed, len(measured_on), lambda: _train_and_measure(
            build, model_seed, data.subset(keep), measured_on, test, recipe, device))

    phi = np.empty((k, n), dtype=np.float64)
    phi_test = np.empty((k, len(y_test)), dtype=np.float64)
    for m in range(k):
        # seeds apart from a job's seed + 1 retrain
        phi[m], phi_test[m] = shadow(f"shadow-{m}", seed * 1000 + 100 + m, mask[m], np.arange(n))
        if progress:
            progress((m + 1) / total)
    phi_std = evidence.standardise(phi, phi_test)
    stats = evidence.point_stats(phi_std, mask)
    shift: dict[str, Any] = {"models": shift_models, "fraction": shift_fraction}
    shift_points = (np.empty(0, dtype=np.int64), np.empty(0))
    if shift_models:
        shift_points = _size_shift(shadow, stats, n, first_seed=seed * 1000 + 100 + k, models=shift_models,
                                   fraction=shift_fraction, rng=np.random.default_rng(seed + 7),
                                   done=lambda s: progress((k + s + 1) / total) if progress else None)
        shift |= _summary(shift_points[1])
    if target is not None:
        shift |= _target_shift(target, data, test, stats, device)
    pool = Pool(rows=rows, in_mask=mask, phi=phi, phi_test=phi_test, phi_std=phi_std,
                scores=np.empty((k, n)), certified_by=np.full(n, -1, dtype=np.int8),
                separation=np.full(n, np.nan), shift_cols=shift_points[0].astype(np.int64),
                shift_offsets=shift_points[1].astype(np.float64), meta={"k": k, "seed": seed, "n_points": n,
                                                      "n_test": int(len(y_test))})
    return pool, shift


def _size_shift(shadow: Callable[[str, int, np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]],
                stats: evidence.Stats, n: int, *, first_seed: int, models: int, fraction: float,
                rng: np.random.Generator, done: Callable[[int], None]) -> tuple[np.ndarray, np.ndarray]:
    """Full-size models each leaving out a disjoint `fraction` of the rows: (the left-out columns, their
    standardised φ's offsets from the pool's OUT means in units of each point's OUT spread)."""
    order = rng.permutation(n)
    size = max(1, int(fraction * n))
    offsets, shift_cols = [], []
    for s in range(models):
        out_cols = order[s * size:(s + 1) * size]
        keep = np.ones(n, dtype=bool)
        keep[out_cols] = False
        left_out, left_out_test = shadow(f"shift-{s}", first_seed + s, keep, out_cols)
        std = evidence.standardise(left_out[None], left_out_test[None])[0]
        offsets.append((std - stats.mu_out[out_cols]) / np.sqrt(stats.var_out[out_cols]))
        shift_cols.append(out_cols)
        done(s)
    return np.concatenate(shift_cols), np.concatenate(offsets)


def _summary(every: np.ndarray) -> dict[str, Any]:
    """The size shift in units of each point's OUT spread, the same units the audit statistic's z uses (before
    weighting)."""
    return {"shift_out": round(float(np.median(every)), 6), "shift_out_mean": round(float(every.mean()), 6),
            "shift_out_se": round(float(every.std(ddof=1) / np.sqrt(len(every))), 6) if len(every) > 1 else None,
            "n_points": int(len(every))}


def _target_shift(target: nn.Module, data: ArraySet, test: ArraySet, stats: evidence.Stats,
                  device: torch.device) -> dict[str, Any]:
    """The deployed model's offset from the pool's IN means, in units of each point's IN spread."""
    std = evidence.standardise(phi_of(target, data, device=device)[None], phi_of(target, test, device=device)[None])[0]
    rel = (std - stats.mu_in) / np.sqrt(stats.var_in)
    return {"shift_in": round(float(np.median(rel)), 6), "shift_in_mean": round(float(rel.mean()), 6)}


def _train_and_measure(build: Callable[[int], nn.Module], model_seed: int, train: ArraySet, on: ArraySet,
                       test: ArraySet, recipe: dict[str, Any], device: torch.device) -> tuple[np.ndarray, np.ndarray]:
    """One pool model: trained with its own seed, then only its φ is kept (on `on` and on the test split)."""
    net = build(model_seed)
    train_model(net, train, recipe={**recipe, "seed": model_seed}, device=device)
    return phi_of(net, on, device=device), phi_of(net, test, device=device)


def _measured(cache: Path | None, name: str, model_seed: int, n: int,
              measure: Callable[[], tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    """A model's φ from the cache when an earlier run measured it (same seed, same n points), else measured and
    cached."""
    if cache is None:
        return measure()
    path = cache / f"{name}.npz"
    if path.exists():
        with np.load(path) as kept:
            if int(kept["seed"]) == model_seed and len(kept["phi"]) == n:
                return kept["phi"], kept["phi_test"]
    phi, phi_test = measure()
    cache.mkdir(parents=True, exist_ok=True)
    tmp = cache / f"{name}.tmp.npz"
    np.savez(tmp, phi=phi, phi_test=phi_test, seed=model_seed)
    os.replace(tmp, path)  # whole or absent: a worker killed mid-write leaves no half file behind
    return phi, phi_test


def score_pool(pool: Pool, *, limits: evidence.Limits = evidence.Limits(), seed: int = 0, boot: int = 200,
               min_points: int = 250) -> dict[str, Any]:
    """Certify the pool's free set in place (select on one half, certify on the other, both ways); returns the
    certification report (curves per half, counts)."""
    cert, scores = evidence.certify(pool.phi_std, pool.in_mask, limits=limits, seed=seed, boot=boot,
                                    min_points=min_points)
    pool.scores, pool.certified_by, pool.separation = scores, cert.certified_by, cert.separation
    whole = evidence.certified_group(scores, pool.in_mask, cert.certified_by, np.flatnonzero(cert.certified),
                                     limits=limits, seed=seed)
    return {"limits": limits.as_dict(), "n_certified": int(cert.certified.sum()), "halves": cert.halves,
            "certified_set": whole, "separation": {
                "median": round(float(np.median(cert.separation)), 6) if len(cert.separation) else None,
                "mean": round(float(np.mean(cert.separation)), 6) if len(cert.separation) else None}}
