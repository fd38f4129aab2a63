"""Reference pools and the free decision they measure: which points are free, on what basis, with what bounds.

"Free" means *measured unidentifiable*: the point belongs to the lineage's certified set (a group whose LiRA AUC
and TPR at 1% FPR, measured on held-out pool models, have 95% upper bounds within the limits), and the lineage's
cumulative free set is not measured identifiable. Influence scores never decide it. Without a valid pool nothing
is free (basis `unmeasured`) unless LETHE_FREE_PROVISIONAL opts into the old score-quantile rule (`provisional`).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app import artifacts
from app.datasets.tables import Dataset, Point
from app.db import utcnow
from app.errors import Conflict, Gone, Unprocessable
from app.evidence.enums import ACTIVE, PoolStatus
from app.evidence.tables import ReferencePool
from app.forget.enums import DispositionStatus
from app.forget.tables import Disposition
from app.jobs import service as jobs
from app.jobs.enums import JobKind
from app.jobs.params import ReferenceParams
from app.jobs.tables import Job
from app.ledger import service as ledger
from app.registry.enums import VersionSource, VersionStatus
from app.registry.tables import Model, Version
from app.settings import get_settings
from app.timestamps import rfc3339
from workers.engine import evidence as ev


def limits() -> ev.Limits:
    settings = get_settings()
    return ev.Limits(auc_max=settings.free_auc_max, tpr_max=settings.free_tpr_max)


def pool_k(model: Model) -> int:
    """Shadow models of the lineage's pool: the policy's reference.k, else LETHE_REFERENCE_K (0: none)."""
    k = model.settings.reference.k
    return int(get_settings().reference_k if k is None else k)


def start_pool(session: Session, *, model: Model, version: Version, reason: str) -> Job | None:
    """Queue a reference pool on the version's training data (or return the one already queued or running);
    None when the lineage has no pool (k = 0) or its versions cannot be retrained (no dataset rows)."""
    k = pool_k(model)
    if k == 0:
        return None
    if k < 4 or k % 2:
        raise Unprocessable("reference.k must be 0 or an even number >= 4")
    active = session.scalar(select(ReferencePool).where(ReferencePool.model_id == model.id,
                                                        ReferencePool.status.in_(ACTIVE)).limit(1))
    if active is not None and active.job_id:
        return session.get(Job, active.job_id)
    pool = ReferencePool(tenant_id=model.tenant_id, model_id=model.id, version=version.number,
                         status=PoolStatus.QUEUED, k=k, report={})
    session.add(pool)
    session.flush()
    params = ReferenceParams(pool_id=pool.id, k=k, shift_models=model.settings.reference.shift_models)
    job = jobs.create(session, tenant_id=model.tenant_id, kind=JobKind.REFERENCE, model_id=model.id,
                      version=version.number, params=params.model_dump())
    pool.job_id = job.id
    ledger.append(session, tenant_id=model.tenant_id, event="pool.queued", subject_type="model", subject_id=model.id,
                  data={"pool_id": pool.id, "k": k, "version": version.number, "reason": reason, "job_id": job.id})
    return job


def trained_here(session: Session, *, model: Model) -> bool:
    """Whether Lethe trained a version of this lineage: only then does the recipe describe how its weights came
    about, so that shadow models trained with it measure the deployed model's training procedure."""
    return session.scalar(select(Version.id).where(Version.model_id == model.id, Version.source == VersionSource.TRAIN)
                          .limit(1)) is not None


UPLOADED = ("its weights were uploaded, not trained by Lethe: shadow models trained with the model's recipe would "
            "measure another training procedure, so the lineage stays unmeasured (train it with POST "
            "/models/{name}/train to measure it)")


