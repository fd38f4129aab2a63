"""bench/certify_k.py at its smallest, so the script cannot rot between runs (the numbers of so small a run mean
nothing: only that it runs through and reports each certified set on the fresh models)."""

from __future__ import annotations

import numpy as np
import pytest

from bench import certify_k
from workers.engine import fashion_mnist

pytestmark = pytest.mark.skipif(not fashion_mnist.available(), reason="Debian's dataset-fashion-mnist is not "
                                f"installed ({fashion_mnist.INSTALL_HINT})")


def test_the_recipes_are_the_demos_cnn_on_the_benchmarks_fashion_setting() -> None:
    demo, memorising = certify_k.setting("demo", 200), certify_k.setting("memorising", 200)
    assert demo.arch == certify_k.DEMO_ARCH and demo.recipe["epochs"] == 4 and len(demo.flipped) == 0
    assert memorising.recipe["epochs"] == 30 and len(memorising.flipped) == 20
    np.testing.assert_array_equal(demo.x, memorising.x)  # the same images; only labels and epochs differ


def test_smallest_run_reports_both_pool_sizes() -> None:
    res = certify_k.run("demo", replicates=1, fresh=4, n=120)
    assert [r["k"] for r in res["rows"]] == [8, 16] and res["fresh_models"] == 4
    for row in res["rows"]:
        assert 0 <= row["n_certified"] <= 120
        assert row["fresh"]["n"] == row["n_certified"]  # every certified set measured on the fresh models
    certify_k.table({"settings": {"demo": res}})
