"""K-FAC / EK-FAC factors for every nn.Linear and nn.Conv2d layer: fit once, eigendecompose, save, load.

A layer's per-sample gradient is G_i = Σ_t δ_t a_tᵀ (out × D), with a_t the layer input (a conv's unfolded
patch) plus a trailing 1 for the bias, δ_t the gradient at the layer output, t over positions (one for a
plain Linear, H·W patches for a conv). Its Fisher block is approximated as A ⊗ S with
    A = E_i[(1/T) Σ_t a_t a_tᵀ],   S = E_i[Σ_t δ_t δ_tᵀ]
(the KFC scaling of Grosse & Martens 2016, so a Linear layer is the T = 1 case). EK-FAC (George et al.
2018) keeps the eigenbases U_A, U_S and replaces the products λ^S_j λ^A_k by E_i[(U_Sᵀ G_i U_A)_jk²]: one
more pass, and exact on the diagonal of the eigenbasis, which plain K-FAC is not.

Which δ defines the Fisher (`fisher`):
- "ggn": the exact Gauss-Newton matrix of the cross-entropy, Σ_c r_c r_cᵀ = diag(p) − ppᵀ at the logits with
  r_c = √p_c (e_c − p) back-propagated: C backward passes per batch, deterministic;
- "mc": one label drawn from the model per point (Kronfluence's default; the GGN in expectation);
- "empirical": the observed labels (biased near an optimum, where most points are fitted);
- "auto" (default): "ggn" while points × classes ≤ GGN_BUDGET (its C-fold cost is then small), else "mc".
Measured: on L2 logistic regression and a small MLP on digits, ggn ≥ mc > empirical in agreement with
exact influence, and mc agreed with ggn at Spearman ≥ 0.99, at 1/C of the backward passes.
Layers that cannot be expressed this way (grouped or non-zero-padded convs, anything else with
parameters) are not tracked; `untracked_parameters` names them.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from workers.engine import model_hooks as hooks
from workers.engine.data import ArraySet
from workers.engine.model_hooks import tracked_names

FORMAT = "lethe-kfac-1"
FILE = "factors.safetensors"
FISHERS = ("ggn", "mc", "empirical")
GGN_BUDGET = 100_000  # points × classes, i.e. per-sample backward passes per fitting pass
# Per-sample gradients materialised at once (elements): bounds memory whatever the batch size, and
# ~4 MB tensors stay cache-friendly and below malloc's mmap threshold (large chunks measured several
# times slower for the memory-bound elementwise work of LESS).
CHUNK_ELEMENTS = 1 << 20
# Factors wider than this are eigendecomposed in float32: eigh is the largest fixed cost (a 4097-wide
# input covariance: 9 s in float64, 4.6 s in float32 on 2 cores) and float32 eigenvectors are ample
# for a damped inverse (EK-FAC re-estimates the eigenvalues in that basis anyway).
EIGH_FLOAT64_MAX_DIM = 2048


def _trackable(module: nn.Module) -> bool:
    if isinstance(module, nn.Linear):
        return True
    return (isinstance(module, nn.Conv2d) and module.groups == 1 and module.padding_mode == "zeros"
            and not isinstance(module.padding, str))


def tracked_layers(model: nn.Module) -> dict[str, nn.Module]:
    """Layers with a Kronecker-factored gradient, by module name: the model plugin's tracked_modules (those of
    them that are Linear or Conv2d; untracked_parameters names what is left out), else every such layer."""
    names = tracked_names(model)
    return {name: m for name, m in model.named_modules() if _trackable(m) and (names is None or name in names)}


def untracked_parameters(model: nn.Module) -> list[str]:
    """Parameter names outside every tracked layer (the block approximation ignores them)."""
    tracked = {id(p) for m in tracked_layers(model).values() for p in m.parameters(recurse=False)}
    return [n for n, p in model.named_parameters() if id(p) not in tracked]


def layer_inputs(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """(B, T, D) inputs a_t of a tracked layer, with a ones column last when it has a bias."""
    if isinstance(module, nn.Conv2d):
        a = F.unfold(x, module.kernel_size, dilation=module.dilation, padding=module.padding,
                     stride=module.stride).transpose(1, 2)
    else:
        a = x.reshape(x.shape[0], -1, x.shape[-1])
    if module.bias is not None:
        a = torch.cat([a, a.new_ones(*a.shape[:2], 1)], 2)
    return a


def layer_output_grads(module: nn.Module, d: torch.Tensor) -> torch.Tensor:
    """(B, T, out) output gradients δ_t of a tracked layer."""
    if isinstance(module, nn.Conv2d):
        return d.flatten(2).transpose(1, 2)
    return d.reshape(d.shape[0], -1, d.shape[-1])


def layer_param_matrix(module: nn.Module, tensors: dict[str, torch.Tensor], prefix: str) -> torch.Tensor:
    """A layer's [W | b] as (out, D), in the column order of `layer_inputs` (tensors by parameter name)."""
    w = tensors[f"{prefix}.weight" if prefix else "weight"]
    cols = [w.reshape(w.shape[0], -1)]
    if module.bias is not None:
        cols.append(tensors[f"{prefix}.bias" if prefix else "bias"].reshape(-1, 1))
    return torch.cat(cols, 1)


