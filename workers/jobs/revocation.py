"""Jobs whose version was revoked under them: they end cancelled with the reason, never failed.

Promoting an unlearned version revokes the older ones and purges their weights, checkpoints and cached scores
(app/registry/service.revoke), cancelling the jobs queued on them. A score or calibrate job already claimed when
that happens finds the version revoked (before it loads the weights, when a file it reads has vanished, or as it
stores its scores) and ends the same way; what it computed for the revoked version is not kept.
"""

from __future__ import annotations

from sqlalchemy import select

from app.db import session_scope
from app.jobs import service as jobs
from app.jobs.enums import JobKind, JobStatus
from app.jobs.params import ScoreParams
from app.jobs.tables import Job
from app.ledger import service as ledger
from app.registry import scores as runs
from app.registry import service as registry
from app.registry.enums import VersionStatus
from app.registry.tables import Model, Version
from workers.jobs.context import claimed


class VersionRevoked(Exception):  # noqa: N818 - a state, not a failure
    """The version a job computes on was revoked; the message is the reason the job records."""


def reason(s: object, *, model_id: str, number: int) -> str | None:
    """Why work on version `number` of the model cannot go on (it was revoked), or None while it is live."""
    model = s.get(Model, model_id)
    version = s.scalar(select(Version).where(Version.model_id == model_id, Version.number == number))
    if model is None or version is None or version.status != VersionStatus.REVOKED:
        return None
    return registry.revoked_reason(model, version)


def check(model_id: str, number: int) -> None:
    """Raise VersionRevoked (with the reason) when version `number` of the model was revoked."""
    with session_scope(readonly=True) as s:
        why = reason(s, model_id=model_id, number=number)
    if why is not None:
        raise VersionRevoked(why)


def of_job(job_id: str) -> str | None:
    """The reason a version-bound job (score, calibrate) cannot go on, or None (any other kind, or a live version)."""
    with session_scope(readonly=True) as s:
        job = s.get(Job, job_id)
        if job is None or job.kind not in registry.VERSION_JOBS or job.version is None:
            return None
        return reason(s, model_id=job.model_id, number=job.version)


def cancel(job_id: str, why: str) -> str:
    """End the job cancelled with `why` (fenced by this process's claim); its run of the version is cancelled."""
    with session_scope() as s:
        tenant_id = s.scalar(select(Job.tenant_id).where(Job.id == job_id))
        ledger.lock_chain(s, tenant_id=tenant_id)  # the chain lock first, then the job row: one lock order
        job = s.get(Job, job_id)
        if job.status not in (JobStatus.QUEUED, JobStatus.RUNNING):
            return "skipped"
        jobs.cancel(s, job=job, reason=why, attempt=claimed(job_id))
        if job.kind == JobKind.SCORE:
            version = registry.get_version(s, model=s.get(Model, job.model_id), number=job.version)
            runs.scoring_cancelled(s, version=version, method=ScoreParams.model_validate(job.params).method)
    return JobStatus.CANCELLED
