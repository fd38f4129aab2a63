"""The evidence benchmark's output: its tables, its figure (false alarms and power by request size, scorers vs
separation) and its JSON (one line per replicate)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import json_default

FALSE_ALARM_MAX = 0.05  # target: retrains called failed at most this often (the upper end of the CP interval)


def _pct(r: dict[str, Any]) -> str:
    lo, hi = r["ci95"]
    return f"{r['count']:3d}/{r['n']:<3d} {100 * r['rate']:5.1f}% [{100 * lo:4.1f}, {100 * hi:4.1f}]"


def _num(v: float | None, fmt: str = ".3f") -> str:
    return "n/a" if v is None else format(v, fmt)


def print_tables(results: dict[str, Any]) -> None:
    for name, res in results["settings"].items():
        print(f"\n=== {name}: {res['setting']['n_train']} points, K={res['pool']['k']}, "
              f"{res['pool']['n_certified']} certified, {res['seconds']['total'] / 60:.1f} min")
        for part in (_false_alarms, _request_sizes, _size_mismatch, _scorers, _certified):
            part(res)
    print("\ntargets")
    for t in results["targets"]:
        print(f"  {t['status']:4s}  {t['setting']:12s} {t['target']}: {t['shown']}")


def _false_alarms(res: dict[str, Any]) -> None:
    """1. Retrains without the request and doing nothing: the verdicts, per request kind."""
    print("\n1. false alarms: audit verdicts of retrains without the request (new seed) and of doing nothing")
    print("   (job): retrained with the fixed seeds of a Lethe retrain job, only the request varies")
    print("   conc.: share of requests the pipeline calls concentrated; pipeline: the verdict with a retrain "
          "reference for those (policy.audit.retrain_reference), the per-point null's own verdict for the rest")
    print(f"{'request':15s} {'retrain failed (CP95)':29s} {'inconcl.':>8s} {'passed':>7s} "
          f"{'do-nothing failed':>19s} {'d-n inconcl.':>12s} {'power':>6s} {'conc.':>5s} "
          f"{'pipeline: retrain failed (CP95)':>33s} {'do-nothing failed':>18s}")
    rows = [*res["false_alarms"].items(),
            *((f"{kind} (job)", s) for kind, s in res["false_alarms_pipeline_seeds"].items())]
    for kind, s in rows:
        r, d = s["retrain"], s["do_nothing"]
        rr, dr = s["retrain_with_reference"], s["do_nothing_with_reference"]
        print(f"{kind:15s} {_pct(r['failed']):29s} {r['inconclusive']['rate']:8.3f} {r['passed']['rate']:7.3f} "
              f"{d['failed']['rate']:19.3f} {d['inconclusive']['rate']:12.3f} {_num(s['power']['mean']):>6s} "
              f"{s['concentrated']:5.2f} {_pct(rr['failed']):>33s} {dr['failed']['rate']:18.3f}")


def _request_sizes(res: dict[str, Any]) -> None:
    """2. Power and verdict shares by request size."""
    print("\n2. request sizes (pipeline: concentrated requests are inconclusive without a retrain reference; "
          "shares below are the per-point null's own; depl.: the mean depletion of similar points)")
    print(f"{'kind':8s} {'size':>4s} {'n':>4s} {'conc':>4s} {'depl.':>6s} {'power':>6s} {'P≥.8':>5s} "
          f"{'retrain F/I/P':>17s} "
          f"{'do-nothing F/I/P':>17s} {'retrain failed CP95':>22s} {'F sides R/O':>11s} {'retrain stat':>12s} "
          f"{'null c ± hw':>13s}")
    for kind, sizes in res["sweep"].items():
        for size, s in sizes.items():
            r, d = s["retrain"], s["do_nothing"]
            print(f"{kind:8s} {size:>4s} {s['n']:4d} {s['concentrated']:4.2f} "
                  f"{_num(s['depletion']['mean'], '+.3f'):>6s} "
                  f"{_num(s['power']['mean']):>6s} {s['power_ge_0.8']:5.2f} "
                  f"{r['failed']['rate']:5.2f}/{r['inconclusive']['rate']:4.2f}/{r['passed']['rate']:4.2f} "
                  f"{d['failed']['rate']:6.2f}/{d['inconclusive']['rate']:4.2f}/{d['passed']['rate']:4.2f} "
                  f"{'':4s}[{100 * r['failed']['ci95'][0]:4.1f}, {100 * r['failed']['ci95'][1]:5.1f}]% "
                  f"{r['sides']['remembers']:5d}/{r['sides']['over-forgets']:<5d} "
                  f"{_num(r['statistic']['mean'], '+.3f'):>12s} "
                  f"{_num(s['null_center']['mean'], '+.2f'):>6s} ± {_num(s['null_half_width']['mean'], '.2f')}")


def _size_mismatch(res: dict[str, Any]) -> None:
    """3. The measured size shift and what correcting for it changes."""
    m = res["size_shift"]["measured"]
    print(f"\n3. size mismatch: measured shift_out median {_num(m.get('shift_out'))}, mean "
          f"{_num(m.get('shift_out_mean'))} ± {_num(m.get('shift_out_se'))} (OUT-spread units, "
          f"{m.get('n_points')} points, {m.get('models')} full-size models); target vs IN: shift_in median "
          f"{_num(m.get('shift_in'))}")
    print(f"{'kind':8s} {'retrain stat corr.':>20s} {'uncorr.':>16s} {'failed corr.':>13s} {'uncorr.':>8s} "
          f"{'do-nothing corr.':>17s} {'uncorr.':>8s} {'effect':>7s}")
    for kind, s in res["size_shift"]["by_kind"].items():
        c, u = s["retrain_statistic_corrected"], s["retrain_statistic_uncorrected"]
        print(f"{kind:8s} {c['mean']:+8.3f} ± {c['sd']:.3f} {u['mean']:+8.3f} ± {u['sd']:.3f} "
              f"{s['retrain_failed_corrected']['rate']:13.3f} {s['retrain_failed_uncorrected']['rate']:8.3f} "
              f"{s['do_nothing_statistic_corrected']['mean']:+17.3f} "
              f"{s['do_nothing_statistic_uncorrected']['mean']:+8.3f} {s['correction_effect']['mean']:+7.3f}")


def _scorers(res: dict[str, Any]) -> None:
    """4. Self-influence scorers against the pool's separation."""
    sc = res["scorers"]
    rd = sc["random_decile_separation"]
    print(f"\n4. scorers vs the pool's separation (mean {sc['separation']['mean']:.3f}; random decile "
          f"{rd['mean']:.3f} [{rd['lo']:.3f}, {rd['hi']:.3f}])")
    print(f"{'scorer':12s} {'spearman':>9s} {'clean only':>10s} {'lowest decile':>14s} {'highest decile':>15s}"
          f" {'flipped in lowest':>18s}")
    for scorer, row in sc["scorers"].items():
        print(f"{scorer:12s} {row['spearman']:+9.3f} {_num(row.get('spearman_clean_only'), '+.3f'):>10s} "
              f"{row['lowest_decile_separation']:14.3f} {row['highest_decile_separation']:15.3f} "
              f"{row['lowest_decile_flipped']:18d}")


