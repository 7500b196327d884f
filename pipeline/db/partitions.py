"""Daily partitions of ``positions``: created ahead of the data, dropped whole for retention."""

from __future__ import annotations

import datetime as dt
import logging
import re
from typing import Iterable

import sqlalchemy as sa

log = logging.getLogger(__name__)

_NAME = re.compile(r"^positions_p(\d{8})$")
# Any constant shared by every process that creates partitions: two ingest processes (or an
# ingest and a worker) creating the same day's partition must not race.
_LOCK_KEY = 0x4144_5342_5041_5254 & 0x7FFF_FFFF_FFFF_FFFF


def partition_name(day: dt.date) -> str:
    return f"positions_p{day:%Y%m%d}"


def existing(conn: sa.Connection) -> dict[dt.date, str]:
    rows = conn.execute(sa.text(
        "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
        "JOIN pg_class p ON p.oid = i.inhparent WHERE p.relname = 'positions'")).scalars()
    out = {}
    for name in rows:
        m = _NAME.match(name)
        if m:
            out[dt.datetime.strptime(m.group(1), "%Y%m%d").date()] = name
    return out


def ensure(conn: sa.Connection, days: Iterable[dt.date]) -> list[str]:
    """Create the partitions for ``days`` that do not exist yet; returns the ones created.
    Runs in the caller's transaction."""
    wanted = sorted(set(days))
    if not wanted:
        return []
    conn.execute(sa.text("SELECT pg_advisory_xact_lock(:k)"), {"k": _LOCK_KEY})
    have = existing(conn)
    created = []
    for day in wanted:
        if day in have:
            continue
        name = partition_name(day)
        start = dt.datetime.combine(day, dt.time(), dt.timezone.utc)
        end = start + dt.timedelta(days=1)
        conn.execute(sa.text(
            f'CREATE TABLE "{name}" PARTITION OF positions '
            f"FOR VALUES FROM ('{start.isoformat()}') TO ('{end.isoformat()}')"))
        created.append(name)
    if created:
        log.info("created position partitions %s", ", ".join(created))
    return created


def ensure_ahead(conn: sa.Connection, today: dt.date, days_ahead: int = 2) -> list[str]:
    """Partitions for today and the next ``days_ahead`` days (the service calls this daily)."""
    return ensure(conn, (today + dt.timedelta(days=i) for i in range(days_ahead + 1)))


def drop_before(conn: sa.Connection, cutoff: dt.date) -> list[str]:
    """Drop every daily partition whose whole day lies before ``cutoff`` (retention)."""
    conn.execute(sa.text("SELECT pg_advisory_xact_lock(:k)"), {"k": _LOCK_KEY})
    dropped = []
    for day, name in sorted(existing(conn).items()):
        if day < cutoff:
            conn.execute(sa.text(f'DROP TABLE "{name}"'))
            dropped.append(name)
    if dropped:
        log.info("retention: dropped position partitions %s", ", ".join(dropped))
    return dropped
