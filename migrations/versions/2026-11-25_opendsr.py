"""opendsr

Revision ID: 8543945bd8cc
Revises: 7d43212b4731
Create Date: 2026-11-25 15:31:00.280397
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "8543945bd8cc"
down_revision: str | None = "7d43212b4731"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:

    op.create_table(
        "opendsr_requests",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("tenant_id", sa.String(length=36), nullable=False),
        sa.Column("subject_request_id", sa.String(length=36), nullable=False),
        sa.Column("regulation", sa.String(length=10), nullable=False),
        sa.Column("subject_request_type", sa.String(length=20), nullable=False),
        sa.Column("api_version", sa.String(length=20), nullable=True),
        sa.Column("status", sa.String(length=20), nullable=False),
        sa.Column("results_count", sa.Integer(), nullable=False),
        sa.Column("body_hash", sa.String(length=64), nullable=False),
        sa.Column("identities", sa.JSON(), nullable=False),
        sa.Column("callback_urls", sa.JSON(), nullable=False),
        sa.Column("response", sa.JSON(), nullable=False),
        sa.Column("submitted_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expected_completion_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("completed_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("cancelled_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(["tenant_id"], ["tenants.id"], name=op.f("fk_opendsr_requests_tenant_id_tenants")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_opendsr_requests")),
        sa.UniqueConstraint("tenant_id", "subject_request_id", name=op.f("uq_opendsr_requests_tenant_id")),
    )
    with op.batch_alter_table("opendsr_requests", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_opendsr_requests_expected_completion_at"), ["expected_completion_at"],
                              unique=False)
        batch_op.create_index(batch_op.f("ix_opendsr_requests_tenant_id"), ["tenant_id"], unique=False)

    op.create_table(
        "opendsr_request_links",
        sa.Column("opendsr_request_id", sa.String(length=36), nullable=False),
        sa.Column("forget_request_id", sa.String(length=36), nullable=False),
        sa.ForeignKeyConstraint(["forget_request_id"], ["forget_requests.id"],
                                name=op.f("fk_opendsr_request_links_forget_request_id_forget_requests"),
                                ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["opendsr_request_id"], ["opendsr_requests.id"],
                                name=op.f("fk_opendsr_request_links_opendsr_request_id_opendsr_requests"),
                                ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("opendsr_request_id", "forget_request_id", name=op.f("pk_opendsr_request_links")),
    )
    with op.batch_alter_table("opendsr_request_links", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_opendsr_request_links_forget_request_id"), ["forget_request_id"],
                              unique=False)


def downgrade() -> None:

    with op.batch_alter_table("opendsr_request_links", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_opendsr_request_links_forget_request_id"))

    op.drop_table("opendsr_request_links")
    with op.batch_alter_table("opendsr_requests", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_opendsr_requests_tenant_id"))
        batch_op.drop_index(batch_op.f("ix_opendsr_requests_expected_completion_at"))

    op.drop_table("opendsr_requests")
