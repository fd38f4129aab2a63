"""The unlearning benchmark's summaries and output: intervals over seeds, verdict counts, the escalation ladders,
the fastest passing configuration, the tables, Fig 5.1/5.2 and Fig 4.1, and the JSON."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from bench import common

GAP_KEYS = ("ua", "ra", "ta", "mia_efficacy")


def interval(values: list[float | None]) -> dict[str, Any]:
    """Mean and the 95% t-interval over seeds (None when fewer than two values)."""
    from scipy.stats import t

    v = np.asarray([x for x in values if x is not None], dtype=np.float64)
    if not len(v):
        return {"mean": None, "ci95": [None, None], "n": 0}
    if len(v) < 2:
        return {"mean": float(v.mean()), "ci95": [None, None], "n": 1}
    half = float(t.ppf(0.975, len(v) - 1) * v.std(ddof=1) / np.sqrt(len(v)))
    return {"mean": float(v.mean()), "ci95": [float(v.mean() - half), float(v.mean() + half)], "n": int(len(v))}


METRICS = ("fa", "ra", "ta", "mia_auc", "mia_efficacy", "statistic", "avg_gap", "seconds")


def summarise(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    groups: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r["kind"], r["label"], r["q_forget"], r["q_retain"]), []).append(r)
    out = []
    for (kind, label, q_f, q_r), rs in groups.items():
        verdicts = [r["verdict"] for r in rs]
        out.append({"kind": kind, "label": label, "q_forget": q_f, "q_retain": q_r, "n": len(rs),
                    **{k: interval([r.get(k) for r in rs]) for k in METRICS},
                    "gap": {k: interval([r["gap"].get(k) for r in rs]) for k in GAP_KEYS},
                    "verdicts": {v: common.rate(verdicts, v) for v in common.VERDICTS}})
    return out


def ladders(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """What a Lethe job would do with each variant (unpruned): the attempt as asked, on a failed or inconclusive
    audit the stronger attempt, then retrain (promoted regardless). Seconds to the promoted version (unlearning
    calls only; each attempt's audit costs the same for every variant) and how often the job ends at retrain."""
    by: dict[tuple[str, int], dict[str, dict[str, Any]]] = {}
    for r in rows:
        if r["q_forget"] == 0 and r["q_retain"] == 0:
            by.setdefault((r["kind"], r["seed"]), {})[r["label"]] = r
    out: dict[str, Any] = {}
    for (kind, _seed), labels in by.items():
        retrain = labels["retrain"]
        for label in {r.get("variant") for r in labels.values()} - {None, "retrain", "do_nothing"}:
            seconds, ended = 0.0, "retrain"
            for attempt in (labels.get(label), labels.get(f"{label}@2")):
                if attempt is None:
                    continue
                seconds += attempt["seconds"]
                if attempt["verdict"] == "passed":
                    ended = "attempt 1" if attempt is labels.get(label) else "attempt 2"
                    break
            else:
                seconds += retrain["seconds"]
            o = out.setdefault(label, {"by_kind": {}, "seconds": [], "ended": []})
            o["seconds"].append(seconds)
            o["ended"].append(ended)
            k = o["by_kind"].setdefault(kind, {"seconds": [], "ended_at_retrain": 0, "n": 0})
            k["seconds"].append(seconds)
            k["ended_at_retrain"] += ended == "retrain"
            k["n"] += 1
    for o in out.values():
        o["seconds_to_promote"] = interval(o.pop("seconds"))
        ended = o.pop("ended")
        o["ended_at"] = {e: ended.count(e) for e in ("attempt 1", "attempt 2", "retrain")}
        o["ended_at_retrain"] = common.rate(ended, "retrain")
        for k in o["by_kind"].values():
            k["seconds_to_promote"] = interval(k.pop("seconds"))
    return out


def fastest_passing(summary: list[dict[str, Any]]) -> dict[str, Any]:
    """Per variant (unpruned, all forget kinds pooled): the share of audits passed and the mean seconds; the
    recommendation is the fastest among those passing every non-concentrated audit (random and mislabelled)."""
    per: dict[str, Any] = {}
    for r in summary:
        if r["q_forget"] or r["q_retain"] or r["label"] in ("do_nothing",):
            continue
        p = per.setdefault(r["label"], {"passed": 0, "n": 0, "passed_per_point": 0, "n_per_point": 0,
                                        "seconds": []})
        p["passed"] += r["verdicts"]["passed"]["count"]
        p["n"] += r["n"]
        if r["kind"] != "class_slice":
            p["passed_per_point"] += r["verdicts"]["passed"]["count"]
            p["n_per_point"] += r["n"]
        p["seconds"].append(r["seconds"]["mean"])
    for p in per.values():
        p["seconds"] = float(np.mean(p["seconds"]))
        p["pass_rate"] = p["passed"] / p["n"] if p["n"] else None
    ok = [k for k, p in per.items() if k != "retrain" and p["n_per_point"] and p["passed_per_point"] ==
          p["n_per_point"]]
    best = min(ok, key=lambda k: per[k]["seconds"], default=None)
    return {"per_variant": per, "fastest_always_passing": best,
            "rule": "unpruned, passes every random and mislabelled audit (all seeds), least mean seconds"}


def _ci(v: dict[str, Any], fmt: str = ".3f") -> str:
    if v["mean"] is None:
        return "n/a"
    if v["ci95"][0] is None:
        return f"{v['mean']:{fmt}}"
    return f"{v['mean']:{fmt}}±{(v['ci95'][1] - v['ci95'][0]) / 2:{fmt}}"


def print_tables(r: dict[str, Any]) -> None:
    print(f"\n{r['size']} run: {r['config']['seeds']} seeds × {len(r['config']['kinds'])} forget sets × "
          f"({len(r['config']['variants'])} variants × {len(r['config']['pruning'])} pruning levels + 2 references); "
          f"pool K={r['config']['k']}; {r['seconds']['total'] / 60:.1f} min")
    head = (f"{'kind':11s} {'row':14s} {'q_f':>4s} {'q_r':>4s} {'FA':>11s} {'RA':>11s} {'TA':>11s} "
            f"{'stat':>11s} {'AvgGap':>11s} {'sec':>11s}  pass/fail/inc")
    print(head)
    print("-" * len(head))
    for s in r["summary"]:
        v = s["verdicts"]
        print(f"{s['kind']:11s} {s['label']:14s} {s['q_forget']:4.1f} {s['q_retain']:4.1f} {_ci(s['fa']):>11s} "
              f"{_ci(s['ra']):>11s} {_ci(s['ta']):>11s} {_ci(s['statistic'], '.2f'):>11s} "
              f"{_ci(s['avg_gap']):>11s} {_ci(s['seconds'], '.2f'):>11s}  "
              f"{v['passed']['count']}/{v['failed']['count']}/{v['inconclusive']['count']}")
    fp = r["fastest_passing"]
    print("\npass rates (unpruned, all forget sets):")
    for k, p in sorted(fp["per_variant"].items(), key=lambda kv: -(kv[1]["pass_rate"] or 0)):
        print(f"  {k:14s} {p['passed']}/{p['n']} passed ({p['passed_per_point']}/{p['n_per_point']} random+"
              f"mislabelled), {p['seconds']:.2f}s")
    print(f"  fastest always passing: {fp['fastest_always_passing']}")
    print("\na job's ladder (as asked → stronger → retrain), unpruned: seconds to a promoted version, where it ended")
    for k, o in sorted(r["ladders"].items(), key=lambda kv: kv[1]["seconds_to_promote"]["mean"]):
        print(f"  {k:14s} {_ci(o['seconds_to_promote'], '.2f'):>11s}s  ended at {o['ended_at']}")
    print("\nless before/after the own-term fix:", json.dumps(r["less_fix"]))
    if r["fig41"]:
        print("\nFig 4.1 (retrain without the n lowest): scorer n removed_acc lira_auc flipped_removed")
        for x in r["fig41"]:
            print(f"  {x['scorer']:9s} {x['n']:4d} {x['removed_accuracy']:.3f} {x['lira_auc']} {x['flipped_removed']}")
    print()
    for t in r["targets"]:
        print(f"  [{t['status']}] {t['target']}: {t['shown']}")


def fig5_points(summary: list[dict[str, Any]], kind: str, label: str, axis: str) -> list[dict[str, Any]]:
    """One curve of 000's Fig 5.1 (axis q_forget) or 5.2 (q_retain): the variant's rows with the other fraction at 0,
    by the growing fraction; per point the mean seconds and the audit statistic's mean and 95% interval (forget
    quality: 0 treats the request like a model that never saw it, 1 like one trained on it)."""
    other = "q_retain" if axis == "q_forget" else "q_forget"
    rows = sorted((x for x in summary if x["kind"] == kind and x["label"] == label and x[other] == 0),
                  key=lambda x: x[axis])
    return [{"q": x[axis], "seconds": x["seconds"]["mean"], "statistic": x["statistic"]["mean"],
             "ci95": x["statistic"]["ci95"], "passed": x["verdicts"]["passed"]["count"], "n": x["n"]}
            for x in rows if x["statistic"]["mean"] is not None]


def plot(r: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    kinds = r["config"]["kinds"]
    fig, axes = plt.subplots(2, len(kinds) + 1, figsize=(5 * (len(kinds) + 1), 9), squeeze=False)
    for col, kind in enumerate(kinds):
        for row, axis in enumerate(("q_forget", "q_retain")):
            ax = axes[row][col]
            for label in r["config"]["variants"]:
                pts = fig5_points(r["summary"], kind, label, axis)
                if pts:
                    y = np.array([p["statistic"] for p in pts])
                    err = np.array([[0.0 if p["ci95"][0] is None else p["statistic"] - p["ci95"][0] for p in pts],
                                    [0.0 if p["ci95"][1] is None else p["ci95"][1] - p["statistic"] for p in pts]])
                    line = ax.errorbar([max(p["seconds"], 1e-3) for p in pts], y, yerr=err, fmt="o-", ms=3,
                                       capsize=2, lw=1, label=label).lines[0]
                    ax.annotate(f"{axis[2]}={pts[-1]['q']:g}", (max(pts[-1]["seconds"], 1e-3), y[-1]), fontsize=5,
                                color=line.get_color())
            for ref, mark in (("do_nothing", "kx"), ("retrain", "k*")):
                pts = fig5_points(r["summary"], kind, ref, axis)[:1]
                if pts:
                    ax.plot([max(pts[0]["seconds"], 1e-3)], [pts[0]["statistic"]], mark, ms=11, label=ref)
            ax.axhline(0, color="grey", lw=0.6, ls=":")
            ax.set_xscale("log")
            ax.set_title(f"{r['setting'].get('name', '')} {kind}: {axis} grows (Fig 5.{row + 1})", fontsize=9)
            ax.set_xlabel("unlearning wall time, s (log; do nothing drawn at 1 ms)")
            ax.set_ylabel("audit statistic (0 ≈ never saw it, 1 ≈ trained on it)")
        axes[0][0].legend(fontsize=6)
    for row, key in enumerate(("removed_accuracy", "lira_auc")):
        ax = axes[row][-1]
        for name in dict.fromkeys(x["scorer"] for x in r["fig41"]):  # in the order fig41 measured them
            pts = [x for x in r["fig41"] if x["scorer"] == name]
            if pts:
                ax.plot([x["n"] for x in pts], [x[key] for x in pts], "o-", label=name)
        if key == "lira_auc":
            ax.axhline(0.5, color="grey", lw=0.6, ls=":")
        ax.set_title(f"Fig 4.1: retrain without the n lowest — {key}", fontsize=9)
        ax.set_xlabel("n removed")
        ax.legend(fontsize=6)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write(r: dict[str, Any], out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(r, indent=1, default=common.json_default, ensure_ascii=False))
    plot(r, out.with_suffix(".png"))
