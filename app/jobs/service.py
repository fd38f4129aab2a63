"""Job rows, claiming, progress, and the outbox that enqueues them after commit."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, or_, select, update
from sqlalchemy.orm import Session

from app.db import utcnow
from app.errors import NotFound
from app.jobs.tables import Job, JobRequest, Outbox
from app.ledger import service as ledger
from app.settings import get_settings

RUN_JOB = "lethe.run_job"
ACTIVE = ("queued", "running")


def lease() -> timedelta:
    """How long a running job's worker may stay silent before the job counts as orphaned."""
    return timedelta(seconds=get_settings().job_lease_seconds)


def create(session: Session, *, tenant_id: str, kind: str, model_id: str | None, version: int | None,
           params: dict[str, Any] | None = None, deadline: datetime | None = None,
           dataset_id: str | None = None) -> Job:
    """A queued job plus its outbox row, in the caller's transaction (a model's job, or a dataset's)."""
    job = Job(tenant_id=tenant_id, kind=kind, model_id=model_id, dataset_id=dataset_id, version=version,
              status="queued",
              params=params or {}, timings={}, deadline=deadline)
    session.add(job)
    session.flush()
    session.add(Outbox(task=RUN_JOB, job_id=job.id, payload={"job_id": job.id}, deadline=deadline))
    ledger.append(session, tenant_id=tenant_id, event="job.queued", subject_type="job", subject_id=job.id,
                  data={"kind": kind, "model_id": model_id, "version": version,
                        **({"dataset_id": dataset_id} if dataset_id else {})})
    return job


def get(session: Session, *, tenant_id: str, job_id: str) -> Job:
    """One of the tenant's jobs; 404 otherwise."""
    job = session.get(Job, job_id)
    if job is None or job.tenant_id != tenant_id:
        raise NotFound(f"no job {job_id}")
    return job


def list_jobs(session: Session, *, tenant_id: str, status: str | None, kind: str | None, offset: int,
              limit: int) -> tuple[list[Job], int]:
    """The tenant's jobs, newest first."""
    q = select(Job).where(Job.tenant_id == tenant_id)
    if status:
        q = q.where(Job.status == status)
    if kind:
        q = q.where(Job.kind == kind)
    total = session.scalar(select(func.count()).select_from(q.subquery())) or 0
    rows = session.scalars(q.order_by(Job.created_at.desc(), Job.id).offset(offset).limit(limit))
    return list(rows), total


def request_ids(session: Session, *, job_id: str) -> list[str]:
    """The forget requests a job serves."""
    return list(session.scalars(select(JobRequest.request_id).where(JobRequest.job_id == job_id)
                                .order_by(JobRequest.request_id)))


def queued_unlearn_job(session: Session, *, model_id: str) -> Job | None:
    """The lineage's next unlearning job, if one is queued and not started: new requests join it."""
    return session.scalar(select(Job).where(Job.model_id == model_id, Job.kind == "unlearn",
                                            Job.status == "queued", Job.started_at.is_(None))
                          .order_by(Job.created_at).limit(1))


def claim(session: Session, *, job_id: str, worker: str) -> Job | None:
    """Atomically take a queued job, or a running one whose worker's lease lapsed; None if not ours."""
    now = utcnow()
    result = session.execute(
        update(Job)
        .where(Job.id == job_id,
               or_(Job.status == "queued", (Job.status == "running") & (Job.lease_until < now)))
        .values(status="running", lease_until=now + lease(), worker=worker, attempts=Job.attempts + 1,
                started_at=func.coalesce(Job.started_at, now))
        .execution_options(synchronize_session=False)
    )
    if result.rowcount != 1:
        return None
    session.flush()
    job = session.get(Job, job_id)
    session.refresh(job)
    return job


def pending_outbox(session: Session, *, limit: int = 100) -> list[Outbox]:
    """Unpublished outbox rows, earliest deadline first, then oldest."""
    return list(session.scalars(
        select(Outbox).where(Outbox.published_at.is_(None))
        .order_by(Outbox.deadline.is_(None), Outbox.deadline, Outbox.id).limit(limit)
    ))


def lapsed_jobs(session: Session) -> list[str]:
    """Running jobs whose lease ran out: their worker died mid-job."""
    return list(session.scalars(select(Job.id).where(Job.status == "running", Job.lease_until < utcnow())))