def _certified(res: dict[str, Any]) -> None:
    """5. The certified free set, and its group LiRA on fresh shadow models."""
    c = res["certified"]
    cs, ind = c["certified_set"], c["independent"] or {}
    print(f"\n5. certified free set: {c['n_certified']} of {c['n_points']}"
          + (f" ({c['flipped_certified']} flipped)" if "flipped_certified" in c else "")
          + f"; pool group AUC {_num(cs.get('auc'))} (≤ {_num(cs.get('auc_hi'))}), TPR@1% {_num(cs.get('tpr'))} "
            f"(≤ {_num(cs.get('tpr_hi'))})")
    for h in c["halves"]:
        first = h["curve"][0] if h["curve"] else None
        if first:
            print(f"   select half {h['select_half']}: {h['n_certified']} certified; smallest prefix tried "
                  f"({first['n']} least separated points): AUC {_num(first['auc'])} (≤ {_num(first['auc_hi'])}), "
                  f"TPR@1% {_num(first['tpr'])} (≤ {_num(first['tpr_hi'])})")
    if ind.get("auc") is not None:
        print(f"   on {ind['models']} fresh shadow models: AUC {ind['auc']:.3f} [{ind['auc_lo']:.3f}, "
              f"{ind['auc_hi']:.3f}], TPR@1% {ind['tpr']:.3f} [{ind['tpr_lo']:.3f}, {ind['tpr_hi']:.3f}]; "
              f"all points {ind['all_points_auc']:.3f}")


def plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(14, 9.5))
    (ax_fa, ax_pow), (ax_rho, ax_sc) = axes
    _plot_sizes(ax_fa, ax_pow, results)
    _plot_scorers(ax_rho, results)
    # the scatter needs a setting with flipped labels: memorisation in a digits run, fashion in a Fashion-MNIST one
    shown = next(((n, r) for n, r in results["settings"].items() if len(r.get("_plot", {}).get("flipped", []))),
                 None)
    if shown is None:
        ax_sc.set_axis_off()
        ax_sc.text(0.5, 0.5, "no setting with flipped labels in this run", ha="center", va="center")
    else:
        _plot_separation(ax_sc, *shown)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _plot_sizes(ax_fa: Any, ax_pow: Any, results: dict[str, Any]) -> None:
    """By request size: retrains' false alarms (left), power and do-nothing failures (right)."""
    import matplotlib.ticker

    series = [(name, kind, sizes) for name, res in results["settings"].items() for kind, sizes in res["sweep"].items()]
    for j, (name, kind, sizes) in enumerate(series):
        xs = np.array([int(s) for s in sizes]) * 1.04 ** (j - (len(series) - 1) / 2)  # side by side on a log axis
        conc = np.array([s["concentrated"] > 0.5 for s in sizes.values()])
        fa = [s["retrain"]["failed"] for s in sizes.values()]
        y = np.array([r["rate"] for r in fa])
        err = np.array([[r["rate"] - r["ci95"][0] for r in fa], [r["ci95"][1] - r["rate"] for r in fa]])
        line = ax_fa.errorbar(xs, y, yerr=err, marker="o", capsize=3, label=f"{name} {kind}: failed").lines[0]
        if conc.any():
            ax_fa.scatter(xs[conc], y[conc], s=110, facecolors="none", edgecolors="k", zorder=5)
        ax_fa.plot(xs, [s["retrain"]["inconclusive"]["rate"] for s in sizes.values()], ":", color=line.get_color(),
                   alpha=0.6, label=f"{name} {kind}: inconclusive")
        pw = [s["power"] for s in sizes.values()]
        ax_pow.errorbar(xs, [p["mean"] for p in pw], yerr=[p["sd"] for p in pw], marker="o", capsize=3,
                        color=line.get_color(), label=f"{name} {kind}: power (mean ± sd)")
        ax_pow.plot(xs, [s["do_nothing"]["failed"]["rate"] for s in sizes.values()], "x--", color=line.get_color(),
                    label=f"{name} {kind}: do nothing failed")
    ax_fa.axhline(FALSE_ALARM_MAX, color="grey", ls="--", lw=1, label="5% bound")
    ax_fa.scatter([], [], s=110, facecolors="none", edgecolors="k",
                  label="mostly concentrated (pipeline: retrain reference or inconclusive)")
    ax_pow.axhline(results["audit_rule"]["min_power"], color="grey", ls=":", lw=1, label="min power")
    for ax, title, ylabel in ((ax_fa, "retrains without the request: verdict 'failed' (false alarms, CP 95%)",
                               "share of retrains"),
                              (ax_pow, "power vs 'not unlearned', and the parent audited as the candidate",
                               "power / share failed")):
        ax.set_xscale("log")
        sizes_ = sorted({int(s) for *_, sz in series for s in sz})
        ax.set_xticks(sizes_, [str(s) for s in sizes_])
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set_xlabel("request size (points)")
        ax.set_ylabel(ylabel)
        ax.set_ylim(-0.05, 1.05)
        ax.set_title(title, fontsize=10)
        ax.legend(fontsize=7, loc="center" if ax is ax_fa else "center right")


