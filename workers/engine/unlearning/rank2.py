"""Rank 2 of the NeurIPS 2023 unlearning challenge (Kookmin): re-initialise the weights that the retain-minus-forget
gradient needs least, then fine-tune on the retain set with the untouched weights at a tenth of the lr."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from workers.engine import model_hooks as hooks
from workers.engine.data import ArraySet
from workers.engine.unlearning.common import retain_needed


def target_weights(model: nn.Module, target: str) -> list[nn.Parameter]:
    """Weight tensors to prune-and-reinitialise: conv weights, or linear ones when the model has no conv."""
    convs = [m.weight for m in model.modules() if isinstance(m, nn.Conv1d | nn.Conv2d | nn.Conv3d)]
    linears = [m.weight for m in model.modules() if isinstance(m, nn.Linear)]
    if target == "conv":
        return convs
    if target == "linear":
        return linears
    if target == "all":
        return convs + linears
    return convs or linears


def _accumulate(model: nn.Module, data: ArraySet, sign: float, batch_size: int, device: torch.device) -> None:
    """Add sign · ∇(mean cross-entropy over the set) to the .grad of every parameter."""
    n = len(data)
    for _, xb, yb in data.loader(batch_size, device):
        (sign * hooks.losses(model, xb, yb).sum() / n).backward()


def rank2(model: nn.Module, *, forget: ArraySet, retain: ArraySet | None, params: dict[str, Any],
          device: torch.device, seed: int, progress: Callable[[float], None], **_: Any) -> dict[str, Any]:
    retain = retain_needed("rank2", retain)
    gen = torch.Generator().manual_seed(seed)
    weights = target_weights(model, params["target"])
    if not weights:
        raise ValueError(f"rank2: the model has no {params['target']} weights to re-initialise")

    # 1. Gradients of +CE on a retain sample and −CE on the forget set, accumulated.
    model.train()
    model.zero_grad(set_to_none=True)
    sample = torch.randperm(len(retain), generator=gen)[:params["retain_sample"]]
    _accumulate(model, retain.subset(sample), 1.0, 512, device)
    if len(forget):
        _accumulate(model, forget, -1.0, 512, device)
    reinit = _reinitialise_least_needed(weights, params["reinit_fraction"])
    model.zero_grad(set_to_none=True)
    progress(0.1)
    steps = _finetune_scaled(model, retain, reinit, params, gen, progress, device)
    return {"reinitialised": sum(int(m.sum()) for m in reinit.values()), "reinit_tensors": len(reinit),
            "steps": steps, "n_forget": len(forget), "n_retain": len(retain)}


def _reinitialise_least_needed(weights: list[nn.Parameter], fraction: float) -> dict[nn.Parameter, torch.Tensor]:
    """2. Re-initialise (Kaiming normal, fan_out) the `fraction` of each tensor with the smallest |grad|; the
    mask of what was re-initialised, per tensor."""
    reinit: dict[nn.Parameter, torch.Tensor] = {}
    with torch.no_grad():
        for w in weights:
            k = int(fraction * w.numel())
            if k == 0:
                continue
            grad = w.grad if w.grad is not None else torch.zeros_like(w)
            smallest = torch.topk(grad.abs().flatten(), k, largest=False).indices
            mask = torch.zeros(w.numel(), dtype=torch.bool, device=w.device)
            mask[smallest] = True
            mask = mask.view_as(w)
            fresh = torch.empty_like(w)
            nn.init.kaiming_normal_(fresh, mode="fan_out", nonlinearity="relu")
            w[mask] = fresh[mask]
            reinit[w] = mask
    return reinit


def _finetune_scaled(model: nn.Module, retain: ArraySet, reinit: dict[nn.Parameter, torch.Tensor],
                     params: dict[str, Any], gen: torch.Generator, progress: Callable[[float], None],
                     device: torch.device) -> int:
    """3. Fine-tune on retain: SGD, warm-up then cosine decay; lr × lr_other_factor for the untouched weights.
    Weight decay is added by hand so the per-element factor scales it too. The steps taken."""
    lr_of = {p: torch.where(reinit[p], 1.0, params["lr_other_factor"]).to(p.dtype) if p in reinit
             else params["lr_other_factor"] for p in model.parameters()}
    opt = torch.optim.SGD(model.parameters(), lr=params["lr"], momentum=params["momentum"])
    epochs, bs = params["epochs"], params["batch_size"]
    total = epochs * math.ceil(len(retain) / bs)
    warm = int(params["warmup"] * total)

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / (warm + 1)
        return 0.5 * (1 + math.cos(math.pi * (step - warm) / max(1, total - warm)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
    wd = params["weight_decay"]
    steps = 0
    for epoch in range(epochs):
        for _, xb, yb in retain.loader(bs, device, shuffle=True, generator=gen):
            opt.zero_grad(set_to_none=True)
            hooks.losses(model, xb, yb).mean().backward()
            with torch.no_grad():
                for p in model.parameters():
                    if p.grad is not None:
                        p.grad.add_(p, alpha=wd).mul_(lr_of[p])
            opt.step()
            sched.step()
            steps += 1
        progress(0.1 + 0.9 * (epoch + 1) / epochs)
    return steps
