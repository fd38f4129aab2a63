"""Job rows and every transition of one: create, claim, renew, progress, fence, complete, fail, cancel.

Workers (workers/jobs/) call these; nothing else writes a job's status.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, or_, select, true, update
from sqlalchemy.orm import Session

from app import artifacts
from app.db import page, utcnow
from app.errors import NotFound
from app.jobs import outbox
from app.jobs.enums import JobKind, JobStatus
from app.jobs.tables import Audit, Job, JobRequest, Outbox
from app.ledger import service as ledger
from app.settings import get_settings


class Superseded(Exception):  # noqa: N818 - a state, not a failure
    """This worker's lease lapsed and another worker claimed the job: drop this run's results."""


def lease() -> timedelta:
    """How long a running job's worker may stay silent before the job counts as orphaned."""
    return timedelta(seconds=get_settings().job_lease_seconds)


def create(session: Session, *, tenant_id: str, kind: JobKind, model_id: str | None, version: int | None,
           params: dict[str, Any] | None = None, deadline: datetime | None = None,
           dataset_id: str | None = None) -> Job:
    """A queued job plus its outbox row, in the caller's transaction (published once it commits): a model's job,
    or a dataset's (validate: model_id None, dataset_id set)."""
    job = Job(tenant_id=tenant_id, kind=kind, model_id=model_id, dataset_id=dataset_id, version=version,
              status=JobStatus.QUEUED,
              params=params or {}, timings={}, deadline=deadline)
    session.add(job)
    session.flush()
    session.add(Outbox(task=outbox.RUN_JOB, job_id=job.id, payload={"job_id": job.id}, deadline=deadline))
    outbox.publish_after_commit(session)
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
    return page(session, q, Job.created_at.desc(), Job.id, offset=offset, limit=limit)


def request_ids(session: Session, *, job_id: str) -> list[str]:
    """The forget requests a job serves."""
    return list(session.scalars(select(JobRequest.request_id).where(JobRequest.job_id == job_id)
                                .order_by(JobRequest.request_id)))


def queued_unlearn_job(session: Session, *, model_id: str) -> Job | None:
    """The lineage's next unlearning job, if one is queued and not started: new requests join it."""
    return session.scalar(select(Job).where(Job.model_id == model_id, Job.kind == JobKind.UNLEARN,
                                            Job.status == JobStatus.QUEUED, Job.started_at.is_(None))
                          .order_by(Job.created_at).limit(1))


def lineage_busy(session: Session, *, job: Job) -> bool:
    """Another unlearning job of this lineage holds a live lease: one job per lineage at a time."""
    return session.scalar(select(Job.id).where(
        Job.model_id == job.model_id, Job.kind == JobKind.UNLEARN, Job.id != job.id, Job.status == JobStatus.RUNNING,
        Job.lease_until > utcnow())) is not None


def claim(session: Session, *, job_id: str, worker: str) -> Job | None:
    """Atomically take a queued job, or a running one whose worker's lease lapsed, with its ledger entry; None
    if not ours. Takes the tenant's chain lock first, then the row: one lock order everywhere."""
    tenant_id = session.scalar(select(Job.tenant_id).where(Job.id == job_id))
    if tenant_id is None:
        return None
    ledger.lock_chain(session, tenant_id=tenant_id)
    now = utcnow()
    result = session.execute(
        update(Job)
        .where(Job.id == job_id,
               or_(Job.status == JobStatus.QUEUED, (Job.status == JobStatus.RUNNING) & (Job.lease_until < now)))
        .values(status=JobStatus.RUNNING, lease_until=now + lease(), worker=worker, attempts=Job.attempts + 1,
                started_at=func.coalesce(Job.started_at, now))
        .execution_options(synchronize_session=False)
    )
    if result.rowcount != 1:
        return None
    session.flush()
    job = session.get(Job, job_id)
    session.refresh(job)
    ledger.append(session, tenant_id=job.tenant_id, event="job.started", subject_type="job", subject_id=job.id,
                  data={"kind": job.kind, "attempt": job.attempts, "worker": worker})
    return job


def renew(session: Session, *, job_id: str, attempt: int | None = None, **values: Any) -> bool:
    """Extend a running job's lease (and set `values`, e.g. progress) unless another attempt owns it now; True
    when renewed. A plain UPDATE: heartbeats and shard workers never read the row."""
    ours = Job.attempts == attempt if attempt is not None else true()
    result = session.execute(update(Job).where(Job.id == job_id, Job.status == JobStatus.RUNNING, ours)
                             .values(lease_until=utcnow() + lease(), **values)
                             .execution_options(synchronize_session=False))
    return result.rowcount == 1


