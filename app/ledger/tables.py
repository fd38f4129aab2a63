"""Hash-chained ledger entries, one chain per tenant."""

from __future__ import annotations

from typing import Any

from sqlalchemy import String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from app.columns import SerialPk, TenantId
from app.db import Base


class LedgerEntry(Base):
    __tablename__ = "ledger_entries"
    __table_args__ = (UniqueConstraint("tenant_id", "seq"),)
    id: Mapped[SerialPk]
    tenant_id: Mapped[TenantId]
    seq: Mapped[int]
    event: Mapped[str] = mapped_column(String(50), index=True)
    subject_type: Mapped[str] = mapped_column(String(20))
    subject_id: Mapped[str] = mapped_column(String(64), index=True)
    data: Mapped[dict[str, Any]]
    at: Mapped[str] = mapped_column(String(40))  # ISO timestamp as hashed, so verify is exact
    prev_hash: Mapped[str] = mapped_column(String(64))
    hash: Mapped[str] = mapped_column(String(64), unique=True)


class Checkpoint(Base):
    """A chain head signed with the server's Ed25519 key: (tenant, seq, head, signed_at) under `signature`."""

    __tablename__ = "ledger_checkpoints"
    __table_args__ = (UniqueConstraint("tenant_id", "seq"),)  # one per head: asking again signs nothing new
    id: Mapped[SerialPk]
    tenant_id: Mapped[TenantId]
    seq: Mapped[int]
    head: Mapped[str] = mapped_column(String(64))
    signed_at: Mapped[str] = mapped_column(String(40))  # ISO timestamp as signed
    key_id: Mapped[str] = mapped_column(String(16))
    signature: Mapped[str] = mapped_column(String(100))  # base64 of the 64-byte Ed25519 signature
