"""Hessian self-influence s_i = g_iᵀ (H + λI)⁻¹ g_i with H the mean training-loss curvature.

Default: H block-diagonal per nn.Linear / nn.Conv2d layer, each block EK-FAC (see kfac.py), so in the
block's eigenbasis (H_l + λI)⁻¹ is diagonal and, with G_i = Σ_t δ_t a_tᵀ,
    s_i = Σ_l Σ_jk (U_Sᵀ G_i U_A)_jk² / (Λ_jk + λ_l).
For a Linear layer G_i = δ_i a_iᵀ is rank one, so (U_Sᵀ G_i U_A)_jk² = (U_Sᵀδ_i)_j² (U_Aᵀa_i)_k²: only the
rotated a_i and δ_i exist, never g_i. Conv layers form the rotated per-sample gradients a chunk at a time.
EK-FAC rather than K-FAC by default: in the fidelity tests it matched K-FAC on logistic regression and beat
it on a digits MLP against the exact Hessian (Spearman 0.9917 vs 0.9915 at the heuristic damping), for
one more pass over the data when the factors are fitted (they are cached per version).

Damping λ_l defaults to 0.1 × the mean eigenvalue of the layer's block (Kronfluence's heuristic): it
scales with the block, so layers of very different curvature are regularised alike, and it dominates only
the directions the data barely excites. Pass `damping` when the true regulariser is known (an L2
coefficient λ adds exactly λI to the Hessian).

`exact=True` forms the full Hessian of the mean loss (torch.func, float64) and solves with it: for small
models only, as the reference the block approximation is tested against.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from workers.engine import model_hooks as hooks
from workers.engine.data import ArraySet, scoring_batches
from workers.engine.influence.kfac import (
    Capture,
    KFACFactors,
    chunks,
    fingerprint,
    fit_factors,
    layer_inputs,
    load_factors,
    output_grads,
    resolve_fisher,
    rotated_gradients,
    save_factors,
    tracked_layers,
)

MAX_EXACT_PARAMS = 10_000


def _factors(model: nn.Module, data: ArraySet, *, device: torch.device, batch_size: int, fisher: str,
             ekfac: bool, factors_dir: Path | None, max_fit_points: int | None) -> tuple[KFACFactors, str]:
    if factors_dir is not None:
        n_fit = min(len(data), max_fit_points or len(data))
        fisher = resolve_fisher(fisher, model, data.subset(slice(0, n_fit)), device)
        cached = load_factors(factors_dir, device)
        if cached is not None and cached.meta.get("fisher") == fisher and cached.meta.get("ekfac") == ekfac \
                and cached.meta.get("fingerprint") == fingerprint(model, data) \
                and cached.meta.get("n_fit") == n_fit:
            return cached, "loaded"
    factors = fit_factors(model, data, device=device, batch_size=batch_size, fisher=fisher, ekfac=ekfac,
                          max_points=max_fit_points)
    if factors_dir is not None:
        save_factors(factors, factors_dir)
    return factors, "fitted"


def layer_dampings(factors: KFACFactors, damping: float | None) -> dict[str, float]:
    """λ per layer: the given value, or 0.1 × the mean eigenvalue of the layer's block."""
    return {name: float(damping) if damping is not None else 0.1 * float(f.eigenvalues().mean())
            for name, f in factors.layers.items()}


