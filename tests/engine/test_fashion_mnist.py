import gzip
from pathlib import Path

import numpy as np
import pytest

from workers.engine import fashion_mnist


def _write_idx(path: Path, array: np.ndarray) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + np.asarray(array.shape, dtype=">u4").tobytes()
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


@pytest.fixture
def fake_root(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    for split, n in (("train", 50), ("test", 20)):
        images, labels = fashion_mnist.FILES[split]
        _write_idx(tmp_path / images, rng.integers(0, 256, size=(n, 28, 28)))
        _write_idx(tmp_path / labels, np.arange(n) % 10)
    return tmp_path


def test_reads_idx_files_and_stratifies_subsets(fake_root: Path) -> None:
    x, y = fashion_mnist.load("test", root=fake_root)
    assert x.shape == (20, 28, 28) and x.dtype == np.uint8 and y.dtype == np.int64
    assert y.tolist() == [i % 10 for i in range(20)]
    xs, ys = fashion_mnist.subset(23, root=fake_root, seed=1)
    assert xs.shape == (23, 1, 28, 28) and 0.0 <= xs.min() and xs.max() <= 1.0
    counts = np.bincount(ys, minlength=10)
    assert counts.max() - counts.min() <= 1  # stratified: 23 = 3 × 3 + 2 × 7


def test_missing_package_says_how_to_install(tmp_path: Path) -> None:
    assert not fashion_mnist.available(tmp_path)
    with pytest.raises(fashion_mnist.FashionMNISTMissing, match="apt-get install dataset-fashion-mnist"):
        fashion_mnist.load(root=tmp_path)


def test_rejects_a_file_that_is_not_idx(fake_root: Path) -> None:
    with gzip.open(fake_root / fashion_mnist.FILES["train"][0], "wb") as f:
        f.write(b"PK\x03\x04 not idx")
    with pytest.raises(ValueError, match="not an unsigned-byte idx file"):
        fashion_mnist.load(root=fake_root)


@pytest.mark.skipif(not fashion_mnist.available(), reason="Debian's dataset-fashion-mnist is not installed "
                    f"({fashion_mnist.INSTALL_HINT})")
def test_the_installed_package_has_60000_and_10000_images() -> None:
    x, y = fashion_mnist.load("train")
    assert x.shape == (60000, 28, 28) and np.bincount(y).tolist() == [6000] * 10
    assert fashion_mnist.load("test")[0].shape == (10000, 28, 28)
