"""Self-influence scorers: one score per training point, cached per version under a name.

Every scorer is called as scorer(model, data, *, device, batch_size, **options) -> scores; options are the
scorer's own keywords, and `info` (a dict, optional) receives what the scorer did (hessian: method and
dampings, factors fitted or loaded; less: whether checkpoints or the final weights were used).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from workers.engine import catalog, plugins
from workers.engine.data import ArraySet
from workers.engine.influence.gradnorm import gradnorm_self_influence
from workers.engine.influence.hessian import hessian_self_influence
from workers.engine.influence.less import Checkpoint, less_self_influence, load_checkpoints


def _gradnorm(model: nn.Module, data: ArraySet, *, device: torch.device, batch_size: int = 256,
              info: dict[str, Any] | None = None) -> np.ndarray:
    if info is not None:
        info["source"] = "final-weights"
    return gradnorm_self_influence(model, data, device=device, batch_size=batch_size)


def _less(model: nn.Module, data: ArraySet, *, device: torch.device, batch_size: int = 256,
          checkpoints: list[Checkpoint] | None = None, checkpoints_dir: Path | None = None,
          info: dict[str, Any] | None = None, own_term: bool = False) -> np.ndarray:
    if checkpoints is None and checkpoints_dir is not None:
        checkpoints = load_checkpoints(checkpoints_dir)
    scores, what = less_self_influence(model, data, device=device, checkpoints=checkpoints, batch_size=batch_size,
                                       own_term=own_term)
    if info is not None:
        info.update(what)
    return scores


# "less" is LESS's Γ with the shared momentum (the paper's form); "less_own" only the point's own term.
SCORERS: dict[str, Callable[..., np.ndarray]] = {"gradnorm": _gradnorm, "hessian": hessian_self_influence,
                                                 "less": _less, "less_own": partial(_less, own_term=True)}
assert tuple(SCORERS) == catalog.SCORERS, "every scorer the catalog names has an implementation"


def compute_self_influence(method: str, model: nn.Module, data: ArraySet, *, device: torch.device,
                           batch_size: int = 256, **options: Any) -> np.ndarray:
    """Scores of every point of `data` by `method` (ValueError when unknown); options go to the scorer.

    `rows` (a slice) scores one shard: what a scorer fits on the whole data (hessian's factors) it still
    fits on, or loads for, all of `data`; per-point work is done for those rows only.
    """
    if method not in SCORERS:
        raise ValueError(f"unknown influence method '{method}'; known: {sorted(SCORERS)}")
    kind = getattr(model, "lethe_kind", None)
    why = plugins.cannot_apply(kind).get(method) if kind else None
    if why:  # the API refuses these at request time; this guards the engine used as a library
        raise ValueError(f"{method} cannot score a {kind!r} model: {why}")
    rows = options.pop("rows", None)
    if rows is not None and method != "hessian":
        data = data.subset(rows)
    elif rows is not None:
        options["rows"] = rows
    return SCORERS[method](model, data, device=device, batch_size=batch_size, **options)