def _plot_scorers(ax_rho: Any, results: dict[str, Any]) -> None:
    """Each scorer's Spearman correlation with the pool's separation, per setting (and memorisation's clean points)."""
    names = list(next(iter(results["settings"].values()))["scorers"]["scorers"])
    bars = [(f"{n} all", r["scorers"]["scorers"]) for n, r in results["settings"].items()]
    mem = results["settings"].get("memorisation")
    if mem:
        bars.insert(1, ("memorisation clean only", {k: {"spearman": v.get("spearman_clean_only")}
                                                   for k, v in mem["scorers"]["scorers"].items()}))
    width = 0.8 / len(bars)
    for j, (label, rows) in enumerate(bars):
        ax_rho.bar(np.arange(len(names)) + (j - (len(bars) - 1) / 2) * width,
                   [rows[n]["spearman"] or 0.0 for n in names], width, label=label)
    labels = {"less": "less\n(no ckpts)", "less_ckpt": "less\n(3 Adam ckpts)",
              "hessian_phi": "hessian/(1−p_y)²"}
    ax_rho.set_xticks(np.arange(len(names)), [labels.get(n, n) for n in names])
    ax_rho.axhline(0, color="k", lw=0.8)
    ax_rho.set_ylabel("Spearman ρ with the pool's separation")
    ax_rho.set_title("self-influence scorers vs measured separation (they rank; they never decide)", fontsize=10)
    ax_rho.legend(fontsize=7)


def _plot_separation(ax_sc: Any, name: str, mem: dict[str, Any]) -> None:
    """A setting with flipped labels: each point's separation against its hessian self-influence rank, flipped
    points apart."""
    from scipy.stats import rankdata

    p = mem["_plot"]
    sep, score = p["separation"], p["scores"]["hessian"]
    flip = np.zeros(len(sep), dtype=bool)
    flip[p["flipped"]] = True
    q = rankdata(score) / len(score)
    ax_sc.scatter(q[~flip], sep[~flip], s=6, alpha=0.5, label="clean")
    ax_sc.scatter(q[flip], sep[flip], s=6, alpha=0.7, label="flipped")
    ax_sc.axvline(0.1, color="grey", ls="--", lw=1, label="lowest decile")
    rho = mem["scorers"]["scorers"]["hessian"]["spearman"]
    ax_sc.set_title(f"{name}: separation vs hessian self-influence rank (ρ = {rho:.2f})", fontsize=10)
    ax_sc.set_xlabel("hessian self-influence (rank quantile)")
    ax_sc.set_ylabel("pool separation (per-point LiRA AUC)")
    ax_sc.axhline(0.5, color="grey", ls=":", lw=1)
    ax_sc.legend(fontsize=7)


def write(results: dict[str, Any], out: Path) -> None:
    """JSON without the plot's arrays (one line per replicate: hundreds of them), PNG next to it."""
    plot(results, out.with_suffix(".png"))
    lines: list[str] = []
    settings = {}
    for name, res in results["settings"].items():
        tokens = []
        for rep in res["replicates"]:
            tokens.append(f"@@replicate{len(lines)}@@")
            lines.append(json.dumps(rep, default=json_default, ensure_ascii=False))
        settings[name] = {k: v for k, v in res.items() if k != "_plot"} | {"replicates": tokens}
    text = json.dumps({**results, "settings": settings}, indent=1, default=json_default, ensure_ascii=False)
    for i, line in enumerate(lines):
        text = text.replace(f'"@@replicate{i}@@"', line, 1)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
