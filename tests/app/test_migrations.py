from app import migrate


def test_tables_and_migrations_agree(lethe_env: dict[str, str]) -> None:
    # alembic check raises when autogenerate would produce operations
    migrate.check()
