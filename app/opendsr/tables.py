"""OpenDSR requests received from controllers and the forget requests each one fanned out to."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import ForeignKey, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from app.columns import TenantId, UuidPk
from app.db import Base, utcnow


class OpenDsrRequest(Base):
    __tablename__ = "opendsr_requests"
    __table_args__ = (UniqueConstraint("tenant_id", "subject_request_id"),)
    id: Mapped[UuidPk]
    tenant_id: Mapped[TenantId]
    subject_request_id: Mapped[str] = mapped_column(String(36))  # the controller's UUID v4
    regulation: Mapped[str] = mapped_column(String(10))  # gdpr | ccpa
    subject_request_type: Mapped[str] = mapped_column(String(20))  # erasure
    api_version: Mapped[str | None] = mapped_column(String(20))
    # The last status reported (callbacks fire when the aggregate differs)
    status: Mapped[str] = mapped_column(String(20))  # an OpenDsrStatus
    results_count: Mapped[int] = mapped_column(default=0)
    body_hash: Mapped[str] = mapped_column(String(64))  # SHA-256 of the canonical request JSON (idempotency)
    # Identities as keyed hashes only ({identity_type, identity_format, hash}); values are never stored in clear.
    identities: Mapped[list[Any]] = mapped_column(default=list)
    callback_urls: Mapped[list[Any]] = mapped_column(default=list)
    # The 201 body as first answered, without encoded_request (it holds identities in clear).
    response: Mapped[dict[str, Any]] = mapped_column(default=dict)
    submitted_at: Mapped[datetime]
    received_at: Mapped[datetime] = mapped_column(default=utcnow)
    expected_completion_at: Mapped[datetime] = mapped_column(index=True)
    completed_at: Mapped[datetime | None]
    cancelled_at: Mapped[datetime | None]


class OpenDsrLink(Base):
    __tablename__ = "opendsr_request_links"
    opendsr_request_id: Mapped[str] = mapped_column(ForeignKey("opendsr_requests.id", ondelete="CASCADE"),
                                                    primary_key=True)
    forget_request_id: Mapped[str] = mapped_column(ForeignKey("forget_requests.id", ondelete="CASCADE"),
                                                   primary_key=True, index=True)
