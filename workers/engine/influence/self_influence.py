"""The engine's influence entry point, shaped like Kronfluence's analyzer: one object per (model, data), whose
expensive shared state is fitted once and cached under `root`, scores by method (optionally a row range, for
shards), and scores saved and loaded by name.

    si = SelfInfluence(root, model, data, device=device, checkpoints=ckpt_dir)
    si.fit("hessian")                      # K-FAC factors, cached under root/kfac (no-op for the others)
    result = si.score("hessian", rows=slice(0, 20_000))
    si.save(result, meta={...})            # root/<method>/scores.npy + meta.json
    si.load("hessian")                     # memory-mapped, or None
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from workers.engine import cache
from workers.engine.data import ArraySet
from workers.engine.influence import compute_self_influence
from workers.engine.model_hooks import norm_record


@dataclass(frozen=True)
class ScoreResult:
    """One method's self-influence scores (one per row scored), how long they took, and what produced them."""

    method: str
    scores: np.ndarray
    seconds: float
    info: dict[str, Any] = field(default_factory=dict)


class SelfInfluence:
    """Self-influence of every point of `data` under `model`; `root` caches what is fitted and what is scored."""

    def __init__(self, root: Path, model: nn.Module, data: ArraySet, *, device: torch.device,
                 checkpoints: Path | None = None) -> None:
        self.root, self.model, self.data, self.device, self.checkpoints = Path(root), model, data, device, checkpoints

    def _options(self, method: str) -> dict[str, Any]:
        if method == "hessian":
            return {"factors_dir": self.root / "kfac"}
        if method in ("less", "less_own"):
            return {"checkpoints_dir": self.checkpoints}
        return {}

    def fit(self, method: str) -> None:
        """What every shard of `method` shares, computed once and cached: hessian's factors (others: nothing)."""
        if method == "hessian":
            compute_self_influence(method, self.model, self.data, device=self.device, rows=slice(0, 0),
                                   **self._options(method))

    def score(self, method: str, rows: slice | None = None,
              progress: Callable[[float], None] | None = None) -> ScoreResult:
        """Scores of every row (or of `rows`), with what produced them (the scorer's record, the norm policy)."""
        info: dict[str, Any] = {}
        began = time.perf_counter()
        scores = compute_self_influence(method, self.model, self.data, device=self.device, info=info,
                                        **self._options(method), **({"rows": rows} if rows is not None else {}))
        info["norm_policy"] = norm_record(self.model, phase="scoring")
        if progress is not None:
            progress(1.0)
        return ScoreResult(method=method, scores=np.asarray(scores, dtype=np.float64),
                           seconds=time.perf_counter() - began, info=info)

    def save(self, result: ScoreResult, *, meta: dict[str, Any]) -> dict[str, Any]:
        """Store the scores under their method's name; returns the meta written (with sha256)."""
        return save(self.root, result.method, result.scores, meta=meta)

    def load(self, name: str) -> np.ndarray | None:
        """Scores saved under `name` (memory-mapped), or None."""
        return cache.load_scores(self.root, name)


def save(root: Path, name: str, scores: np.ndarray, *, meta: dict[str, Any]) -> dict[str, Any]:
    """Store scores computed elsewhere (a sharded job's joined shards) under `name` in `root`."""
    Path(root).mkdir(parents=True, exist_ok=True)
    return cache.save_scores(Path(root), name, scores, meta=meta)
