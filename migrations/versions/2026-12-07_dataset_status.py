"""datasets.status/format/error (a Parquet dataset is `validating` until its validation job decoded every row) and
jobs.dataset_id (a validation job belongs to a dataset, not a model: jobs.model_id becomes nullable)

Revision ID: 9a4d2c7e1b58
Revises: 5c2e8a1f4d70
Create Date: 2026-12-07 22:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "9a4d2c7e1b58"
down_revision: str | None = "5c2e8a1f4d70"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("datasets") as batch:
        batch.add_column(sa.Column("status", sa.String(20), nullable=False, server_default="ready"))
        batch.add_column(sa.Column("format", sa.String(20), nullable=False, server_default="npz"))
        batch.add_column(sa.Column("features", sa.String(20), nullable=False, server_default="x"))
        batch.add_column(sa.Column("error", sa.Text(), nullable=True))
    with op.batch_alter_table("jobs") as batch:
        batch.alter_column("model_id", existing_type=sa.String(36), nullable=True)
        batch.add_column(sa.Column("dataset_id", sa.String(36), nullable=True))
        batch.create_foreign_key("fk_jobs_dataset_id_datasets", "datasets", ["dataset_id"], ["id"])


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.drop_constraint("fk_jobs_dataset_id_datasets", type_="foreignkey")
        batch.drop_column("dataset_id")
        batch.alter_column("model_id", existing_type=sa.String(36), nullable=False)
    with op.batch_alter_table("datasets") as batch:
        for column in ("error", "features", "format", "status"):
            batch.drop_column(column)
