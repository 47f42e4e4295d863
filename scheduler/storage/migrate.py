"""Run the Alembic migrations in ``migrations/`` programmatically (``switchyard db upgrade``)."""
from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config

from scheduler.storage.database import Database

REPO_ROOT = Path(__file__).resolve().parents[2]


def alembic_config(database_url: str) -> Config:
    config = Config(str(REPO_ROOT / "alembic.ini"))
    config.set_main_option("script_location", str(REPO_ROOT / "migrations"))
    config.attributes["database_url"] = database_url
    config.attributes["skip_logging_config"] = True
    return config


def upgrade_database(database_url: str, revision: str = "head") -> None:
    """Bring the database to ``revision``; creates the SQLite file's folder if needed."""
    Database(database_url).dispose()  # creates the folder of a SQLite file
    command.upgrade(alembic_config(database_url), revision)
