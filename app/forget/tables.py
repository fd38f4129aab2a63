"""Forget requests and per-point dispositions."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import ForeignKey, Index, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from app.columns import CreatedAt, PointId, SerialPk, TenantId, UuidPk
from app.db import Base, utcnow


class ForgetRequest(Base):
    __tablename__ = "forget_requests"
    __table_args__ = (UniqueConstraint("tenant_id", "idempotency_key"),)
    id: Mapped[UuidPk]
    tenant_id: Mapped[TenantId]
    model_id: Mapped[str] = mapped_column(ForeignKey("models.id"), index=True)
    version: Mapped[int]  # the current version the request was made against
    status: Mapped[str] = mapped_column(String(20))  # a RequestStatus
    reason: Mapped[str] = mapped_column(Text)
    requested_by_hash: Mapped[str] = mapped_column(String(64))
    callback_url: Mapped[str | None] = mapped_column(String(2000))
    algorithm: Mapped[str]
    params: Mapped[dict[str, Any]]
    job_id: Mapped[str | None] = mapped_column(String(36), index=True)
    linked_from: Mapped[str | None] = mapped_column(String(36))
    idempotency_key: Mapped[str | None] = mapped_column(String(200))
    body_hash: Mapped[str | None] = mapped_column(String(64))
    unknown_subjects: Mapped[list[Any]] = mapped_column(default=list)
    response: Mapped[dict[str, Any]] = mapped_column(default=dict)
    # What the free answer rested on: basis (measured | provisional | unmeasured), pool, K, certified-set bounds.
    evidence: Mapped[dict[str, Any] | None] = mapped_column(default=None)
    created_at: Mapped[CreatedAt]
    completed_at: Mapped[datetime | None]


class Disposition(Base):
    __tablename__ = "dispositions"
    __table_args__ = (  # a point once per request; read by request, and by (lineage, point)
        UniqueConstraint("request_id", "point_pk"),
        Index("ix_dispositions_request_id", "request_id"),
        Index("ix_dispositions_model_point", "model_id", "point_pk"),
    )
    id: Mapped[SerialPk]
    request_id: Mapped[str] = mapped_column(ForeignKey("forget_requests.id", ondelete="CASCADE"))
    model_id: Mapped[str] = mapped_column(ForeignKey("models.id"))
    point_pk: Mapped[int] = mapped_column(ForeignKey("points.id"))
    point_id: Mapped[PointId]
    disposition: Mapped[str] = mapped_column(String(20))  # a DispositionStatus
    version: Mapped[int | None]  # the version that no longer depends on the point
    score: Mapped[float | None]
    separation: Mapped[float | None]  # the point's IN/OUT LiRA AUC in the pool (None: not measured)
    pool_id: Mapped[str | None] = mapped_column(String(36))
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)
