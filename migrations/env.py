"""Alembic environment: the URL comes from the ADSB_* settings (or a connection handed in)."""

from alembic import context

from pipeline.config import load
from pipeline.db.engine import make_engine


def run_migrations_online() -> None:
    connection = context.config.attributes.get("connection")
    if connection is not None:
        context.configure(connection=connection, transactional_ddl=True)
        with context.begin_transaction():
            context.run_migrations()
        return
    engine = make_engine(load())
    with engine.connect() as conn:
        context.configure(connection=conn, transactional_ddl=True)
        with context.begin_transaction():
            context.run_migrations()
    engine.dispose()


if context.is_offline_mode():
    raise SystemExit("offline (SQL script) mode is not supported; run `adsb-pipeline db upgrade`")
run_migrations_online()
