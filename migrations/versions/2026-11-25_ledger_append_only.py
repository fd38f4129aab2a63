"""ledger append-only (Postgres trigger refusing UPDATE and DELETE of ledger entries)

Revision ID: 802fae859053
Revises: 8543945bd8cc
Create Date: 2026-11-25 16:00:00.000000

Row-level, so TRUNCATE (test fixtures between tests) is not affected; SQLite gets nothing here and relies on
/ledger/verify to expose edits.
"""

from collections.abc import Sequence

from alembic import op

revision: str = "802fae859053"
down_revision: str | None = "8543945bd8cc"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

FUNCTION = "lethe_ledger_append_only"
TRIGGER = "ledger_entries_append_only"


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute(f"""
        CREATE OR REPLACE FUNCTION {FUNCTION}() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            RAISE EXCEPTION 'ledger_entries is append-only: % refused', TG_OP
                USING ERRCODE = 'restrict_violation',
                      HINT = 'ledger entries are never changed or removed; append a new event instead';
        END
        $$
    """)
    op.execute(f"""
        CREATE TRIGGER {TRIGGER} BEFORE UPDATE OR DELETE ON ledger_entries
        FOR EACH ROW EXECUTE FUNCTION {FUNCTION}()
    """)


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute(f"DROP TRIGGER IF EXISTS {TRIGGER} ON ledger_entries")
    op.execute(f"DROP FUNCTION IF EXISTS {FUNCTION}()")
