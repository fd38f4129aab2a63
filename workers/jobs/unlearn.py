"""An unlearn job: score → prune → (retrain reference) → unlearn → audit, escalating per policy → register.

Each phase persists what it produced before the next starts, and the final registration is one transaction (new
version, dispositions, requests, job, ledger), so a job whose worker died is simply run again by another worker and
the ledger shows each event once.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from sqlalchemy import select

from app import artifacts
from app.datasets import service as datasets
from app.datasets.tables import Dataset, Point
from app.db import session_scope
from app.evidence import service as evidence
from app.forget import service as forget
from app.forget.enums import REMOVED, DispositionStatus, RequestStatus
from app.forget.tables import Disposition
from app.jobs import service as jobs
from app.jobs.enums import JobStatus
from app.jobs.params import UnlearnParams
from app.jobs.tables import Audit, Job
from app.ledger import service as ledger
from app.registry import scores as runs
from app.registry import service as registry
from app.registry.enums import VersionSource
from app.registry.schemas import Policy
from app.registry.tables import Model, Version
from app.settings import get_settings
from workers.engine.evidence import load_pool
from workers.engine.params import escalation
from workers.jobs import scoring, verdict
from workers.jobs.context import (
    JobContext,
    ModelInputs,
    Progress,
    audit_limits,
    claimed,
    complete,
    engine,
    fence,
    job_rows,
)

# A retrain reference's seed is the recipe's plus this: apart from a retrain's (recipe seed) and, for any K below
# 900, from the pool's (seed·1000 + 100 + m).
REFERENCE_SEED_OFFSET = 10_007


@dataclass(frozen=True)
class UnlearnJob(ModelInputs):
    """What the job works on, read in one transaction."""

    job_id: str
    policy: Policy
    parent: int
    parent_id: str
    parent_uri: str
    algorithm: str
    params: dict
    method: str  # the policy's scorer
    request_ids: list[str]
    settle: bool  # the lineage's free budget is spent: this job's retain-only repair settles it
    pool: dict | None  # the lineage's valid reference pool (id, uri, k), if any
    pool_why: str | None
    on_inconclusive: str
    audit_rule: dict[str, float]
    have_scores: bool
    pending_pks: list[int]
    rows_of: dict[int, int]  # point pk → dataset row
    forget_rows: list[int]
    audit_rows: list[int]
    retain_rows: list[int]


@dataclass
class Pruned:
    forget_kept: list[int]
    forget_pruned: list[int]
    retain_kept: list[int]
    summary: dict[str, Any]


@dataclass
class Attempt:
    """The last candidate tried and what the job learnt of every attempt."""

    audit_id: str | None = None
    report: dict[str, Any] = field(default_factory=dict)
    sha: str = ""
    seconds: float = 0.0
    metrics: dict[str, Any] = field(default_factory=dict)
    algorithm: str = ""
    passed: bool = False
    history: list[dict[str, Any]] = field(default_factory=list)


def _rows(s: Any, *, model: Model, ds: Dataset, request_ids: list[str]) -> tuple[list[int], dict[int, int], list[int]]:
    """(pending point pks, point pk → row, audit point pks): the requests' points, and the audit set."""
    disp = list(s.scalars(select(Disposition).where(Disposition.request_id.in_(request_ids))))
    rows_of = dict(s.execute(select(Point.id, Point.row).where(Point.dataset_id == ds.id,
                                                               Point.id.in_({d.point_pk for d in disp}))).all())
    pending_pks = sorted({d.point_pk for d in disp if d.disposition == DispositionStatus.PENDING})
    audit_pks = sorted({d.point_pk for d in disp if d.disposition != DispositionStatus.ALREADY_FORGOTTEN})
    # Small audit sets are pooled with the lineage's earlier forgotten points (DESIGN: audit policy).
    if len(audit_pks) < get_settings().audit_min_points:
        earlier = s.execute(select(Point.id, Point.row).join(Disposition, Disposition.point_pk == Point.id).where(
            Disposition.model_id == model.id, Disposition.disposition.in_(REMOVED),
            Point.erased_at.is_(None))).all()
        rows_of.update(dict(earlier))
        audit_pks = sorted(set(audit_pks) | {pk for pk, _ in earlier})
    return pending_pks, rows_of, audit_pks


