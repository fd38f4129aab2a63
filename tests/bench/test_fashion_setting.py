"""The Fashion-MNIST setting of bench/evidence.py and bench/unlearning.py (--setting fashion): the data it builds
(a stratified subset with a known set of wrong labels), the forget sets drawn from it, the presets, and the data of
the Fig 5.1/5.2 curves."""

from __future__ import annotations

import argparse

import numpy as np
import pytest

from bench import evidence, settings, unlearning, unlearning_report
from workers.engine import fashion_mnist

needs_data = pytest.mark.skipif(not fashion_mnist.available(), reason="Debian's dataset-fashion-mnist is not "
                                f"installed ({fashion_mnist.INSTALL_HINT})")


def test_flip_labels_moves_exactly_the_share_to_another_class() -> None:
    y = np.repeat(np.arange(10), 50)
    flipped_y, rows = settings.flip_labels(y, 0.1, n_classes=10, seed=0)
    assert len(rows) == 50 and len(np.unique(rows)) == 50 and np.all(np.diff(rows) > 0)
    assert np.all(flipped_y[rows] != y[rows])  # every flipped row lands in another class
    keep = np.setdiff1d(np.arange(len(y)), rows)
    assert np.array_equal(flipped_y[keep], y[keep]) and np.array_equal(y, np.repeat(np.arange(10), 50))
    assert flipped_y.min() >= 0 and flipped_y.max() <= 9
    again, rows_again = settings.flip_labels(y, 0.1, n_classes=10, seed=0)
    assert np.array_equal(again, flipped_y) and np.array_equal(rows_again, rows)  # seeded


@needs_data
def test_fashion_setting_builds_a_cnn_on_a_stratified_subset_with_known_wrong_labels() -> None:
    s = settings.make_setting("fashion", 2, fashion_n=300)
    assert s.name == "fashion" and s.x.shape == (300, 1, 28, 28) and s.x.dtype == np.float32
    assert 0.0 <= s.x.min() and s.x.max() <= 1.0 and s.recipe["epochs"] == 2
    assert s.x_test.shape == (2000, 1, 28, 28) and s.n_classes == 10
    _, true_y = fashion_mnist.subset(300, split="train", seed=0)
    assert np.array_equal(np.flatnonzero(s.y != true_y), s.flipped) and len(s.flipped) == 30
    assert np.bincount(true_y).tolist() == [30] * 10
    net = s.build(0)
    assert net(__import__("torch").as_tensor(s.x[:4])).shape == (4, 10)
    assert s.describe()["arch"] == settings.FASHION_ARCH and s.describe()["name"] == "fashion"


@needs_data
def test_forget_sets_on_fashion_mislabelled_and_one_class() -> None:
    s = settings.make_setting("fashion", 2, fashion_n=500)
    cfg = unlearning.preset("fashion")
    cfg.forget_size, cfg.slice_size = 20, 15
    mis = unlearning.draw_forget(s, "mislabelled", cfg, seed=1)
    assert len(mis) == 20 and np.isin(mis, s.flipped).all()
    one = unlearning.draw_forget(s, "class_slice", cfg, seed=1)
    assert len(one) == 15 and len(np.unique(s.y[one])) == 1
    rnd = unlearning.draw_forget(s, "random", cfg, seed=1)
    assert len(rnd) == 20 and not np.array_equal(rnd, unlearning.draw_forget(s, "random", cfg, seed=2))


def test_presets_size_the_fashion_run_and_keep_the_digits_defaults() -> None:
    digits = unlearning.preset("memorisation")
    assert digits == unlearning.Config() and digits.size == "default"
    fashion = unlearning.preset("fashion")
    assert fashion.setting == "fashion" and fashion.k == 8 and fashion.seeds >= 3 and (0.0, 0.0) in fashion.pruning
    # a class slice the pipeline calls concentrated: above 25% of one class of the 5,000 images' 500
    assert fashion.slice_size > 0.25 * fashion.fashion_n / 10
    quick = unlearning.preset("fashion", "quick")
    assert quick.quick and quick.fashion_n < fashion.fashion_n and quick.size == "quick"
    assert unlearning.preset("fashion", "large").k > fashion.k
    assert "fashion (5000 images)" in unlearning.describe(fashion)


def test_evidence_configure_selects_the_fashion_run() -> None:
    def args(**kw: object) -> argparse.Namespace:
        base = {"setting": "digits", "quick": False, "large": False, "seeds": None, "sweep_seeds": None,
                "pipeline_seeds": None, "k": None, "sizes": None, "no_blobs": False}
        return argparse.Namespace(**(base | kw))

    assert evidence.configure(args()).settings == ("memorisation", "blobs")
    cfg = evidence.configure(args(setting="fashion"))
    assert cfg.settings == ("fashion",) and cfg.sizes == (cfg.main_size,) and cfg.shadow_k == 0
    assert evidence.configure(args(setting="fashion", seeds=7, k=6)).seeds == 7
    assert evidence.configure(args(setting="fashion", quick=True)).fashion_n == 2000


def _summary(kind: str, label: str, q_f: float, q_r: float, seconds: float, stat: float) -> dict[str, object]:
    return {"kind": kind, "label": label, "q_forget": q_f, "q_retain": q_r, "n": 3,
            "seconds": {"mean": seconds}, "statistic": {"mean": stat, "ci95": [stat - 0.1, stat + 0.1]},
            "verdicts": {"passed": {"count": 1}}}


def test_fig5_points_follow_one_fraction_with_the_other_at_zero() -> None:
    summary = [_summary("random", "scrub", 0.4, 0.0, 1.0, 0.5), _summary("random", "scrub", 0.0, 0.0, 2.0, 0.4),
               _summary("random", "scrub", 0.0, 0.4, 1.5, 0.6), _summary("random", "scrub", 0.4, 0.4, 0.5, 0.9),
               _summary("mislabelled", "scrub", 0.2, 0.0, 9.0, 0.1), _summary("random", "iau", 0.2, 0.0, 9.0, 0.1)]
    f = unlearning_report.fig5_points(summary, "random", "scrub", "q_forget")
    assert [(p["q"], p["seconds"], p["statistic"]) for p in f] == [(0.0, 2.0, 0.4), (0.4, 1.0, 0.5)]
    r = unlearning_report.fig5_points(summary, "random", "scrub", "q_retain")
    assert [p["q"] for p in r] == [0.0, 0.4] and r[1]["ci95"] == [0.5, 0.7]
    assert unlearning_report.fig5_points(summary, "class_slice", "scrub", "q_forget") == []
