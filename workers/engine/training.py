"""Training driven by a model's recipe."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from workers.engine import model_hooks as hooks
from workers.engine.audit import accuracy
from workers.engine.data import ArraySet, Batch

DEFAULT_RECIPE: dict[str, Any] = {"optimizer": "adam", "lr": 1e-3, "epochs": 20, "batch_size": 64,
                                  "weight_decay": 0.0, "seed": 0}
# Optional recipe keys: grad_restriction (float, default 0 = off) adds IAU's gradient-restriction term
# alpha · mean_i ‖∇θ CE_i‖₂ over each batch (double backprop; the paper uses alpha = 0.005).


def per_sample_grad_norms(model: nn.Module, x: Batch, y: torch.Tensor) -> torch.Tensor:
    """‖∇θ CE(model(x_i), y_i)‖₂ for each i, differentiable in the parameters (for double backprop)."""
    from torch.func import grad, vmap

    params = {k: v for k, v in model.named_parameters() if v.requires_grad}
    buffers = dict(model.named_buffers())
    loss_one, inputs = hooks.example_loss(model, buffers, x)
    per = vmap(grad(loss_one), in_dims=(None, 0, 0), randomness="different")(params, inputs, y)
    return torch.sqrt(sum(g.pow(2).flatten(1).sum(1) for g in per.values()) + 1e-12)


def make_optimizer(params: Any, *, name: str, lr: float, weight_decay: float = 0.0,
                   momentum: float = 0.9) -> torch.optim.Optimizer:
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    raise ValueError(f"unknown optimizer '{name}' (adam | sgd)")


def train_model(model: nn.Module, train: ArraySet, *, recipe: dict[str, Any], device: torch.device,
                progress: Callable[[float], None] | None = None,
                on_epoch_end: Callable[[nn.Module, torch.optim.Optimizer, int, float], None] | None = None,
                ) -> dict[str, Any]:
    """Minimise cross-entropy on `train` in place; deterministic under recipe['seed'].

    on_epoch_end(model, optimizer, epoch, lr) lets callers keep checkpoints (LESS needs them).
    """
    r = DEFAULT_RECIPE | (recipe or {})
    began = time.perf_counter()
    model.to(device).train()
    opt = make_optimizer(model.parameters(), name=r["optimizer"], lr=r["lr"], weight_decay=r["weight_decay"])
    gen = torch.Generator().manual_seed(int(r["seed"]))
    epochs = int(r["epochs"])
    restriction = float(r.get("grad_restriction") or 0.0)
    loss_sum = 0.0
    for epoch in range(epochs):
        loss_sum, seen = 0.0, 0
        for idx, xb, yb in train.loader(int(r["batch_size"]), device, shuffle=True, generator=gen):
            opt.zero_grad(set_to_none=True)
            loss = hooks.losses(model, xb, yb).mean()
            if restriction:
                (loss + restriction * per_sample_grad_norms(model, xb, yb).mean()).backward()
            else:
                loss.backward()
            opt.step()
            loss_sum += float(loss.detach()) * len(idx)
            seen += len(idx)
        loss_sum /= max(seen, 1)
        if on_epoch_end:
            on_epoch_end(model, opt, epoch, float(opt.param_groups[0]["lr"]))
        if progress:
            progress((epoch + 1) / epochs)
    model.eval()
    acc = accuracy(model, train, device=device) if len(train) else 0.0
    return {"epochs": epochs, "final_loss": round(loss_sum, 6), "train_accuracy": round(acc, 6),
            "seconds": round(time.perf_counter() - began, 4), "n_train": len(train)}
