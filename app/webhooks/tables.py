"""Registered webhook endpoints and every delivery attempt (an outbox of events)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import String, Text
from sqlalchemy.orm import Mapped, mapped_column

from app.columns import CreatedAt, SerialPk, TenantId, UuidPk
from app.db import Base, utcnow


class Webhook(Base):
    __tablename__ = "webhooks"
    id: Mapped[UuidPk]
    tenant_id: Mapped[TenantId]
    url: Mapped[str] = mapped_column(String(2000))
    events: Mapped[list[Any]]
    created_at: Mapped[CreatedAt]
    deleted_at: Mapped[datetime | None]
    # Random per-webhook secrets, AES-GCM-sealed under an HKDF-derived key (app.keys). None: registered before
    # secrets were stored; such a hook signs with the old tenant-derived secret until rotated.
    secret_enc: Mapped[str | None] = mapped_column(Text)
    previous_secret_enc: Mapped[str | None] = mapped_column(Text)  # still signed with until previous_expires_at
    previous_expires_at: Mapped[datetime | None]
    rotated_at: Mapped[datetime | None]

    @property
    def legacy_secret(self) -> bool:
        """Signs with the old tenant-derived secret: rotate it."""
        return self.secret_enc is None


class Delivery(Base):
    __tablename__ = "webhook_deliveries"
    id: Mapped[SerialPk]
    tenant_id: Mapped[TenantId]
    webhook_id: Mapped[str | None] = mapped_column(String(36))  # None: a request's callback_url
    url: Mapped[str] = mapped_column(String(2000))
    event_id: Mapped[str] = mapped_column(String(36))
    event_type: Mapped[str] = mapped_column(String(50))
    payload: Mapped[dict[str, Any]]
    attempts: Mapped[int] = mapped_column(default=0)
    next_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    last_status: Mapped[int | None]
    last_error: Mapped[str | None] = mapped_column(Text)
    delivered_at: Mapped[datetime | None] = mapped_column(index=True)
    created_at: Mapped[CreatedAt]