def request_pool(session: Session, *, model: Model, version: Version) -> Job:
    """POST .../reference: a new pool on this version's data (the current one only: it is what is served)."""
    if version.status != VersionStatus.ACTIVE:
        raise Gone(f"{model.name}@{version.number} was revoked")
    if pool_k(model) == 0:
        raise Conflict(f"model '{model.name}' has reference.k = 0 in its policy: no pool is kept")
    if not trained_here(session, model=model):
        raise Conflict(f"model '{model.name}': " + UPLOADED.replace("{name}", model.name))
    ds = session.get(Dataset, model.dataset_id)
    if ds.n_test == 0:
        raise Unprocessable(f"dataset '{ds.name}' has no test split (x_test, y_test): a pool standardises each "
                            "shadow model by its test predictions")
    job = start_pool(session, model=model, version=version, reason="requested")
    assert job is not None
    return job


def _pools(session: Session, *, model_id: str) -> list[ReferencePool]:
    """The lineage's pools, newest first, read in one statement: a worker may complete one meanwhile, and two
    statements could then see it neither active nor completed."""
    return list(session.scalars(select(ReferencePool).where(ReferencePool.model_id == model_id)
                                .order_by(ReferencePool.created_at.desc())))


def _newest_completed(pools: list[ReferencePool]) -> ReferencePool | None:
    done = [p for p in pools if p.status == PoolStatus.COMPLETED]
    return max(done, key=lambda p: p.completed_at) if done else None


def latest(session: Session, *, model_id: str) -> ReferencePool | None:
    """The lineage's newest completed pool."""
    return _newest_completed(_pools(session, model_id=model_id))


def removed_fraction(session: Session, *, model: Model, pool: ReferencePool) -> float:
    """Share of the pool's measured points removed (tombstoned) since: past LETHE_POOL_MAX_REMOVED it is stale."""
    live = session.scalar(select(func.count()).select_from(Point).where(
        Point.dataset_id == model.dataset_id, Point.tombstoned_at.is_(None))) or 0
    n = pool.n_points or 0
    return max(0.0, (n - live) / n) if n else 1.0


@dataclass
class PoolState:
    pool: ReferencePool | None
    valid: bool
    why: str
    removed: float | None = None
    active: ReferencePool | None = None
    newest: ReferencePool | None = None


def state(session: Session, *, model: Model) -> PoolState:
    """The lineage's pool and whether it may measure new answers."""
    pools = _pools(session, model_id=model.id)
    pool = _newest_completed(pools)
    active = next((p for p in pools if p.status in ACTIVE), None)
    newest = pools[0] if pools else None
    if pool is None:
        if active:
            why = "a reference pool is being trained"
        elif pool_k(model) == 0:
            why = "no reference pool (policy reference.k = 0)"
        elif not trained_here(session, model=model):
            why = UPLOADED.replace("{name}", model.name)
        elif newest is not None and newest.status == PoolStatus.FAILED:
            why = "the reference pool's job failed (see its job)"
        else:
            why = "no reference pool yet"
        return PoolState(None, False, why, active=active, newest=newest)
    removed = removed_fraction(session, model=model, pool=pool)
    if removed > get_settings().pool_max_removed:
        return PoolState(pool, False, f"the pool is stale: {removed:.1%} of its points were removed since it was "
                         f"fitted (> {get_settings().pool_max_removed:.0%}); a new pool is queued", removed,
                         active=active, newest=newest)
    return PoolState(pool, True, "valid", removed, active=active, newest=newest)


def pool_read(session: Session, *, model: Model) -> dict[str, Any] | None:
    """The pool as GET /models/{name} shows it."""
    st = state(session, model=model)
    if st.pool is None and st.active is None:
        if st.newest is None:
            return {"status": "none", "valid": False, "why": st.why}
        return {"pool_id": st.newest.id, "status": st.newest.status, "valid": False, "why": st.why,
                "k": st.newest.k, "job_id": st.newest.job_id}
    out: dict[str, Any] = {"valid": st.valid, "why": st.why}
    if st.pool is not None:
        p = st.pool
        out |= {"pool_id": p.id, "status": p.status, "k": p.k, "version": p.version, "n_points": p.n_points,
                "n_certified": p.n_certified, "removed_fraction": round(st.removed or 0.0, 6),
                "completed_at": p.completed_at, "certified_set": (p.report or {}).get("certified_set"),
                # the measured certification curves: group bounds of the least-separated prefixes, per half
                "certification": (p.report or {}).get("halves"), "size_shift": (p.report or {}).get("shift")}
    else:
        out |= {"pool_id": st.active.id, "status": st.active.status, "k": st.active.k}
    if st.active is not None:
        out["next"] = {"pool_id": st.active.id, "status": st.active.status, "job_id": st.active.job_id}
    return out