def _read(job_id: str) -> UnlearnJob | None:
    """The job's inputs; None (the job completed with nothing to do) when it serves no live request."""
    settings = get_settings()
    with session_scope() as s:
        job, model, ds = job_rows(s, job_id)
        requests = forget.open_requests(s, job_id=job.id)
        if not requests:
            complete(s, job, {"version": None, "ref": None, "note": "no live requests"})
            return None
        parent = registry.current_version(s, model=model)
        req_ids = [r.id for r in requests]
        pending_pks, rows_of, audit_pks = _rows(s, model=model, ds=ds, request_ids=req_ids)
        policy, p = model.settings, UnlearnParams.model_validate(job.params)
        method = policy.scorer
        run = runs.influence_run(s, version=parent, method=method)
        pool_state = evidence.state(s, model=model)
        return UnlearnJob(
            **ModelInputs.of(model, ds), job_id=job_id, policy=policy, parent=parent.number, parent_id=parent.id,
            parent_uri=parent.uri,
            algorithm=p.algorithm, params=p.params, method=method,
            request_ids=req_ids,
            # Settlement: once the lineage's free budget is spent, this job's retain-only repair covers the
            # earlier free points (they are tombstoned, so already out of its retain set) and the budget resets.
            settle=parent.budget is not None and model.free_spent > 0 and model.free_spent >= parent.budget,
            pool=({"id": pool_state.pool.id, "uri": pool_state.pool.uri, "k": pool_state.pool.k}
                  if pool_state.valid else None),
            pool_why=pool_state.why,
            on_inconclusive=policy.audit.on_inconclusive or settings.audit_on_inconclusive,
            audit_rule={"alpha": policy.audit.alpha or settings.audit_alpha,
                        "min_power": policy.audit.min_power or settings.audit_min_power},
            have_scores=runs.load_scores(run) is not None if run else False,
            pending_pks=pending_pks, rows_of=rows_of, forget_rows=[rows_of[pk] for pk in pending_pks],
            audit_rows=[rows_of[pk] for pk in audit_pks], retain_rows=datasets.live_rows(s, dataset_id=ds.id))


def _scores(ctx: JobContext, c: UnlearnJob) -> tuple[np.ndarray | None, float | None]:
    """The parent's scores (computed when missing) and the influence prune bound."""
    with ctx.phase("scoring", 0.0, 0.15) as progress:
        if not c.have_scores:
            scoring.score_version(model_id=c.model_id, number=c.parent, method=c.method, progress=progress)
        with session_scope() as s:
            parent = s.get(Version, c.parent_id)
            scores = runs.load_scores(runs.influence_run(s, version=parent, method=c.method))
            bound = (parent.metrics or {}).get("prune_threshold")
            if bound is None and scores is not None and c.retain_rows:
                bound = float(np.quantile(np.asarray(scores)[c.retain_rows], get_settings().prune_quantile))
    return scores, bound


def prune(scores: np.ndarray, rows: list[int], q: float, bound: float | None) -> tuple[list[int], list[int]]:
    """Drop the lowest-scoring fraction q of rows (never one at or above `bound`); return (kept, pruned)."""
    if q <= 0 or not rows:
        return rows, []
    order = sorted(rows, key=lambda r: float(scores[r]))
    cut = order[: int(q * len(rows))]
    pruned = [r for r in cut if bound is None or float(scores[r]) < bound]
    gone = set(pruned)
    return [r for r in rows if r not in gone], pruned


def _prunable(c: UnlearnJob) -> tuple[list[int], str]:
    """The forget rows a job may prune, and on what basis: measured (pool separation ≤ LETHE_PRUNE_SEPARATION_MAX),
    provisional (no pool, LETHE_FREE_PROVISIONAL: the influence prune bound), or none."""
    settings = get_settings()
    if c.pool is None:
        return (c.forget_rows, "provisional") if settings.free_provisional else ([], "none")

    pool = load_pool(artifacts.path_of(c.pool["uri"]))
    cols = pool.columns(np.asarray(c.forget_rows, dtype=np.int64))
    sep = np.where(cols >= 0, np.asarray(pool.separation)[np.maximum(cols, 0)], np.nan)
    return [r for r, v in zip(c.forget_rows, sep, strict=True) if v <= settings.prune_separation_max], "measured"


