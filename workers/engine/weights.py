"""Weights as safetensors files (never pickles), written atomically."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from safetensors.torch import load_file, save_file
from torch import nn


def save_weights(model: nn.Module, path: Path | str) -> str:
    """Write the state dict; return the file's sha256."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    save_file({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}, str(tmp))
    os.replace(tmp, path)
    return hashlib.sha256(path.read_bytes()).hexdigest()


def load_weights(model: nn.Module, path: Path | str) -> nn.Module:
    """Load strictly: a file for another architecture is an error, not a half-loaded model."""
    model.load_state_dict(load_file(str(path)), strict=True)
    return model
