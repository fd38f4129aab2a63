"""score → prune → unlearn → audit → register: the only place the engine meets the ledger.

Each phase persists what it produced before the next starts, and the final registration is one
transaction (new version, dispositions, requests, job, ledger), so a job whose worker died is simply
run again by another worker and the ledger shows each event once.
"""

from __future__ import annotations

import contextvars
import hashlib
import logging
import shutil
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
from sqlalchemy import select, update

from app import artifacts
from app.datasets import service as datasets
from app.datasets.tables import Dataset, Point
from app.db import session_scope, utcnow
from app.evidence import service as evidence
from app.evidence.tables import ReferencePool
from app.forget.tables import Disposition, ForgetRequest
from app.jobs import service as jobs
from app.jobs.outbox import safe_relay
from app.jobs.tables import Audit, Job, Outbox
from app.ledger import service as ledger
from app.ledger.tables import LedgerEntry
from app.opendsr import hooks as opendsr
from app.registry import service as registry
from app.registry.schemas import SCORERS
from app.registry.tables import Model, Version
from app.settings import get_settings
from app.webhooks import service as webhooks
from workers.engine.params import escalation
from workers.jobs import validate_dataset

log = logging.getLogger("lethe.pipeline")
PROGRESS_EVERY = 0.5  # seconds between progress writes
# A retrain reference's seed is the recipe's plus this: apart from a retrain's (recipe seed) and, for any K below
# 900, from the pool's (seed·1000 + 100 + m).
REFERENCE_SEED_OFFSET = 10_007
# job id -> the attempt number this process claimed; the final transactions check it (see _fence).
_CLAIMS: dict[str, int] = {}


class Superseded(Exception):  # noqa: N818 - a state, not a failure
    """This worker's lease lapsed and another worker claimed the job: drop this run's results."""


# ----------------------------------------------------------------------------- job plumbing

# The running phase (name, perf_counter at entry) of this thread's job, for _complete.
_PHASE: contextvars.ContextVar[tuple[str, float] | None] = contextvars.ContextVar("lethe_phase", default=None)


class JobContext:
    """Phase timings and throttled progress of one running job, each write a short transaction."""

    def __init__(self, job_id: str) -> None:
        self.job_id = job_id
        self._last = 0.0

    def _job(self, s: Any) -> Job:
        """The job's row; Superseded when another attempt claimed it meanwhile (this worker was paused past its
        lease): the stale run stops at its next progress or phase write instead of overwriting the new one's."""
        job = s.get(Job, self.job_id)
        attempt = _CLAIMS.get(self.job_id)
        if attempt is not None and job.attempts != attempt:
            raise Superseded(self.job_id)
        return job

    def _update(self, **values: Any) -> None:
        with session_scope() as s:
            job = self._job(s)
            for k, v in values.items():
                setattr(job, k, v)
            job.lease_until = utcnow() + jobs.lease()

    @contextmanager
    def phase(self, name: str, start: float, end: float) -> Iterator[Callable[[float], None]]:
        """Enter a phase owning progress [start, end]; record its seconds in the job's timings."""
        self._update(phase=name, progress=start)
        began = time.perf_counter()
        token = _PHASE.set((name, began))

        def progress(fraction: float) -> None:
            now = time.monotonic()
            if now - self._last >= PROGRESS_EVERY:
                self._last = now
                self._update(progress=round(start + (end - start) * min(max(fraction, 0.0), 1.0), 4))

        try:
            yield progress
        finally:
            _PHASE.reset(token)
        seconds = round(time.perf_counter() - began, 4)
        with session_scope() as s:
            job = self._job(s)
            job.timings = {**(job.timings or {}), name: seconds}
            job.progress = end
            job.lease_until = utcnow() + jobs.lease()


class Heartbeat(threading.Thread):
    """Renews the job's lease while it runs, so only a dead worker's job is ever claimed again."""

    def __init__(self, job_id: str, attempt: int | None = None) -> None:
        super().__init__(name=f"lease-{job_id}", daemon=True)
        self.job_id = job_id
        self.attempt = attempt
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.wait(jobs.lease().total_seconds() / 4):
            try:
                with session_scope() as s:
                    ours = Job.attempts == self.attempt if self.attempt is not None else True
                    s.execute(update(Job).where(Job.id == self.job_id, Job.status == "running", ours)
                              .values(lease_until=utcnow() + jobs.lease()))
            except Exception as exc:  # noqa: BLE001 - a missed beat is retried; the lease has slack
                log.warning("lease renewal of %s failed: %s", self.job_id, exc)

    def stop(self) -> None:
        self.stopped.set()


def run_job(job_id: str, *, worker: str) -> str:
    """Claim and run a job; returns its final status, 'skipped' when not ours, 'busy' to retry later."""
    with session_scope() as s:
        job = s.get(Job, job_id)
        if job is None:
            return "skipped"
        if job.kind == "unlearn" and _lineage_busy(s, job):
            return "busy"
        ledger.lock_chain(s, tenant_id=job.tenant_id)  # chain lock first, then rows: one lock order everywhere
        job = jobs.claim(s, job_id=job_id, worker=worker)
        if job is None:
            return "skipped"
        kind = job.kind
        ledger.append(s, tenant_id=job.tenant_id, event="job.started", subject_type="job", subject_id=job.id,
                      data={"kind": kind, "attempt": job.attempts, "worker": worker})
        if kind == "unlearn":
            opendsr.job_started(s, job_id=job.id)  # OpenDSR requests it serves become in_progress
        attempt = job.attempts
    _CLAIMS[job_id] = attempt
    ctx = JobContext(job_id)
    heartbeat = Heartbeat(job_id, attempt)
    heartbeat.start()
    try:
        status = {"train": _train, "score": _score, "unlearn": _unlearn, "calibrate": _calibrate,
                  "reference": _reference, "validate": validate_dataset.run}[kind](ctx)
    except Superseded:
        log.warning("job %s: attempt %d lost its lease to another worker; its results are dropped", job_id, attempt)
        status = "superseded"
    except Exception as exc:  # noqa: BLE001 - any failure ends the job visibly, never silently
        log.exception("job %s failed", job_id)
        status = _fail(job_id, f"{type(exc).__name__}: {exc}", traceback.format_exc(limit=5))
    finally:
        heartbeat.stop()
        _CLAIMS.pop(job_id, None)
    safe_relay()  # publish what the job queued (scoring of a new version)
    return status