def load(pool: ReferencePool) -> ev.Pool:
    return ev.load_pool(artifacts.path_of(pool.uri))


@dataclass
class Triage:
    """The free decision for one request: which point keys are free, the per-point separations and the evidence."""

    basis: str  # measured | provisional | unmeasured
    free: set[int] = field(default_factory=set)
    separation: dict[int, float] = field(default_factory=dict)
    pool_id: str | None = None
    evidence: dict[str, Any] = field(default_factory=dict)


def triage(session: Session, *, model: Model, candidates: dict[int, int]) -> Triage:
    """Which candidates (point pk → dataset row) are measured free now."""
    st = state(session, model=model)
    if not st.valid:
        if st.pool is not None:  # stale: measure again (nothing new is free until the new pool is ready)
            version = session.scalar(select(Version).where(Version.model_id == model.id,
                                                           Version.number == model.current_version))
            if version is not None:
                start_pool(session, model=model, version=version, reason="stale")
        return Triage("unmeasured", evidence={"free_basis": "unmeasured", "why": st.why})
    pool = st.pool
    arrays = load(pool)
    keys = list(candidates)
    cols = arrays.columns(np.array([candidates[k] for k in keys], dtype=np.int64))
    col_of = {k: int(c) for k, c in zip(keys, cols, strict=True) if c >= 0}
    sep = {k: float(arrays.separation[c]) for k, c in col_of.items() if np.isfinite(arrays.separation[c])}
    eligible = [k for k, c in col_of.items() if arrays.certified_by[c] >= 0]
    lim = limits()
    measured_at = rfc3339(pool.completed_at) if pool.completed_at else None
    evidence = {"free_basis": "measured", "pool_id": pool.id, "k": pool.k, "measured_at": measured_at,
                "limits": lim.as_dict(), "certified_set": (pool.report or {}).get("certified_set"),
                "n_certified": pool.n_certified, "removed_fraction": round(st.removed or 0.0, 6)}
    free: set[int] = set()
    if eligible:  # the lineage's earlier free points under this pool, tested with these as one set
        earlier = [int(r) for r in session.scalars(
            select(Point.row).join(Disposition, Disposition.point_pk == Point.id).where(
                Disposition.model_id == model.id, Disposition.disposition == DispositionStatus.FREE,
                Disposition.pool_id == pool.id))]
        cum_cols = np.unique(np.r_[arrays.columns(np.array(earlier, dtype=np.int64)),
                                   [col_of[k] for k in eligible]].astype(np.int64))
        cum_cols = cum_cols[cum_cols >= 0]
        # The decision needs a bound only when an estimate is beyond a limit (a lower bound never exceeds its
        # estimate): the common case costs one sort, not a bootstrap, inside the request.
        group = ev.certified_group(arrays.scores, arrays.in_mask, arrays.certified_by, cum_cols, limits=lim, boot=0)
        if group["auc"] > lim.auc_max or group["tpr"] > lim.tpr_max:
            group = ev.certified_group(arrays.scores, arrays.in_mask, arrays.certified_by, cum_cols, limits=lim,
                                       boot=100, seed=len(cum_cols), max_points=2000)
        else:
            group["bounds"] = "not computed: both estimates are within the limits, so no lower bound exceeds them"
        evidence["cumulative"] = group
        if ev.significantly_identifiable(group, lim):
            evidence["refused"] = ("the lineage's cumulative free set would be measured identifiable (a lower bound "
                                   "beyond the limits): these points go to unlearning")
        else:
            free = set(eligible)
    return Triage("measured", free=free, separation=sep, pool_id=pool.id, evidence=evidence)


