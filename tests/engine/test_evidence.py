"""The measuring instrument itself: the pool's design, the statistics' null behaviour (a sham pool), group
certification and the audit's decision on synthetic pools whose truth is known."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from workers.engine import evidence as ev


def synthetic(n_null: int = 1500, n_leaky: int = 500, k: int = 16, seed: int = 0) -> tuple[np.ndarray, np.ndarray,
                                                                                            np.ndarray]:
    """Standardised φ of k models: null points (IN = OUT) and leaky points (IN 2σ higher, 2× tighter), plus a
    per-model offset that standardisation by the test φ removes."""
    rng = np.random.default_rng(seed)
    n = n_null + n_leaky
    mask = ev.design(n, k, seed + 1)
    mu = rng.normal(2, 1, n)
    lift = np.r_[np.zeros(n_null), np.full(n_leaky, 2.0)]
    sd_in = np.r_[np.ones(n_null), np.full(n_leaky, 0.5)]
    offset = rng.normal(0, 0.3, (k, 1))
    phi = offset + np.where(mask, mu + lift + sd_in * rng.normal(size=(k, n)), mu + rng.normal(size=(k, n)))
    phi_test = offset + rng.normal(0, 1, (k, 300))
    return ev.standardise(phi, phi_test), mask, lift > 0


def test_design_is_balanced_in_complementary_pairs() -> None:
    mask = ev.design(101, 16, seed=3)
    assert mask.shape == (16, 101)
    assert (mask[0::2] ^ mask[1::2]).all()  # each pair splits the data in two
    assert (mask.sum(0) == 8).all()  # every point IN exactly K/2 models
    assert set(ev.halves(16)[0::2]) == {0, 1} and (ev.halves(16)[0::2] == ev.halves(16)[1::2]).all()
    with pytest.raises(ValueError):
        ev.design(10, 6 + 1, seed=0)


def test_certification_admits_null_points_and_keeps_leaky_ones_out() -> None:
    phi_std, mask, leaky = synthetic()
    cert, scores = ev.certify(phi_std, mask, seed=0)
    assert cert.certified.sum() >= 500
    assert cert.certified[leaky].mean() < 0.02  # a group certificate admits a few at most, never the bulk
    whole = ev.certified_group(scores, mask, cert.certified_by, np.flatnonzero(cert.certified))
    assert whole["auc_hi"] <= 0.55 and whole["tpr_hi"] <= 0.02
    # separation is unbiased at chance for null points (cross-fitted halves), high for leaky ones
    null_sep = cert.separation[~leaky]
    assert abs(null_sep.mean() - 0.5) < 3 * null_sep.std() / np.sqrt(len(null_sep))
    assert cert.separation[leaky].mean() > 0.85
    # a group of leaky points is measured identifiable: lower bound beyond the limit
    leaky_group = ev.group_test(scores[ev.halves(16) == 1][:, leaky], mask[ev.halves(16) == 1][:, leaky])
    assert ev.significantly_identifiable(leaky_group, ev.Limits())


def test_a_pool_of_four_certifies_nothing_and_says_why() -> None:
    phi_std, mask, _ = synthetic(n_null=2000, n_leaky=0, k=4)  # every point null: K = 8 certifies the bulk
    cert, _ = ev.certify(phi_std, mask, seed=0)
    assert not cert.certified.any()
    assert all("2 models (K=4)" in h["not_certified"] for h in cert.halves)
    eight, _ = ev.certify(*synthetic(n_null=2000, n_leaky=0, k=8)[:2], seed=0)
    assert eight.certified.sum() >= 1000 and not any("not_certified" in h for h in eight.halves)


def test_audit_passes_a_retrain_fails_doing_nothing_and_says_inconclusive_without_power() -> None:
    phi_std, mask, leaky = synthetic(seed=1)
    rng = np.random.default_rng(9)
    req = np.flatnonzero(leaky)[:60]
    s = ev.point_stats(phi_std, mask)
    retrained = s.mu_out[req] + np.sqrt(s.var_out[req]) * rng.normal(size=len(req))
    unchanged = s.mu_in[req] + np.sqrt(s.var_in[req]) * rng.normal(size=len(req))
    ok = ev.audit(phi_std[:, req], mask[:, req], retrained, parent_phi_std=unchanged)
    assert ok["verdict"] == "passed" and ok["power"] >= 0.99, ok
    bad = ev.audit(phi_std[:, req], mask[:, req], unchanged, parent_phi_std=unchanged)
    assert bad["verdict"] == "failed" and bad["side"] == "remembers", bad
    over = ev.audit(phi_std[:, req], mask[:, req], retrained - 5 * np.sqrt(s.var_out[req]), parent_phi_std=unchanged)
    assert over["verdict"] == "failed" and over["side"] == "over-forgets", over
    null_req = np.flatnonzero(~leaky)[:60]
    weak = ev.audit(phi_std[:, null_req], mask[:, null_req], s.mu_out[null_req], parent_phi_std=s.mu_in[null_req])
    assert weak["verdict"] == "inconclusive" and weak["power"] < 0.8, weak
    conc = ev.audit(phi_std[:, req], mask[:, req], retrained, parent_phi_std=unchanged, concentrated=True)
    assert conc["verdict"] == "inconclusive" and "concentrated" in conc["why"]
    # without a reference one side still holds: a retrain sits at or below the per-point range, never above it
    conc_bad = ev.audit(phi_std[:, req], mask[:, req], unchanged, parent_phi_std=unchanged, concentrated=True)
    assert conc_bad["verdict"] == "failed" and conc_bad["side"] == "remembers", conc_bad
    conc_low = ev.audit(phi_std[:, req], mask[:, req], retrained - 5 * np.sqrt(s.var_out[req]),
                        parent_phi_std=unchanged, concentrated=True)
    assert conc_low["verdict"] == "inconclusive", conc_low
    judged = ev.audit(phi_std[:, req], mask[:, req], retrained, parent_phi_std=unchanged, concentrated=True,
                      reference_phi_std=retrained + 0.01)
    assert judged["verdict"] == "passed" and judged["null"]["around"] == "retrain reference"


def test_size_shift_is_measured_per_kind_of_point() -> None:
    mu_out = np.r_[np.full(50, 1.0), np.full(50, -4.0)]
    offsets = np.r_[np.zeros(50), np.full(50, -0.5)] + np.random.default_rng(0).normal(0, 0.1, 100)
    shift, se = ev.size_shift(np.array([1.1, -3.9]), mu_out, offsets)
    assert abs(shift[0]) < 0.05 and shift[1] == pytest.approx(-0.5, abs=0.05)
    assert (se > 0).all() and (se < 0.05).all()


def test_concentration_tells_a_targeted_request_from_a_random_one() -> None:
    # 1000 points: 900 typical (OUT means near 0), 100 atypical ones (mislabelled-like, OUT means near −4)
    rng = np.random.default_rng(3)
    mu_out = np.r_[rng.normal(0, 1, 900), rng.normal(-4, 0.5, 100)]
    labels = rng.integers(0, 10, 1000)
    random_req = rng.choice(1000, 40, replace=False)
    r = ev.concentration(mu_out, labels, random_req)
    assert abs(r["depletion"]) < 0.05 and not r["concentrated"], r
    targeted = np.arange(900, 940)  # 40% of the atypical points, 4% of the data
    t = ev.concentration(mu_out, labels, targeted)
    assert t["data_share"] == 0.04 and t["depletion"] > 0.2 and t["concentrated"], t
    assert "similar" in t["why"]
    few = ev.concentration(mu_out, labels, np.arange(900, 905))  # 5% of them: a small composition change
    assert few["depletion"] < ev.AuditRule().max_depletion and not few["concentrated"], few
    big = ev.concentration(mu_out, labels, rng.choice(1000, 150, replace=False))
    assert big["concentrated"] and "of the measured data" in big["why"]
    one_class = np.flatnonzero(labels[:900] == 3)[:40]  # most of a class's typical points
    assert ev.concentration(mu_out, labels, one_class)["class_share"] > 0.25


def test_pool_round_trip_and_row_columns(tmp_path: Path) -> None:
    phi_std, mask, _ = synthetic(n_null=40, n_leaky=10, k=4)
    pool = ev.Pool(rows=np.arange(0, 100, 2), in_mask=mask, phi=phi_std, phi_test=np.zeros((4, 3)),
                   phi_std=phi_std, scores=phi_std, certified_by=np.full(50, -1, dtype=np.int8),
                   separation=np.full(50, 0.5), meta={"k": 4})
    ev.save_pool(pool, tmp_path / "p")
    back = ev.load_pool(tmp_path / "p")
    assert back.k == 4 and back.meta == {"k": 4}
    assert list(back.columns(np.array([0, 2, 3, 98, 1000]))) == [0, 1, -1, 49, -1]
    assert back.phi_std.dtype == np.float32  # half the bytes on disk; the statistics are float64
    np.testing.assert_allclose(back.phi_std, phi_std, rtol=1e-6)


def test_a_sham_pool_reads_chance() -> None:
    """The null check the old calibration failed: every model is trained on ALL points and IN/OUT labels are
    assigned as usual. The mean separation must sit at chance, the per-point 5% test must reject at its nominal
    rate, and the original model must not be flagged (a sham pool has no power, so it cannot pass either)."""
    from scipy.stats import binom
    from sklearn.datasets import load_digits

    from workers.engine.architectures import build_model
    from workers.engine.data import ArraySet
    from workers.engine.reference import logit_confidence
    from workers.engine.training import train_model

    torch.set_num_threads(1)
    d = load_digits()
    x, y = (d.data / 16.0).astype(np.float32), d.target.astype(np.int64)
    order = np.random.default_rng(0).permutation(len(x))
    tr, te = order[:400], order[400:700]
    k, cpu = 16, torch.device("cpu")
    mask = ev.design(400, k, seed=0)
    phi, phi_test = np.empty((k, 400)), np.empty((k, 300))
    original = None
    for m in range(k):
        torch.manual_seed(m)
        net = build_model({"kind": "mlp", "hidden": [64]}, input_shape=(64,), n_classes=10)
        train_model(net, ArraySet(x[tr], y[tr]), recipe={"lr": 3e-3, "epochs": 25, "batch_size": 32, "seed": m},
                    device=cpu)
        phi[m], phi_test[m] = logit_confidence(net, x[tr], y[tr], device=cpu), logit_confidence(net, x[te], y[te],
                                                                                                  device=cpu)
        original = original if original is not None else net
    std = ev.standardise(phi, phi_test)
    cross = ev.cross_scores(std, mask)
    sep = ev.point_auc(cross, mask)
    assert abs(sep.mean() - 0.5) <= 3 * sep.std() / np.sqrt(len(sep)), sep.mean()
    rejected = int((ev.per_point_pvalues(cross, mask) < 0.05).sum())
    assert rejected <= binom.ppf(0.995, 400, 0.05), rejected  # exact Mann-Whitney: at most the nominal rate
    req = np.random.default_rng(1).choice(400, 40, replace=False)
    own = ev.standardise(logit_confidence(original, x[tr][req], y[tr][req], device=cpu)[None],
                         logit_confidence(original, x[te], y[te], device=cpu)[None])[0]
    verdict = ev.audit(std[:, req], mask[:, req], own, parent_phi_std=own)
    assert verdict["verdict"] != "failed", verdict
    assert verdict["null"]["lo"] <= verdict["statistic"] <= verdict["null"]["hi"]
