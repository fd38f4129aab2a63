"""NegGrad+: each step descends on a retain batch and ascends, bounded, on a forget batch."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from workers.engine import model_hooks as hooks
from workers.engine.data import ArraySet, batches
from workers.engine.unlearning.common import retain_needed, sgd


def neggrad(model: nn.Module, *, forget: ArraySet, retain: ArraySet | None, params: dict[str, Any],
            device: torch.device, seed: int, progress: Callable[[float], None], **_: Any) -> dict[str, Any]:
    retain = retain_needed("neggrad", retain)
    opt = sgd(model, params)
    gen = torch.Generator().manual_seed(seed)
    alpha, ceiling = params["alpha"], params["max_forget_loss"]
    model.train()
    steps = skipped = 0
    for epoch in range(params["epochs"]):
        forget_batches = itertools.cycle(list(batches(len(forget), params["batch_size"], shuffle=True,
                                                      generator=gen))) if len(forget) else None
        for idx in batches(len(retain), params["batch_size"], shuffle=True, generator=gen):
            opt.zero_grad(set_to_none=True)
            loss = alpha * hooks.losses(model, *retain.batch(idx, device)).mean()
            if forget_batches is not None:
                f_loss = hooks.losses(model, *forget.batch(next(forget_batches), device)).mean()
                # Unbounded ascent diverges and wrecks utility; stop pushing once a batch is forgotten enough.
                if float(f_loss.detach()) < ceiling:
                    loss = loss - (1 - alpha) * f_loss
                else:
                    skipped += 1
            loss.backward()
            opt.step()
            steps += 1
        progress((epoch + 1) / params["epochs"])
    return {"steps": steps, "ascent_skipped": skipped, "n_forget": len(forget), "n_retain": len(retain)}