def run_inline(job_id: str) -> str:
    """Run a job in this process (the demo, tests): mark its outbox row published, then run it."""
    with session_scope() as s:
        for row in s.scalars(select(Outbox).where(Outbox.job_id == job_id, Outbox.published_at.is_(None))):
            row.published_at = utcnow()
    return run_job(job_id, worker="inline")


def _lineage_busy(s: Any, job: Job) -> bool:
    """Another unlearning job of this lineage holds a live lease: one job per lineage at a time."""
    return s.scalar(select(Job.id).where(Job.model_id == job.model_id, Job.kind == "unlearn", Job.id != job.id,
                                         Job.status == "running", Job.lease_until > utcnow())) is not None


def _fence(s: Any, job_id: str) -> None:
    """In a transaction that records a job's results: raise Superseded unless the attempt this process claimed
    still owns the job. A worker whose lease lapsed while it was alive (a long pause) and whose job another worker
    claimed must not record an audit, register a second version, close requests twice or fail the job.

    Claims take the tenant's chain lock (run_job), so holding it here until commit keeps the answer true."""
    attempt = _CLAIMS.get(job_id)
    if attempt is None:  # not run through run_job here (a chord's join): nothing to compare
        return
    ledger.lock_chain(s, tenant_id=s.scalar(select(Job.tenant_id).where(Job.id == job_id)))
    status, attempts = s.execute(select(Job.status, Job.attempts).where(Job.id == job_id)).one()
    if status != "running" or attempts != attempt:
        raise Superseded(job_id)


def _fail(job_id: str, error: str, trace: str) -> str:
    with session_scope() as s:
        job = s.get(Job, job_id)
        ledger.lock_chain(s, tenant_id=job.tenant_id)
        try:
            _fence(s, job_id)
        except Superseded:
            log.warning("job %s: not failed by this worker, another attempt owns it", job_id)
            return "superseded"
        error = artifacts.redact(error)  # the ledger is read by API callers: no server paths in it
        job.status, job.error, job.finished_at = "failed", error, utcnow()
        if job.kind == "unlearn":  # its audited candidate, never registered, holds the data it failed to remove
            s.info.setdefault("delete_after_commit", []).append(_candidate_uri(job.model_id, job.id))
        for request in _requests(s, job):
            _close_request(s, request, status="failed", pending_to="failed", version=None)
        if job.kind == "score":
            run = _influence_run_of(s, job)
            if run is not None:
                run.status = "failed"
        if job.kind == "reference":
            pool = s.get(ReferencePool, (job.params or {}).get("pool_id"))
            if pool is not None and pool.status in ("queued", "running"):
                pool.status = "failed"
                s.info.setdefault("delete_after_commit", []).append(f"pools/{pool.id}")
        ledger.append(s, tenant_id=job.tenant_id, event="job.failed", subject_type="job", subject_id=job.id,
                      data={"error": error[:2000]})
    log.debug(trace)
    return "failed"


def _complete(s: Any, job: Job, result: dict[str, Any]) -> None:
    _fence(s, job.id)
    current = _PHASE.get()
    if current is not None:  # the phase completing the job is timed in the same commit, not just after it
        job.timings = {**(job.timings or {}), current[0]: round(time.perf_counter() - current[1], 4)}
    job.status, job.result, job.progress, job.finished_at, job.phase = "completed", result, 1.0, utcnow(), None
    ledger.append(s, tenant_id=job.tenant_id, event="job.completed", subject_type="job", subject_id=job.id,
                  data={"kind": job.kind, "timings": job.timings, **{k: v for k, v in result.items()
                                                                     if k in ("version", "ref", "method")}})


def _requests(s: Any, job: Job) -> list[ForgetRequest]:
    ids = jobs.request_ids(s, job_id=job.id)
    return [r for r in (s.get(ForgetRequest, i) for i in ids) if r is not None and r.status == "accepted"]


def _close_request(s: Any, request: ForgetRequest, *, status: str, pending_to: str | None,
                   version: int | None, mapping: dict[int, str] | None = None) -> None:
    """Settle a request's pending dispositions and its status, with its ledger entry."""
    counts: dict[str, int] = {}
    for d in s.scalars(select(Disposition).where(Disposition.request_id == request.id)):
        if d.disposition == "pending":
            d.disposition = (mapping or {}).get(d.point_pk, pending_to or d.disposition)
            if d.disposition in ("pruned", "unlearned"):
                d.version = version
        counts[d.disposition] = counts.get(d.disposition, 0) + 1
    request.status, request.completed_at = status, utcnow()
    ledger.append(s, tenant_id=request.tenant_id, event=f"request.{status}", subject_type="request",
                  subject_id=request.id, data={"counts": counts, "version": version})
    model = s.get(Model, request.model_id)
    webhooks.emit(s, tenant_id=request.tenant_id, event_type=f"request.{status}",
                  data={"request_id": request.id, "model": model.name, "counts": counts,
                        "ref": registry.ref(model, version) if version else None}, callback_url=request.callback_url)
    opendsr.request_changed(s, request_id=request.id)  # OpenDSR statuses follow (signed callbacks)


# ----------------------------------------------------------------------------- engine access

def _engine():  # noqa: ANN202 - lazy import keeps torch out of the API process
    from workers import engine_facade

    return engine_facade


def _under_celery() -> bool:
    """True inside a worker's task (sharding needs workers to run the shards; inline runs never shard)."""
    from celery import current_task

    return bool(current_task and current_task.request.id)


