"""Dataset files and batching: numpy arrays on disk, read a batch at a time (workers/engine/rows.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from workers.engine.rows import Batch, Rows, batches

# The engine's name for a set of rows since it held two arrays; every set is a Rows (a row-indexed batch source).
ArraySet = Rows

__all__ = ["ArraySet", "Batch", "Rows", "batches", "load_npz", "scoring_batches", "to_tensors"]


def load_npz(path: Path | str) -> dict[str, np.ndarray]:
    """Every array of an .npz, never unpickling (object arrays raise)."""
    with np.load(path, allow_pickle=False) as npz:
        return {k: npz[k] for k in npz.files}


def to_tensors(data: Rows, device: torch.device) -> tuple[Batch, torch.Tensor]:
    """The whole set as tensors (benchmarks comparing with libraries that take tensors; the engine reads batches)."""
    return data.tensors(device)


def scoring_batches(model: torch.nn.Module, data: Rows, *, device: torch.device,
                    batch_size: int) -> Iterator[tuple[torch.Tensor, Batch, torch.Tensor]]:
    """(indices, x, y) of `data` in order, a batch at a time on `device`, with every parameter of `model` requiring
    gradients: what a scorer that differentiates each point's loss iterates over."""
    for p in model.parameters():
        p.requires_grad_(True)
    yield from data.loader(batch_size, device)
