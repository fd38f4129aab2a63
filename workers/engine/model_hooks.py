"""What the engine asks of a model beyond forward(): its plugin's tracked modules and the BatchNorm policy.

The policy (recorded in every scoring and unlearning result): scoring runs the model in eval mode (BatchNorm
normalises with its running statistics, dropout off, so one point's score never depends on its batch); the
unlearning algorithms run with BatchNorm frozen (eval mode whatever the algorithm sets: running statistics
neither used from the batch nor updated, since the forget set's statistics would otherwise leak into and
survive in them) while dropout follows the algorithm; retrain trains a fresh model from the recipe, in train
mode like training. A plugin may state its own policy in `norm_policy`; the engine applies the above."""

from __future__ import annotations

import contextlib
import types
from collections.abc import Iterator
from typing import Any

from torch import nn

from workers.engine import plugins

NORMS = (nn.modules.batchnorm._BatchNorm,)
SCORING = "eval: BatchNorm normalises with its running statistics, dropout off"
UNLEARNING = "BatchNorm frozen (running statistics used and not updated); dropout as the algorithm trains"
RETRAIN = "train mode from the recipe, like training (a fresh model's BatchNorm statistics are fitted anew)"


def kind_of(model: nn.Module) -> Any | None:
    kind = getattr(model, "lethe_kind", None)
    return plugins.plugin(kind) if kind else None


def tracked_names(model: nn.Module) -> list[str] | None:
    """The plugin's tracked_modules(model), or None for the default (every Linear and Conv2d)."""
    kind = kind_of(model)
    hook = getattr(kind, "tracked_modules", None) if kind is not None else None
    return list(hook(model)) if hook is not None else None


def norm_record(model: nn.Module, *, phase: str, algorithm: str | None = None) -> dict[str, Any]:
    """The policy applied in this phase, for the job result."""
    norms = sum(isinstance(m, NORMS) for m in model.modules())
    applied = SCORING if phase == "scoring" else RETRAIN if algorithm == "retrain" else UNLEARNING
    kind = kind_of(model)
    stated = getattr(kind, "norm_policy", None) if kind is not None else None
    record: dict[str, Any] = {"applied": applied, "batchnorm_layers": norms,
                              "dropout_layers": sum(isinstance(m, nn.Dropout) for m in model.modules())}
    if stated:
        record["plugin_states"] = str(stated)
    return record


def _stay_eval(self: nn.Module, mode: bool = True) -> nn.Module:
    return nn.Module.train(self, False)


@contextlib.contextmanager
def frozen_norms(model: nn.Module) -> Iterator[nn.Module]:
    """Within the block BatchNorm layers stay in eval mode whatever model.train() the algorithm calls."""
    norms = [m for m in model.modules() if isinstance(m, NORMS)]
    for m in norms:
        m.train = types.MethodType(_stay_eval, m)  # type: ignore[method-assign]
        m.eval()
    try:
        yield model
    finally:
        for m in norms:
            del m.train