def _influence_run_of(s: Any, job: Job) -> Any:
    model = s.get(Model, job.model_id)
    version = registry.get_version(s, model=model, number=job.version)
    return registry.influence_run(s, version=version, method=job.params.get("method", "gradnorm"))


def scoring_inputs(model_id: str, number: int) -> dict[str, Any]:
    """What computing a version's scores needs, read in one short transaction."""
    with session_scope() as s:
        model = s.get(Model, model_id)
        version = registry.get_version(s, model=model, number=number)
        ds = s.get(Dataset, model.dataset_id)
        return {"arch": model.architecture, "ds_uri": ds.uri, "w_uri": version.uri, "version_id": version.id,
                "shape": tuple(ds.input_shape), "n_classes": ds.n_classes, "n_rows": ds.n_points,
                "live": datasets.live_rows(s, dataset_id=ds.id)}


def compute_scores(c: dict[str, Any], method: str, *, progress: Callable[[float], None],
                   rows: slice | None = None, prepare_only: bool = False) -> tuple[np.ndarray, dict[str, Any]]:
    """Scores of every dataset row (or of `rows`); prepare_only fits what shards share and scores nothing."""
    eng = _engine()
    arrays = eng.load_arrays(artifacts.path_of(c["ds_uri"]))
    net = eng.load_network(c["arch"], c["shape"], c["n_classes"], artifacts.path_of(c["w_uri"]))
    work_dir = artifacts.path_of(f"scores/{c['version_id']}")
    if prepare_only:
        eng.prepare_scoring(method, net, arrays["x"], arrays["y"], work_dir=work_dir)
        return np.empty(0), {}
    return eng.self_influence(method, net, arrays["x"], arrays["y"], progress=progress, work_dir=work_dir,
                              checkpoints_dir=artifacts.path_of(registry.checkpoints_uri(c["w_uri"])), rows=rows)


def store_scores(c: dict[str, Any], *, model_id: str, number: int, method: str, scores: np.ndarray,
                 seconds: float, info: dict[str, Any]) -> None:
    """Save the score array (the cache) and record the run, its threshold and the ledger entry."""
    uri = f"scores/{c['version_id']}/{method}"
    meta = _engine().save_scores(artifacts.path_of(f"scores/{c['version_id']}"), method, scores,
                                 meta={"method": method, "version_id": c["version_id"], "seconds": seconds,
                                       "info": info})
    with session_scope() as s:
        model = s.get(Model, model_id)
        version = registry.get_version(s, model=model, number=number)
        registry.finish_scoring(s, model=model, version=version, method=method, uri=uri, sha256=meta["sha256"],
                                scores=scores, live_rows=c["live"], seconds=seconds, info=info)


def _score_version(*, model_id: str, number: int, method: str,
                   progress: Callable[[float], None]) -> float:
    """Compute and store a version's self-influence scores (all dataset rows); returns seconds."""
    c = scoring_inputs(model_id, number)
    began = time.perf_counter()
    scores, info = compute_scores(c, method, progress=progress)
    seconds = time.perf_counter() - began
    store_scores(c, model_id=model_id, number=number, method=method, scores=scores, seconds=seconds, info=info)
    return seconds


# ----------------------------------------------------------------------------- train

def _train(ctx: JobContext) -> str:
    eng = _engine()
    with session_scope() as s:
        job = s.get(Job, ctx.job_id)
        model = s.get(Model, job.model_id)
        ds = s.get(Dataset, model.dataset_id)
        live = datasets.live_rows(s, dataset_id=ds.id)
        arch, recipe, ds_uri = model.architecture, model.recipe, ds.uri
        shape, n_classes, model_id = tuple(ds.input_shape), ds.n_classes, model.id
        promote = job.params.get("promote", True)
    arrays = eng.load_arrays(artifacts.path_of(ds_uri))
    uri = f"models/{model_id}/job-{ctx.job_id}.safetensors"
    with ctx.phase("training", 0.0, 0.9) as progress:
        net, metrics = eng.train(arch, shape, n_classes, arrays["x"][live], arrays["y"][live], recipe=recipe,
                                 progress=progress, checkpoints_to=artifacts.path_of(registry.checkpoints_uri(uri)))
        if "x_test" in arrays and len(arrays["x_test"]):
            metrics["test_accuracy"] = eng.accuracy(net, arrays["x_test"], arrays["y_test"])
    with ctx.phase("registering", 0.9, 1.0):
        sha = eng.save_network(net, artifacts.path_of(uri))
        with session_scope() as s:
            job = s.get(Job, ctx.job_id)
            model = s.get(Model, model_id)
            version, score_job = registry.register_version(
                s, model=model, source="train", sha256=sha, uri=uri, job_id=job.id, n_train=len(live),
                metrics=metrics, promote=promote)
            pool_job = None
            if promote and s.scalar(select(ReferencePool.id).where(  # the lineage's first training measures it
                    ReferencePool.model_id == model.id, ReferencePool.status.in_(("queued", "running", "completed"))
            ).limit(1)) is None and "x_test" in arrays and len(arrays["x_test"]):
                pool_job = evidence.start_pool(s, model=model, version=version, reason="first training")
            _complete(s, job, {"version": version.number, "ref": registry.ref(model, version.number),
                               "metrics": metrics, "score_job_id": score_job.id,
                               "reference_job_id": pool_job.id if pool_job else None})
    return "completed"


# ----------------------------------------------------------------------------- score

