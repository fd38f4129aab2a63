"""LESS self-influence: s_i = Σ_c η_c ⟨Γ_i^c, g_i^c⟩ over kept training checkpoints c.

Adam checkpoints: Γ_i^c is the update point i alone would cause from the checkpoint's moments,
    m_i = β₁m_c + (1−β₁)g_i,  v_i = β₂v_c + (1−β₂)g_i²,  Γ_i = (m_i/(1−β₁ᵗ)) / (√(v_i/(1−β₂ᵗ)) + ε),
elementwise, t the checkpoint's step (Adam's weight decay is not part of a point's own update).
The scorer "less_own" (an option, papers.md) leaves the shared β₁m_c out of m_i: a self-influence then is the
point's own term only, and never negative.
SGD checkpoints: Γ = g, so the term is η_c‖g_i^c‖² (a multi-checkpoint TracIn self-influence).
Without checkpoints (versions produced by unlearning have none) the version's own weights are the single
checkpoint with Γ = g and η = 1, i.e. the squared gradient norm, and the returned info says so.

Γ is nonlinear in g_i, so per-sample gradients are needed elementwise; they are formed per layer from
the rank-1 / unfold structure (G_i = Σ_t δ_t a_tᵀ), a bounded chunk of points at a time, never N × P.
"""

from __future__ import annotations

import copy
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from workers.engine import model_hooks as hooks
from workers.engine.data import ArraySet, Batch, scoring_batches
from workers.engine.influence.gradnorm import gradnorm_self_influence
from workers.engine.influence.kfac import (
    Capture,
    chunks,
    layer_inputs,
    layer_param_matrix,
    output_grads,
    rotated_gradients,
    tracked_layers,
    untracked_parameters,
)

INDEX = "checkpoints.json"


@dataclass
class Checkpoint:
    state_dict: dict[str, torch.Tensor]
    exp_avg: dict[str, torch.Tensor] = field(default_factory=dict)  # by parameter name; empty for SGD
    exp_avg_sq: dict[str, torch.Tensor] = field(default_factory=dict)
    step: int = 0
    lr: float = 1e-3
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    optimizer: str = "adam"  # adam | adamw | sgd


def checkpoint_from(model: nn.Module, optimizer: torch.optim.Optimizer, lr: float | None = None) -> Checkpoint:
    """A CPU copy of the weights and, for Adam, of the moments and step."""
    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    group = optimizer.param_groups[0]
    lr = float(group["lr"] if lr is None else lr)
    if isinstance(optimizer, torch.optim.SGD):
        return Checkpoint(state, step=0, lr=lr, optimizer="sgd")
    if not isinstance(optimizer, torch.optim.Adam | torch.optim.AdamW):
        raise ValueError(f"LESS checkpoints need Adam, AdamW or SGD, not {type(optimizer).__name__}")
    avg, avg_sq, step = {}, {}, 0
    for name, p in model.named_parameters():
        st = optimizer.state.get(p, {})
        avg[name] = st["exp_avg"].detach().cpu().clone() if "exp_avg" in st else torch.zeros_like(p, device="cpu")
        avg_sq[name] = (st["exp_avg_sq"].detach().cpu().clone() if "exp_avg_sq" in st
                        else torch.zeros_like(p, device="cpu"))
        step = max(step, int(st["step"])) if "step" in st else step
    b1, b2 = group["betas"]
    return Checkpoint(state, avg, avg_sq, step=step, lr=lr, betas=(float(b1), float(b2)), eps=float(group["eps"]),
                      optimizer="adamw" if isinstance(optimizer, torch.optim.AdamW) else "adam")


class CheckpointRecorder:
    """on_epoch_end hook for train_model keeping k checkpoints evenly spaced over `epochs` (the last included)."""

    def __init__(self, epochs: int, k: int = 3) -> None:
        if epochs < 1 or k < 1:
            raise ValueError("epochs and k must be positive")
        self.keep = {round((j + 1) * epochs / k) - 1 for j in range(min(k, epochs))}
        self.checkpoints: list[Checkpoint] = []

    def __call__(self, model: nn.Module, optimizer: torch.optim.Optimizer, epoch: int, lr: float) -> None:
        if epoch in self.keep:
            self.checkpoints.append(checkpoint_from(model, optimizer, lr))

    def save(self, directory: Path) -> None:
        save_checkpoints(directory, self.checkpoints)


