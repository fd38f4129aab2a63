from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, HttpUrl, model_validator

MAX_POINTS = 100_000


class ForgetCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model: str = Field(description="'name' or 'name@n' (n must be the current version)")
    point_ids: list[str] = Field(default_factory=list, max_length=MAX_POINTS)
    subject_ids: list[str] = Field(default_factory=list, max_length=MAX_POINTS)
    reason: str = Field(min_length=1, max_length=2000)
    requested_by: str = Field(min_length=1, max_length=500)
    callback_url: HttpUrl | None = None
    algorithm: str | None = None
    params: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _something_to_forget(self) -> ForgetCreate:
        if not self.point_ids and not self.subject_ids:
            raise ValueError("give at least one of point_ids or subject_ids")
        return self


class ForgetResponse(BaseModel):
    request_id: str
    status: str
    model: str
    version: int
    ref: str
    free: list[str]
    pending: list[str]
    already_forgotten: list[str]
    unknown_subjects: list[str] = Field(default_factory=list, description=(
        "Keyed hashes of the subject ids the dataset does not hold (subject ids are never stored in clear)."))
    job_id: str | None
    linked_requests: list[str] = []
    scores_from: str | None = Field(None, description="ref of the version whose scores decided 'free'")


class PointDisposition(BaseModel):
    point_id: str
    disposition: str
    version: int | None
    ref: str | None
    score: float | None
    still_held_by: list[str] = []


class RequestRead(BaseModel):
    id: str
    status: str
    model: str
    version: int
    ref: str
    reason: str
    algorithm: str
    params: dict[str, Any]
    job_id: str | None
    jobs: list[str]
    linked_from: str | None
    linked_requests: list[str]
    unknown_subjects: list[str]
    counts: dict[str, int]
    points: list[PointDisposition]
    created_at: datetime
    completed_at: datetime | None


class RequestSummary(BaseModel):
    id: str
    status: str
    model: str
    version: int
    job_id: str | None
    counts: dict[str, int]
    created_at: datetime
    completed_at: datetime | None
