"""A train job: train a version from the model's recipe on the dataset's live points, register it, and start
its scoring (and, for a lineage's first training, its reference pool)."""

from __future__ import annotations

from dataclasses import dataclass

from app import artifacts
from app.datasets import service as datasets
from app.db import session_scope
from app.evidence import service as evidence
from app.jobs.enums import JobStatus
from app.jobs.params import TrainParams
from app.jobs.tables import Job
from app.registry import service as registry
from app.registry.enums import VersionSource
from app.registry.tables import Model
from workers.jobs.context import JobContext, ModelInputs, complete, engine, job_rows


@dataclass(frozen=True)
class TrainJob(ModelInputs):
    live: list[int]
    promote: bool

    @classmethod
    def read(cls, job_id: str) -> TrainJob:
        with session_scope() as s:
            job, model, ds = job_rows(s, job_id)
            return cls(**ModelInputs.of(model, ds), live=datasets.live_rows(s, dataset_id=ds.id),
                       promote=TrainParams.model_validate(job.params).promote)


def run(ctx: JobContext) -> str:
    eng = engine()
    p = TrainJob.read(ctx.job_id)
    arrays = eng.load_arrays(artifacts.path_of(p.ds_uri))
    has_test = "x_test" in arrays and len(arrays["x_test"])
    uri = artifacts.job_weights_uri(p.model_id, ctx.job_id)
    with ctx.phase("training", 0.0, 0.9) as progress:
        net, metrics = eng.train(p.arch, p.shape, p.n_classes, eng.rows(arrays, p.live), recipe=p.recipe,
                                 progress=progress, checkpoints_to=artifacts.path_of(artifacts.checkpoints_uri(uri)))
        if has_test:
            metrics["test_accuracy"] = eng.accuracy(net, eng.rows(arrays, test=True))
    with ctx.phase("registering", 0.9, 1.0):
        sha = eng.save_network(net, artifacts.path_of(uri))
        with session_scope() as s:
            job = s.get(Job, ctx.job_id)
            model = s.get(Model, p.model_id)
            version, score_job = registry.register_version(
                s, model=model, source=VersionSource.TRAIN, sha256=sha, uri=uri, job_id=job.id, n_train=len(p.live),
                metrics=metrics, promote=p.promote)
            pool_job = None
            if p.promote and has_test and not evidence.has_pool(s, model_id=model.id):
                pool_job = evidence.start_pool(s, model=model, version=version, reason="first training")
            complete(s, job, {"version": version.number, "ref": registry.ref(model, version.number),
                              "metrics": metrics, "score_job_id": score_job.id,
                              "reference_job_id": pool_job.id if pool_job else None})
    return JobStatus.COMPLETED
