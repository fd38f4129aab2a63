"""A dataset's rows as the engine reads them: a batch at a time, never the whole set.

`Rows(x, y, rows)` is a row-indexed view of a dataset file: `x` holds every row's features (an .npz's array in
memory, or a Parquet dataset's decoded cache memory-mapped: floats, or fixed-width strings for a text dataset),
`y` its labels, and `rows` which of them the set holds, in order (None: all of them). Subsets compose the index
without touching features (`subset`), and a batch gathers only its rows (`batch`): with a memory map only the
pages of those rows are read, so training, unlearning, scoring, the audit and the reference pool use memory
bounded by the batch, not the dataset. An in-memory array goes through the same interface, and yields the
same batches in the same order as indexing it directly did, so seeded results are unchanged.

A text dataset's batch is the list of its strings: the model's plugin `encode(batch)` tokenises them
(workers/engine/model_hooks.py); every other batch is a float32 tensor.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

Batch = torch.Tensor | list[str]


def batches(n: int, batch_size: int, *, shuffle: bool, generator: torch.Generator | None = None) -> Iterator[
        torch.Tensor]:
    """Index batches over n items (seeded shuffle when asked)."""
    order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
    for start in range(0, n, batch_size):
        yield order[start:start + batch_size]


def _positions(positions: Any) -> np.ndarray | slice:
    if isinstance(positions, slice):
        return positions
    if isinstance(positions, torch.Tensor):
        return positions.detach().cpu().numpy()
    return np.asarray(positions)


class Rows:
    """Rows `rows` (None: all) of a dataset's features `x` and labels `y`; see the module docstring."""

    def __init__(self, x: np.ndarray, y: np.ndarray, rows: np.ndarray | list[int] | None = None) -> None:
        if len(x) != len(y):
            raise ValueError(f"features hold {len(x)} rows and labels {len(y)}")
        self.x, self.y = x, y
        self.rows = None if rows is None else np.asarray(rows, dtype=np.int64).reshape(-1)

    def __len__(self) -> int:
        return len(self.y) if self.rows is None else len(self.rows)

    def __repr__(self) -> str:
        source = "memory-mapped" if isinstance(self.x, np.memmap) else "in memory"
        return f"Rows({len(self)} of {len(self.y)} rows, features {self.x.dtype}{list(self.x.shape[1:])} {source})"

    @property
    def text(self) -> bool:
        """True when the features are strings (a text dataset): batches are lists of str."""
        return self.x.dtype.kind in "US"

    def at(self, positions: Any) -> np.ndarray:
        """The dataset rows at these positions of the set (an index array, a tensor or a slice)."""
        p = _positions(positions)
        if self.rows is None:
            return np.arange(len(self.y))[p] if isinstance(p, slice) else p.astype(np.int64, copy=False)
        return self.rows[p]

    def subset(self, positions: Any) -> Rows:
        """The rows at these positions of the set (or where a boolean mask is true), features untouched."""
        p = _positions(positions)
        if isinstance(p, np.ndarray) and p.dtype == bool:
            p = np.flatnonzero(p)
        return Rows(self.x, self.y, self.at(p))

    def labels(self) -> np.ndarray:
        """Every label of the set (one integer a row: small beside the features)."""
        return np.asarray(self.y if self.rows is None else self.y[self.rows])

    def features(self, positions: Any) -> np.ndarray:
        """The features of the rows at these positions, gathered into memory (a batch's worth)."""
        return self._read(self.at(positions))

    def _read(self, at: np.ndarray) -> np.ndarray:
        if isinstance(self.x, np.memmap) and len(at) > 1 and not np.all(at[1:] > at[:-1]):
            # Random rows of a memory map: read them in file order (fewer seeks), then restore the batch's order.
            order = np.argsort(at, kind="stable")
            out = np.empty((len(at), *self.x.shape[1:]), dtype=self.x.dtype)
            out[order] = self.x[at[order]]
            return out
        return np.asarray(self.x[at])

    def batch(self, positions: Any, device: torch.device) -> tuple[Batch, torch.Tensor]:
        """(features, labels) of the rows at these positions: a float32 tensor, or the strings of a text set."""
        at = self.at(positions)
        y = torch.as_tensor(np.asarray(self.y[at]), dtype=torch.long, device=device)
        xb = self._read(at)
        if self.text:
            return [str(s) for s in xb], y
        return torch.as_tensor(xb, dtype=torch.float32, device=device), y

    def loader(self, batch_size: int, device: torch.device, *, shuffle: bool = False,
               generator: torch.Generator | None = None) -> Iterator[tuple[torch.Tensor, Batch, torch.Tensor]]:
        """(positions, features, labels) batch after batch over the set (seeded shuffle when asked)."""
        for idx in batches(len(self), batch_size, shuffle=shuffle, generator=generator):
            yield (idx, *self.batch(idx, device))

    def tensors(self, device: torch.device) -> tuple[Batch, torch.Tensor]:
        """The whole set as one batch: for small sets and for comparisons with libraries that need tensors (the
        engine itself reads batches)."""
        return self.batch(np.arange(len(self)), device)
