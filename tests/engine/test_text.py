"""Text through the engine: a text set's batches are its strings, the `bag` kind's encode tokenises them, and every
scorer and unlearning algorithm runs on it (per-example gradients over the encoded tensors, checked against
autograd one example at a time)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F  # noqa: N812

from workers.engine import plugins
from workers.engine.architectures import build_model
from workers.engine.audit import accuracy, audit_model
from workers.engine.data import ArraySet
from workers.engine.influence import compute_self_influence
from workers.engine.params import PARAMS
from workers.engine.textbag import BAG, MAX_TOKENS, tokens
from workers.engine.training import train_model
from workers.engine.unlearning import unlearn

CPU = torch.device("cpu")
BAG_ARCH = {"kind": "bag", "buckets": 512, "dim": 16, "hidden": 16}


@pytest.fixture(scope="module", autouse=True)
def _bag_installed() -> None:
    assert "bag" in plugins.installed_kinds(), (
        "the built-in kind 'bag' is not among the installed entry points: reinstall Lethe (pip install -e .) so its "
        "metadata has the pyproject's lethe.models entry points")


def texts(n: int, seed: int = 0) -> ArraySet:
    """Sentences whose class shows in two of their words, as the Parquet cache stores them (fixed-width str)."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, size=n)
    vocab = [[f"{w}{k}" for w in ("alpha", "bravo", "delta", "omega")] for k in range(3)]
    filler = ["the", "a", "report", "said", "today", "about", "some"]
    x = [" ".join(rng.permutation(list(rng.choice(filler, 4)) + list(rng.choice(vocab[c], 2)))) for c in y]
    return ArraySet(np.array(x), y.astype(np.int64))


@pytest.fixture(scope="module")
def data() -> dict[str, ArraySet]:
    every = texts(260)
    return {"train": every.subset(np.arange(200)), "test": every.subset(np.arange(200, 260)),
            "forget": every.subset(np.arange(12)), "retain": every.subset(np.arange(12, 200))}


@pytest.fixture(scope="module")
def trained(data: dict[str, ArraySet]) -> torch.nn.Module:
    torch.manual_seed(0)
    net = build_model(BAG_ARCH, input_shape=(), n_classes=3)
    train_model(net, data["train"], recipe={"epochs": 8, "batch_size": 32, "lr": 0.02}, device=CPU)
    return net


def test_the_tokenizer_is_stable_hashed_and_bounded() -> None:
    assert tokens("Hello, world!") == tokens("hello world")  # case and punctuation do not matter
    assert len(tokens("a b c")) == 3 + 2  # words, then adjacent pairs
    assert all(0 < t < 2 ** 31 for t in tokens("ünïcode wörds 42"))
    import zlib

    assert tokens("same") == [zlib.crc32(b"same") & 0x7FFFFFFF]  # CRC-32: the same ids in every process
    assert len(tokens(" ".join(["w"] * 10_000))) == MAX_TOKENS
    enc = BAG.encode(["one two", "", "three"])
    assert enc["ids"].shape == enc["mask"].shape == (3, 3) and enc["mask"].sum(1).tolist() == [3.0, 0.0, 1.0]


def test_a_text_set_yields_strings_and_a_bag_model_learns_it(data: dict[str, ArraySet],
                                                             trained: torch.nn.Module) -> None:
    assert data["train"].text
    xb, yb = data["train"].batch([0, 5], CPU)
    assert isinstance(xb, list) and all(isinstance(s, str) for s in xb) and yb.dtype == torch.long
    assert accuracy(trained, data["test"], device=CPU) > 0.8
    # a model without encode() cannot read text, and says so
    mlp = build_model({"kind": "mlp", "hidden": [4]}, input_shape=(8,), n_classes=3)
    with pytest.raises(ValueError, match="no encode"):
        train_model(mlp, data["train"], recipe={"epochs": 1}, device=CPU)


def _per_example_grad_norms(model: torch.nn.Module, data: ArraySet) -> np.ndarray:
    out = []
    for i in range(len(data)):
        x, y = data.batch([i], CPU)
        model.zero_grad()
        F.cross_entropy(model(**BAG.encode(x)), y).backward()
        out.append(float(torch.sqrt(sum((p.grad ** 2).sum() for p in model.parameters()))))
    return np.array(out)


def test_every_scorer_scores_text(data: dict[str, ArraySet], trained: torch.nn.Module) -> None:
    some = data["train"].subset(np.arange(40))
    gradnorm = compute_self_influence("gradnorm", trained, some, device=CPU)
    np.testing.assert_allclose(gradnorm, _per_example_grad_norms(trained, some), rtol=1e-4, atol=1e-7)
    info: dict = {}
    hessian = compute_self_influence("hessian", trained, some, device=CPU, info=info)
    assert hessian.shape == (40,) and np.isfinite(hessian).all() and (hessian >= 0).all()
    assert "embedding.weight" in info["untracked"]  # K-FAC sees the two Linear layers and says what it left out
    less = compute_self_influence("less", trained, some, device=CPU)  # no checkpoints: the squared norm
    np.testing.assert_allclose(less, gradnorm ** 2, rtol=1e-4, atol=1e-9)
    assert compute_self_influence("gradnorm", trained, data["train"], device=CPU, rows=slice(0, 40)).tolist() \
        == pytest.approx(gradnorm.tolist(), rel=1e-6)


@pytest.mark.parametrize("algorithm", sorted(PARAMS))
def test_every_algorithm_unlearns_text(algorithm: str, data: dict[str, ArraySet], trained: torch.nn.Module) -> None:
    params = {"epochs": 1} if "epochs" in PARAMS[algorithm].model_fields else {}
    result = unlearn(algorithm, trained, forget=data["forget"], retain=data["retain"], params=params, device=CPU,
                     build=lambda: build_model(BAG_ARCH, input_shape=(), n_classes=3), recipe={"epochs": 4})
    assert result.model is not trained and result.metrics["algorithm"] == algorithm
    report = audit_model(result.model, forget=data["forget"], retain=data["retain"], test=data["test"], device=CPU)
    assert 0.0 <= report["ra"] <= 1.0 and report["ta"] is not None


def test_the_gradient_restriction_trains_text(data: dict[str, ArraySet]) -> None:
    torch.manual_seed(0)
    net = build_model(BAG_ARCH, input_shape=(), n_classes=3)
    metrics = train_model(net, data["train"].subset(np.arange(64)),
                          recipe={"epochs": 1, "batch_size": 32, "grad_restriction": 0.005}, device=CPU)
    assert np.isfinite(metrics["final_loss"])
