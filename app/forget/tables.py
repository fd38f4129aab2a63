"""Forget requests and per-point dispositions."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import ForeignKey, Index, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from app.db import Base, new_id, utcnow


class ForgetRequest(Base):
    __tablename__ = "forget_requests"
    __table_args__ = (UniqueConstraint("tenant_id", "idempotency_key"),)
    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"), index=True)
    model_id: Mapped[str] = mapped_column(ForeignKey("models.id"), index=True)
    version: Mapped[int]  # the current version the request was made against
    status: Mapped[str] = mapped_column(String(20))  # accepted | completed | failed | cancelled
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
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    completed_at: Mapped[datetime | None]


class Disposition(Base):
    __tablename__ = "dispositions"
    __table_args__ = (
        UniqueConstraint("request_id", "point_pk"),
        Index("ix_dispositions_model_point", "model_id", "point_pk"),
    )
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    request_id: Mapped[str] = mapped_column(ForeignKey("forget_requests.id", ondelete="CASCADE"), index=True)
    model_id: Mapped[str] = mapped_column(ForeignKey("models.id"))
    point_pk: Mapped[int] = mapped_column(ForeignKey("points.id"))
    point_id: Mapped[str] = mapped_column(String(200))
    # free | pending | pruned | unlearned | already_forgotten | failed | cancelled
    disposition: Mapped[str] = mapped_column(String(20))
    version: Mapped[int | None]  # the version that no longer depends on the point
    score: Mapped[float | None]
    separation: Mapped[float | None]  # the point's IN/OUT LiRA AUC in the pool (None: not measured)
    pool_id: Mapped[str | None] = mapped_column(String(36))
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)