def _ids_summary(model_id: str, rows: list[int]) -> dict[str, Any]:
    """Pruned rows as point ids (or a count + sha256 when large, to keep ledger entries small)."""
    if not rows:
        return {"n": 0, "point_ids": []}
    with session_scope() as s:
        model = s.get(Model, model_id)
        ids = sorted(s.scalars(select(Point.point_id).where(Point.dataset_id == model.dataset_id,
                                                            Point.row.in_(rows))))
    if len(ids) <= 1000:
        return {"n": len(ids), "point_ids": ids}
    return {"n": len(ids), "sha256": hashlib.sha256("\n".join(ids).encode()).hexdigest()}


def _prune(ctx: JobContext, c: UnlearnJob, scores: np.ndarray, bound: float | None) -> Pruned:
    """Forget points are pruned (left out of the unlearning, covered by the audit) only where measured: the
    lowest-influence q_forget among those whose pool separation is within the stated bound. Without a pool, only
    the opt-in provisional rule prunes them, by influence, and says so. Retain pruning is a cost device: influence
    alone."""
    settings = get_settings()
    with ctx.phase("pruning", 0.15, 0.2):
        q_f, q_r = c.policy.q_forget, c.policy.q_retain
        eligible, basis = _prunable(c)
        _, forget_pruned = prune(scores, eligible, q_f, bound if basis == "provisional" else None)
        gone = set(forget_pruned)
        retain_kept, retain_pruned = prune(scores, c.retain_rows, q_r, None)
        summary = {
            "forget": _ids_summary(c.model_id, forget_pruned), "retain": _ids_summary(c.model_id, retain_pruned),
            "bound": bound if basis == "provisional" else None, "q_forget": q_f, "q_retain": q_r,
            "forget_basis": basis, "separation_max": settings.prune_separation_max if basis == "measured" else None,
        }
        with session_scope() as s:
            ledger.lock_chain(s, tenant_id=c.tenant_id)
            fence(s, ctx.job_id)
            ledger.append_once(s, tenant_id=c.tenant_id, event="points.pruned", subject_type="job",
                               subject_id=ctx.job_id, data=summary)
    return Pruned(forget_kept=[r for r in c.forget_rows if r not in gone], forget_pruned=forget_pruned,
                  retain_kept=retain_kept, summary=summary)


def _retrain_reference(ctx: JobContext, c: UnlearnJob, parent_net: Any,
                       arrays: dict[str, np.ndarray]) -> tuple[Any, str | None, float]:
    """The retrain reference when the policy asks for one: (network, uri, progress where unlearning starts).

    Retrained on the whole retain set (never pruned: it is the gold standard the audit measures against), kept
    until the job ends so a re-run reuses it. Its own seed: an escalated retrain (recipe seed) must be judged
    against an independent draw, not itself."""
    if not c.policy.audit.retrain_reference or c.algorithm == "retrain":
        return None, None, 0.2
    eng = engine()
    ref_uri = artifacts.job_weights_uri(c.model_id, ctx.job_id, "reference")
    if artifacts.path_of(ref_uri).exists():
        return eng.load_network(c.arch, c.shape, c.n_classes, artifacts.path_of(ref_uri)), ref_uri, 0.4
    with ctx.phase("reference", 0.2, 0.4) as progress:
        ref_recipe = {**c.recipe, "seed": int(c.recipe.get("seed", 0)) + REFERENCE_SEED_OFFSET}
        net, _ = eng.unlearn("retrain", parent_net, forget=eng.rows(arrays, c.forget_rows),
                             retain=eng.rows(arrays, c.retain_rows), params={}, recipe=ref_recipe, arch=c.arch,
                             shape=c.shape, n_classes=c.n_classes, progress=progress)
        eng.save_network(net, artifacts.path_of(ref_uri))
    return net, ref_uri, 0.4


