"""One place that turns settings into a SQLAlchemy engine (external or embedded PostgreSQL)."""

from __future__ import annotations

from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.engine import URL, make_url

from pipeline.config import Settings


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
