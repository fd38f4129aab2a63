"""Claim a job, run its kind's module with a heartbeat, and end it visibly whatever happens."""

from __future__ import annotations

import logging
import traceback
from collections.abc import Callable
from typing import Any

from sqlalchemy import select

from app.db import session_scope, utcnow
from app.forget import service as forget
from app.forget.enums import RequestStatus
from app.jobs import service as jobs
from app.jobs.enums import JobKind, JobStatus
from app.jobs.service import Superseded
from app.jobs.tables import Job, Outbox
from app.opendsr import hooks as opendsr
from workers.jobs import calibrate, reference, revocation, score, train, unlearn, validate_dataset
from workers.jobs.context import JobContext, claim_held, claimed

log = logging.getLogger("lethe.jobs")

RUN: dict[JobKind, Callable[[JobContext], str]] = {
    JobKind.TRAIN: train.run, JobKind.SCORE: score.run, JobKind.UNLEARN: unlearn.run,
    JobKind.CALIBRATE: calibrate.run, JobKind.REFERENCE: reference.run, JobKind.VALIDATE: validate_dataset.run,
}
# What a kind leaves behind when its job fails (the rows it was producing, its unregistered files).
ON_FAIL: dict[JobKind, Callable[[Any, Job], None]] = {
    JobKind.SCORE: score.on_fail, JobKind.REFERENCE: reference.on_fail, JobKind.UNLEARN: unlearn.on_fail,
}


def _claim(job_id: str, worker: str) -> tuple[str, int] | str:
    """(kind, attempt) of the job this worker now owns, or 'skipped' / 'busy'."""
    with session_scope() as s:
        job = s.get(Job, job_id)
        if job is None:
            return "skipped"
        if job.kind == JobKind.UNLEARN and jobs.lineage_busy(s, job=job):
            return "busy"
        job = jobs.claim(s, job_id=job_id, worker=worker)
        if job is None:
            return "skipped"
        if job.kind == JobKind.UNLEARN:
            opendsr.job_started(s, job_id=job.id)  # OpenDSR requests it serves become in_progress
        return job.kind, job.attempts


def run_job(job_id: str, *, worker: str) -> str:
    """Claim and run a job; returns its final status, 'skipped' when not ours, 'busy' to retry later."""
    claimed_as = _claim(job_id, worker)
    if isinstance(claimed_as, str):
        return claimed_as
    kind, attempt = claimed_as
    with claim_held(job_id, attempt) as ctx:
        try:
            why = revocation.of_job(job_id)
            if why is not None:  # revoked after the job was queued: nothing to compute on
                raise revocation.VersionRevoked(why)
            status = RUN[kind](ctx)
        except Superseded:
            log.warning("job %s: attempt %d lost its lease to another worker; its results are dropped", job_id,
                        attempt)
            status = "superseded"
        except revocation.VersionRevoked as exc:
            log.info("job %s cancelled: %s", job_id, exc)
            status = _cancel(job_id, str(exc))
        except Exception as exc:  # noqa: BLE001 - any failure ends the job visibly, never silently
            why = revocation.of_job(job_id)  # a file it read was purged with its revoked version: not a failure
            if why is not None:
                log.info("job %s cancelled: %s (%s: %s)", job_id, why, type(exc).__name__, exc)
                status = _cancel(job_id, why)
            else:
                log.exception("job %s failed", job_id)
                status = fail(job_id, f"{type(exc).__name__}: {exc}", traceback.format_exc(limit=5))
    return status


def _cancel(job_id: str, why: str) -> str:
    try:
        return revocation.cancel(job_id, why)
    except Superseded:
        log.warning("job %s: not cancelled by this worker, another attempt owns it", job_id)
        return "superseded"


def run_inline(job_id: str) -> str:
    """Run a job in this process (tests that need no worker): mark its outbox row published, then run it."""
    with session_scope() as s:
        for row in s.scalars(select(Outbox).where(Outbox.job_id == job_id, Outbox.published_at.is_(None))):
            row.published_at = utcnow()
    return run_job(job_id, worker="inline")


def fail(job_id: str, error: str, trace: str) -> str:
    """End a job that raised: its requests fail, its kind cleans up, the job is failed with its error."""
    with session_scope() as s:
        job = s.get(Job, job_id)
        try:
            jobs.fence(s, job_id=job_id, attempt=claimed(job_id))
        except Superseded:
            log.warning("job %s: not failed by this worker, another attempt owns it", job_id)
            return "superseded"
        if job.kind in ON_FAIL:
            ON_FAIL[job.kind](s, job)
        forget.close_all(s, job_id=job_id, status=RequestStatus.FAILED)
        jobs.fail(s, job=job, error=error, attempt=claimed(job_id))
    log.debug(trace)
    return JobStatus.FAILED
