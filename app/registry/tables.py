"""Models (lineages), their versions and influence runs."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Float, ForeignKey, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from app.columns import CreatedAt, NamedPerTenant, UuidPk
from app.db import Base
from app.registry.enums import RunStatus, VersionStatus
from app.registry.schemas import Policy


class Model(NamedPerTenant, Base):
    __tablename__ = "models"
    dataset_id: Mapped[str] = mapped_column(ForeignKey("datasets.id"), index=True)
    architecture: Mapped[dict[str, Any]]
    recipe: Mapped[dict[str, Any]]
    policy: Mapped[dict[str, Any]]
    current_version: Mapped[int | None]
    # Free deletions answered since the lineage's budget last reset.
    free_spent: Mapped[int] = mapped_column(default=0)
    created_at: Mapped[CreatedAt]

    @property
    def settings(self) -> Policy:
        """The policy parsed into its pydantic model: every default lives in app/registry/schemas.Policy only."""
        return Policy.model_validate(self.policy or {})


class Version(Base):
    __tablename__ = "versions"
    __table_args__ = (UniqueConstraint("model_id", "number"),)
    id: Mapped[UuidPk]
    model_id: Mapped[str] = mapped_column(ForeignKey("models.id", ondelete="CASCADE"), index=True)
    number: Mapped[int]
    parent_id: Mapped[str | None] = mapped_column(ForeignKey("versions.id"))
    request_id: Mapped[str | None] = mapped_column(String(36))  # producing forget request
    job_id: Mapped[str | None] = mapped_column(String(36))
    source: Mapped[str] = mapped_column(String(20))  # upload | train | unlearn
    sha256: Mapped[str] = mapped_column(String(64))
    uri: Mapped[str | None] = mapped_column(String(1000))
    status: Mapped[str] = mapped_column(String(20), default=VersionStatus.ACTIVE)  # a VersionStatus
    n_train: Mapped[int | None]
    threshold: Mapped[float | None] = mapped_column(Float)
    budget: Mapped[int | None]
    metrics: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_at: Mapped[CreatedAt]
    revoked_at: Mapped[datetime | None]


class InfluenceRun(Base):
    __tablename__ = "influence_runs"
    __table_args__ = (UniqueConstraint("version_id", "method"),)
    id: Mapped[UuidPk]
    version_id: Mapped[str] = mapped_column(ForeignKey("versions.id", ondelete="CASCADE"), index=True)
    method: Mapped[str] = mapped_column(String(20))
    status: Mapped[str] = mapped_column(String(20), default=RunStatus.QUEUED)  # a RunStatus
    job_id: Mapped[str | None] = mapped_column(String(36))
    uri: Mapped[str | None] = mapped_column(String(1000))
    sha256: Mapped[str | None] = mapped_column(String(64))
    n: Mapped[int | None]
    threshold: Mapped[float | None] = mapped_column(Float)
    summary: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_at: Mapped[CreatedAt]
    completed_at: Mapped[datetime | None]

