"""Tenants and their API keys."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import String
from sqlalchemy.orm import Mapped, mapped_column

from app.columns import CreatedAt, TenantId, UuidPk
from app.db import Base


class Tenant(Base):
    __tablename__ = "tenants"
    id: Mapped[UuidPk]
    name: Mapped[str] = mapped_column(String(200), unique=True)
    created_at: Mapped[CreatedAt]


class ApiKey(Base):
    __tablename__ = "api_keys"
    id: Mapped[UuidPk]
    tenant_id: Mapped[TenantId]
    # Only a SHA-256 of the key is kept; the key itself is shown once.
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    prefix: Mapped[str] = mapped_column(String(16))
    name: Mapped[str | None] = mapped_column(String(200))
    scopes: Mapped[list[Any]]
    created_at: Mapped[CreatedAt]
    revoked_at: Mapped[datetime | None]
