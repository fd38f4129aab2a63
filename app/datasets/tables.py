"""Datasets and their points (with tombstones)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import ForeignKey, Index, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from app.columns import CreatedAt, NamedPerTenant, PointId, SerialPk
from app.datasets.enums import DatasetStatus
from app.db import Base


class Dataset(NamedPerTenant, Base):
    __tablename__ = "datasets"
    uri: Mapped[str] = mapped_column(String(1000))
    sha256: Mapped[str] = mapped_column(String(64))
    n_points: Mapped[int]
    n_test: Mapped[int]
    n_classes: Mapped[int]
    input_shape: Mapped[list[Any]]
    has_subjects: Mapped[bool] = mapped_column(default=False)
    # Registered by reference: `uri` is Lethe's copy; the original stays outside what Lethe can erase.
    by_reference: Mapped[bool] = mapped_column(default=False)
    # npz | parquet; a Parquet dataset's features are x (floats), image (PNG/JPEG bytes) or text (strings)
    format: Mapped[str] = mapped_column(String(20), default="npz")
    features: Mapped[str] = mapped_column(String(20), default="x")
    status: Mapped[str] = mapped_column(String(20), default=DatasetStatus.READY)  # a DatasetStatus
    error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[CreatedAt]


class Point(Base):
    __tablename__ = "points"
    __table_args__ = (
        UniqueConstraint("dataset_id", "point_id"),
        Index("ix_points_dataset_subject", "dataset_id", "subject_hash"),
    )
    id: Mapped[SerialPk]
    dataset_id: Mapped[str] = mapped_column(ForeignKey("datasets.id", ondelete="CASCADE"))
    point_id: Mapped[PointId]
    row: Mapped[int]  # index into the dataset's arrays
    # Keyed hash (HMAC) of the data subject; subject ids are never stored in clear.
    subject_hash: Mapped[str | None] = mapped_column(String(64))
    tombstoned_at: Mapped[datetime | None]
    erased_at: Mapped[datetime | None]
