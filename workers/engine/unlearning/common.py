"""What the retain-based algorithms share: the retain set they need, both sets as tensors, one optimiser step."""

from __future__ import annotations

import torch

from workers.engine.data import ArraySet, to_tensors


def retain_needed(algorithm: str, retain: ArraySet | None) -> ArraySet:
    """The retain set, or a ValueError naming the algorithm that cannot run without one."""
    if retain is None or len(retain) == 0:
        raise ValueError(f"{algorithm} needs retain data")
    return retain


def as_tensors(forget: ArraySet, retain: ArraySet,
               device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(x_retain, y_retain, x_forget, y_forget) on `device`."""
    return (*to_tensors(retain, device), *to_tensors(forget, device))


def descend(opt: torch.optim.Optimizer, loss: torch.Tensor) -> None:
    """One step of `opt` down `loss`'s gradient (the previous step's gradients cleared first)."""
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
