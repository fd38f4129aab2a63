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


def rank1(model: nn.Module, *, forget: ArraySet, retain: ArraySet | None, params: dict[str, Any],
          device: torch.device, seed: int, progress: Callable[[float], None], **_: Any) -> dict[str, Any]:
    if retain is None or len(retain) == 0:
        raise ValueError("rank1 needs retain data")
    gen = torch.Generator().manual_seed(seed)
    fb, rounds = params["forget_batch_size"], params["rounds"]
    # Progress: the uniform stage counts as much as one round.
    uniform_stage = bool(params["uniform_epochs"] and len(forget))
    total = rounds + int(uniform_stage)
    done = 0
    model.train()

    # Stage 1: KL(uniform ‖ softmax(o_f)), SGD lr 0.005, momentum 0.9.
    uniform_steps = 0
    if uniform_stage:
        opt = torch.optim.SGD(model.parameters(), lr=params["uniform_lr"], momentum=params["momentum"])
        for _ in range(params["uniform_epochs"]):
            for _, xf, _ in forget.loader(fb, device, shuffle=True, generator=gen):
                logits = hooks.forward(model, xf)
                uniform = torch.full_like(logits, 1.0 / logits.shape[1])
                loss = F.kl_div(F.log_softmax(logits, dim=1), uniform, reduction="batchmean")
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                uniform_steps += 1
        done += 1
        progress(done / total)

    # Stage 2: rounds of a contrastive forget pass (lr cosine-decayed to 1e-6 over the rounds) and one retain
    # epoch of cross-entropy (weight decay 1e-2).
    contrast = torch.optim.SGD(model.parameters(), lr=params["contrast_lr"], momentum=params["momentum"])
    eta_min = min(1e-6, params["contrast_lr"])
    ce_opt = torch.optim.SGD(model.parameters(), lr=params["retain_lr"], momentum=params["momentum"],
                             weight_decay=params["weight_decay"])
    t = params["temperature"]
    contrast_steps = retain_steps = 0
    for r in range(rounds):
        lr = eta_min + 0.5 * (params["contrast_lr"] - eta_min) * (1 + math.cos(math.pi * r / rounds))
        for group in contrast.param_groups:
            group["lr"] = lr
        if len(forget):
            partners = torch.randperm(len(retain), generator=gen)
            for k, idx in enumerate(batches(len(forget), fb, shuffle=True, generator=gen)):
                ridx = partners[(torch.arange(len(idx)) + k * fb) % len(retain)]
                o_f = hooks.forward(model, forget.batch(idx, device)[0])
                with torch.no_grad():
                    o_r = hooks.forward(model, retain.batch(ridx, device)[0])
                # Every forget output made equally similar to all retain outputs.
                loss = -F.log_softmax(o_f @ o_r.T / t, dim=1).mean()
                contrast.zero_grad(set_to_none=True)
                loss.backward()
                contrast.step()
                contrast_steps += 1
        for _, xr, yr in retain.loader(params["retain_batch_size"], device, shuffle=True, generator=gen):
            loss = hooks.losses(model, xr, yr).mean()
            ce_opt.zero_grad(set_to_none=True)
            loss.backward()
            ce_opt.step()
            retain_steps += 1
        done += 1
        progress(done / total)
    return {"uniform_steps": uniform_steps, "contrast_steps": contrast_steps, "retain_steps": retain_steps,
            "n_forget": len(forget), "n_retain": len(retain)}
