"""Sharded scoring: a Celery group of shard tasks, joined by a chord, for datasets above the shard size.

The scoring job prepares what every shard shares (hessian's factors, fitted once and cached), then hands
the rows to a group of `lethe.score_shard` tasks that any worker may run; `lethe.join_shards` (the chord's
body) assembles the shard files in row order and completes the job. Each shard's scores are an artifact
written atomically, so a redelivered shard recomputes only itself, and a job whose chord was lost (its
lease lapses, the relay re-runs it) dispatches only the shards that are still missing. Memory stays
bounded by the shard size plus one float per row at the join.
"""

from __future__ import annotations

import json
import logging
import time
from datetime import UTC
from typing import Any

import numpy as np
from celery import chord, group

from app import artifacts
from app.db import session_scope, utcnow
from app.jobs import service as jobs
from app.jobs.enums import JobStatus
from app.jobs.params import ScoreParams
from app.jobs.tables import Job
from app.ledger import service as ledger
from app.registry import service as registry
from app.registry.tables import Model
from app.settings import get_settings
from workers.jobs import revocation, scoring
from workers.jobs.context import complete

log = logging.getLogger(__name__)
# The two tasks (workers/tasks.py registers them under these names); signatures by name keep this module free of
# an import of the tasks module, which imports the jobs.
SHARD_TASK, JOIN_TASK = "lethe.score_shard", "lethe.join_shards"


def plan(n_rows: int, size: int) -> list[tuple[int, int]]:
    """Contiguous [start, stop) row ranges of at most `size` rows."""
    return [(a, min(a + size, n_rows)) for a in range(0, n_rows, size)]


def _job_spec(job_id: str) -> dict[str, Any] | None:
    """The running job's scoring parameters, or None when it is no longer running (nothing to do)."""
    with session_scope(readonly=True) as s:
        job = s.get(Job, job_id)
        if job is None or job.status != JobStatus.RUNNING:
            return None
        return {"model_id": job.model_id, "number": job.version,
                "method": ScoreParams.model_validate(job.params).method, "shards": (job.result or {}).get("shards")}


def dispatch(job_id: str, c: scoring.ScoringInputs, *, method: str) -> str:
    """Prepare, then send the missing shards as a group whose chord joins them; returns 'sharded'."""
    began = time.perf_counter()
    scoring.compute(c, method, progress=lambda _: None, prepare_only=True)
    shards = plan(c.n_rows, get_settings().score_shard_size)
    todo = [(a, b) for a, b in shards
            if not artifacts.path_of(artifacts.shard_uri(c.version_id, method, a, b)).exists()]
    with session_scope() as s:
        job = s.get(Job, job_id)
        ledger.lock_chain(s, tenant_id=job.tenant_id)
        jobs.progress(s, job_id=job_id, attempt=None, phase="scoring",
                      progress=round((len(shards) - len(todo)) / len(shards), 4),
                      result={**(job.result or {}), "shards": len(shards),
                              "shard_size": get_settings().score_shard_size,
                              "prepare_seconds": round(time.perf_counter() - began, 4)})
        if job.attempts <= 1:
            ledger.append(s, tenant_id=job.tenant_id, event="scores.sharded", subject_type="job", subject_id=job.id,
                          data={"method": method, "shards": len(shards), "rows": c.n_rows})
    if not todo:
        join(job_id)
    else:
        from workers.celery_app import celery

        chord(group(celery.signature(SHARD_TASK, args=(job_id, a, b)) for a, b in todo))(
            celery.signature(JOIN_TASK, args=(job_id,)))
    return "sharded"


def _renew(job_id: str, *, done: int | None = None, total: int | None = None) -> None:
    values = {"progress": round(done / total, 4)} if done is not None and total else {}
    with session_scope() as s:
        jobs.renew(s, job_id=job_id, **values)


def run_shard(job_id: str, start: int, stop: int) -> str:
    """Score rows [start, stop) of the job's version into their shard file (idempotent)."""
    spec = _job_spec(job_id)
    if spec is None:
        return "skipped"
    c = scoring.ScoringInputs.read(spec["model_id"], spec["number"])
    path = artifacts.path_of(artifacts.shard_uri(c.version_id, spec["method"], start, stop))
    if not path.exists():
        _renew(job_id)
        began = time.perf_counter()
        try:
            revocation.check(c.model_id, c.number)
            scores, info = scoring.compute(c, spec["method"], progress=lambda _: None, rows=slice(start, stop))
        except Exception as exc:
            why = str(exc) if isinstance(exc, revocation.VersionRevoked) else revocation.of_job(job_id)
            if why is None:
                raise
            return revocation.cancel(job_id, why)  # the version was revoked: the job ends cancelled, not failed
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp.npz")
        np.savez(tmp, scores=scores, seconds=time.perf_counter() - began,
                 info=np.array(json.dumps(info, sort_keys=True, default=str)))
        tmp.replace(path)
    done = len(list(path.parent.glob("*-*.npz"))) - len(list(path.parent.glob("*.tmp.npz")))
    _renew(job_id, done=done, total=spec["shards"])
    return str(path)


def _assemble(c: scoring.ScoringInputs, method: str, shards: list[tuple[int, int]],
              files: list[Any]) -> tuple[np.ndarray, float, dict[str, Any]]:
    """The shards' scores in row order, their summed seconds, and what produced them."""
    scores, seconds, info = np.empty(c.n_rows, dtype=np.float64), 0.0, {}
    for (a, b), f in zip(shards, files, strict=True):
        with np.load(f) as part:
            scores[a:b] = part["scores"]
            seconds += float(part["seconds"])
            info = info or json.loads(str(part["info"]))  # identical in every shard: same factors, checkpoints
    return scores, seconds, info | {"shards": len(shards), "shard_size": get_settings().score_shard_size}


def join(job_id: str) -> str:
    """Assemble the shards in row order and complete the job; 'incomplete' leaves it to the lease."""
    spec = _job_spec(job_id)
    if spec is None:
        return "skipped"
    number, method = spec["number"], spec["method"]
    c = scoring.ScoringInputs.read(spec["model_id"], number)
    shards = plan(c.n_rows, get_settings().score_shard_size)
    files = [artifacts.path_of(artifacts.shard_uri(c.version_id, method, a, b)) for a, b in shards]
    if missing := [f.name for f in files if not f.exists()]:
        log.warning("job %s: %d shard(s) missing at the join (%s); the lease will re-run it",
                    job_id, len(missing), missing[:3])
        return "incomplete"
    scores, seconds, info = _assemble(c, method, shards, files)
    try:
        scoring.store(c, method=method, scores=scores, seconds=seconds, info=info)
    except revocation.VersionRevoked as exc:
        return revocation.cancel(job_id, str(exc))
    with session_scope() as s:
        job = s.get(Job, job_id)
        ledger.lock_chain(s, tenant_id=job.tenant_id)
        if job.status != JobStatus.RUNNING:
            return "skipped"
        model = s.get(Model, c.model_id)
        started = job.started_at.replace(tzinfo=UTC) if job.started_at and job.started_at.tzinfo is None \
            else job.started_at
        wall = round((utcnow() - started).total_seconds(), 4) if started else None
        complete(s, job, {**(job.result or {}), "version": number, "ref": registry.ref(model, number),
                          "method": method, "seconds": round(seconds, 4), "wall_seconds": wall},
                 timing=("scoring", round(wall or seconds, 4)))
    artifacts.delete(artifacts.shards_dir(c.version_id, method))
    return JobStatus.COMPLETED
