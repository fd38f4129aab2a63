"""Thin Celery tasks: take ids, reload rows, call a job module (workers/jobs/)."""

from __future__ import annotations

from workers.celery_app import celery
from workers.jobs import runner, shards
from workers.jobs.shards import JOIN_TASK, SHARD_TASK

BUSY_RETRY_SECONDS = 3


@celery.task(name="lethe.run_job", bind=True, acks_late=True, max_retries=None)
def run_job(self, job_id: str) -> str:  # noqa: ANN001 - Celery's bound task
    """Run one job to its end; if its lineage is busy with another unlearning job, come back later."""
    outcome = runner.run_job(job_id, worker=self.request.hostname or "worker")
    if outcome == "busy":
        raise self.retry(countdown=BUSY_RETRY_SECONDS)
    return outcome


@celery.task(name=SHARD_TASK, acks_late=True, ignore_result=False)
def score_shard(job_id: str, start: int, stop: int) -> str:
    """Score one shard of a sharded scoring job (the chord's header)."""
    return shards.run_shard(job_id, start, stop)


@celery.task(name=JOIN_TASK, acks_late=True)
def join_shards(_results: list[str], job_id: str) -> str:
    """Join a sharded scoring job's shards and complete it (the chord's body)."""
    return shards.join(job_id)
