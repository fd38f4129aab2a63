"""Reference pools: per lineage, the measuring instrument (K shadow models' φ per training point)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import ForeignKey, String
from sqlalchemy.orm import Mapped, mapped_column

from app.columns import CreatedAt, UuidPk
from app.db import Base
from app.evidence.enums import PoolStatus


class ReferencePool(Base):
    """A lineage's reference pool: K shadow models' φ per training point, the instrument behind "free" and the
    audit. Valid while the lineage's removals since it was fitted stay under LETHE_POOL_MAX_REMOVED."""

    __tablename__ = "reference_pools"
    id: Mapped[UuidPk]
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"))
    model_id: Mapped[str] = mapped_column(ForeignKey("models.id", ondelete="CASCADE"), index=True)
    version: Mapped[int]  # the version whose training data (live rows) the pool measured
    job_id: Mapped[str | None] = mapped_column(String(36))
    status: Mapped[str] = mapped_column(String(20), default=PoolStatus.QUEUED)  # a PoolStatus
    k: Mapped[int]
    uri: Mapped[str | None] = mapped_column(String(1000))
    sha256: Mapped[str | None] = mapped_column(String(64))
    n_points: Mapped[int | None]
    n_certified: Mapped[int | None]
    report: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_at: Mapped[CreatedAt]
    completed_at: Mapped[datetime | None]