def _score(ctx: JobContext) -> str:
    with session_scope() as s:
        job = s.get(Job, ctx.job_id)
        model_id, number, method = job.model_id, job.version, job.params.get("method", "gradnorm")
        run = _influence_run_of(s, job)
        done = run is not None and run.status == "completed" and registry.load_scores(run) is not None
        if run is not None and not done:
            run.status = "running"
    if done:  # an earlier attempt (its worker died before completing the job) or another job scored it
        with session_scope() as s:
            job = s.get(Job, ctx.job_id)
            model = s.get(Model, model_id)
            _complete(s, job, {"version": number, "ref": registry.ref(model, number), "method": method,
                               "seconds": 0.0, "reused": True})
        return "completed"
    if _under_celery():
        from workers import sharding

        c = scoring_inputs(model_id, number)
        if c["n_rows"] > get_settings().score_shard_size:
            return sharding.dispatch(ctx.job_id, c, model_id=model_id, number=number, method=method)
    with ctx.phase("scoring", 0.0, 1.0) as progress:
        seconds = _score_version(model_id=model_id, number=number, method=method, progress=progress)
    with session_scope() as s:
        job = s.get(Job, ctx.job_id)
        model = s.get(Model, model_id)
        _complete(s, job, {"version": number, "ref": registry.ref(model, number), "method": method,
                           "seconds": round(seconds, 4)})
    return "completed"


# ----------------------------------------------------------------------------- calibrate

def _threshold_for(sorted_scores: np.ndarray, n: int) -> float:
    """The strict threshold under which exactly the n lowest scores fall."""
    if n >= len(sorted_scores):
        return float(np.nextafter(sorted_scores[-1], np.inf))
    return float(sorted_scores[n])


def _calibrate(ctx: JobContext) -> str:
    from workers.engine.calibration import choose, default_grid, plot

    eng = _engine()
    with session_scope() as s:
        job = s.get(Job, ctx.job_id)
        model = s.get(Model, job.model_id)
        version = registry.get_version(s, model=model, number=job.version)
        ds = s.get(Dataset, model.dataset_id)
        p = job.params
        method = p.get("method") or model.policy.get("scorer", "gradnorm")
        live = np.array(datasets.live_rows(s, dataset_id=ds.id))
        compare = list(SCORERS) if p.get("compare") is None else p["compare"]
        methods = [method] + [m for m in compare if m != method]
        missing = [m for m in methods if (run := registry.influence_run(s, version=version, method=m)) is None
                   or registry.load_scores(run) is None]
        c = {"model_id": model.id, "tenant_id": model.tenant_id, "arch": model.architecture, "recipe": model.recipe,
             "number": version.number, "version_id": version.id, "uri": version.uri, "ds_uri": ds.uri,
             "shape": tuple(ds.input_shape), "n_classes": ds.n_classes, "ref": registry.ref(model, version.number)}
    with ctx.phase("scoring", 0.0, 0.1) as progress:
        for m in missing:
            _score_version(model_id=c["model_id"], number=c["number"], method=m, progress=progress)
        with session_scope() as s:
            version = s.get(Version, c["version_id"])
            every = {m: np.asarray(registry.load_scores(registry.influence_run(s, version=version, method=m)))
                     for m in methods}
    live_scores = every[method][live]
    grid = sorted({int(n) for n in (p.get("grid") or []) if 0 < int(n) < len(live)}) or default_grid(len(live))
    # positions within the live set, lowest first (ties by row); random removal is the baseline
    orders = {m: np.lexsort((live, every[m][live])) for m in methods}
    orders["random"] = np.random.default_rng(int(c["recipe"].get("seed", 0))).permutation(len(live))
    arrays = eng.load_arrays(artifacts.path_of(c["ds_uri"]))
    net = eng.load_network(c["arch"], c["shape"], c["n_classes"], artifacts.path_of(c["uri"]))
    with ctx.phase("retraining", 0.1, 0.95) as progress:
        curves = eng.calibrate(net, c["arch"], c["shape"], c["n_classes"], arrays["x"][live], arrays["y"][live],
                               orders=orders, grid=grid, recipe=c["recipe"], progress=progress)
    with ctx.phase("registering", 0.95, 1.0):
        eps, prune_eps, auc_max = float(p.get("epsilon", 0.01)), float(p.get("prune_epsilon", 0.03)), \
            float(p.get("auc_max", 0.55))
        n_free = choose(curves[method], epsilon=eps, auc_max=auc_max)
        n_prune = max(n_free, choose(curves[method], epsilon=prune_eps, auc_max=None))
        by_method = {m: {"n_free": choose(curves[m], epsilon=eps, auc_max=auc_max),
                         "n_prune": choose(curves[m], epsilon=prune_eps, auc_max=None)} for m in curves}
        ranked = np.sort(live_scores)
        png_uri = f"calibration/{c['version_id']}-{method}.png"
        artifacts.path_of(png_uri).parent.mkdir(parents=True, exist_ok=True)
        plot(curves, str(artifacts.path_of(png_uri)), title=f"{c['ref']}: removing low-influence points",
             chosen=n_free)
        summary = {"method": method, "epsilon": eps, "prune_epsilon": prune_eps, "auc_max": auc_max, "grid": grid,
                   "n_free": n_free, "n_prune": n_prune, "threshold": _threshold_for(ranked, n_free),
                   "prune_threshold": _threshold_for(ranked, n_prune), "curves": curves, "png": png_uri,
                   "by_method": by_method,
                   "n_train": int(len(live))}
        with session_scope() as s:
            job = s.get(Job, ctx.job_id)
            model = s.get(Model, c["model_id"])
            version = s.get(Version, c["version_id"])
            if method == model.policy.get("scorer", "gradnorm"):
                version.threshold, version.budget = summary["threshold"], n_free
            version.metrics = {**(version.metrics or {}), "prune_threshold": summary["prune_threshold"],
                               "calibration": summary}
            ledger.append(s, tenant_id=c["tenant_id"], event="calibration.completed", subject_type="version",
                          subject_id=c["version_id"], data={k: v for k, v in summary.items() if k != "curves"})
            _complete(s, job, {"version": c["number"], "ref": c["ref"], "method": method,
                               **{k: summary[k] for k in ("n_free", "n_prune", "threshold", "prune_threshold")}})
    return "completed"


# ----------------------------------------------------------------------------- reference pool