def save_checkpoints(directory: Path, checkpoints: list[Checkpoint]) -> None:
    """<directory>/ckpt-<j>.safetensors (weights and moments) plus checkpoints.json (the scalars)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    index = []
    for j, ck in enumerate(checkpoints):
        tensors = {f"state/{k}": v for k, v in ck.state_dict.items()}
        tensors |= {f"exp_avg/{k}": v for k, v in ck.exp_avg.items()}
        tensors |= {f"exp_avg_sq/{k}": v for k, v in ck.exp_avg_sq.items()}
        name = f"ckpt-{j}.safetensors"
        save_file({k: v.detach().cpu().contiguous().clone() for k, v in tensors.items()},
                  str(directory / (name + ".tmp")))
        os.replace(directory / (name + ".tmp"), directory / name)
        index.append({"file": name, "step": ck.step, "lr": ck.lr, "betas": list(ck.betas), "eps": ck.eps,
                      "optimizer": ck.optimizer})
    (directory / (INDEX + ".tmp")).write_text(json.dumps(index, indent=1))
    os.replace(directory / (INDEX + ".tmp"), directory / INDEX)


def load_checkpoints(directory: Path) -> list[Checkpoint]:
    """Checkpoints written by save_checkpoints ([] when there are none)."""
    directory = Path(directory)
    if not (directory / INDEX).exists():
        return []
    out = []
    for entry in json.loads((directory / INDEX).read_text()):
        tensors = load_file(str(directory / entry["file"]))
        part = {kind: {k.split("/", 1)[1]: v for k, v in tensors.items() if k.startswith(kind + "/")}
                for kind in ("state", "exp_avg", "exp_avg_sq")}
        out.append(Checkpoint(part["state"], part["exp_avg"], part["exp_avg_sq"], step=int(entry["step"]),
                              lr=float(entry["lr"]), betas=tuple(entry["betas"]), eps=float(entry["eps"]),
                              optimizer=entry["optimizer"]))
    return out


def _scaled_moments(m: torch.Tensor, v: torch.Tensor, ck: Checkpoint) -> tuple[torch.Tensor, torch.Tensor]:
    """β₁m/(1−β₁ᵗ) and β₂v/(1−β₂ᵗ): the per-sample work then needs no constant-only passes."""
    b1, b2 = ck.betas
    t = max(ck.step, 1)
    return m * (b1 / (1 - b1 ** t)), v * (b2 / (1 - b2 ** t))


def _adam_inner(g: torch.Tensor, ms: torch.Tensor, vs: torch.Tensor, ck: Checkpoint,
                own_term: bool = False) -> torch.Tensor:
    """Σ over parameters of Γ_i ⊙ g_i for per-sample gradients g (b, …) and scaled moments ms, vs (…).

    own_term drops the shared β₁m_c from Γ_i (only (1−β₁)g_i/(√v̂_i+ε) is left): the same for every point, it
    makes a self-influence negative for points that oppose the momentum.

    Memory-bound elementwise work over b·P values: fused and in-place ops keep it to ~5 passes.
    """
    b1, b2 = ck.betas
    t = max(ck.step, 1)
    den = torch.addcmul(vs, g, g, value=(1 - b2) / (1 - b2 ** t)).sqrt_().add_(ck.eps)
    ratio = torch.div(g, den, out=den)
    m_hat = g * ((1 - b1) / (1 - b1 ** t)) if own_term else torch.add(ms, g, alpha=(1 - b1) / (1 - b1 ** t))
    return torch.linalg.vecdot(m_hat.flatten(1), ratio.flatten(1))


def _adam_term(model: nn.Module, data: ArraySet, ck: Checkpoint, *, device: torch.device,
               batch_size: int, own_term: bool = False) -> np.ndarray:
    dtype = next(model.parameters()).dtype
    layers = tracked_layers(model)
    fallback = bool(untracked_parameters(model)) or hooks.custom_loss(model)  # the seed below is cross entropy's
    moments = {}
    if not fallback:
        for name, module in layers.items():
            moments[name] = _scaled_moments(*(layer_param_matrix(module, t, name).to(device, dtype)
                                              for t in (ck.exp_avg, ck.exp_avg_sq)), ck)
    out = np.zeros(len(data), dtype=np.float64)
    for idx, x, y in scoring_batches(model, data, device=device, batch_size=batch_size):
        total = torch.zeros(len(idx), dtype=torch.float64, device=device)
        if fallback:
            _vmap_adam(model, x, y, ck, total, own_term)
        else:
            with Capture(layers) as cap:
                logits = hooks.forward(model, x)
            seed = torch.softmax(logits.detach(), 1) - F.one_hot(y, logits.shape[1]).to(logits.dtype)
            deltas = output_grads(cap, logits, seed, retain=False)
            for name, module in layers.items():
                a, d = layer_inputs(module, cap.inputs[name]), deltas[name]
                m, v = moments[name]
                for part in chunks(len(a), m.numel()):
                    total[part] += _adam_inner(rotated_gradients(d[part], a[part]), m, v, ck, own_term).double()
        out[idx.numpy()] = total.cpu().numpy()
    return out


def _vmap_adam(model: nn.Module, x: Batch, y: torch.Tensor, ck: Checkpoint, total: torch.Tensor,
               own_term: bool = False) -> None:
    """Models with parameters outside Linear/Conv2d: per-sample gradients by vmap, chunked by P."""
    from torch.func import grad, vmap

    params = {k: v.detach() for k, v in model.named_parameters()}
    buffers = {k: v.detach() for k, v in model.named_buffers()}
    n_params = sum(p.numel() for p in params.values())
    loss, inputs = hooks.example_loss(model, buffers, x)
    per_sample = vmap(grad(loss), in_dims=(None, 0, 0))
    for part in chunks(len(y), n_params):
        grads = per_sample(params, hooks.take(inputs, part), y[part])
        for name, g in grads.items():
            ms, vs = _scaled_moments(ck.exp_avg[name].to(g.device, g.dtype), ck.exp_avg_sq[name].to(g.device, g.dtype),
                                     ck)
            total[part] += _adam_inner(g, ms, vs, ck, own_term).double()


def less_self_influence(model: nn.Module, data: ArraySet, *, device: torch.device,
                        checkpoints: list[Checkpoint] | None = None,
                        batch_size: int = 256, own_term: bool = False) -> tuple[np.ndarray, dict[str, Any]]:
    """LESS self-influence of every point of `data` (float64) and where it came from.

    own_term=False is LESS's Γ with the checkpoint's shared momentum (the paper's form, for reproduction);
    own_term=True scores only the point's own share (1−β₁)g_i/(√v̂_i+ε), never negative."""
    if not checkpoints:
        norms = gradnorm_self_influence(model, data, device=device, batch_size=batch_size)
        return norms ** 2, {"source": "final-weights (no checkpoints)"}
    work = copy.deepcopy(model).to(device)
    total = np.zeros(len(data), dtype=np.float64)
    for ck in checkpoints:
        work.load_state_dict(ck.state_dict)
        if ck.optimizer == "sgd":
            total += ck.lr * gradnorm_self_influence(work, data, device=device, batch_size=batch_size) ** 2
        else:
            total += ck.lr * _adam_term(work.eval(), data, ck, device=device, batch_size=batch_size,
                                        own_term=own_term)
    info = {"source": "checkpoints", "n": len(checkpoints), "optimizers": sorted({ck.optimizer for ck in checkpoints}),
            "steps": [ck.step for ck in checkpoints]}
    if any(ck.optimizer != "sgd" for ck in checkpoints):  # SGD's Γ = g has no momentum term to keep or drop
        info["term"] = "own" if own_term else "momentum+own"
    return total, info
