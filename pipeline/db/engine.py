"""One place that turns settings into a SQLAlchemy engine (external or embedded PostgreSQL)."""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.engine import URL, make_url

from pipeline.config import Settings

log = logging.getLogger(__name__)


def database_url(settings: Settings) -> URL:
    """The database URL: ADSB_DATABASE_URL (password from the secrets file if given), or the
    embedded server, started on demand."""
    if settings.database_url:
        url = make_url(settings.database_url)
        if url.drivername in ("postgresql", "postgres"):
            url = url.set(drivername="postgresql+psycopg2")
        if not url.drivername.startswith("postgresql"):
            raise ValueError(f"only PostgreSQL is supported, got {url.drivername!r}")
    else:
        from pipeline.db import embedded

        url = make_url(embedded.start(settings.data_dir))
    if settings.database_password_file:
        password = Path(settings.database_password_file).read_text().strip()
        url = url.set(password=password)
    return url


def plain_url(url: URL) -> str:
    """The URL in the form psql and libpq understand (no SQLAlchemy driver suffix)."""
    return url.set(drivername="postgresql").render_as_string(hide_password=False)


def make_engine(settings: Settings, **kwargs) -> sa.Engine:
    url = database_url(settings)
    kwargs.setdefault("pool_pre_ping", True)
    return sa.create_engine(url, **kwargs)


def wait_for_database(engine: sa.Engine, stop: threading.Event, *, first_wait_s: float = 1.0,
                      max_wait_s: float = 30.0) -> bool:
    """Block until the server answers (True) or ``stop`` is set (False).

    A service started with its database (a Pi after a power cut, a compose stack whose
    PostgreSQL is still recovering) would otherwise exit at its first query, and a supervisor
    would restart it in a loop with one traceback per try. Waits 1 s, doubling up to 30 s, with
    one log line per try that says what failed."""
    started = time.monotonic()
    wait, tries = first_wait_s, 0
    while True:
        try:
            with engine.connect() as conn:
                conn.exec_driver_sql("SELECT 1")
        except (sa.exc.OperationalError, sa.exc.InterfaceError) as exc:
            tries += 1
            reason = str(exc.orig if exc.orig is not None else exc).strip().splitlines()
            log.warning("database %s unreachable (%s); try %d, waiting %.0f s since start, "
                        "next try in %.0f s", engine.url.render_as_string(hide_password=True),
                        reason[0] if reason else type(exc).__name__, tries,
                        time.monotonic() - started, wait)
            if stop.wait(wait):
                log.info("stopped while waiting for the database")
                return False
            wait = min(wait * 2, max_wait_s)
            continue
        if tries:
            log.info("database reachable after %.0f s and %d failed tries",
                     time.monotonic() - started, tries)
        return True