def progress(session: Session, *, job_id: str, attempt: int | None, timing: tuple[str, float] | None = None,
             **values: Any) -> Job:
    """Record a running job's phase, progress and (`timing`) a finished phase's seconds, renewing its lease;
    Superseded when another attempt claimed it meanwhile (this worker was paused past its lease): the stale
    run stops at its next write instead of overwriting the new one's."""
    job = session.get(Job, job_id)
    if attempt is not None and job.attempts != attempt:
        raise Superseded(job_id)
    for key, value in values.items():
        setattr(job, key, value)
    if timing is not None:
        job.timings = {**(job.timings or {}), timing[0]: timing[1]}
    job.lease_until = utcnow() + lease()
    return job


def fence(session: Session, *, job_id: str, attempt: int | None) -> None:
    """In a transaction that records a job's results: raise Superseded unless `attempt` (the one this worker
    claimed) still owns the job. A worker whose lease lapsed while it was alive (a long pause) and whose job
    another worker claimed must not record an audit, register a second version, close requests twice or fail
    the job. None (a chord's join, not run through a claim): nothing to compare.

    Claims take the tenant's chain lock, so holding it here until commit keeps the answer true."""
    if attempt is None:
        return
    ledger.lock_chain(session, tenant_id=session.scalar(select(Job.tenant_id).where(Job.id == job_id)))
    status, attempts = session.execute(select(Job.status, Job.attempts).where(Job.id == job_id)).one()
    if status != JobStatus.RUNNING or attempts != attempt:
        raise Superseded(job_id)


def complete(session: Session, *, job: Job, result: dict[str, Any], attempt: int | None,
             timing: tuple[str, float] | None = None) -> None:
    """Fence, then mark the job completed with its result (and the completing phase's seconds, timed in the
    same commit), with its ledger entry."""
    fence(session, job_id=job.id, attempt=attempt)
    if timing is not None:
        job.timings = {**(job.timings or {}), timing[0]: timing[1]}
    job.status, job.result, job.progress, job.finished_at, job.phase = JobStatus.COMPLETED, result, 1.0, utcnow(), None
    ledger.append(session, tenant_id=job.tenant_id, event="job.completed", subject_type="job", subject_id=job.id,
                  data={"kind": job.kind, "timings": job.timings, **{k: v for k, v in result.items()
                                                                     if k in ("version", "ref", "method")}})


def fail(session: Session, *, job: Job, error: str, attempt: int | None, result: dict[str, Any] | None = None,
         data: dict[str, Any] | None = None) -> None:
    """Fence, then mark the job failed (error redacted: the ledger is read by API callers, no server paths in
    it), with its ledger entry. The requests it served are closed by the caller (forget.close_all)."""
    ledger.lock_chain(session, tenant_id=job.tenant_id)
    fence(session, job_id=job.id, attempt=attempt)
    job.status, job.error, job.finished_at = JobStatus.FAILED, artifacts.redact(error), utcnow()
    if result is not None:
        job.result = result
    ledger.append(session, tenant_id=job.tenant_id, event="job.failed", subject_type="job", subject_id=job.id,
                  data={"error": job.error[:2000], **(data or {})})


def cancel(session: Session, *, job: Job, reason: str | None = None, attempt: int | None = None) -> None:
    """Cancel a job that will not run to its end: a queued one that no longer serves any request, or one whose
    version was revoked (`reason`, kept in its result and its ledger entry). With `attempt` (a running job's
    claim), fenced like complete and fail."""
    fence(session, job_id=job.id, attempt=attempt)
    job.status, job.finished_at, job.phase = JobStatus.CANCELLED, utcnow(), None
    if reason is not None:
        job.result = {**(job.result or {}), "reason": reason}
    ledger.append(session, tenant_id=job.tenant_id, event="job.cancelled", subject_type="job", subject_id=job.id,
                  data={"reason": reason} if reason is not None else {})


def record_audit(session: Session, *, job: Job, parent_version: int, attempt: int, algorithm: str,
                 report: dict[str, Any], summary: dict[str, Any]) -> Audit:
    """An unlearning job's audit of one candidate (the report holds the candidate it judged), with its ledger
    entry (`summary`: what the ledger keeps of it)."""
    row = Audit(job_id=job.id, model_id=job.model_id, parent_version=parent_version, attempt=attempt,
                algorithm=algorithm, passed=report["passed"], verdict=report["verdict"],
                report=ledger.canonical(report))
    session.add(row)
    session.flush()
    ledger.append(session, tenant_id=job.tenant_id, event="audit.recorded", subject_type="job", subject_id=job.id,
                  data=summary)
    return row


def last_audit(session: Session, *, job_id: str, attempt: int) -> Audit | None:
    """The newest audit a job recorded for `attempt` (a re-run resumes after it)."""
    return session.scalar(select(Audit).where(Audit.job_id == job_id, Audit.attempt == attempt)
                          .order_by(Audit.created_at.desc()).limit(1))