def chunks(n: int, per_item: int) -> Iterator[slice]:
    """Slices of range(n) small enough that each materialises ≤ CHUNK_ELEMENTS elements."""
    step = max(1, CHUNK_ELEMENTS // max(per_item, 1))
    for start in range(0, n, step):
        yield slice(start, min(n, start + step))


def rotated_gradients(d: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    """Per-sample Σ_t d_t a_tᵀ as (b, out, D) from (b, T, out) and (b, T, D)."""
    if d.shape[1] == 1:
        return d[:, 0, :, None] * a[:, 0, None, :]
    return torch.einsum("bto,btd->bod", d, a)


class Capture:
    """Forward hooks that keep each tracked layer's input (detached) and output (in the graph)."""

    def __init__(self, layers: dict[str, nn.Module]) -> None:
        self.layers = layers
        self.inputs: dict[str, torch.Tensor] = {}
        self.outputs: dict[str, torch.Tensor] = {}
        self._hooks: list[Any] = []

    def __enter__(self) -> Capture:
        for name, module in self.layers.items():
            self._hooks.append(module.register_forward_hook(self._hook(name)))
        return self

    def _hook(self, name: str) -> Any:
        def keep(mod: nn.Module, inp: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
            self.inputs[name] = inp[0].detach()
            self.outputs[name] = out
        return keep

    def __exit__(self, *exc: object) -> None:
        for h in self._hooks:
            h.remove()
        self._hooks.clear()


def output_grads(capture: Capture, logits: torch.Tensor, seed: torch.Tensor,
                 retain: bool) -> dict[str, torch.Tensor]:
    """(B, T, out) δ per layer for the logit gradient `seed` (per sample, so a 'sum' reduction)."""
    names = list(capture.layers)
    grads = torch.autograd.grad(logits, [capture.outputs[n] for n in names], grad_outputs=seed,
                                retain_graph=retain, allow_unused=True)
    out = {}
    for n, g in zip(names, grads, strict=True):
        g = torch.zeros_like(capture.outputs[n]) if g is None else g
        out[n] = layer_output_grads(capture.layers[n], g.detach())
    return out


def resolve_fisher(fisher: str, model: nn.Module, data: ArraySet, device: torch.device) -> str:
    """The concrete Fisher for `fisher` ("auto" picks ggn when its C backward passes are affordable)."""
    if fisher != "auto":
        if fisher not in FISHERS:
            raise ValueError(f"unknown fisher '{fisher}' (auto | {' | '.join(FISHERS)})")
        return fisher
    with torch.no_grad():
        n_classes = hooks.forward(model, data.batch([0], device)[0]).shape[1]
    return "ggn" if len(data) * n_classes <= GGN_BUDGET else "mc"


def logit_seeds(logits: torch.Tensor, y: torch.Tensor, fisher: str,
                generator: torch.Generator | None) -> list[torch.Tensor]:
    """Logit gradients whose back-propagated outer products sum to the chosen Fisher."""
    p = torch.softmax(logits.detach().double(), 1)
    if fisher == "empirical":
        return [(p - F.one_hot(y, p.shape[1]).double()).to(logits.dtype)]
    if fisher == "mc":
        drawn = torch.multinomial(p.cpu(), 1, generator=generator).squeeze(1).to(y.device)
        return [(p - F.one_hot(drawn, p.shape[1]).double()).to(logits.dtype)]
    if fisher == "ggn":
        eye = torch.eye(p.shape[1], dtype=p.dtype, device=p.device)
        return [(p[:, c:c + 1].sqrt() * (eye[c] - p)).to(logits.dtype) for c in range(p.shape[1])]
    raise ValueError(f"unknown fisher '{fisher}' ({' | '.join(FISHERS)})")


@dataclass
class LayerFactors:
    a_eigvals: torch.Tensor  # (D,)
    a_eigvecs: torch.Tensor  # (D, D), columns
    s_eigvals: torch.Tensor  # (out,)
    s_eigvecs: torch.Tensor  # (out, out)
    corrected: torch.Tensor | None = None  # (out, D) EK-FAC eigenvalues

    def eigenvalues(self) -> torch.Tensor:
        """(out, D) eigenvalues of the block in the Kronecker eigenbasis (EK-FAC's when fitted)."""
        if self.corrected is not None:
            return self.corrected
        return torch.outer(self.s_eigvals, self.a_eigvals)

    def a_matrix(self) -> torch.Tensor:
        return (self.a_eigvecs * self.a_eigvals) @ self.a_eigvecs.T

    def s_matrix(self) -> torch.Tensor:
        return (self.s_eigvecs * self.s_eigvals) @ self.s_eigvecs.T


@dataclass
class KFACFactors:
    layers: dict[str, LayerFactors]
    meta: dict[str, Any] = field(default_factory=dict)


def fingerprint(model: nn.Module, data: ArraySet) -> str:
    """sha256 of the weights and the data, so cached factors are never used for another version."""
    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    # The set's rows a chunk at a time (the same digest as hashing them whole, without holding them whole).
    step = max(1, min(1024, (4 << 20) // max(1, int(np.prod(data.x.shape[1:])) * data.x.dtype.itemsize)))
    for start in range(0, len(data), step):
        h.update(np.ascontiguousarray(data.features(slice(start, start + step))).tobytes())
    h.update(np.ascontiguousarray(data.labels()).tobytes())
    return h.hexdigest()


def _passes(model: nn.Module, data: ArraySet, layers: dict[str, nn.Module], *, device: torch.device,
            batch_size: int, fisher: str, generator: torch.Generator
            ) -> Iterator[tuple[torch.Tensor, dict[str, torch.Tensor], Iterator[dict[str, torch.Tensor]]]]:
    """Per batch: the indices, each layer's (B, T, D) inputs, and an iterator of Fisher δ per seed."""
    for idx, x, y in data.loader(batch_size, device):
        with Capture(layers) as cap:
            logits = hooks.forward(model, x)
        a = {n: layer_inputs(m, cap.inputs[n]) for n, m in layers.items()}
        seeds = logit_seeds(logits, y, fisher, generator)

        def deltas(cap: Capture = cap, logits: torch.Tensor = logits,
                   seeds: list[torch.Tensor] = seeds) -> Iterator[dict[str, torch.Tensor]]:
            for k, seed in enumerate(seeds):
                yield output_grads(cap, logits, seed, retain=k + 1 < len(seeds))
        yield idx, a, deltas()


def fit_factors(model: nn.Module, data: ArraySet, *, device: torch.device, batch_size: int = 256,
                fisher: str = "auto", ekfac: bool = True, max_points: int | None = None,
                seed: int = 0) -> KFACFactors:
    """Fit A, S (one pass), eigendecompose, and (ekfac) the corrected eigenvalues (one more pass).

    Streams batches: memory is the factors plus one batch. `max_points` fits on a seeded subsample,
    since the factors are averages and their cost is otherwise a fixed share of the scoring time.
    """
    model = model.to(device).eval()
    for p in model.parameters():
        p.requires_grad_(True)
    layers = tracked_layers(model)
    if not layers:
        raise ValueError("no nn.Linear or nn.Conv2d layer to fit K-FAC factors on")
    fit_data = data
    if max_points is not None and len(data) > max_points:
        keep = np.sort(np.random.default_rng(seed).choice(len(data), max_points, replace=False))
        fit_data = data.subset(keep)
    n = len(fit_data)
    fisher = resolve_fisher(fisher, model, fit_data, device)
    gen = torch.Generator().manual_seed(seed)
    a_cov: dict[str, torch.Tensor] = {}
    s_cov: dict[str, torch.Tensor] = {}
    for _, a, deltas in _passes(model, fit_data, layers, device=device, batch_size=batch_size, fisher=fisher,
                                generator=gen):
        for name, an in a.items():
            flat = an.reshape(-1, an.shape[-1])
            cov = (flat.T @ flat).double() / an.shape[1]
            a_cov[name] = a_cov[name] + cov if name in a_cov else cov
        for d in deltas:
            for name, dn in d.items():
                flat = dn.reshape(-1, dn.shape[-1])
                cov = (flat.T @ flat).double()
                s_cov[name] = s_cov[name] + cov if name in s_cov else cov
    factors: dict[str, LayerFactors] = {}
    for name in layers:
        a_val, a_vec = _eigh(a_cov.pop(name) / n)
        s_val, s_vec = _eigh(s_cov.pop(name) / n)
        # Covariances are PSD; eigh's rounding can make the smallest eigenvalues slightly negative.
        factors[name] = LayerFactors(a_val.clamp_min(0), a_vec, s_val.clamp_min(0), s_vec)
    if ekfac:
        _correct_eigenvalues(model, fit_data, layers, factors, device=device, batch_size=batch_size,
                             fisher=fisher, generator=gen)
    meta = {"format": FORMAT, "fisher": fisher, "ekfac": bool(ekfac), "n_fit": n, "n": len(data),
            "layers": {name: type(m).__name__ for name, m in layers.items()},
            "untracked": untracked_parameters(model), "fingerprint": fingerprint(model, data)}
    return KFACFactors(factors, meta)


def _eigh(cov: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    if len(cov) > EIGH_FLOAT64_MAX_DIM:
        val, vec = torch.linalg.eigh(cov.float())
        return val.double(), vec.double()
    return torch.linalg.eigh(cov)


def _correct_eigenvalues(model: nn.Module, data: ArraySet, layers: dict[str, nn.Module],
                         factors: dict[str, LayerFactors], *, device: torch.device, batch_size: int, fisher: str,
                         generator: torch.Generator) -> None:
    """EK-FAC: mean over points of the squared per-sample gradients in the Kronecker eigenbasis."""
    dtype = next(model.parameters()).dtype
    ua = {n: f.a_eigvecs.to(device, dtype) for n, f in factors.items()}
    us = {n: f.s_eigvecs.to(device, dtype) for n, f in factors.items()}
    sums = {n: torch.zeros(f.s_eigvals.numel(), f.a_eigvals.numel(), dtype=torch.float64, device=device)
            for n, f in factors.items()}
    for _, a, deltas in _passes(model, data, layers, device=device, batch_size=batch_size, fisher=fisher,
                                generator=generator):
        rot_a = {n: an @ ua[n] for n, an in a.items()}
        for d in deltas:
            for name, dn in d.items():
                rd, ra = dn @ us[name], rot_a[name]
                if rd.shape[1] == 1:
                    # Rank-1 per sample: (U_Sᵀδ)_j² (U_Aᵀa)_k², summed over the batch as one product.
                    sums[name] += ((rd[:, 0] ** 2).T @ (ra[:, 0] ** 2)).double()
                    continue
                for part in chunks(len(rd), rd.shape[2] * ra.shape[2]):
                    sums[name] += rotated_gradients(rd[part], ra[part]).square_().sum(0).double()
    for name, f in factors.items():
        f.corrected = sums[name] / len(data)


def save_factors(factors: KFACFactors, directory: Path) -> Path:
    """Write <directory>/factors.safetensors (tensors + JSON meta) atomically; returns its path."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tensors: dict[str, torch.Tensor] = {}
    for name, f in factors.layers.items():
        for key in ("a_eigvals", "a_eigvecs", "s_eigvals", "s_eigvecs", "corrected"):
            t = getattr(f, key)
            if t is not None:
                tensors[f"{name}/{key}"] = t.detach().cpu().contiguous()
    tmp = directory / (FILE + ".tmp")
    save_file(tensors, str(tmp), metadata={"meta": json.dumps(factors.meta, sort_keys=True)})
    os.replace(tmp, directory / FILE)
    return directory / FILE


def load_factors(directory: Path, device: torch.device | None = None) -> KFACFactors | None:
    """Factors saved by `save_factors`, or None when there are none."""
    path = Path(directory) / FILE
    if not path.exists():
        return None
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as fh:
        meta = json.loads((fh.metadata() or {}).get("meta", "{}"))
    if meta.get("format") != FORMAT:
        return None
    tensors = load_file(str(path), device=str(device or "cpu"))
    layers = {}
    for name in meta["layers"]:
        layers[name] = LayerFactors(tensors[f"{name}/a_eigvals"], tensors[f"{name}/a_eigvecs"],
                                    tensors[f"{name}/s_eigvals"], tensors[f"{name}/s_eigvecs"],
                                    tensors.get(f"{name}/corrected"))
    return KFACFactors(layers, meta)