def _reference(ctx: JobContext) -> str:
    """Train the lineage's reference pool (K shadow models + the size-shift models), certify its free set."""
    eng = _engine()
    settings = get_settings()
    with session_scope() as s:
        job = s.get(Job, ctx.job_id)
        model = s.get(Model, job.model_id)
        pool = s.get(ReferencePool, job.params["pool_id"])
        version = registry.get_version(s, model=model, number=job.version)
        ds = s.get(Dataset, model.dataset_id)
        c = {"model_id": model.id, "tenant_id": model.tenant_id, "arch": model.architecture, "recipe": model.recipe,
             "ds_uri": ds.uri, "shape": tuple(ds.input_shape), "n_classes": ds.n_classes, "pool_id": pool.id,
             "k": pool.k, "shift_models": int(job.params.get("shift_models", 4)), "n_test": ds.n_test,
             "w_uri": version.uri if version.status == "active" else None,
             "live": datasets.live_rows(s, dataset_id=ds.id)}
        pool.status = "running"
    if c["n_test"] == 0:
        raise ValueError("the dataset has no test split (x_test, y_test): a reference pool standardises each "
                         "model by its test predictions")
    arrays = eng.load_arrays(artifacts.path_of(c["ds_uri"]))
    target = None
    if c["w_uri"] and artifacts.path_of(c["w_uri"]).exists():
        target = eng.load_network(c["arch"], c["shape"], c["n_classes"], artifacts.path_of(c["w_uri"]))
    with ctx.phase("training", 0.0, 0.9) as progress:
        pool_arrays, shift = eng.fit_pool(c["arch"], c["shape"], c["n_classes"], arrays, rows=c["live"], k=c["k"],
                                          recipe=c["recipe"], shift_models=c["shift_models"], target=target,
                                          progress=progress, cache=artifacts.path_of(f"pools/{c['pool_id']}.partial"))
    with ctx.phase("certifying", 0.9, 0.98):
        report = eng.score_pool(pool_arrays, auc_max=settings.free_auc_max, tpr_max=settings.free_tpr_max,
                                seed=int(c["recipe"].get("seed", 0)))
        report["shift"] = shift
        uri = f"pools/{c['pool_id']}"
        from workers.engine.evidence import save_pool

        save_pool(pool_arrays, artifacts.path_of(uri))
        digest = hashlib.sha256()
        for name in ("rows", "in_mask", "phi", "phi_test"):  # what was measured; the rest is derived from it
            digest.update((artifacts.path_of(uri) / f"{name}.npy").read_bytes())
        shutil.rmtree(artifacts.path_of(f"pools/{c['pool_id']}.partial"), ignore_errors=True)  # saved whole
    with ctx.phase("registering", 0.98, 1.0):
        with session_scope() as s:
            ledger.lock_chain(s, tenant_id=c["tenant_id"])
            _fence(s, ctx.job_id)
            job = s.get(Job, ctx.job_id)
            pool = s.get(ReferencePool, c["pool_id"])
            evidence.finish_pool(s, pool=pool, uri=uri, sha256=digest.hexdigest(), n_points=len(c["live"]),
                                 n_certified=report["n_certified"], report=ledger.canonical(report))
            model = s.get(Model, c["model_id"])
            _complete(s, job, {"version": job.version, "ref": registry.ref(model, job.version), "pool_id": pool.id,
                               "k": pool.k, "n_points": pool.n_points, "n_certified": pool.n_certified,
                               "certified_set": report["certified_set"], "shift": shift})
    return "completed"


# ----------------------------------------------------------------------------- unlearn

def _prune(scores: np.ndarray, rows: list[int], q: float, bound: float | None) -> tuple[list[int], list[int]]:
    """Drop the lowest-scoring fraction q of rows (never one at or above `bound`); return (kept, pruned)."""
    if q <= 0 or not rows:
        return rows, []
    order = sorted(rows, key=lambda r: float(scores[r]))
    cut = order[: int(q * len(rows))]
    pruned = [r for r in cut if bound is None or float(scores[r]) < bound]
    gone = set(pruned)
    return [r for r in rows if r not in gone], pruned


def _prunable(c: dict[str, Any], forget_rows: list[int]) -> tuple[list[int], str]:
    """The forget rows a job may prune, and on what basis: measured (pool separation ≤ LETHE_PRUNE_SEPARATION_MAX),
    provisional (no pool, LETHE_FREE_PROVISIONAL: the influence prune bound), or none."""
    settings = get_settings()
    if c.get("pool") is None:
        return (forget_rows, "provisional") if settings.free_provisional else ([], "none")
    from workers.engine.evidence import load_pool

    pool = load_pool(artifacts.path_of(c["pool"]["uri"]))
    cols = pool.columns(np.asarray(forget_rows, dtype=np.int64))
    sep = np.where(cols >= 0, np.asarray(pool.separation)[np.maximum(cols, 0)], np.nan)
    return [r for r, v in zip(forget_rows, sep, strict=True) if v <= settings.prune_separation_max], "measured"