class _Runner:
    """The unlearning ladder of one job: each attempt unlearns, audits and records; the first promoted wins."""

    def __init__(self, ctx: JobContext, c: UnlearnJob, pruned: Pruned) -> None:
        eng = engine()
        self.ctx, self.c, self.pruned = ctx, c, pruned
        self.arrays = eng.load_arrays(artifacts.path_of(c.ds_uri))
        self.parent_net = eng.load_network(c.arch, c.shape, c.n_classes, artifacts.path_of(c.parent_uri))
        self.uri = artifacts.job_weights_uri(c.model_id, ctx.job_id)
        self.reference_net, self.ref_uri, self.start = _retrain_reference(ctx, c, self.parent_net, self.arrays)

    def _unlearn(self, algorithm: str, params: dict, progress: Progress) -> tuple[Any, str, float, dict]:
        eng, p, c = engine(), self.pruned, self.c
        began = time.perf_counter()
        net, metrics = eng.unlearn(
            algorithm, self.parent_net, forget=eng.rows(self.arrays, p.forget_kept),
            retain=eng.rows(self.arrays, p.retain_kept), params=params, recipe=c.recipe, arch=c.arch,
            shape=c.shape, n_classes=c.n_classes, progress=progress)
        seconds = time.perf_counter() - began
        sha = engine().save_network(net, artifacts.path_of(self.uri))  # the candidate: audited, registered as is
        return net, sha, seconds, metrics

    def _audit(self, net: Any, algorithm: str) -> dict[str, Any]:
        eng, c, a = engine(), self.c, self.arrays
        report = eng.audit(net, self.parent_net, forget=eng.rows(a, c.audit_rows),
                           retain=eng.rows(a, self.pruned.retain_kept), test=eng.rows(a, test=True),
                           rule=audit_limits(), min_points=get_settings().audit_min_points,
                           retrained=algorithm == "retrain", policy=c.policy.audit.model_dump(),
                           reference=self.reference_net)
        pool_verdict = verdict.evidence_audit(c.pool, c.pool_why, c.audit_rule, a, c.audit_rows, net=net,
                                              parent=self.parent_net, reference=self.reference_net)
        return verdict.judge(report, pool_verdict, algorithm=algorithm, on_inconclusive=c.on_inconclusive)

    def _record(self, attempt: int, algorithm: str, params: dict, report: dict, candidate: dict) -> str:
        with session_scope() as s:
            ledger.lock_chain(s, tenant_id=self.c.tenant_id)
            fence(s, self.ctx.job_id)
            row = jobs.record_audit(s, job=s.get(Job, self.ctx.job_id), parent_version=self.c.parent,
                                    attempt=attempt, algorithm=algorithm, report=report | {"candidate": candidate},
                                    summary=verdict.ledger_summary(report, algorithm=algorithm, params=params,
                                                                   attempt=attempt))
            return row.id

    def attempt(self, n: int, of: int, algorithm: str, params: dict, out: Attempt) -> None:
        """Run (or, after a dead worker, resume from its recorded audit) attempt n of the ladder into `out`."""
        span = (0.8 - self.start) / of
        lo = self.start + span * (n - 1)
        prior = verdict.recorded(self.ctx.job_id, n)
        if prior is not None:  # an earlier run of this job (its worker died) audited this attempt: resume after it
            out.audit_id, out.report, candidate = prior
            out.sha, out.seconds, out.metrics = candidate["sha256"], candidate["unlearn_seconds"], candidate["metrics"]
        else:
            suffix = f"#{n}" if n > 1 else ""
            with self.ctx.phase(f"unlearning{suffix}", lo, lo + span * 0.7) as progress:
                net, out.sha, out.seconds, out.metrics = self._unlearn(algorithm, params, progress)
            with self.ctx.phase(f"auditing{suffix}", lo + span * 0.7, lo + span):
                out.report = self._audit(net, algorithm)
                candidate = {"uri": self.uri, "sha256": out.sha, "unlearn_seconds": round(out.seconds, 4),
                             "metrics": out.metrics}
                out.audit_id = self._record(n, algorithm, params, out.report, candidate)
        out.algorithm, out.passed = algorithm, out.report["passed"]
        out.history.append({"attempt": n, "algorithm": algorithm, "params": params, "passed": out.passed,
                            "verdict": out.report.get("verdict"), "seconds": round(out.seconds, 4),
                            "reasons": out.report["reasons"]})


