"""Unlearning algorithms behind one interface: model, forget, retain, params → new model + metrics."""

from __future__ import annotations

import contextlib
import copy
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from workers.engine.data import ArraySet
from workers.engine.model_hooks import frozen_norms, norm_record
from workers.engine.params import PARAMS, validate_params
from workers.engine.unlearning.finetune import finetune
from workers.engine.unlearning.iau import iau
from workers.engine.unlearning.imu import imu
from workers.engine.unlearning.neggrad import neggrad
from workers.engine.unlearning.rank1 import rank1
from workers.engine.unlearning.rank2 import rank2
from workers.engine.unlearning.retrain import retrain
from workers.engine.unlearning.scrub import scrub

Progress = Callable[[float], None]


@dataclass
class UnlearnResult:
    model: nn.Module
    metrics: dict[str, Any] = field(default_factory=dict)


ALGORITHMS: dict[str, Callable[..., dict[str, Any]]] = {
    "finetune": finetune, "neggrad": neggrad, "retrain": retrain, "scrub": scrub, "rank1": rank1, "rank2": rank2,
    "iau": iau, "imu": imu,
}
assert set(ALGORITHMS) == set(PARAMS), "every algorithm has a params model"


def unlearn(algorithm: str, model: nn.Module, *, forget: ArraySet, retain: ArraySet | None, params: dict[str, Any],
            device: torch.device, seed: int = 0, progress: Progress | None = None,
            build: Callable[[], nn.Module] | None = None, recipe: dict[str, Any] | None = None) -> UnlearnResult:
    """Run `algorithm` on a copy of `model` (the input is never changed)."""
    p = validate_params(algorithm, params)
    torch.manual_seed(seed)
    began = time.perf_counter()
    work = build() if algorithm == "retrain" and build is not None else copy.deepcopy(model)
    work.to(device)
    # BatchNorm policy (model_hooks): frozen while unlearning, trained anew by retrain.
    freeze = contextlib.nullcontext() if algorithm == "retrain" else frozen_norms(work)
    with freeze:
        metrics = ALGORITHMS[algorithm](work, forget=forget, retain=retain, params=p, device=device, seed=seed,
                                        progress=progress or (lambda _: None), build=build, recipe=recipe or {})
    work.eval()
    return UnlearnResult(model=work, metrics={"algorithm": algorithm, "params": p,
                                              "seconds": round(time.perf_counter() - began, 4), **metrics,
                                              "norm_policy": norm_record(work, phase="unlearning",
                                                                         algorithm=algorithm)})
