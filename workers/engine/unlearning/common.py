"""What the retain-based algorithms share: the retain set they need, one optimiser step."""

from __future__ import annotations

from typing import Any

import torch

from workers.engine.data import ArraySet


def retain_needed(algorithm: str, retain: ArraySet | None) -> ArraySet:
    """The retain set, or a ValueError naming the algorithm that cannot run without one."""
    if retain is None or len(retain) == 0:
        raise ValueError(f"{algorithm} needs retain data")
    return retain


def descend(opt: torch.optim.Optimizer, loss: torch.Tensor) -> None:
    """One step of `opt` down `loss`'s gradient (the previous step's gradients cleared first)."""
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()


def sgd(model: torch.nn.Module, params: dict[str, Any]) -> torch.optim.SGD:
    """The retain fine-tuning optimiser of finetune and NegGrad+: SGD with the params' lr, momentum, weight decay."""
    return torch.optim.SGD(model.parameters(), lr=params["lr"], momentum=params["momentum"],
                           weight_decay=params["weight_decay"])
