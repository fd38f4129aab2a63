"""bench/evidence.py in its smallest configuration, so the script cannot rot between full runs (no timing asserts:
the numbers of such a small run mean nothing; only the shape of what it writes is checked)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench import common, evidence, evidence_report


def test_clopper_pearson_matches_the_exact_bounds() -> None:
    lo, hi = common.clopper_pearson(0, 100)
    assert lo == 0.0 and hi == pytest.approx(1 - 0.025 ** (1 / 100), rel=1e-9)  # 3.62%: 0/100 passes ≤ 5%
    lo, hi = common.clopper_pearson(100, 100)
    assert hi == 1.0 and lo == pytest.approx(0.025 ** (1 / 100), rel=1e-9)
    lo, hi = common.clopper_pearson(1, 100)
    assert lo < 0.01 < hi and hi > 0.05  # one false alarm in 100 seeds cannot show ≤ 5%


def test_smallest_run_writes_every_part(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = evidence.Config(seeds=3, sweep_seeds=2, main_size=10, sizes=(5, 10), k=8, shift_models=2, shadow_k=4,
                          pipeline_seeds=1, epochs=5)
    out = tmp_path / "evidence.json"
    results = common.run_and_report(evidence.run, cfg, out, write=evidence_report.write,
                                    print_tables=evidence_report.print_tables)
    assert out.with_suffix(".png").stat().st_size > 0
    # a run of one setting with flipped labels under another name (fashion) still draws its scatter
    import matplotlib.pyplot as plt

    drawn, close = [], plt.close
    monkeypatch.setattr(plt, "close", lambda fig: (drawn.append(fig), close(fig)))
    evidence_report.plot(results | {"settings": {"fashion": results["settings"]["memorisation"]}}, tmp_path / "f.png")
    assert drawn[0].axes[3].collections and "fashion:" in drawn[0].axes[3].get_title()
    saved = json.loads(out.read_text())
    assert set(saved["settings"]) == {"memorisation", "blobs"}
    mem = saved["settings"]["memorisation"]
    for kind in ("random", "flipped"):
        main = mem["false_alarms"][kind]
        assert main["n"] == 3 and main["retrain"]["failed"]["n"] == 3
        assert set(mem["sweep"][kind]) == {"5", "10"} and mem["sweep"][kind]["5"]["n"] == 2
        assert mem["false_alarms_pipeline_seeds"][kind]["n"] == 1
        # a statistic is None (inconclusive) when the request carries too little separation (evidence.MIN_WEIGHT)
        assert 1 <= mem["size_shift"]["by_kind"][kind]["retrain_statistic_uncorrected"]["n"] <= 3
    assert all(r["retrain"]["verdict"] in common.VERDICTS and r["do_nothing"]["verdict"] in common.VERDICTS
               for r in mem["replicates"])
    assert "shift_out" in mem["size_shift"]["measured"]
    assert set(mem["scorers"]["scorers"]) == {"gradnorm", "hessian", "less", "less_ckpt", "hessian_phi"}
    assert all(-1 <= row["spearman"] <= 1 for row in mem["scorers"]["scorers"].values())
    assert mem["certified"]["n_points"] == 400 and "flipped_certified" in mem["certified"]
    assert saved["settings"]["blobs"]["false_alarms"]["random"]["n"] == 3
    assert saved["targets"] and {t["status"] for t in saved["targets"]} <= {"PASS", "MISS", "n/a"}
    assert saved["machine"]["cpus"] and saved["config"]["k"] == 8