def _failed(ctx: JobContext, c: UnlearnJob, run: _Runner, out: Attempt, result: dict[str, Any]) -> str:
    """No candidate was promoted: the job and its requests fail, the candidate and reference are deleted."""
    with session_scope() as s:
        ledger.lock_chain(s, tenant_id=c.tenant_id)
        fence(s, ctx.job_id)
        artifacts.delete_after_commit(s, run.uri, *([run.ref_uri] if run.ref_uri else []))
        forget.close_all(s, job_id=ctx.job_id, status=RequestStatus.FAILED)
        jobs.fail(s, job=s.get(Job, ctx.job_id), error="audit failed: " + "; ".join(out.report["reasons"]),
                  attempt=claimed(ctx.job_id), result=result | {"version": None, "ref": None},
                  data={"audit_id": out.audit_id})
    return JobStatus.FAILED


def _register(ctx: JobContext, c: UnlearnJob, run: _Runner, out: Attempt, result: dict[str, Any]) -> str:
    """The promoted candidate becomes the lineage's current version; the requests close, the budget settles."""
    pruned_rows = set(run.pruned.forget_pruned)
    with session_scope() as s:
        ledger.lock_chain(s, tenant_id=c.tenant_id)
        fence(s, ctx.job_id)
        job = s.get(Job, ctx.job_id)
        model = s.get(Model, c.model_id)
        version, _ = registry.register_version(
            s, model=model, source=VersionSource.UNLEARN, sha256=out.sha, uri=run.uri,
            parent=s.get(Version, c.parent_id), request_id=c.request_ids[0], job_id=job.id, n_train=len(c.retain_rows),
            metrics={"audit": out.report["after"]}, promote=True)
        s.get(Audit, out.audit_id).version = version.number
        if run.ref_uri:  # the reference has served its audits
            artifacts.delete_after_commit(s, run.ref_uri)
        outcome = {pk: DispositionStatus.PRUNED if c.rows_of[pk] in pruned_rows else DispositionStatus.UNLEARNED
                   for pk in c.pending_pks}
        forget.close_all(s, job_id=job.id, status=RequestStatus.COMPLETED, version=version.number, outcome=outcome)
        if c.settle:
            result["settlement"] = registry.settle_budget(s, model=model, version=version, job_id=job.id,
                                                          algorithm=out.algorithm)
        complete(s, job, result | {"version": version.number, "ref": registry.ref(model, version.number)})
        datasets.erase_cleared(s, dataset_id=model.dataset_id)
    return JobStatus.COMPLETED


def run(ctx: JobContext) -> str:
    c = _read(ctx.job_id)
    if c is None:
        return JobStatus.COMPLETED
    scores, bound = _scores(ctx, c)
    pruned = _prune(ctx, c, scores, bound)
    runner = _Runner(ctx, c, pruned)
    out = Attempt()
    ladder = escalation(c.algorithm, c.params)
    for n, (algorithm, params) in enumerate(ladder, start=1):
        runner.attempt(n, len(ladder), algorithm, params, out)
        if out.passed:
            break
    with ctx.phase("registering", 0.95, 1.0):
        p = pruned
        metrics = {"unlearn_seconds": round(out.seconds, 4), **out.metrics, "attempts": out.history,
                   "n_forget": len(c.forget_rows), "n_forget_kept": len(p.forget_kept),
                   "n_retain": len(c.retain_rows), "n_retain_kept": len(p.retain_kept)}
        result: dict[str, Any] = {"pruned": p.summary, "audit": out.report, "metrics": metrics,
                                  "algorithm": out.algorithm, "requested_algorithm": c.algorithm}
        return (_register if out.passed else _failed)(ctx, c, runner, out, result)


def on_fail(s: Any, job: Job) -> None:
    """Its audited candidate, never registered, holds the data it failed to remove."""
    artifacts.delete_after_commit(s, artifacts.job_weights_uri(job.model_id, job.id))
