"""An unlearning candidate's audit verdict: the pool's evidence on the request's points and the decision table."""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np

from app import artifacts
from app.db import session_scope
from app.jobs import service as jobs
from app.jobs.enums import Verdict
from workers.engine import evidence as ev
from workers.jobs.context import engine


def evidence_audit(pool_info: dict[str, Any] | None, pool_why: str | None, rule: dict[str, float],
                   arrays: dict[str, np.ndarray], audit_rows: list[int], *, net: Any, parent: Any,
                   reference: Any | None) -> dict[str, Any]:
    """The pool-based verdict on the request's points (free and pruned included): does the new version treat them
    like a model retrained without them? Without a valid pool: inconclusive, basis unmeasured."""
    if pool_info is None:
        return {"verdict": Verdict.INCONCLUSIVE, "basis": "unmeasured", "pool_id": None, "side": None, "power": None,
                "why": f"no valid reference pool for this lineage ({pool_why})"}
    pool = ev.load_pool(artifacts.path_of(pool_info["uri"]))
    rows = np.asarray(audit_rows, dtype=np.int64)
    cols = pool.columns(rows)
    keep = cols >= 0
    keep[keep] &= np.isfinite(np.asarray(pool.phi_std[:, cols[keep]])).all(0)
    rows, cols = rows[keep], cols[keep]
    base = {"basis": "measured", "pool_id": pool_info["id"], "n_request": len(audit_rows),
            "n_unmeasured": int((~keep).sum())}
    if not len(cols):
        return base | {"verdict": Verdict.INCONCLUSIVE, "side": None, "power": None,
                       "why": "none of the request's points was measured by the pool"}
    eng = engine()
    phi = {name: eng.standardised_phi(m, eng.rows(arrays, rows), eng.rows(arrays, test=True))
           for name, m in (("new", net), ("parent", parent), ("reference", reference)) if m is not None}
    audit_rule = ev.AuditRule(alpha=float(rule["alpha"]), min_power=float(rule["min_power"]))
    conc = ev.request_concentration(pool, arrays["y"][np.asarray(pool.rows)], cols, rule=audit_rule)
    shift = None
    if len(pool.shift_cols):  # the measured size mismatch: OUT means of the shift points and their offsets
        at = np.asarray(pool.shift_cols)
        shift = (ev.point_stats(np.asarray(pool.phi_std[:, at]), np.asarray(pool.in_mask[:, at])).mu_out,
                 np.asarray(pool.shift_offsets))
    out = ev.audit(np.asarray(pool.phi_std[:, cols]), np.asarray(pool.in_mask[:, cols]), phi["new"],
                   shift=shift, parent_phi_std=phi.get("parent"),
                   reference_phi_std=phi.get("reference"), concentrated=conc["concentrated"], rule=audit_rule)
    return base | out | {"concentration": conc, "largest_class_share": conc["class_share"]}


def judge(report: dict[str, Any], evidence_report: dict[str, Any], *, algorithm: str,
          on_inconclusive: str) -> dict[str, Any]:
    """The decision table: accuracy outside policy → failed; then the pool's verdict. A candidate is promoted when
    it passed, when the policy accepts an inconclusive audit (labelled), or when it is a retrain (exact by
    construction; its verdict is recorded all the same: retrains that fail are the audit's false alarms)."""
    verdict = Verdict.FAILED if report["reasons"] else evidence_report["verdict"]
    reasons = list(report["reasons"])
    if not reasons and verdict != Verdict.PASSED:
        reasons.append(f"{verdict}: {evidence_report.get('why')}")
    accepted = verdict == Verdict.INCONCLUSIVE and on_inconclusive == "accept"
    promoted = verdict == Verdict.PASSED or accepted or algorithm == "retrain"
    return report | {"passed": promoted, "verdict": verdict, "reasons": reasons,
                     "accuracy": {"passed": not report["reasons"], "reasons": report["reasons"]},
                     "evidence": evidence_report | {"accepted": accepted,
                                                    "promoted_as_retrain": algorithm == "retrain"
                                                    and verdict != Verdict.PASSED}}


def ledger_summary(report: dict[str, Any], *, algorithm: str, params: dict[str, Any], attempt: int) -> dict[str, Any]:
    """What the ledger keeps of an audit."""
    e = report["evidence"]
    return {"passed": report["passed"], "algorithm": algorithm, "verdict": report["verdict"],
            "evidence": {k: e.get(k) for k in ("basis", "pool_id", "verdict", "side", "statistic", "null", "power",
                                               "why", "n_points", "accepted")},
            "params": params, "attempt": attempt, "after": report["after"], "before": report["before"],
            "reasons": report["reasons"], "reference_gap": (report.get("reference") or {}).get("gap")}


def recorded(job_id: str, attempt: int) -> tuple[str, dict[str, Any], dict[str, Any]] | None:
    """(audit id, report, candidate) of this job's recorded audit of `attempt`, or None when there is none.

    A passed audit counts only while the candidate it judged is on disk with the recorded hash: that file is what
    registering publishes. A failed one is kept as recorded (the next attempt needs no file of it)."""
    with session_scope(readonly=True) as s:
        row = jobs.last_audit(s, job_id=job_id, attempt=attempt)
        if row is None:
            return None
        audit_id, report = row.id, dict(row.report)
    candidate = report.pop("candidate", None)
    if candidate is None:
        return None
    if report["passed"]:
        path = artifacts.path_of(candidate["uri"])
        if not path.exists() or hashlib.sha256(path.read_bytes()).hexdigest() != candidate["sha256"]:
            return None
    return audit_id, report, candidate
