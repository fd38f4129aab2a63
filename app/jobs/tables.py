"""Jobs, the requests they serve, audits, and the outbox."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Float, ForeignKey, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from app.columns import CreatedAt, SerialPk, TenantId, UuidPk
from app.db import Base
from app.jobs.enums import JobStatus


class Job(Base):
    __tablename__ = "jobs"
    id: Mapped[UuidPk]
    tenant_id: Mapped[TenantId]
    kind: Mapped[str] = mapped_column(String(20))  # a JobKind
    model_id: Mapped[str | None] = mapped_column(ForeignKey("models.id"), index=True)  # None: a dataset's job
    dataset_id: Mapped[str | None] = mapped_column(ForeignKey("datasets.id"))  # validate: the dataset it checks
    version: Mapped[int | None]  # input version
    status: Mapped[str] = mapped_column(String(20), default=JobStatus.QUEUED, index=True)  # a JobStatus
    phase: Mapped[str | None] = mapped_column(String(20))
    progress: Mapped[float] = mapped_column(Float, default=0.0)
    params: Mapped[dict[str, Any]] = mapped_column(default=dict)
    timings: Mapped[dict[str, Any]] = mapped_column(default=dict)
    result: Mapped[dict[str, Any] | None] = mapped_column(default=None)
    error: Mapped[str | None] = mapped_column(Text)
    attempts: Mapped[int] = mapped_column(default=0)
    # A running job whose lease lapsed (its worker died) may be claimed again by another worker.
    lease_until: Mapped[datetime | None]
    worker: Mapped[str | None] = mapped_column(String(200))
    deadline: Mapped[datetime | None]
    created_at: Mapped[CreatedAt]
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]


class JobRequest(Base):
    __tablename__ = "job_requests"
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True)
    request_id: Mapped[str] = mapped_column(ForeignKey("forget_requests.id", ondelete="CASCADE"), primary_key=True)


class Audit(Base):
    __tablename__ = "audits"
    id: Mapped[UuidPk]
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id"), index=True)
    model_id: Mapped[str] = mapped_column(ForeignKey("models.id"))
    parent_version: Mapped[int]
    version: Mapped[int | None]  # set when the audited candidate was registered
    attempt: Mapped[int]
    algorithm: Mapped[str]
    passed: Mapped[bool]  # promoted: verdict passed, or accepted by policy, or a retrain
    verdict: Mapped[str | None] = mapped_column(String(20))  # a Verdict
    report: Mapped[dict[str, Any]]
    created_at: Mapped[CreatedAt]


class Outbox(Base):
    __tablename__ = "outbox"
    id: Mapped[SerialPk]
    task: Mapped[str] = mapped_column(String(100))
    job_id: Mapped[str | None] = mapped_column(String(36))
    payload: Mapped[dict[str, Any]]
    deadline: Mapped[datetime | None]
    attempts: Mapped[int] = mapped_column(default=0)
    created_at: Mapped[CreatedAt]
    published_at: Mapped[datetime | None] = mapped_column(index=True)