def _unlearn(ctx: JobContext) -> str:
    eng = _engine()
    settings = get_settings()
    with session_scope() as s:
        job = s.get(Job, ctx.job_id)
        model = s.get(Model, job.model_id)
        requests = _requests(s, job)
        if not requests:
            _complete(s, job, {"version": None, "ref": None, "note": "no live requests"})
            return "completed"
        parent = registry.current_version(s, model=model)
        ds = s.get(Dataset, model.dataset_id)
        req_ids = [r.id for r in requests]
        disp = list(s.scalars(select(Disposition).where(Disposition.request_id.in_(req_ids))))
        rows_of = dict(s.execute(select(Point.id, Point.row).where(Point.dataset_id == ds.id,
                                                                   Point.id.in_({d.point_pk for d in disp}))).all())
        pending_pks = sorted({d.point_pk for d in disp if d.disposition == "pending"})
        audit_pks = sorted({d.point_pk for d in disp if d.disposition != "already_forgotten"})
        # Small audit sets are pooled with the lineage's earlier forgotten points (DESIGN: audit policy).
        if len(audit_pks) < settings.audit_min_points:
            earlier = s.execute(select(Point.id, Point.row).join(Disposition, Disposition.point_pk == Point.id).where(
                Disposition.model_id == model.id, Disposition.disposition.in_(("free", "pruned", "unlearned")),
                Point.erased_at.is_(None))).all()
            rows_of.update(dict(earlier))
            audit_pks = sorted(set(audit_pks) | {pk for pk, _ in earlier})
        retain_rows = datasets.live_rows(s, dataset_id=ds.id)
        ctx_data = {
            "model_id": model.id, "tenant_id": model.tenant_id, "arch": model.architecture, "recipe": model.recipe,
            "policy": model.policy, "parent": parent.number, "parent_id": parent.id, "parent_uri": parent.uri,
            "ds_uri": ds.uri, "shape": tuple(ds.input_shape), "n_classes": ds.n_classes,
            "algorithm": job.params["algorithm"], "params": job.params.get("params") or {},
            "method": model.policy.get("scorer", "gradnorm"), "request_ids": req_ids,
        }
        # Settlement: once the lineage's free budget is spent, this job's retain-only repair covers the
        # earlier free points (they are tombstoned, so already out of its retain set) and the budget resets.
        ctx_data["settle"] = parent.budget is not None and model.free_spent > 0 and model.free_spent >= parent.budget
        ctx_data["free_spent"] = model.free_spent
        run = registry.influence_run(s, version=parent, method=ctx_data["method"])
        have_scores = registry.load_scores(run) is not None if run else False
        pool_state = evidence.state(s, model=model)
        ctx_data["pool"] = ({"id": pool_state.pool.id, "uri": pool_state.pool.uri, "k": pool_state.pool.k}
                            if pool_state.valid else None)
        ctx_data["pool_why"] = pool_state.why
        audit_policy = model.policy.get("audit") or {}
        ctx_data["on_inconclusive"] = audit_policy.get("on_inconclusive") or settings.audit_on_inconclusive
        ctx_data["audit_rule"] = {"alpha": audit_policy.get("alpha") or settings.audit_alpha,
                                  "min_power": audit_policy.get("min_power") or settings.audit_min_power}
    forget_rows = [rows_of[pk] for pk in pending_pks]
    audit_rows = [rows_of[pk] for pk in audit_pks]
    c = ctx_data

    with ctx.phase("scoring", 0.0, 0.15) as progress:
        if not have_scores:
            _score_version(model_id=c["model_id"], number=c["parent"], method=c["method"],
                           progress=progress)
        with session_scope() as s:
            parent = s.get(Version, c["parent_id"])
            scores = registry.load_scores(registry.influence_run(s, version=parent, method=c["method"]))
            bound = (parent.metrics or {}).get("prune_threshold")
            if bound is None and scores is not None and retain_rows:
                bound = float(np.quantile(np.asarray(scores)[retain_rows], settings.prune_quantile))

    with ctx.phase("pruning", 0.15, 0.2):
        q_f, q_r = float(c["policy"].get("q_forget", 0.0)), float(c["policy"].get("q_retain", 0.0))
        # Forget points are pruned (left out of the unlearning, covered by the audit) only where measured: the
        # lowest-influence q_forget among those whose pool separation is within the stated bound. Without a pool,
        # only the opt-in provisional rule prunes them, by influence, and says so. Retain pruning is a cost
        # device: influence alone.
        eligible, basis = _prunable(c, forget_rows)
        _, forget_pruned = _prune(scores, eligible, q_f, bound if basis == "provisional" else None)
        gone = set(forget_pruned)
        forget_kept = [r for r in forget_rows if r not in gone]
        retain_kept, retain_pruned = _prune(scores, retain_rows, q_r, None)
        pruned_summary = {
            "forget": _ids_summary(c["model_id"], forget_pruned), "retain": _ids_summary(c["model_id"], retain_pruned),
            "bound": bound if basis == "provisional" else None, "q_forget": q_f, "q_retain": q_r,
            "forget_basis": basis, "separation_max": settings.prune_separation_max if basis == "measured" else None,
        }
        with session_scope() as s:
            ledger.lock_chain(s, tenant_id=c["tenant_id"])
            _fence(s, ctx.job_id)
            if not _logged(s, tenant_id=c["tenant_id"], subject_id=ctx.job_id, event="points.pruned"):  # re-run
                ledger.append(s, tenant_id=c["tenant_id"], event="points.pruned", subject_type="job",
                              subject_id=ctx.job_id, data=pruned_summary)

    arrays = eng.load_arrays(artifacts.path_of(c["ds_uri"]))
    x, y = arrays["x"], arrays["y"]
    parent_net = eng.load_network(c["arch"], c["shape"], c["n_classes"], artifacts.path_of(c["parent_uri"]))
    test = (arrays.get("x_test"), arrays.get("y_test"))
    attempts: list[dict[str, Any]] = []
    ladder = escalation(c["algorithm"], c["params"])
    uri = _candidate_uri(c["model_id"], ctx.job_id)
    reference_net, ref_uri, start = None, None, 0.2
    if (c["policy"].get("audit") or {}).get("retrain_reference") and c["algorithm"] != "retrain":
        # The model's policy asks for a retrain reference: retrained on the whole retain set (never pruned: it
        # is the gold standard the audit measures against), kept until the job ends so a re-run reuses it. Its
        # own seed: an escalated retrain (recipe seed) must be judged against an independent draw, not itself.
        ref_uri, start = _candidate_uri(c["model_id"], ctx.job_id, "reference"), 0.4
        if artifacts.path_of(ref_uri).exists():
            reference_net = eng.load_network(c["arch"], c["shape"], c["n_classes"], artifacts.path_of(ref_uri))
        else:
            with ctx.phase("reference", 0.2, start) as progress:
                ref_recipe = {**c["recipe"], "seed": int(c["recipe"].get("seed", 0)) + REFERENCE_SEED_OFFSET}
                reference_net, _ = eng.unlearn("retrain", parent_net, forget=(x[forget_rows], y[forget_rows]),
                                               retain=(x[retain_rows], y[retain_rows]), params={},
                                               recipe=ref_recipe, arch=c["arch"], shape=c["shape"],
                                               n_classes=c["n_classes"], progress=progress)
                eng.save_network(reference_net, artifacts.path_of(ref_uri))
    for attempt, (algorithm, params) in enumerate(ladder, start=1):
        span = (0.8 - start) / len(ladder)
        lo = start + span * (attempt - 1)
        prior = _recorded_audit(ctx.job_id, attempt)
        if prior is not None:  # an earlier run of this job (its worker died) audited this attempt: resume after it
            audit_id, report, candidate = prior
            sha, unlearn_seconds, un_metrics = candidate["sha256"], candidate["unlearn_seconds"], candidate["metrics"]
        else:
            with ctx.phase(f"unlearning#{attempt}" if attempt > 1 else "unlearning", lo, lo + span * 0.7) as progress:
                began = time.perf_counter()
                net, un_metrics = eng.unlearn(
                    algorithm, parent_net, forget=(x[forget_kept], y[forget_kept]),
                    retain=(x[retain_kept], y[retain_kept]), params=params, recipe=c["recipe"], arch=c["arch"],
                    shape=c["shape"], n_classes=c["n_classes"], progress=progress)
                unlearn_seconds = time.perf_counter() - began
                sha = eng.save_network(net, artifacts.path_of(uri))  # the candidate: audited, then registered as is
            with ctx.phase(f"auditing#{attempt}" if attempt > 1 else "auditing", lo + span * 0.7, lo + span):
                report = eng.audit(net, parent_net, forget=(x[audit_rows], y[audit_rows]),
                                   retain=(x[retain_kept], y[retain_kept]), test=test, settings=settings,
                                   retrained=algorithm == "retrain", policy=c["policy"].get("audit"),
                                   reference=reference_net)
                report = _judge(report, _evidence_audit(c, arrays, audit_rows, net=net, parent=parent_net,
                                                        reference=reference_net), algorithm=algorithm,
                                on_inconclusive=c["on_inconclusive"])
                candidate = {"uri": uri, "sha256": sha, "unlearn_seconds": round(unlearn_seconds, 4),
                             "metrics": un_metrics}
                with session_scope() as s:
                    ledger.lock_chain(s, tenant_id=c["tenant_id"])
                    _fence(s, ctx.job_id)
                    row = Audit(job_id=ctx.job_id, model_id=c["model_id"], parent_version=c["parent"],
                                attempt=attempt, algorithm=algorithm, passed=report["passed"],
                                verdict=report["verdict"],
                                report=ledger.canonical(report | {"candidate": candidate}))
                    s.add(row)
                    s.flush()
                    ledger.append(s, tenant_id=c["tenant_id"], event="audit.recorded", subject_type="job",
                                  subject_id=ctx.job_id, data={"passed": report["passed"], "algorithm": algorithm,
                                                               "verdict": report["verdict"],
                                                               "evidence": _evidence_summary(report["evidence"]),
                                                               "params": params, "attempt": attempt,
                                                               "after": report["after"], "before": report["before"],
                                                               "reasons": report["reasons"],
                                                               "reference_gap": (report.get("reference") or {}).get(
                                                                   "gap")})
                    audit_id = row.id
        passed = report["passed"]
        attempts.append({"attempt": attempt, "algorithm": algorithm, "params": params, "passed": passed,
                         "verdict": report.get("verdict"),
                         "seconds": round(unlearn_seconds, 4), "reasons": report["reasons"]})
        if passed:
            break

    with ctx.phase("registering", 0.95, 1.0):
        metrics = {"unlearn_seconds": round(unlearn_seconds, 4), **un_metrics, "attempts": attempts,
                   "n_forget": len(forget_rows), "n_forget_kept": len(forget_kept),
                   "n_retain": len(retain_rows), "n_retain_kept": len(retain_kept)}
        result: dict[str, Any] = {"pruned": pruned_summary, "audit": report, "metrics": metrics,
                                  "algorithm": algorithm, "requested_algorithm": c["algorithm"]}
        if not passed:
            with session_scope() as s:
                ledger.lock_chain(s, tenant_id=c["tenant_id"])
                _fence(s, ctx.job_id)
                s.info.setdefault("delete_after_commit", []).extend([uri, *([ref_uri] if ref_uri else [])])
                job = s.get(Job, ctx.job_id)
                for request in _requests(s, job):
                    _close_request(s, request, status="failed", pending_to="failed", version=None)
                job.status, job.result, job.finished_at = "failed", result | {"version": None, "ref": None}, utcnow()
                job.error = "audit failed: " + "; ".join(report["reasons"])
                ledger.append(s, tenant_id=c["tenant_id"], event="job.failed", subject_type="job",
                              subject_id=ctx.job_id, data={"error": job.error, "audit_id": audit_id})
            return "failed"
        pruned_pks = {pk for pk in pending_pks if rows_of[pk] in set(forget_pruned)}
        with session_scope() as s:
            ledger.lock_chain(s, tenant_id=c["tenant_id"])
            _fence(s, ctx.job_id)
            job = s.get(Job, ctx.job_id)
            model = s.get(Model, c["model_id"])
            parent = s.get(Version, c["parent_id"])
            version, _ = registry.register_version(
                s, model=model, source="unlearn", sha256=sha, uri=uri, parent=parent, request_id=c["request_ids"][0],
                job_id=job.id, n_train=len(retain_rows), metrics={"audit": report["after"]}, promote=True)
            s.get(Audit, audit_id).version = version.number
            if ref_uri:  # the reference has served its audits
                s.info.setdefault("delete_after_commit", []).append(ref_uri)
            mapping = {pk: ("pruned" if pk in pruned_pks else "unlearned") for pk in pending_pks}
            for request in _requests(s, job):
                _close_request(s, request, status="completed", pending_to=None, version=version.number,
                               mapping=mapping)
            if c["settle"]:
                ledger.append(s, tenant_id=c["tenant_id"], event="budget.settled", subject_type="model",
                              subject_id=model.id, data={"free_points": model.free_spent, "job_id": job.id,
                                                         "repair": f"retain-only ({algorithm})",
                                                         "ref": registry.ref(model, version.number)})
                result["settlement"] = {"free_points": model.free_spent}
                model.free_spent = 0
            _complete(s, job, result | {"version": version.number, "ref": registry.ref(model, version.number)})
            datasets.erase_cleared(s, dataset_id=model.dataset_id)
    return "completed"


