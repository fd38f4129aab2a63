"""A score job: a version's self-influence scores with one method (sharded over workers when large)."""

from __future__ import annotations

from dataclasses import dataclass

from app.db import session_scope
from app.jobs.enums import JobStatus
from app.jobs.params import ScoreParams
from app.jobs.tables import Job
from app.registry import scores as runs
from app.registry import service as registry
from app.registry.tables import Model
from app.settings import get_settings
from workers.jobs import scoring, shards
from workers.jobs.context import JobContext, complete


@dataclass(frozen=True)
class ScoreJob:
    job_id: str
    model_id: str
    number: int
    method: str

    @classmethod
    def of(cls, job: Job) -> ScoreJob:
        return cls(job_id=job.id, model_id=job.model_id, number=job.version,
                   method=ScoreParams.model_validate(job.params).method)


def _under_celery() -> bool:
    """True inside a worker's task (sharding needs workers to run the shards; inline runs never shard)."""
    from celery import current_task

    return bool(current_task and current_task.request.id)


def _finish(p: ScoreJob, **result: object) -> str:
    with session_scope() as s:
        model = s.get(Model, p.model_id)
        complete(s, s.get(Job, p.job_id), {"version": p.number, "ref": registry.ref(model, p.number),
                                           "method": p.method, **result})
    return JobStatus.COMPLETED


def run(ctx: JobContext) -> str:
    with session_scope() as s:
        job = s.get(Job, ctx.job_id)
        p = ScoreJob.of(job)
        version = registry.get_version(s, model=s.get(Model, p.model_id), number=p.number)
        done = runs.scoring_running(s, version=version, method=p.method)
    if done:  # an earlier attempt (its worker died before completing the job) or another job scored it
        return _finish(p, seconds=0.0, reused=True)
    if _under_celery():

        c = scoring.ScoringInputs.read(p.model_id, p.number)
        if c.n_rows > get_settings().score_shard_size:
            return shards.dispatch(ctx.job_id, c, method=p.method)
    with ctx.phase("scoring", 0.0, 1.0) as progress:
        seconds = scoring.score_version(model_id=p.model_id, number=p.number, method=p.method, progress=progress)
    return _finish(p, seconds=round(seconds, 4))


def on_fail(s: object, job: Job) -> None:
    """The run this job computed is failed."""
    version = registry.get_version(s, model=s.get(Model, job.model_id), number=job.version)
    runs.scoring_failed(s, version=version, method=ScoreJob.of(job).method)
