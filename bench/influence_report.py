"""The influence benchmark's output: its tables (per setup, the two-worker speed-up, Kronfluence side by side,
the targets) and its figure."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from bench.influence_worker import CNN


def print_table(results: dict[str, Any]) -> None:
    from rich.console import Console

    console = Console(width=180)
    for table in (*_setup_tables(results), _scale_table(results), _kronfluence_table(results), _targets_table(results)):
        if table is not None:
            console.print(table)


def _setup_tables(results: dict[str, Any]) -> list[Any]:
    """Per setup: every scorer's seconds, cost in epochs, peak RSS and agreement with the reference."""
    from rich.table import Table

    tables = []
    for name, res in results["setups"].items():
        table = Table(title=f"{name}: {res['n']:,} points, {res['params']:,} parameters (one epoch = "
                            f"{res['rows']['epoch']['seconds']:.2f} s; {results['threads_per_process']} torch "
                            "thread(s) per process; load = 1-min load average before)")
        for col in ("scorer", "seconds", "cpu s", "points/s", "× epoch", "× epoch cpu", "peak RSS MB", "ρ vs ref",
                    "low-decile ∩ ref", "load"):
            table.add_column(col, justify="left" if col == "scorer" else "right")
        for job, row in res["rows"].items():
            table.add_row(job, f"{row['seconds']:.2f}", f"{row['cpu_seconds']:.1f}", f"{row['points_per_second']:,.0f}",
                          f"{row['epochs']:.1f}", f"{row['epochs_cpu']:.1f}", f"{row['peak_rss_mb']:.0f}",
                          f"{row.get('spearman_vs_reference', float('nan')):.3f}",
                          f"{row.get('low_decile_overlap_vs_reference', float('nan')):.2f}",
                          f"{row['load_before']:.1f}")
        tables.append(table)
    return tables


def _scale_table(results: dict[str, Any]) -> Any:
    """Two workers against one on the CNN's points (None when not measured)."""
    from rich.table import Table

    if not results.get("scale_out"):
        return None
    n = results["setups"][CNN]["n"]
    table = Table(title=f"{CNN}: two workers vs one on {n:,} points (workers × torch threads each; "
                        "hessian: prepare fits the factors once, shards load them)")
    for col in ("scorer", "config", "prepare s", "shards wall s", "total s", "points/s", "× epoch",
                "cpu s (crit. path)", "peak RSS MB/worker", "speed-up", "load"):
        table.add_column(col, justify="left" if col in ("scorer", "config") else "right")
    for job, res in results["scale_out"].items():
        for cfg, run in res["runs"].items():
            speed = ""
            if cfg == "2x1":
                short = {k: "vs 1×" + k.split(" vs 1 worker × ")[1][0] for k in res["speedup"]}
                speed = "\n".join(f"{v:.2f}× {short[k]}" for k, v in res["speedup"].items())
                speed += "".join(f"\n{v:.2f}× {short[k]} (cpu)"
                                 for k, v in res["speedup_from_cpu_time"].items())
            table.add_row(job, f"{run['workers']} × {run['threads_per_worker']}", f"{run['prepare_seconds']:.1f}",
                          f"{run['parallel_wall_seconds']:.1f}", f"{run['total_seconds']:.1f}",
                          f"{run['points_per_second']:,.0f}", f"{run['epochs']:.1f}",
                          f"{run['critical_path_cpu_seconds']:.1f}", f"{run['peak_rss_mb']:.0f}",
                          speed, f"{run['load_before']:.1f}")
    return table


