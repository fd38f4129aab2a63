from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query
from sqlalchemy.orm import Session

from app import artifacts
from app.auth import Reader
from app.datasets.tables import Dataset
from app.db import SessionDep
from app.jobs import service
from app.jobs.enums import JobKind, JobStatus
from app.jobs.schemas import JobRead
from app.jobs.tables import Job
from app.paging import Page, PageParams, next_cursor, page_params
from app.registry.tables import Model

router = APIRouter(prefix="/jobs", tags=["jobs"])


def job_read(session: Session, job: Job) -> JobRead:
    model = session.get(Model, job.model_id) if job.model_id else None
    dataset = session.get(Dataset, job.dataset_id) if job.dataset_id else None
    return JobRead(id=job.id, kind=job.kind, model=model.name if model else None,
                   dataset=dataset.name if dataset else None, version=job.version,
                   requests=service.request_ids(session, job_id=job.id), status=job.status, phase=job.phase,
                   progress=job.progress, params=job.params, timings=job.timings or {}, result=job.result,
                   error=artifacts.redact(job.error) if job.error else None, attempts=job.attempts,
                   created_at=job.created_at, started_at=job.started_at, finished_at=job.finished_at)


@router.get("", response_model=Page[JobRead])
def list_jobs(caller: Reader, session: SessionDep, page: Annotated[PageParams, Depends(page_params)],
              status: Annotated[JobStatus | None, Query()] = None,
              kind: Annotated[JobKind | None, Query()] = None) -> Page[JobRead]:
    """The tenant's jobs (train, score, unlearn, calibrate, reference, validate), newest first; filter by kind or
    status."""
    rows, total = service.list_jobs(session, tenant_id=caller.tenant_id, status=status, kind=kind,
                                    offset=page.offset, limit=page.limit)
    return Page(items=[job_read(session, j) for j in rows], total=total, next=next_cursor(page, total))


@router.get("/{job_id}", response_model=JobRead)
def get_job(job_id: str, caller: Reader, session: SessionDep) -> JobRead:
    """One job: kind, status, progress, timings, result and error."""
    return job_read(session, service.get(session, tenant_id=caller.tenant_id, job_id=job_id))
