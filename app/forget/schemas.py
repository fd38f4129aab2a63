from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, HttpUrl, model_validator

from app.forget.enums import DispositionStatus, RequestStatus
from app.ledger.schemas import CheckpointRead
from app.timestamps import Timestamp

MAX_POINTS = 100_000


class ForgetCreate(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [
        {"model": "digits", "point_ids": ["d0001", "d0002"], "subject_ids": ["subject-17"],
         "reason": "GDPR art. 17 request #4411", "requested_by": "dpo@example.com"}]})
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
    status: RequestStatus
    model: str
    version: int
    ref: str
    checkpoint: CheckpointRead | None = Field(None, description="the tenant's ledger head after this request, "
                                              "signed (Ed25519): keep it to check the ledger later")
    free: list[str]
    pending: list[str]
    already_forgotten: list[str]
    unknown_subjects: list[str] = Field(default_factory=list, description=(
        "Keyed hashes of the subject ids the dataset holds no data for (subject ids are never stored in clear)."))
    unknown_subject_ids: list[str] = Field(default_factory=list, description=(
        "The same subjects as you gave them: no data is held for them. In this answer (and its idempotent "
        "replays) only; Lethe stores their keyed hashes, and the certificate states 'no data held' for each."))
    job_id: str | None
    linked_requests: list[str] = []
    free_basis: str = Field("unmeasured", description=(
        "what 'free' rests on: 'measured' (the points belong to the lineage's certified set: a reference pool "
        "measured models trained with and without them indistinguishable on them, as a group), 'provisional' "
        "(LETHE_FREE_PROVISIONAL: a score quantile, nothing measured) or 'unmeasured' (no valid pool: nothing "
        "is free)"))
    pool_id: str | None = Field(None, description="the reference pool that measured the free answer")
    scores_from: str | None = Field(None, description="provisional answers only: ref of the version whose "
                                    "influence scores decided")


class PointEvidence(BaseModel):
    point_id: str
    disposition: DispositionStatus
    separation: float | None = Field(None, description="the point's own IN/OUT LiRA AUC in the pool (0.5 = "
                                     "chance); reported, never decides alone")
    pool_id: str | None


class EvidencePage(BaseModel):
    request_id: str
    free_basis: str
    evidence: dict[str, Any] = Field(description="the request-level evidence: pool, K, date, the certified set's "
                                     "group bounds and the cumulative free set's, the limits")
    audits: list[dict[str, Any]] = Field(default_factory=list, description="the verdicts of the jobs serving it")
    items: list[PointEvidence]
    total: int
    next: str | None


class PointDisposition(BaseModel):
    point_id: str
    disposition: DispositionStatus
    version: int | None
    ref: str | None
    score: float | None
    separation: float | None = None
    still_held_by: list[str] = []


class RequestRead(BaseModel):
    id: str
    status: RequestStatus
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
    free_basis: str = "unmeasured"
    points: list[PointDisposition]
    created_at: Timestamp
    completed_at: Timestamp | None


class RequestSummary(BaseModel):
    id: str
    status: RequestStatus
    model: str
    version: int
    job_id: str | None
    counts: dict[str, int]
    created_at: Timestamp
    completed_at: Timestamp | None
