"""Run Alembic programmatically: `lethe migrate`, tests and `lethe serve` use the same path."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config

from app.settings import get_settings

ROOT = Path(__file__).resolve().parent.parent


def alembic_config(url: str | None = None) -> Config:
    cfg = Config(str(ROOT / "alembic.ini"))
    cfg.set_main_option("script_location", str(ROOT / "migrations"))
    if url:
        cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def upgrade(url: str | None = None) -> None:
    """Bring the database to the newest schema."""
    get_settings().ensure_data_dir()  # home of the embedded SQLite file
    command.upgrade(alembic_config(url), "head")


def check(url: str | None = None) -> None:
    """Raise when the tables and the migrations disagree."""
    command.check(alembic_config(url))
