"""Apply the Alembic migrations (the only way the schema is created or changed)."""

from __future__ import annotations

from pathlib import Path

import sqlalchemy as sa
from alembic import command
from alembic.config import Config


def migrations_dir() -> Path:
    """The Alembic folder: shipped inside the installed package as ``pipeline.migrations``; in
    a source checkout (``python -m pipeline.cli`` from the repository) it is ``migrations/``
    beside the package."""
    try:
        import pipeline.migrations as migrations_pkg
    except ModuleNotFoundError:
        import pipeline

        return Path(pipeline.__file__).resolve().parents[1] / "migrations"
    return Path(migrations_pkg.__file__).parent


def alembic_config() -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(migrations_dir()))
    return cfg


def upgrade(engine: sa.Engine, revision: str = "head") -> None:
    cfg = alembic_config()
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, revision)


def current(engine: sa.Engine) -> str | None:
    from alembic.runtime.migration import MigrationContext

    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()