def _evidence_audit(c: dict[str, Any], arrays: dict[str, np.ndarray], audit_rows: list[int], *, net: Any,
                    parent: Any, reference: Any | None) -> dict[str, Any]:
    """The pool-based verdict on the request's points (free and pruned included): does the new version treat them
    like a model retrained without them? Without a valid pool: inconclusive, basis unmeasured."""
    from workers.engine import evidence as ev

    pool_info = c.get("pool")
    if pool_info is None:
        return {"verdict": "inconclusive", "basis": "unmeasured", "pool_id": None, "side": None, "power": None,
                "why": f"no valid reference pool for this lineage ({c.get('pool_why')})"}
    pool = ev.load_pool(artifacts.path_of(pool_info["uri"]))
    rows = np.asarray(audit_rows, dtype=np.int64)
    cols = pool.columns(rows)
    keep = cols >= 0
    keep[keep] &= np.isfinite(np.asarray(pool.phi_std[:, cols[keep]])).all(0)
    rows, cols = rows[keep], cols[keep]
    base = {"basis": "measured", "pool_id": pool_info["id"], "n_request": len(audit_rows),
            "n_unmeasured": int((~keep).sum())}
    if not len(cols):
        return base | {"verdict": "inconclusive", "side": None, "power": None,
                       "why": "none of the request's points was measured by the pool"}
    x, y = arrays["x"], arrays["y"]
    eng = _engine()
    phi = {name: eng.standardised_phi(m, x[rows], y[rows], arrays["x_test"], arrays["y_test"])
           for name, m in (("new", net), ("parent", parent), ("reference", reference)) if m is not None}
    rule = ev.AuditRule(alpha=float(c["audit_rule"]["alpha"]), min_power=float(c["audit_rule"]["min_power"]))
    conc = ev.request_concentration(pool, y[np.asarray(pool.rows)], cols, rule=rule)
    shift = None
    if len(pool.shift_cols):  # the measured size mismatch: OUT means of the shift points and their offsets
        at = np.asarray(pool.shift_cols)
        shift = (ev.point_stats(np.asarray(pool.phi_std[:, at]), np.asarray(pool.in_mask[:, at])).mu_out,
                 np.asarray(pool.shift_offsets))
    out = ev.audit(np.asarray(pool.phi_std[:, cols]), np.asarray(pool.in_mask[:, cols]), phi["new"],
                   shift=shift, parent_phi_std=phi.get("parent"),
                   reference_phi_std=phi.get("reference"), concentrated=conc["concentrated"], rule=rule)
    return base | out | {"concentration": conc, "largest_class_share": conc["class_share"]}


