"""The outbox: job rows are queued in the transaction that creates them and published to the broker after it
commits, earliest deadline first. Publishing starts from the commit itself (app.db.on_commit, registered by
jobs.create): it wakes this process's publisher loop (app.background), or publishes inline when there is none."""

from __future__ import annotations

import logging
import threading

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.db import on_commit, session_scope, utcnow
from app.jobs.enums import JobStatus
from app.jobs.tables import Job, Outbox

log = logging.getLogger("lethe.outbox")
RUN_JOB = "lethe.run_job"
RETRY = {"max_retries": 1, "interval_start": 0, "interval_step": 0.2, "interval_max": 0.5}
# Publishing never subscribes to a task's result (ignore_result=True): nothing reads these results, and with a
# Redis result backend the subscription alone retries ~20 s when Redis is down, then breaks the result consumer.
WAKE = threading.Event()  # set by kick(): the publisher loop runs at once
_publisher: threading.Thread | None = None


def pending_outbox(session: Session, *, limit: int = 100) -> list[Outbox]:
    """Unpublished outbox rows, earliest deadline first, then oldest."""
    return list(session.scalars(
        select(Outbox).where(Outbox.published_at.is_(None))
        .order_by(Outbox.deadline.is_(None), Outbox.deadline, Outbox.id).limit(limit)
    ))


def lapsed_jobs(session: Session) -> list[str]:
    """Running jobs whose lease ran out: their worker died mid-job."""
    return list(session.scalars(select(Job.id).where(Job.status == JobStatus.RUNNING, Job.lease_until < utcnow())))


def relay_once() -> int:
    """Publish every unpublished row; stop at the first broker failure (retried next pass)."""
    from workers.celery_app import celery

    published = 0
    with session_scope() as session:
        for row in pending_outbox(session):
            try:
                # Earlier deadlines first on brokers with priorities (Redis: 0 is highest).
                celery.send_task(row.task, kwargs=row.payload, retry=True, retry_policy=RETRY,
                                 priority=0 if row.deadline else 5, ignore_result=True)
            except Exception as exc:  # noqa: BLE001 - any broker failure leaves the row for the next pass
                row.attempts += 1
                log.warning("outbox: broker unavailable (%s); %s left for the next pass", exc, row.job_id)
                break
            row.published_at = utcnow()
            published += 1
    return published


def requeue_lapsed() -> int:
    """Publish again the running jobs whose lease lapsed (their worker died); the claim decides who runs."""
    from workers.celery_app import celery

    with session_scope() as session:
        lapsed = lapsed_jobs(session)
    for job_id in lapsed:
        try:
            celery.send_task(RUN_JOB, kwargs={"job_id": job_id}, retry=True, retry_policy=RETRY, ignore_result=True)
            log.warning("job %s lost its worker: published again", job_id)
        except Exception as exc:  # noqa: BLE001
            log.warning("outbox: broker unavailable (%s)", exc)
            break
    return len(lapsed)


def safe_relay() -> None:
    """relay_once for background use: never raises (a lost database is retried next pass)."""
    try:
        relay_once()
    except Exception as exc:  # noqa: BLE001
        log.warning("outbox relay failed: %s", exc)


def attach(publisher: threading.Thread | None) -> None:
    """The loop that publishes in this process (None: none, kick publishes inline)."""
    global _publisher
    _publisher = publisher


def kick() -> None:
    """After a commit that queued jobs: wake this process's publisher, or publish inline when there is none."""
    if _publisher is not None and _publisher.is_alive():
        WAKE.set()
    else:
        safe_relay()


def publish_after_commit(session: Session) -> None:
    """Publish the outbox once this transaction commits."""
    on_commit(session, _kick)


def _kick() -> None:
    kick()  # looked up at call time, so a test may replace outbox.kick
