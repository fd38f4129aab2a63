"""Calibration of "free": the paper's Figure 4.1 on one model version.

For a grid of n, retrain without the n lowest-influence points (and without n random points, the
baseline) and measure, on the removed points, the retrained model's accuracy against the full
model's, and whether their losses under the retrained model can be told apart from their losses
under the full model. Comparing with the full model on the same points, not with random test
points, matters: low-influence points are easy points, so a test-set comparison is biased.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn

from workers.engine.audit import accuracy, predict_losses
from workers.engine.data import ArraySet
from workers.engine.training import train_model


def default_grid(n_train: int) -> list[int]:
    """Removal counts from 1% to 20% of the training set."""
    return sorted({max(1, round(n_train * f)) for f in (0.01, 0.02, 0.03, 0.05, 0.08, 0.12, 0.2)})


def _auc(pos: np.ndarray, neg: np.ndarray) -> float:
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(np.r_[np.ones(len(pos)), np.zeros(len(neg))], np.r_[pos, neg]))


def removal_curve(full: nn.Module, build: Callable[[], nn.Module], data: ArraySet, order: np.ndarray, *,
                  grid: list[int], recipe: dict[str, Any], device: torch.device,
                  progress: Callable[[float], None] | None = None) -> list[dict[str, Any]]:
    """For each n: retrain without order[:n]; accuracy on them (full vs retrained) and the loss AUC."""
    rows = []
    for k, n in enumerate(grid):
        removed, kept = order[:n], order[n:]
        model = build()
        train_model(model, data.subset(kept), recipe=recipe, device=device)
        out = data.subset(removed)
        full_loss = predict_losses(full, out, device=device)
        new_loss = predict_losses(model, out, device=device)
        rows.append({"n": int(n), "acc_full": round(accuracy(full, out, device=device), 6),
                     "acc_retrained": round(accuracy(model, out, device=device), 6),
                     # > 0.5 when the retrained model finds the removed points harder than the full one did
                     "loss_auc": round(_auc(new_loss, full_loss), 6),
                     "loss_full": round(float(full_loss.mean()), 6),
                     "loss_retrained": round(float(new_loss.mean()), 6)})
        if progress:
            progress((k + 1) / len(grid))
    return rows


def choose(curve: list[dict[str, Any]], *, epsilon: float, auc_max: float | None) -> int:
    """The largest n whose every smaller grid point also keeps accuracy within epsilon (and loss AUC ≤ auc_max)."""
    best = 0
    for row in curve:
        ok = row["acc_retrained"] >= row["acc_full"] - epsilon and (auc_max is None or row["loss_auc"] <= auc_max)
        if not ok:
            break
        best = row["n"]
    return best


def plot(curves: dict[str, list[dict[str, Any]]], path: str, *, title: str, chosen: int | None = None) -> None:
    """Figure 4.1: accuracy on the removed points against n, one line per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=110)
    for method, curve in curves.items():
        ax.plot([r["n"] for r in curve], [r["acc_retrained"] for r in curve], marker="o", label=method,
                linestyle="--" if method == "random" else "-")
    if chosen:
        ax.axvline(chosen, color="grey", linewidth=0.8, linestyle=":", label=f"free budget n={chosen}")
    ax.set_xlabel("n lowest-influence points removed before retraining")
    ax.set_ylabel("retrained model's accuracy on the removed points")
    ax.set_title(title)
    ax.set_ylim(0, 1.02)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