def _judge(report: dict[str, Any], evidence_report: dict[str, Any], *, algorithm: str,
           on_inconclusive: str) -> dict[str, Any]:
    """The decision table: accuracy outside policy → failed; then the pool's verdict. A candidate is promoted when
    it passed, when the policy accepts an inconclusive audit (labelled), or when it is a retrain (exact by
    construction; its verdict is recorded all the same: retrains that fail are the audit's false alarms)."""
    verdict = "failed" if report["reasons"] else evidence_report["verdict"]
    reasons = list(report["reasons"])
    if not reasons and verdict != "passed":
        reasons.append(f"{verdict}: {evidence_report.get('why')}")
    accepted = verdict == "inconclusive" and on_inconclusive == "accept"
    promoted = verdict == "passed" or accepted or algorithm == "retrain"
    return report | {"passed": promoted, "verdict": verdict, "reasons": reasons,
                     "accuracy": {"passed": not report["reasons"], "reasons": report["reasons"]},
                     "evidence": evidence_report | {"accepted": accepted,
                                                    "promoted_as_retrain": algorithm == "retrain"
                                                    and verdict != "passed"}}


def _evidence_summary(e: dict[str, Any]) -> dict[str, Any]:
    """What the ledger keeps of an audit's evidence."""
    return {k: e.get(k) for k in ("basis", "pool_id", "verdict", "side", "statistic", "null", "power", "why",
                                  "n_points", "accepted")}


def _candidate_uri(model_id: str, job_id: str, part: str = "") -> str:
    """Where an unlearning job keeps its candidate weights between unlearning, audit and registration (and
    its retrain reference, `part` "reference")."""
    return f"models/{model_id}/job-{job_id}{'-' + part if part else ''}.safetensors"


def _logged(s: Any, *, tenant_id: str, subject_id: str, event: str) -> bool:
    """Whether the ledger already holds this event for this subject (a re-run job must not record it twice)."""
    return s.scalar(select(LedgerEntry.id).where(LedgerEntry.tenant_id == tenant_id, LedgerEntry.event == event,
                                                 LedgerEntry.subject_id == subject_id).limit(1)) is not None


def _recorded_audit(job_id: str, attempt: int) -> tuple[str, dict[str, Any], dict[str, Any]] | None:
    """(audit id, report, candidate) of this job's recorded audit of `attempt`, or None when there is none.

    A passed audit counts only while the candidate it judged is on disk with the recorded hash: that file is what
    registering publishes. A failed one is kept as recorded (the next attempt needs no file of it)."""
    with session_scope(readonly=True) as s:
        row = s.scalar(select(Audit).where(Audit.job_id == job_id, Audit.attempt == attempt)
                       .order_by(Audit.created_at.desc()).limit(1))
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
