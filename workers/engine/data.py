"""Dataset files and batching: numpy arrays on disk, tensors per batch."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch


@dataclass
class ArraySet:
    x: np.ndarray
    y: np.ndarray

    def __len__(self) -> int:
        return len(self.y)


def load_npz(path: Path | str) -> dict[str, np.ndarray]:
    """Every array of an .npz, never unpickling (object arrays raise)."""
    with np.load(path, allow_pickle=False) as npz:
        return {k: npz[k] for k in npz.files}


def to_tensors(data: ArraySet, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Tensors of the set; a read-only memory map (a Parquet dataset's feature cache) is shared, not copied: the
    engine only ever indexes x (a copy per batch), so its pages are read as batches touch them."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        return (torch.as_tensor(np.asarray(data.x), dtype=torch.float32, device=device),
                torch.as_tensor(np.asarray(data.y), dtype=torch.long, device=device))


def batches(n: int, batch_size: int, *, shuffle: bool, generator: torch.Generator | None = None) -> Iterator[
        torch.Tensor]:
    """Index batches over n items (seeded shuffle when asked)."""
    order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
    for start in range(0, n, batch_size):
        yield order[start:start + batch_size]


def scoring_batches(model: torch.nn.Module, data: ArraySet, *, device: torch.device,
                    batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """(indices, x, y) of `data` in order, a batch at a time on `device`, with every parameter of `model` requiring
    gradients: what a scorer that differentiates each point's loss iterates over."""
    x_all, y_all = to_tensors(data, device)
    for p in model.parameters():
        p.requires_grad_(True)
    for idx in batches(len(data), batch_size, shuffle=False):
        yield idx, x_all[idx.to(device)], y_all[idx.to(device)]
