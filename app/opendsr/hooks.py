"""The two calls the worker job modules make, so that OpenDSR statuses follow their forget requests.

Each runs inside the caller's transaction under a savepoint: a fault here is logged and never undoes the
job's own work (the status is computed live on GET, so only a callback would be late).
"""

from __future__ import annotations

import logging

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.jobs.tables import JobRequest
from app.opendsr import service

log = logging.getLogger("lethe.opendsr")


def request_changed(session: Session, *, request_id: str) -> None:
    """A forget request changed status (completed, failed): refresh the OpenDSR requests built on it."""
    _refresh(session, [request_id])


def job_started(session: Session, *, job_id: str) -> None:
    """An unlearning job started: the OpenDSR requests it serves become in_progress."""
    _refresh(session, list(session.scalars(select(JobRequest.request_id).where(JobRequest.job_id == job_id))))


def _refresh(session: Session, request_ids: list[str]) -> None:
    try:
        with session.begin_nested():
            service.refresh_for_requests(session, request_ids=request_ids)
    except Exception:  # noqa: BLE001 - never fail the job for a status callback
        log.exception("OpenDSR status refresh failed for forget requests %s", request_ids)
