"""reference pools (the evidence behind "free" and the audit), per-point evidence, audit verdicts

Revision ID: 5e1dc0e713a1
Revises: 3b1f0c2d9e47
Create Date: 2026-12-01 16:30:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "5e1dc0e713a1"
down_revision: str | None = "3b1f0c2d9e47"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "reference_pools",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("tenant_id", sa.String(length=36), nullable=False),
        sa.Column("model_id", sa.String(length=36), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("job_id", sa.String(length=36), nullable=True),
        sa.Column("status", sa.String(length=20), nullable=False),
        sa.Column("k", sa.Integer(), nullable=False),
        sa.Column("uri", sa.String(length=1000), nullable=True),
        sa.Column("sha256", sa.String(length=64), nullable=True),
        sa.Column("n_points", sa.Integer(), nullable=True),
        sa.Column("n_certified", sa.Integer(), nullable=True),
        sa.Column("report", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("completed_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(["model_id"], ["models.id"], name=op.f("fk_reference_pools_model_id_models"),
                                ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["tenant_id"], ["tenants.id"], name=op.f("fk_reference_pools_tenant_id_tenants")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_reference_pools")),
    )
    op.create_index(op.f("ix_reference_pools_model_id"), "reference_pools", ["model_id"], unique=False)
    with op.batch_alter_table("dispositions") as batch:
        batch.add_column(sa.Column("separation", sa.Double(), nullable=True))
        batch.add_column(sa.Column("pool_id", sa.String(length=36), nullable=True))
    with op.batch_alter_table("forget_requests") as batch:
        batch.add_column(sa.Column("evidence", sa.JSON(), nullable=True))
    with op.batch_alter_table("audits") as batch:
        batch.add_column(sa.Column("verdict", sa.String(length=20), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("audits") as batch:
        batch.drop_column("verdict")
    with op.batch_alter_table("forget_requests") as batch:
        batch.drop_column("evidence")
    with op.batch_alter_table("dispositions") as batch:
        batch.drop_column("pool_id")
        batch.drop_column("separation")
    op.drop_index(op.f("ix_reference_pools_model_id"), table_name="reference_pools")
    op.drop_table("reference_pools")
