"""bench/unlearning.py on a tiny configuration: the JSON it writes has every part, and the audit it runs can fail
(the do-nothing reference, the parent itself, fails on mislabelled points it memorised)."""

from __future__ import annotations

import json
from pathlib import Path

from bench import common, unlearning, unlearning_report


def test_tiny_run_writes_every_part_and_doing_nothing_fails(tmp_path: Path) -> None:
    cfg = unlearning.Config(seeds=2, variants=("finetune", "iau", "iau_scaled", "imu_per_point"),
                            pruning=((0.0, 0.0), (0.4, 0.0)), fa_seeds=2, fig41_n=(20,), k=8, shift_models=2,
                            strengths=2, quick=True)
    out = tmp_path / "unlearning.json"
    common.run_and_report(unlearning.run, cfg, out, write=unlearning_report.write,
                          print_tables=unlearning_report.print_tables)
    assert out.with_suffix(".png").stat().st_size > 0
    saved = json.loads(out.read_text())
    assert saved["size"] == "quick" and saved["config"]["seeds"] == 2
    # 3 forget sets × 2 seeds × (2 references + 4 variants × (2 pruning levels + 1 stronger attempt))
    assert len(saved["rows"]) == 3 * 2 * (2 + 4 * 3)
    assert {r["label"] for r in saved["rows"] if r.get("strength") == 2} == {
        "finetune@2", "iau@2", "iau_scaled@2", "imu_per_point@2"}
    for row in saved["rows"]:
        assert row["verdict"] in ("passed", "failed", "inconclusive")
        assert {"fa", "ra", "ta", "avg_gap", "gap", "seconds", "statistic"} <= set(row)
    retrain = [r for r in saved["rows"] if r["label"] == "retrain"]
    assert all(r["avg_gap"] == 0 for r in retrain)
    # The memorised wrong labels: the parent still fits them, the audit catches it in every seed.
    do_nothing = [r for r in saved["rows"] if r["label"] == "do_nothing" and r["kind"] == "mislabelled"]
    assert len(do_nothing) == 2 and all(r["verdict"] == "failed" for r in do_nothing)
    assert all(r["fa"] > 0.9 for r in do_nothing)
    # The class slice is concentrated: audited around a retrain reference, not per point.
    assert all(r["concentrated"] for r in saved["rows"] if r["kind"] == "class_slice")
    summary = {(s["kind"], s["label"], s["q_forget"]) for s in saved["summary"]}
    assert ("random", "iau_scaled", 0.4) in summary and ("mislabelled", "do_nothing", 0.0) in summary
    s = next(s for s in saved["summary"] if s["label"] == "finetune" and s["kind"] == "random")
    assert s["fa"]["n"] == 2 and s["fa"]["ci95"][0] <= s["fa"]["mean"] <= s["fa"]["ci95"][1]
    assert saved["less_fix"]["less_own"]["negative_share"] == 0
    assert {x["scorer"] for x in saved["fig41"]} == set(unlearning.FIG41_SCORERS)
    assert saved["false_alarms"]["random"]["retrain_failed"]["n"] == 2
    # The job's ladder: every variant, every (forget set, seed), ending somewhere; retrain ends cost the most.
    ladder = saved["ladders"]["finetune"]
    assert sum(ladder["ended_at"].values()) == 3 * 2
    assert ladder["seconds_to_promote"]["mean"] > 0
    assert {t["status"] for t in saved["targets"]} <= {"PASS", "MISS", "n/a"}
