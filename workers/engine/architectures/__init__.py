"""The built-in kinds' builders (linear, mlp, cnn) and build_model, which builds any installed `lethe.models` kind."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from workers.engine import plugins


class Flatten(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape(x.shape[0], -1)


class Sequential(nn.Module):
    """A Sequential under `net`, so state-dict keys read net.0.weight … for every architecture."""

    def __init__(self, *layers: nn.Module, image_shape: tuple[int, ...] | None = None) -> None:
        super().__init__()
        self.image_shape = image_shape
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.image_shape is not None:
            x = x.reshape(x.shape[0], *self.image_shape)
        else:
            x = x.reshape(x.shape[0], -1)
        return self.net(x)


def _linear(spec: dict[str, Any], input_shape: tuple[int, ...], n_classes: int) -> nn.Module:
    return Sequential(nn.Linear(math.prod(input_shape), n_classes))


def _mlp(spec: dict[str, Any], input_shape: tuple[int, ...], n_classes: int) -> nn.Module:
    hidden = spec.get("hidden") or [128]
    hidden = [hidden] if isinstance(hidden, int) else list(hidden)
    dropout = float(spec.get("dropout") or 0.0)
    layers: list[nn.Module] = []
    width = math.prod(input_shape)
    for h in hidden:
        layers += [nn.Linear(width, int(h)), nn.ReLU()]
        if dropout:
            layers.append(nn.Dropout(dropout))
        width = int(h)
    layers.append(nn.Linear(width, n_classes))
    return Sequential(*layers)


def image_shape(input_shape: tuple[int, ...]) -> tuple[int, int, int]:
    """(C, H, W) of one sample: a flat square vector is one channel, (H, W) gains a channel."""
    if len(input_shape) == 1:
        side = math.isqrt(input_shape[0])
        if side * side != input_shape[0]:
            raise ValueError(f"cnn needs image inputs; a flat input of {input_shape[0]} is not a square")
        return (1, side, side)
    if len(input_shape) == 2:
        return (1, *input_shape)
    if len(input_shape) == 3:
        return tuple(input_shape)  # type: ignore[return-value]
    raise ValueError(f"cnn cannot take inputs of shape {input_shape}")


def _cnn(spec: dict[str, Any], input_shape: tuple[int, ...], n_classes: int) -> nn.Module:
    shape = image_shape(input_shape)
    c, h, w = shape
    channels = list(spec.get("channels") or [16, 32])
    hidden = spec.get("hidden") or 64
    hidden = hidden[0] if isinstance(hidden, list) else int(hidden)
    layers: list[nn.Module] = []
    for out in channels:
        layers += [nn.Conv2d(c, int(out), 3, padding=1), nn.ReLU()]
        if min(h, w) >= 2:
            layers.append(nn.MaxPool2d(2))
            h, w = h // 2, w // 2
        c = int(out)
    layers += [Flatten(), nn.Linear(c * h * w, hidden), nn.ReLU(), nn.Linear(hidden, n_classes)]
    return Sequential(*layers, image_shape=shape)


BUILDERS: dict[str, Callable[[dict[str, Any], tuple[int, ...], int], nn.Module]] = {
    "linear": _linear, "mlp": _mlp, "cnn": _cnn,
}


def validate_spec(spec: dict[str, Any]) -> dict[str, Any]:
    """The spec validated by its kind's plugin; ValueError naming what is wrong (an unknown kind names the
    installed ones)."""
    spec = plugins.validate_config(spec)
    if spec["kind"] not in BUILDERS:
        return spec
    hidden = spec.get("hidden")
    widths = [hidden] if isinstance(hidden, int) else (hidden or [])
    if any(int(w) < 1 for w in widths) or any(int(c) < 1 for c in spec.get("channels") or []):
        raise ValueError("layer widths must be positive")
    return spec


def build_model(spec: dict[str, Any], *, input_shape: tuple[int, ...], n_classes: int) -> nn.Module:
    """A fresh model of the named kind (seed torch beforehand for reproducible weights)."""
    spec = validate_spec(spec)
    if n_classes < 2:
        raise ValueError("need at least two classes")
    config = {k: v for k, v in spec.items() if k != "kind"}
    model = plugins.plugin(spec["kind"]).build(config, input_shape=tuple(input_shape), n_classes=n_classes)
    if not isinstance(model, nn.Module):
        raise ValueError(f"architecture kind {spec['kind']!r} built a {type(model).__name__}, not an nn.Module")
    model.lethe_kind = spec["kind"]  # type: ignore[assignment] - the engine finds the plugin's hooks by it
    return model
