"""``adsb-pipeline db upgrade | url | stop``."""

from __future__ import annotations

import logging

from pipeline.config import Settings
from pipeline.db import embedded, migrate
from pipeline.db.engine import database_url, make_engine, plain_url

log = logging.getLogger(__name__)


def upgrade(settings: Settings, args) -> int:
    engine = make_engine(settings)
    try:
        before = migrate.current(engine)
        migrate.upgrade(engine)
        after = migrate.current(engine)
    finally:
        engine.dispose()
    log.info("database schema at revision %s (was %s)", after, before or "empty")
    return 0


def url(settings: Settings, args) -> int:
    print(plain_url(database_url(settings)))
    return 0


def stop(settings: Settings, args) -> int:
    if settings.database_url:
        log.error("ADSB_DATABASE_URL is set: there is no embedded server to stop")
        return 1
    if embedded.stop(settings.data_dir):
        log.info("embedded PostgreSQL in %s stopped", settings.data_dir)
    else:
        log.info("no embedded PostgreSQL running in %s", settings.data_dir)
    return 0
