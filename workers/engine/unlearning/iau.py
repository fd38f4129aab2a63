"""IAU, influence approximation unlearning (Liu, Wu, Lian, Chen): forgetting a set is the incremental-learning
step in the opposite direction, a single fresh-Adam step on ∇L(retain) − ∇L(forget); or, as an option, the
influence-removal step scaled by |F|/n (papers.md)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from workers.engine import model_hooks as hooks
from workers.engine.data import ArraySet


def mean_gradient(model: nn.Module, data: ArraySet, device: torch.device, batch_size: int) -> list[torch.Tensor]:
    """Full-batch gradient of the mean cross-entropy, computed in chunks (eval mode: no dropout noise)."""
    params = [p for p in model.parameters() if p.requires_grad]
    total = [torch.zeros_like(p) for p in params]
    n = len(data)
    for _, xb, yb in data.loader(batch_size, device):
        loss = hooks.losses(model, xb, yb).sum() / n
        for acc, g in zip(total, torch.autograd.grad(loss, params), strict=True):
            acc.add_(g)
    return total


def iau(model: nn.Module, *, forget: ArraySet, retain: ArraySet | None, params: dict[str, Any],
        device: torch.device, progress: Callable[[float], None], **_: Any) -> dict[str, Any]:
    if retain is None or len(retain) == 0:
        raise ValueError("iau needs retain data")
    trainable = [p for p in model.parameters() if p.requires_grad]
    scaled = params.get("step") == "scaled"
    # adam (the paper): a fresh Adam's first step is about lr · sign(g), whatever |F|. scaled: a plain step of
    # eta·|F|/n along g, the influence-removal update's size, so pruning the forget set drops terms of Σ.
    n_total = len(forget) + len(retain)
    scale = params["eta"] * len(forget) / n_total if scaled else 0.0
    opt = (torch.optim.SGD(trainable, lr=scale) if scaled
           else torch.optim.Adam(trainable, lr=params["lr"]))
    steps, norm = params["steps"], 0.0
    model.eval()
    for step in range(steps):
        g_r = mean_gradient(model, retain, device, params["batch_size"])
        g_f = (mean_gradient(model, forget, device, params["batch_size"]) if len(forget)
               else [torch.zeros_like(p) for p in trainable])
        for p, r, f in zip(trainable, g_r, g_f, strict=True):
            p.grad = r - params["forget_weight"] * f
        norm = float(torch.sqrt(sum((p.grad ** 2).sum() for p in trainable)))
        opt.step()
        opt.zero_grad(set_to_none=True)
        progress((step + 1) / steps)
    return {"steps": steps, "step": "scaled" if scaled else "adam", "step_scale": round(scale, 8),
            "update_grad_norm": round(norm, 6), "n_forget": len(forget), "n_retain": len(retain)}
