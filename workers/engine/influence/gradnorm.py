"""‖∇θ ℓ(z_i)‖ for every point with one batched forward+backward, using the layer structure.

For nn.Linear, the per-sample weight gradient is the outer product δ_i a_iᵀ, so
‖g_i‖² = ‖δ_i‖²·‖a_i‖² (+ ‖δ_i‖² for the bias): no per-sample gradient is ever formed.
For nn.Conv2d, the per-sample gradient is δ_i (C_out × L) @ unfold(a_i)ᵀ (L × C_in·k·k), formed one
batch at a time (about one more backward). Other parameterised layers fall back to torch.func.vmap.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from workers.engine import model_hooks as hooks
from workers.engine.data import ArraySet, Batch, scoring_batches

STRUCTURED = (nn.Linear, nn.Conv2d)


def _has_other_params(model: nn.Module) -> bool:
    for module in model.modules():
        if isinstance(module, STRUCTURED):
            continue
        if any(True for _ in module.parameters(recurse=False)):
            return True
    return False


def _linear_sq(a: torch.Tensor, d: torch.Tensor, bias: bool) -> torch.Tensor:
    if a.dim() == 2:
        sq = (d * d).sum(1) * (a * a).sum(1)
        return sq + (d * d).sum(1) if bias else sq
    # Inputs with extra positions: g_i = Σ_t δ_t a_tᵀ, so ‖g_i‖² = Σ_{t,s} (a_t·a_s)(δ_t·δ_s).
    a, d = a.flatten(1, -2), d.flatten(1, -2)
    sq = ((a @ a.transpose(1, 2)) * (d @ d.transpose(1, 2))).sum((1, 2))
    return sq + (d.sum(1) ** 2).sum(1) if bias else sq


def _conv_sq(module: nn.Conv2d, a: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
    cols = F.unfold(a, module.kernel_size, dilation=module.dilation, padding=module.padding, stride=module.stride)
    dd = d.flatten(2)  # (B, C_out, L)
    if module.groups != 1:
        raise NotImplementedError("grouped convolutions use the vmap fallback")
    grad = torch.einsum("bol,bkl->bok", dd, cols)
    sq = (grad * grad).sum((1, 2))
    return sq + (dd.sum(2) ** 2).sum(1) if module.bias is not None else sq


def _structured(model: nn.Module, x: Batch, y: torch.Tensor) -> torch.Tensor:
    saved: dict[nn.Module, torch.Tensor] = {}
    outputs: dict[nn.Module, torch.Tensor] = {}
    handles = []
    for module in model.modules():
        if isinstance(module, STRUCTURED):
            def fwd(mod: nn.Module, inp: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
                saved[mod] = inp[0].detach()
                out.retain_grad()
                outputs[mod] = out
            handles.append(module.register_forward_hook(fwd))
    try:
        # summed: the gradient at each layer output is exactly that sample's δ_i.
        hooks.losses(model, x, y).sum().backward()
    finally:
        for h in handles:
            h.remove()
    total = torch.zeros(len(y), dtype=torch.float64, device=y.device)
    for module, a in saved.items():
        d = outputs[module].grad
        if isinstance(module, nn.Linear):
            total += _linear_sq(a, d, module.bias is not None).double()
        else:
            total += _conv_sq(module, a, d).double()
    return total


def _vmap(model: nn.Module, x: Batch, y: torch.Tensor) -> torch.Tensor:
    from torch.func import grad, vmap

    params = {k: v.detach() for k, v in model.named_parameters()}
    buffers = {k: v.detach() for k, v in model.named_buffers()}
    loss, inputs = hooks.example_loss(model, buffers, x)
    grads = vmap(grad(loss), in_dims=(None, 0, 0))(params, inputs, y)
    return sum((g.flatten(1).double() ** 2).sum(1) for g in grads.values())


def gradnorm_self_influence(model: nn.Module, data: ArraySet, *, device: torch.device,
                            batch_size: int = 256) -> np.ndarray:
    """‖∇θ ℓ(z_i)‖₂ at the model's weights for every point of `data` (float64)."""
    model = model.to(device).eval()
    fallback = _has_other_params(model) or any(
        isinstance(m, nn.Conv2d) and m.groups != 1 for m in model.modules())
    out = np.empty(len(data), dtype=np.float64)
    for idx, x, y in scoring_batches(model, data, device=device, batch_size=batch_size):
        model.zero_grad(set_to_none=True)
        sq = _vmap(model, x, y) if fallback else _structured(model, x, y)
        out[idx.numpy()] = sq.clamp_min(0).sqrt().cpu().numpy()
    model.zero_grad(set_to_none=True)
    return out