def _kronfluence_table(results: dict[str, Any]) -> Any:
    """Kronfluence's EK-FAC against ours on the same points (None when not measured)."""
    from rich.table import Table

    if not results.get("kronfluence"):
        return None
    kf = results["kronfluence"]
    table = Table(title=f"Kronfluence {kf['rows'][_theirs(kf)]['info'].get('kronfluence')} EK-FAC vs ours on the "
                        f"CNN's first {kf['n']:,} points (factor fitting included on both sides)")
    for col in ("scorer", "seconds", "factors s", "cpu s", "points/s", "Kronfluence s ÷ ours", "cpu s ÷ ours",
                "ρ vs Kronfluence", "low-decile ∩", "peak RSS MB", "load"):
        table.add_column(col, justify="left" if col == "scorer" else "right")
    for job, row in kf["rows"].items():
        factors = row['info'].get('factor_seconds')
        table.add_row(job, f"{row['seconds']:.1f}", "–" if factors is None else f"{factors:.1f}",
                      f"{row['cpu_seconds']:.1f}", f"{row['points_per_second']:,.1f}",
                      f"{row.get('kronfluence_seconds_ratio', 1.0):.1f}",
                      f"{row.get('kronfluence_cpu_seconds_ratio', 1.0):.1f}",
                      f"{row.get('spearman_vs_reference', float('nan')):.3f}",
                      f"{row.get('low_decile_overlap_vs_reference', float('nan')):.2f}",
                      f"{row['peak_rss_mb']:.0f}", f"{row['load_before']:.1f}")
    return table


def _targets_table(results: dict[str, Any]) -> Any:
    """Issue 4's targets, PASS / MISS at N ≥ 20,000."""
    from rich.table import Table

    table = Table(title="Issue 4 targets (at N ≥ 20,000)")
    for col in ("target", "setup", "measured (wall)", "status", "on CPU time"):
        table.add_column(col)
    for t in results["targets"]:
        style = "green" if t["status"] == "PASS" else "red" if t["status"] == "MISS" else "dim"
        cpu = "" if t["measured_cpu_time"] is None else \
            f"{t['measured_cpu_time']:.2f} {t['status_cpu_time'].split()[0]}"
        table.add_row(t["target"], t["setup"], t["shown"], f"[{style}]{t['status']}[/{style}]", cpu)
    return table


def plot(results: dict[str, Any], kf_scores: tuple[np.ndarray, np.ndarray] | None, path: Path) -> None:
    import matplotlib
    import matplotlib.ticker

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(13, 4.8))
    ax = axes[0]
    names = [j for j in next(iter(results["setups"].values()))["rows"] if j != "epoch"]  # in JOBS' order
    width = 0.4
    for k, (setup, res) in enumerate(results["setups"].items()):
        ax.barh(np.arange(len(names)) + (k - 0.5) * width, [res["rows"][j]["epochs"] for j in names], width,
                label=f"{setup} (N={res['n']:,})")
    ax.set_yticks(np.arange(len(names)), names)
    ax.invert_yaxis()
    ax.axvline(1.5, color="grey", ls=":", lw=1)
    ax.axvline(3.0, color="grey", ls="--", lw=1)
    ax.set_xscale("log")
    ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}"))
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.set_xlabel("cost in plain forward+backward epochs (log; targets 1.5× gradnorm, 3× hessian)")
    ax.legend(fontsize=8)
    ax = axes[1]
    kf = results.get("kronfluence")
    if kf and kf_scores is not None:
        from scipy.stats import rankdata

        theirs, ours = kf_scores
        ax.scatter(rankdata(theirs) / len(theirs), rankdata(ours) / len(ours), s=3, alpha=0.5)
        row = kf["rows"][kf["matched"]]
        ax.set_title(f"first {kf['n']:,} CNN points: ρ = {row['spearman_vs_reference']:.3f}, "
                     f"Kronfluence {row['kronfluence_seconds_ratio']:.1f}× slower", fontsize=10)
        ax.set_xlabel("Kronfluence EK-FAC self-influence (rank quantile)")
        ax.set_ylabel(f"ours, {kf['matched']} (rank quantile)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _theirs(kf: dict[str, Any]) -> str:
    """The Kronfluence row of the side-by-side comparison (every other row is ours)."""
    return next(job for job in kf["rows"] if job not in kf["ours"])
