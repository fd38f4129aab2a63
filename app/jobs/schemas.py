from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

from app.jobs.enums import JobKind, JobStatus
from app.timestamps import Timestamp


class JobRead(BaseModel):
    id: str
    kind: JobKind
    model: str | None = Field(description="the model the job works on; null for a dataset's validation job")
    dataset: str | None = Field(None, description="validate jobs: the dataset being validated")
    version: int | None
    requests: list[str]
    status: JobStatus
    phase: str | None
    progress: float
    params: dict[str, Any]
    timings: dict[str, Any]
    result: dict[str, Any] | None
    error: str | None
    attempts: int
    created_at: Timestamp
    started_at: Timestamp | None
    finished_at: Timestamp | None
