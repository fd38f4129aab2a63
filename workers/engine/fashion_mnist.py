"""Fashion-MNIST from Debian's `dataset-fashion-mnist` package (gzip'd idx files), read offline.

`apt-get install dataset-fashion-mnist` (or `make data-deps`) puts the four files under ROOT; nothing is
downloaded at run time. Images come back as uint8 [n, 28, 28], labels as int64 [n].
"""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np

ROOT = Path(os.environ.get("LETHE_FASHION_MNIST_DIR", "/usr/share/datasets/fashion-mnist"))
FILES = {"train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
         "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")}
CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
           "Ankle boot")
INSTALL_HINT = "apt-get install dataset-fashion-mnist (or `make data-deps`)"


class FashionMNISTMissing(FileNotFoundError):
    """The Debian package is not installed (the message says how to install it)."""


def available(root: Path = ROOT) -> bool:
    """True when all four idx files are present."""
    return all((root / name).is_file() for pair in FILES.values() for name in pair)


def read_idx(path: Path) -> np.ndarray:
    """One gzip'd idx file: magic (0, 0, dtype 0x08 = uint8, ndim), big-endian uint32 dims, then the data."""
    with gzip.open(path, "rb") as f:
        raw = f.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise ValueError(f"{path}: not an unsigned-byte idx file")
    ndim = raw[3]
    dims = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(dims)):
        raise ValueError(f"{path}: {data.size} bytes of data for dims {dims}")
    return data.reshape(dims)


def load(split: str = "train", *, root: Path = ROOT) -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 [n, 28, 28], labels int64 [n]) of `split` ("train": 60,000, "test": 10,000)."""
    if split not in FILES:
        raise ValueError(f"split must be one of {sorted(FILES)}, not {split!r}")
    if not available(root):
        raise FashionMNISTMissing(f"Fashion-MNIST is not under {root}: {INSTALL_HINT}")
    images, labels = (read_idx(root / name) for name in FILES[split])
    if len(images) != len(labels):
        raise ValueError(f"{root}: {len(images)} images but {len(labels)} labels in {split}")
    return images, labels.astype(np.int64)


def subset(n: int, *, split: str = "train", seed: int = 0, root: Path = ROOT) -> tuple[np.ndarray, np.ndarray]:
    """A seeded, class-stratified subset of n images as float32 [n, 1, 28, 28] in [0, 1] and int64 labels."""
    images, labels = load(split, root=root)
    rng = np.random.default_rng(seed)
    per_class = [rng.permutation(np.flatnonzero(labels == c)) for c in range(len(CLASSES))]
    take = np.sort(np.concatenate([idx[: n // len(CLASSES) + (c < n % len(CLASSES))]
                                   for c, idx in enumerate(per_class)]))
    return (images[take].astype(np.float32)[:, None] / 255.0), labels[take]
