"""Retain-only fine-tuning: forgetting by catastrophic forgetting (the standard 'FT' baseline)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from workers.engine import model_hooks as hooks
from workers.engine.data import ArraySet
from workers.engine.unlearning.common import retain_needed, sgd


def finetune(model: nn.Module, *, forget: ArraySet, retain: ArraySet | None, params: dict[str, Any],
             device: torch.device, seed: int, progress: Callable[[float], None], **_: Any) -> dict[str, Any]:
    retain = retain_needed("finetune", retain)
    opt = sgd(model, params)
    gen = torch.Generator().manual_seed(seed)
    model.train()
    steps = 0
    for epoch in range(params["epochs"]):
        for _, xb, yb in retain.loader(params["batch_size"], device, shuffle=True, generator=gen):
            opt.zero_grad(set_to_none=True)
            hooks.losses(model, xb, yb).mean().backward()
            opt.step()
            steps += 1
        progress((epoch + 1) / params["epochs"])
    return {"steps": steps, "n_forget": len(forget), "n_retain": len(retain)}
