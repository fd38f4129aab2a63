"""Retrain from scratch on the retain set: the gold standard, and the last escalation."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from workers.engine.data import ArraySet
from workers.engine.training import train_model
from workers.engine.unlearning.common import retain_needed


def retrain(model: nn.Module, *, forget: ArraySet, retain: ArraySet | None, params: dict[str, Any],
            device: torch.device, seed: int, progress: Callable[[float], None],
            build: Callable[[], nn.Module] | None = None, recipe: dict[str, Any] | None = None,
            **_: Any) -> dict[str, Any]:
    """`model` is already a fresh build (unlearn() passes build()); train it on retain with the recipe."""
    retain = retain_needed("retrain", retain)
    if build is None:
        raise ValueError("retrain needs a model builder")
    r = dict(recipe or {})
    if params.get("epochs"):
        r["epochs"] = params["epochs"]
    metrics = train_model(model, retain, recipe=r, device=device, progress=progress)
    return {"train": metrics, "n_forget": len(forget), "n_retain": len(retain)}
