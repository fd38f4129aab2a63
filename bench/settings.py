"""The settings the evidence and unlearning benchmarks measure on (also the fixtures of tests/evidence/): a
dataset, its model and recipe, the rows whose labels were flipped, and how a model of the setting is trained and
read (its φ, standardised as the pool's models are)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from workers.engine import evidence as ev
from workers.engine.architectures import build_model
from workers.engine.data import ArraySet
from workers.engine.influence.less import CheckpointRecorder
from workers.engine.reference import fit_pool, logit_confidence, score_pool
from workers.engine.training import train_model

CPU = torch.device("cpu")


@dataclass
class Setting:
    name: str
    x: np.ndarray
    y: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    arch: dict[str, Any]
    recipe: dict[str, Any]
    flipped: np.ndarray  # rows whose label was flipped (empty: none)
    kinds: tuple[str, ...]  # request kinds drawn in this setting

    @property
    def n(self) -> int:
        return len(self.y)

    @property
    def n_classes(self) -> int:
        return int(max(self.y.max(), self.y_test.max())) + 1

    def build(self, seed: int) -> nn.Module:
        torch.manual_seed(seed)
        return build_model(self.arch, input_shape=self.x.shape[1:], n_classes=self.n_classes)

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "n_train": self.n, "n_test": len(self.y_test), "n_flipped": len(self.flipped),
                "arch": self.arch, "recipe": self.recipe, "request_kinds": list(self.kinds)}


def memorisation(epochs: int = 100) -> Setting:
    """The memorising fixture (also the tests'): 400 digits, 100 of them with a wrong label, 350 held out."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x, y = (d.data / 16.0).astype(np.float32), d.target.astype(np.int64)
    rng = np.random.default_rng(0)
    order = rng.permutation(len(x))
    train, test = order[:400], order[400:750]
    ytr = y[train].copy()
    flipped = rng.choice(400, 100, replace=False)
    ytr[flipped] = (ytr[flipped] + rng.integers(1, 10, 100)) % 10
    recipe = {"optimizer": "adam", "lr": 3e-3, "epochs": epochs, "batch_size": 32, "seed": 0, "checkpoints": 0}
    return Setting("memorisation", x[train], ytr, x[test], y[test].astype(np.int64), {"kind": "mlp", "hidden": [128]},
                   recipe, np.sort(flipped), ("random", "flipped"))


def blobs(n: int = 1000, epochs: int = 10, seed: int = 0) -> Setting:
    """The non-memorising fixture (also the tests'): 4 well-separated Gaussian classes in 8 dimensions, linear."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(0, 1, (4, 8)) * 2.0

    def draw(m: int) -> tuple[np.ndarray, np.ndarray]:
        y = rng.integers(0, 4, m)
        return (centers[y] + rng.normal(0, 1, (m, 8))).astype(np.float32), y.astype(np.int64)

    x, y = draw(n)
    xt, yt = draw(400)
    recipe = {"optimizer": "adam", "lr": 1e-2, "epochs": epochs, "batch_size": 64, "seed": 0, "checkpoints": 0}
    return Setting("blobs", x, y, xt, yt, {"kind": "linear"}, recipe, np.empty(0, dtype=np.int64), ("random",))


FASHION_ARCH = {"kind": "cnn", "channels": [8, 16], "hidden": 256}


def fashion(n: int = 5000, *, flip: float = 0.1, n_test: int = 2000, epochs: int = 40) -> Setting:
    """Fashion-MNIST (Debian's dataset-fashion-mnist, workers/engine/fashion_mnist.py): a class-stratified subset
    of n training images with a known share `flip` of the labels changed to another class before training, n_test
    held-out test images, a small CNN (conv 8, conv 16, dense 256: 205k parameters, sized for 2 CPU cores) trained
    with Adam lr 2e-3 for 40 epochs, batch 64: it fits the wrong labels (train accuracy 0.996, 97% of the flipped
    ones) while test accuracy falls from 0.84 at epoch 10 to 0.80, the train/test gap a memorising model has."""
    from workers.engine import fashion_mnist

    x, y = fashion_mnist.subset(n, split="train", seed=0)
    xt, yt = fashion_mnist.subset(n_test, split="test", seed=0)
    y, flipped = flip_labels(y, flip, n_classes=len(fashion_mnist.CLASSES), seed=0)
    recipe = {"optimizer": "adam", "lr": 2e-3, "epochs": epochs, "batch_size": 64, "seed": 0, "checkpoints": 0}
    return Setting("fashion", x, y, xt, yt, dict(FASHION_ARCH), recipe, flipped, ("random", "flipped"))


def flip_labels(y: np.ndarray, share: float, *, n_classes: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A copy of y with round(share·n) rows, drawn at random, moved to another class (each wrong class equally
    likely), and those rows, sorted."""
    rng = np.random.default_rng([seed, 16])
    rows = np.sort(rng.choice(len(y), int(round(share * len(y))), replace=False))
    out = y.copy()
    out[rows] = (out[rows] + rng.integers(1, n_classes, len(rows))) % n_classes
    return out, rows


SETTINGS: dict[str, Callable[..., Setting]] = {"memorisation": memorisation, "blobs": blobs, "fashion": fashion}


def train(setting: Setting, rows: np.ndarray, seed: int, *, order_seed: int | None = None,
          on_epoch_end: Callable[..., None] | None = None) -> nn.Module:
    """A model of the setting's recipe on x[rows]: initialisation from `seed`, batch order from `order_seed`
    (default: `seed`)."""
    net = setting.build(seed)
    train_model(net, ArraySet(setting.x[rows], setting.y[rows]),
                recipe={**setting.recipe, "seed": seed if order_seed is None else order_seed},
                device=CPU, on_epoch_end=on_epoch_end)
    return net.eval()


def raw_phi(net: nn.Module, setting: Setting) -> tuple[np.ndarray, np.ndarray]:
    return (logit_confidence(net, setting.x, setting.y, device=CPU),
            logit_confidence(net, setting.x_test, setting.y_test, device=CPU))


def std_phi(net: nn.Module, setting: Setting) -> np.ndarray:
    """The model's φ on every training point, standardised by its own test φ (workers.engine.api.standardised_phi)."""
    phi, phi_test = raw_phi(net, setting)
    return ev.standardise(phi[None], phi_test[None])[0]


def make_setting(name: str, epochs: int | None = None, *, fashion_n: int = 5000) -> Setting:
    """SETTINGS[name] with its recipe's epochs overridden (blobs: at most 10) and fashion's subset size."""
    kwargs: dict[str, Any] = {} if not epochs else {"epochs": min(epochs, 10) if name == "blobs" else epochs}
    if name == "fashion":
        kwargs["n"] = fashion_n
    return SETTINGS[name](**kwargs)


# ----------------------------------------------------------------------------- a setting's parent and pool

@dataclass
class Fitted:
    setting: Setting
    pool: ev.Pool
    shift: dict[str, Any]  # fit_pool's size-mismatch measurement
    report: dict[str, Any]  # score_pool's certification report
    parent: nn.Module
    parent_phi: np.ndarray  # standardised, every training point
    shift_arg: tuple[np.ndarray, np.ndarray] | None  # what workers/jobs/verdict.py evidence_audit passes as `shift`
    seconds: dict[str, float] = field(default_factory=dict)
    checkpoints: list[Any] = field(default_factory=list)
    parent_train_accuracy: float | None = None


def fit(setting: Setting, *, k: int, shift_models: int, checkpoints: int = 3) -> Fitted:
    """The parent (seed 0, all points; `checkpoints` Adam checkpoints kept on the side for LESS) and its pool."""
    began = time.perf_counter()
    recorder = CheckpointRecorder(int(setting.recipe["epochs"]), k=checkpoints) if checkpoints else None
    parent = train(setting, np.arange(setting.n), int(setting.recipe["seed"]), on_epoch_end=recorder)
    parent_seconds = time.perf_counter() - began
    with torch.no_grad():
        acc = float((parent(torch.as_tensor(setting.x)).argmax(1).numpy() == setting.y).mean())
    began = time.perf_counter()
    pool, shift = fit_pool(setting.build, setting.x, setting.y, setting.x_test, setting.y_test,
                           rows=np.arange(setting.n), k=k, seed=int(setting.recipe["seed"]), recipe=setting.recipe,
                           device=CPU, shift_models=shift_models, target=parent)
    pool_seconds = time.perf_counter() - began
    began = time.perf_counter()
    report = score_pool(pool, seed=int(setting.recipe["seed"]))
    shift_arg = None
    if len(pool.shift_cols):  # as workers/jobs/verdict.py evidence_audit
        at = pool.shift_cols
        shift_arg = (ev.point_stats(pool.phi_std[:, at], pool.in_mask[:, at]).mu_out, pool.shift_offsets)
    return Fitted(setting, pool, shift, report, parent, std_phi(parent, setting), shift_arg,
                  {"parent": parent_seconds, "pool": pool_seconds, "score": time.perf_counter() - began},
                  recorder.checkpoints if recorder else [], acc)
