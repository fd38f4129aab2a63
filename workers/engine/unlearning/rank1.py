"""Rank 1 of the NeurIPS 2023 unlearning challenge (Fanchuan): push the forget outputs to the uniform
distribution, then alternate a contrastive forget pass with a retain cross-entropy epoch."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from workers.engine import model_hooks as hooks
from workers.engine.data import ArraySet, batches
from workers.engine.unlearning.common import descend, retain_needed


def rank1(model: nn.Module, *, forget: ArraySet, retain: ArraySet | None, params: dict[str, Any],
          device: torch.device, seed: int, progress: Callable[[float], None], **_: Any) -> dict[str, Any]:
    retain = retain_needed("rank1", retain)
    gen = torch.Generator().manual_seed(seed)
    rounds = params["rounds"]
    # Progress: the uniform stage counts as much as one round.
    uniform_stage = bool(params["uniform_epochs"] and len(forget))
    total = rounds + int(uniform_stage)
    model.train()
    uniform_steps = _push_to_uniform(model, forget, params, gen, device) if uniform_stage else 0
    if uniform_stage:
        progress(1 / total)

    # Stage 2: rounds of a contrastive forget pass (lr cosine-decayed to 1e-6 over the rounds) and one retain
    # epoch of cross-entropy (weight decay 1e-2).
    contrast = torch.optim.SGD(model.parameters(), lr=params["contrast_lr"], momentum=params["momentum"])
    eta_min = min(1e-6, params["contrast_lr"])
    ce_opt = torch.optim.SGD(model.parameters(), lr=params["retain_lr"], momentum=params["momentum"],
                             weight_decay=params["weight_decay"])
    contrast_steps = retain_steps = 0
    for r in range(rounds):
        lr = eta_min + 0.5 * (params["contrast_lr"] - eta_min) * (1 + math.cos(math.pi * r / rounds))
        for group in contrast.param_groups:
            group["lr"] = lr
        if len(forget):
            contrast_steps += _contrastive_pass(model, contrast, forget, retain, params, gen, device)
        for _, xr, yr in retain.loader(params["retain_batch_size"], device, shuffle=True, generator=gen):
            descend(ce_opt, hooks.losses(model, xr, yr).mean())
            retain_steps += 1
        progress((r + 1 + int(uniform_stage)) / total)
    return {"uniform_steps": uniform_steps, "contrast_steps": contrast_steps, "retain_steps": retain_steps,
            "n_forget": len(forget), "n_retain": len(retain)}


def _push_to_uniform(model: nn.Module, forget: ArraySet, params: dict[str, Any], gen: torch.Generator,
                     device: torch.device) -> int:
    """Stage 1: KL(uniform ‖ softmax(o_f)) on the forget set, SGD lr 0.005, momentum 0.9; the steps taken."""
    opt = torch.optim.SGD(model.parameters(), lr=params["uniform_lr"], momentum=params["momentum"])
    steps = 0
    for _ in range(params["uniform_epochs"]):
        for _, xf, _ in forget.loader(params["forget_batch_size"], device, shuffle=True, generator=gen):
            logits = hooks.forward(model, xf)
            uniform = torch.full_like(logits, 1.0 / logits.shape[1])
            descend(opt, F.kl_div(F.log_softmax(logits, dim=1), uniform, reduction="batchmean"))
            steps += 1
    return steps


def _contrastive_pass(model: nn.Module, opt: torch.optim.Optimizer, forget: ArraySet, retain: ArraySet,
                      params: dict[str, Any], gen: torch.Generator, device: torch.device) -> int:
    """One pass over the forget set making every forget output equally similar to a batch of retain outputs (their
    softmax over dot products, at the temperature); the steps taken."""
    fb = params["forget_batch_size"]
    partners = torch.randperm(len(retain), generator=gen)
    steps = 0
    for k, idx in enumerate(batches(len(forget), fb, shuffle=True, generator=gen)):
        ridx = partners[(torch.arange(len(idx)) + k * fb) % len(retain)]
        o_f = hooks.forward(model, forget.batch(idx, device)[0])
        with torch.no_grad():
            o_r = hooks.forward(model, retain.batch(ridx, device)[0])
        descend(opt, -F.log_softmax(o_f @ o_r.T / params["temperature"], dim=1).mean())
        steps += 1
    return steps
