"""signed ledger checkpoints; per-webhook secrets stored encrypted, with rotation

Revision ID: a5c9e2f41d07
Revises: 5e1dc0e713a1
Create Date: 2026-12-01 16:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "a5c9e2f41d07"
down_revision: str | None = "5e1dc0e713a1"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "ledger_checkpoints",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("tenant_id", sa.String(length=36), nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("head", sa.String(length=64), nullable=False),
        sa.Column("signed_at", sa.String(length=40), nullable=False),
        sa.Column("key_id", sa.String(length=16), nullable=False),
        sa.Column("signature", sa.String(length=100), nullable=False),
        sa.ForeignKeyConstraint(["tenant_id"], ["tenants.id"], name=op.f("fk_ledger_checkpoints_tenant_id_tenants")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_ledger_checkpoints")),
        sa.UniqueConstraint("tenant_id", "seq", name=op.f("uq_ledger_checkpoints_tenant_id")),
    )
    with op.batch_alter_table("ledger_checkpoints", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_ledger_checkpoints_tenant_id"), ["tenant_id"], unique=False)
    # Webhooks registered before keep secret_enc NULL: they sign with the old derived secret until rotated.
    with op.batch_alter_table("webhooks", schema=None) as batch_op:
        batch_op.add_column(sa.Column("secret_enc", sa.Text(), nullable=True))
        batch_op.add_column(sa.Column("previous_secret_enc", sa.Text(), nullable=True))
        batch_op.add_column(sa.Column("previous_expires_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column("rotated_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("webhooks", schema=None) as batch_op:
        batch_op.drop_column("rotated_at")
        batch_op.drop_column("previous_expires_at")
        batch_op.drop_column("previous_secret_enc")
        batch_op.drop_column("secret_enc")
    with op.batch_alter_table("ledger_checkpoints", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_ledger_checkpoints_tenant_id"))
    op.drop_table("ledger_checkpoints")
