"""SCRUB (Kurmanji et al. 2023): a student, starting as the model, moves away from a frozen teacher on the forget
set (max-steps) and stays close to it on the retain set (min-steps)."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from workers.engine import model_hooks as hooks
from workers.engine.data import ArraySet
from workers.engine.unlearning.common import retain_needed


def distill_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """KL(teacher ‖ student) of the tempered softmaxes, scaled by T² (Hinton's distillation loss)."""
    t = temperature
    return F.kl_div(F.log_softmax(student_logits / t, dim=1), F.log_softmax(teacher_logits / t, dim=1),
                    reduction="batchmean", log_target=True) * t * t


def scrub(model: nn.Module, *, forget: ArraySet, retain: ArraySet | None, params: dict[str, Any],
          device: torch.device, seed: int, progress: Callable[[float], None], **_: Any) -> dict[str, Any]:
    retain = retain_needed("scrub", retain)
    teacher = copy.deepcopy(model).to(device).eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    opt = torch.optim.SGD(model.parameters(), lr=params["lr"], momentum=params["momentum"],
                          weight_decay=params["weight_decay"])
    gen = torch.Generator().manual_seed(seed)
    t, alpha, gamma, ceiling = params["temperature"], params["alpha"], params["gamma"], params["max_forget_kl"]
    epochs = params["epochs"]
    max_steps = min_steps = skipped = 0
    last_forget_kl = 0.0
    model.train()
    for epoch in range(epochs):
        if epoch < params["max_epochs"] and len(forget):
            for _, xf, _ in forget.loader(params["forget_batch_size"], device, shuffle=True, generator=gen):
                with torch.no_grad():
                    target = hooks.forward(teacher, xf)
                kl = distill_kl(hooks.forward(model, xf), target, t)
                last_forget_kl = float(kl.detach())
                # Unbounded ascent diverges; a batch already this far from the teacher is forgotten enough.
                if last_forget_kl >= ceiling:
                    skipped += 1
                    continue
                opt.zero_grad(set_to_none=True)
                (-kl).backward()
                opt.step()
                max_steps += 1
        for _, xr, yr in retain.loader(params["batch_size"], device, shuffle=True, generator=gen):
            with torch.no_grad():
                target = hooks.forward(teacher, xr)
            logits, ce = hooks.logits_and_losses(model, xr, yr)
            loss = gamma * ce.mean() + alpha * distill_kl(logits, target, t)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            min_steps += 1
        progress((epoch + 1) / epochs)
    return {"max_steps": max_steps, "min_steps": min_steps, "max_skipped": skipped,
            "last_forget_kl": round(last_forget_kl, 6), "n_forget": len(forget), "n_retain": len(retain)}
