"""IMU, influence-guided machine unlearning (Liu et al.): forget-set only. Per-sample influences on the classifier
head (diagonal-Fisher preconditioned) set how hard each forget point is ascended; no retain data is needed."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from workers.engine import model_hooks as hooks
from workers.engine import plugins
from workers.engine.data import ArraySet, batches


def head_of(model: nn.Module) -> nn.Linear:
    """The classifier head: the last nn.Linear (every Lethe architecture ends in one)."""
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ValueError("imu needs a model whose last layer is nn.Linear")
    return linears[-1]


@torch.no_grad()
def head_inputs(model: nn.Module, head: nn.Linear, data: ArraySet | torch.Tensor, device: torch.device | None = None,
                batch_size: int = 1024) -> torch.Tensor:
    """The features entering the head (eval mode) for every row of `data` (a set, or a tensor of rows), captured by
    a forward hook."""
    if isinstance(data, torch.Tensor):
        device = data.device
        inputs = (data[idx.to(device)] for idx in batches(len(data), batch_size, shuffle=False))
    else:
        inputs = (xb for _, xb, _ in data.loader(batch_size, device))
    seen: list[torch.Tensor] = []
    hook = head.register_forward_hook(lambda _m, inp, _out: seen.append(inp[0].detach()))
    try:
        model.eval()
        for xb in inputs:
            hooks.forward(model, xb)
    finally:
        hook.remove()
    return torch.cat(seen) if seen else torch.zeros((0, head.in_features), device=device)


@torch.no_grad()
def head_influences(head: nn.Linear, feats: torch.Tensor, y: torch.Tensor, damping: float) -> tuple[
        torch.Tensor, torch.Tensor]:
    """I_i = −g_iᵀ F⁻¹ ḡ and ‖g_i‖ over the head's weight and bias, never materialising a per-sample gradient:
    g_i = (δ_i a_iᵀ, δ_i) with δ_i = softmax − onehot, so F = mean g_i² + damping and ḡ factor through δ and a."""
    a = feats.double()
    bias = head.bias.double() if head.bias is not None else None
    delta = torch.softmax(F.linear(a, head.weight.double(), bias), dim=1)
    delta[torch.arange(len(y)), y] -= 1.0
    n = len(y)
    fisher_w = (delta ** 2).T @ (a ** 2) / n + damping          # K × D
    fisher_b = (delta ** 2).mean(0) + damping                    # K
    mean_w = delta.T @ a / n
    mean_b = delta.mean(0)
    m_w, m_b = mean_w / fisher_w, mean_b / fisher_b
    influence = -(((delta @ m_w) * a).sum(1) + delta @ m_b)
    gradnorm = torch.sqrt((delta ** 2).sum(1) * ((a ** 2).sum(1) + 1.0))
    return influence, gradnorm


def imu_weights(influence: np.ndarray, gradnorm: np.ndarray, params: dict[str, Any]) -> tuple[np.ndarray, str]:
    """Per-point ascent weights (zero = not ascended) and how they were chosen."""
    n = len(influence)
    if params["weighting"] == "uniform":
        return np.ones(n), "uniform"
    if params["weighting"] == "gradnorm":
        w = gradnorm.astype(np.float64)
        how = "gradnorm"
    elif params.get("selection") == "per_point":
        # Every requested point is ascended: a floor keeps points the mean gradient happens to favour in.
        mag = np.sqrt(np.abs(influence.astype(np.float64)))
        floor = float(np.quantile(mag, params["floor_quantile"]))
        w = np.maximum(mag, floor if floor > 0 else max(float(mag.max()), 1.0) * 1e-6)
        how = "influence per point"
    else:
        negative = np.flatnonzero(influence < 0)
        if len(negative) == 0:  # no point whose removal the influence favours: plain ascent on all
            return np.ones(n), "uniform (no negative-influence point)"
        k = max(int(len(negative) * params["top_fraction"]), 1)
        keep = negative[np.argsort(-np.abs(influence[negative]), kind="stable")[:k]]
        w = np.zeros(n)
        w[keep] = np.sqrt(np.abs(influence[keep]))
        how = "influence"
    chosen = w > 0
    if chosen.any():
        w[chosen] = np.minimum(w[chosen], np.quantile(w[chosen], params["clip_quantile"]))
    if not (w > 0).any():
        return np.ones(n), f"uniform ({how} weights all zero)"
    return w, how


def imu(model: nn.Module, *, forget: ArraySet, retain: ArraySet | None, params: dict[str, Any],
        device: torch.device, seed: int, progress: Callable[[float], None], **_: Any) -> dict[str, Any]:
    """`retain` is ignored: IMU needs the forget set only."""
    if len(forget) == 0:
        progress(1.0)
        return {"steps": 0, "n_ascended": 0, "n_forget": 0, "weighting": params["weighting"]}
    kind = getattr(model, "lethe_kind", None)
    why = plugins.cannot_apply(kind).get("imu") if kind else None
    if why:  # the API refuses this at request time; this guards the engine used as a library
        raise ValueError(f"imu cannot unlearn a {kind!r} model: {why}")
    head = head_of(model)
    yf = torch.as_tensor(forget.labels(), dtype=torch.long, device=device)
    feats = head_inputs(model, head, forget, device)
    influence, gradnorm = head_influences(head, feats, yf, params["fisher_damping"])
    weights, how = imu_weights(influence.cpu().numpy(), gradnorm.cpu().numpy(), params)
    rows = np.flatnonzero(weights > 0)
    feats, y = feats[torch.as_tensor(rows, device=device)], yf[torch.as_tensor(rows, device=device)]
    w = torch.as_tensor(weights[rows], dtype=feats.dtype, device=device)
    progress(0.1)

    # Only the head trains, so its inputs are fixed: train it on the cached features.
    head_params = list(head.parameters())
    opt = torch.optim.SGD(head_params, lr=params["lr"], momentum=params["momentum"],
                          weight_decay=params["weight_decay"])
    gen = torch.Generator().manual_seed(seed)
    head.train()
    epochs, l1 = params["epochs"], params["l1"]
    steps = skipped = 0
    last = 0.0
    for epoch in range(epochs):
        for idx in batches(len(rows), params["batch_size"], shuffle=True, generator=gen):
            idx = idx.to(device)
            ce = F.cross_entropy(head(feats[idx]), y[idx], reduction="none")
            weighted = (w[idx] * ce).sum() / w[idx].sum()
            last = float(weighted.detach())
            if last >= params["max_forget_loss"]:  # forgotten enough: unbounded ascent only wrecks the head
                skipped += 1
                continue
            loss = -weighted + l1 * sum(p.abs().sum() for p in head_params)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            steps += 1
        progress(0.1 + 0.9 * (epoch + 1) / epochs)
    return {"steps": steps, "ascent_skipped": skipped, "n_ascended": int(len(rows)), "weighting": how,
            "n_negative_influence": int((influence < 0).sum()), "last_weighted_forget_loss": round(last, 6),
            "n_forget": len(forget), "n_retain": 0 if retain is None else len(retain)}