def hessian_self_influence(model: nn.Module, data: ArraySet, *, device: torch.device, batch_size: int = 256,
                           damping: float | None = None, factors_dir: Path | None = None, exact: bool = False,
                           ekfac: bool = True, fisher: str = "auto", max_fit_points: int | None = None,
                           info: dict[str, Any] | None = None, rows: slice | None = None) -> np.ndarray:
    """g_iᵀ(H + λI)⁻¹g_i for every point of `data` (float64), H fitted on `data` itself.

    factors_dir caches the fitted factors (reused while weights and data are unchanged, else refitted).
    `info`, when given, receives what was done (method, dampings, whether factors were loaded).
    `rows` scores only those points (a shard), with factors still fitted on, or loaded for, all of `data`.
    """
    if exact and rows is not None:
        raise ValueError("the exact Hessian scores whole datasets, not shards")
    if exact:
        scores, lam, n_params = _exact(model, data, device=device, batch_size=batch_size, damping=damping)
        if info is not None:
            info.update({"method": "exact", "damping": lam, "params": n_params})
        return scores
    model = model.to(device).eval()
    factors, how = _factors(model, data, device=device, batch_size=batch_size, fisher=fisher, ekfac=ekfac,
                            factors_dir=factors_dir, max_fit_points=max_fit_points)
    if rows is not None:
        data = data.subset(rows)
    layers = tracked_layers(model)
    if set(layers) != set(factors.layers):
        raise ValueError("the factors do not describe this model's layers")
    lams = layer_dampings(factors, damping)
    dtype = next(model.parameters()).dtype
    ua = {n: f.a_eigvecs.to(device, dtype) for n, f in factors.layers.items()}
    us = {n: f.s_eigvecs.to(device, dtype) for n, f in factors.layers.items()}
    inv = {n: (1.0 / (f.eigenvalues() + lams[n])).to(device, dtype) for n, f in factors.layers.items()}
    out = np.zeros(len(data), dtype=np.float64)
    for idx, x, y in scoring_batches(model, data, device=device, batch_size=batch_size):
        with Capture(layers) as cap:
            logits = hooks.forward(model, x)
        seed = torch.softmax(logits.detach(), 1) - F.one_hot(y, logits.shape[1]).to(logits.dtype)
        deltas = output_grads(cap, logits, seed, retain=False)
        total = torch.zeros(len(idx), dtype=torch.float64, device=device)
        for name, module in layers.items():
            ra = layer_inputs(module, cap.inputs[name]) @ ua[name]
            rd = deltas[name] @ us[name]
            if rd.shape[1] == 1:
                total += (((rd[:, 0] ** 2) @ inv[name]) * ra[:, 0] ** 2).sum(1).double()
                continue
            for part in chunks(len(rd), rd.shape[2] * ra.shape[2]):
                g = rotated_gradients(rd[part], ra[part]).square_()
                total[part] += (g.flatten(1) @ inv[name].flatten()).double()
        out[idx.numpy()] = total.cpu().numpy()
    if info is not None:
        info.update({"method": "ekfac" if factors.meta.get("ekfac") else "kfac", "fisher": factors.meta["fisher"],
                     "damping": lams, "factors": how, "n_fit": factors.meta.get("n_fit"),
                     "untracked": factors.meta.get("untracked", [])})
    return out


def _exact(model: nn.Module, data: ArraySet, *, device: torch.device, batch_size: int,
           damping: float | None) -> tuple[np.ndarray, float, int]:
    """Full Hessian of the mean cross-entropy (float64), LU-solved once; g_i a batch at a time."""
    from torch.func import grad, jacrev, vmap

    net = copy.deepcopy(model).to(device=device, dtype=torch.float64).eval()
    named = [(n, p.detach()) for n, p in net.named_parameters()]
    names = [n for n, _ in named]
    shapes = [p.shape for _, p in named]
    flat0 = torch.cat([p.reshape(-1) for _, p in named])
    n_params = flat0.numel()
    if n_params > MAX_EXACT_PARAMS:
        raise ValueError(f"exact Hessian is for small models (≤ {MAX_EXACT_PARAMS} parameters), got {n_params}")
    buffers = {k: v.detach() for k, v in net.named_buffers()}

    def unflat(flat: torch.Tensor) -> dict[str, torch.Tensor]:
        return dict(zip(names, (t.reshape(s) for t, s in zip(flat.split([s.numel() for s in shapes]), shapes,
                                                                 strict=True)), strict=True))

    def loss(flat: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return hooks.functional_losses(net, unflat(flat), buffers, x, y).sum()

    def one(flat: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return loss(flat, x.unsqueeze(0), y.unsqueeze(0))

    if data.text:
        raise ValueError("the exact Hessian maps over feature tensors; a text dataset's batches are strings")
    hess = torch.zeros(n_params, n_params, dtype=torch.float64, device=device)
    for _, xb, yb in data.loader(batch_size, device):
        hess += jacrev(grad(loss), chunk_size=256)(flat0, xb.double(), yb)
    hess /= len(data)
    hess = (hess + hess.T) / 2
    lam = float(damping) if damping is not None else 0.1 * float(torch.diagonal(hess).mean())
    lu = torch.linalg.lu_factor(hess + lam * torch.eye(n_params, dtype=hess.dtype, device=device))
    out = np.empty(len(data), dtype=np.float64)
    per_sample = vmap(grad(one), in_dims=(None, 0, 0))
    for idx, xb, yb in data.loader(batch_size, device):
        xb = xb.double()
        for part in chunks(len(idx), n_params):
            g = per_sample(flat0, xb[part], yb[part])  # (b, P), b bounded by chunks()
            out[idx[part].numpy()] = (g * torch.linalg.lu_solve(*lu, g.T).T).sum(1).cpu().numpy()
    return out, lam, n_params
