"""Self-influence scorers: one score per training point, cached per version under a name."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from workers.engine.data import ArraySet
from workers.engine.influence.gradnorm import gradnorm_self_influence

SCORERS: dict[str, Callable[..., np.ndarray]] = {"gradnorm": gradnorm_self_influence}


def compute_self_influence(method: str, model: nn.Module, data: ArraySet, *, device: torch.device,
                           batch_size: int = 256) -> np.ndarray:
    """Scores of every point of `data` by `method` (ValueError when unknown)."""
    if method not in SCORERS:
        raise ValueError(f"unknown influence method '{method}'; known: {sorted(SCORERS)}")
    return SCORERS[method](model, data, device=device, batch_size=batch_size)
