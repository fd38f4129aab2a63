"""datasets.by_reference: the dataset was registered by reference (Lethe holds a copy; the original is outside
what it can erase)

Revision ID: 5c2e8a1f4d70
Revises: a5c9e2f41d07
Create Date: 2026-12-01 16:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "5c2e8a1f4d70"
down_revision: str | None = "a5c9e2f41d07"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("datasets") as batch:
        batch.add_column(sa.Column("by_reference", sa.Boolean(), nullable=False, server_default=sa.false()))
    # Registered by reference before copies were made: the row names the original itself (not under datasets/).
    op.execute("UPDATE datasets SET by_reference = true WHERE uri NOT LIKE 'datasets/%'")


def downgrade() -> None:
    with op.batch_alter_table("datasets") as batch:
        batch.drop_column("by_reference")
