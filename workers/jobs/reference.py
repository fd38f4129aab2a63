"""A reference job: train the lineage's reference pool (K shadow models + the size-shift models) and certify
its free set."""

from __future__ import annotations

import hashlib
import shutil
from dataclasses import dataclass

from app import artifacts
from app.datasets import service as datasets
from app.db import session_scope
from app.evidence import service as evidence
from app.evidence.tables import ReferencePool
from app.jobs.enums import JobStatus
from app.jobs.params import ReferenceParams
from app.jobs.tables import Job
from app.ledger import service as ledger
from app.registry import service as registry
from app.registry.enums import VersionStatus
from app.registry.tables import Model
from app.settings import get_settings
from workers.engine.evidence import save_pool
from workers.jobs.context import JobContext, ModelInputs, complete, engine, fence, job_rows


@dataclass(frozen=True)
class ReferenceJob(ModelInputs):
    n_test: int
    pool_id: str
    k: int
    shift_models: int
    w_uri: str | None  # the target version's weights while it is active
    live: list[int]

    @classmethod
    def start(cls, job_id: str) -> ReferenceJob:
        """Read the job's inputs and mark its pool running, in one transaction."""
        with session_scope() as s:
            job, model, ds = job_rows(s, job_id)
            p = ReferenceParams.model_validate(job.params)
            pool = evidence.pool_running(s, pool_id=p.pool_id)
            version = registry.get_version(s, model=model, number=job.version)
            return cls(**ModelInputs.of(model, ds), n_test=ds.n_test,
                       pool_id=pool.id, k=pool.k, shift_models=p.shift_models,
                       w_uri=version.uri if version.status == VersionStatus.ACTIVE else None,
                       live=datasets.live_rows(s, dataset_id=ds.id))


def _certify(c: ReferenceJob, pool_arrays: object, shift: dict) -> tuple[dict, str]:
    """Certify the pool's free set and save the pool whole; (report, sha256 of what was measured)."""
    settings = get_settings()
    report = engine().score_pool(pool_arrays, auc_max=settings.free_auc_max, tpr_max=settings.free_tpr_max,
                                 seed=int(c.recipe.get("seed", 0)))
    report["shift"] = shift
    root = artifacts.path_of(artifacts.pool_uri(c.pool_id))
    save_pool(pool_arrays, root)
    digest = hashlib.sha256()
    for name in ("rows", "in_mask", "phi", "phi_test"):  # what was measured; the rest is derived from it
        digest.update((root / f"{name}.npy").read_bytes())
    shutil.rmtree(artifacts.path_of(artifacts.pool_cache_uri(c.pool_id)), ignore_errors=True)  # saved whole
    return report, digest.hexdigest()


def run(ctx: JobContext) -> str:
    eng = engine()
    c = ReferenceJob.start(ctx.job_id)
    if c.n_test == 0:
        raise ValueError("the dataset has no test split (x_test, y_test): a reference pool standardises each "
                         "model by its test predictions")
    arrays = eng.load_arrays(artifacts.path_of(c.ds_uri))
    target = None
    if c.w_uri and artifacts.path_of(c.w_uri).exists():
        try:
            target = eng.load_network(c.arch, c.shape, c.n_classes, artifacts.path_of(c.w_uri))
        except FileNotFoundError:  # the version was revoked since: the pool is the lineage's, it goes on without
            target = None
    with ctx.phase("training", 0.0, 0.9) as progress:
        pool_arrays, shift = eng.fit_pool(c.arch, c.shape, c.n_classes, arrays, rows=c.live, k=c.k,
                                          recipe=c.recipe, shift_models=c.shift_models, target=target,
                                          progress=progress, cache=artifacts.path_of(artifacts.pool_cache_uri(
                                              c.pool_id)))
    with ctx.phase("certifying", 0.9, 0.98):
        report, sha256 = _certify(c, pool_arrays, shift)
    with ctx.phase("registering", 0.98, 1.0), session_scope() as s:
        ledger.lock_chain(s, tenant_id=c.tenant_id)
        fence(s, ctx.job_id)
        job = s.get(Job, ctx.job_id)
        pool = s.get(ReferencePool, c.pool_id)
        evidence.finish_pool(s, pool=pool, uri=artifacts.pool_uri(c.pool_id), sha256=sha256,
                             n_points=len(c.live), n_certified=report["n_certified"],
                             report=ledger.canonical(report))
        model = s.get(Model, c.model_id)
        complete(s, job, {"version": job.version, "ref": registry.ref(model, job.version), "pool_id": pool.id,
                          "k": pool.k, "n_points": pool.n_points, "n_certified": pool.n_certified,
                          "certified_set": report["certified_set"], "shift": shift})
    return JobStatus.COMPLETED


def on_fail(s: object, job: Job) -> None:
    """The pool this job fitted is failed."""
    evidence.fail_pool(s, pool_id=(job.params or {}).get("pool_id"))  # raw: the job may have failed on its params