def digest(evidence: dict[str, Any], points: list[dict[str, Any]]) -> str:
    """sha256 of the canonical evidence of a request (what the ledger records)."""
    body = json.dumps({"evidence": evidence, "points": points}, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(body.encode()).hexdigest()


def finish_pool(session: Session, *, pool: ReferencePool, uri: str, sha256: str, n_points: int, n_certified: int,
                report: dict[str, Any]) -> None:
    """Record a fitted pool; older pools of the lineage are superseded (their arrays deleted after commit)."""
    pool.status, pool.uri, pool.sha256 = PoolStatus.COMPLETED, uri, sha256
    pool.n_points, pool.n_certified, pool.report, pool.completed_at = n_points, n_certified, report, utcnow()
    for old in session.scalars(select(ReferencePool).where(ReferencePool.model_id == pool.model_id,
                                                           ReferencePool.id != pool.id,
                                                           ReferencePool.status == PoolStatus.COMPLETED)):
        old.status = PoolStatus.SUPERSEDED
        if old.uri:
            artifacts.delete_after_commit(session, old.uri)
    for failed in session.scalars(select(ReferencePool.id).where(ReferencePool.model_id == pool.model_id,
                                                                 ReferencePool.status == PoolStatus.FAILED)):
        # a failed pool job's per-model φ cache (workers/jobs/reference.py keeps it for re-runs)
        artifacts.delete_after_commit(session, artifacts.pool_cache_uri(failed))
    ledger.append(session, tenant_id=pool.tenant_id, event="pool.completed", subject_type="model",
                  subject_id=pool.model_id, data={
                      "pool_id": pool.id, "k": pool.k, "sha256": sha256, "n_points": n_points,
                      "n_certified": n_certified, "certified_set": report.get("certified_set"),
                      "shift": report.get("shift"), "limits": report.get("limits")})


def has_pool(session: Session, *, model_id: str) -> bool:
    """Whether the lineage has a pool queued, fitting or fitted (a lineage's first training starts one)."""
    return session.scalar(select(ReferencePool.id).where(
        ReferencePool.model_id == model_id, ReferencePool.status.in_((*ACTIVE, PoolStatus.COMPLETED))
    ).limit(1)) is not None


def pool_running(session: Session, *, pool_id: str) -> ReferencePool:
    """A worker started (or restarted) fitting the pool."""
    pool = session.get(ReferencePool, pool_id)
    pool.status = PoolStatus.RUNNING
    return pool


def fail_pool(session: Session, *, pool_id: str | None) -> None:
    """The pool's job failed: the pool is failed and its arrays (if any were saved) deleted after commit; its
    per-model φ cache stays for a re-run until a pool of the lineage completes."""
    pool = session.get(ReferencePool, pool_id) if pool_id else None
    if pool is not None and pool.status in ACTIVE:
        pool.status = PoolStatus.FAILED
        artifacts.delete_after_commit(session, artifacts.pool_uri(pool.id))


def erase_rows(session: Session, *, dataset_id: str, rows: list[int]) -> None:
    """Pool statistics of erased points are deleted with the points: their φ columns are blanked (NaN) and they
    leave the certified set, in every pool of every lineage on the dataset."""
    if not rows:
        return
    pools = session.scalars(select(ReferencePool).join(Model, Model.id == ReferencePool.model_id).where(
        Model.dataset_id == dataset_id, ReferencePool.status == PoolStatus.COMPLETED, ReferencePool.uri.is_not(None)))
    for pool in pools:
        root = artifacts.path_of(pool.uri)
        if not root.exists():
            continue
        arrays = ev.load_pool(root, mmap=False)
        cols = arrays.columns(np.asarray(rows, dtype=np.int64))
        cols = cols[cols >= 0]
        if not len(cols):
            continue
        for name in ("phi", "phi_std", "scores"):
            getattr(arrays, name)[:, cols] = np.nan
        arrays.separation[cols] = np.nan
        arrays.certified_by[cols] = -1
        ev.save_pool(arrays, root)
