"""Daily partitions of ``positions``: created ahead of the data, dropped whole for retention,
and the days that received rows since a given time (``position_days``, kept by a trigger), as a
condition on ``time`` that lets the planner leave out every other day's partition."""

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
    """Drop every daily partition whose whole day lies before ``cutoff`` (retention), and the
    days' rows in ``position_days``. Flights, their images, scores and labels stay: they never
    refer to a position row."""
    conn.execute(sa.text("SELECT pg_advisory_xact_lock(:k)"), {"k": _LOCK_KEY})
    dropped = []
    for day, name in sorted(existing(conn).items()):
        if day < cutoff:
            conn.execute(sa.text(f'DROP TABLE "{name}"'))
            dropped.append(name)
    conn.execute(sa.text("DELETE FROM position_days WHERE day < :d"), {"d": cutoff})
    if dropped:
        log.info("retention: dropped position partitions %s", ", ".join(dropped))
    return dropped


def days_written_since(conn: sa.Connection, receiver_ids: str | list[str],
                       after: dt.datetime | None) -> list[dt.date]:
    """UTC days of the positions of the receivers inserted after ``after`` (every day with
    positions when None). A superset: a day is listed while any of its rows is that new."""
    rids = [receiver_ids] if isinstance(receiver_ids, str) else list(receiver_ids)
    if after is None:
        days = conn.execute(sa.text(
            "SELECT DISTINCT day FROM position_days WHERE receiver_id = ANY(:r)"),
            {"r": rids}).scalars()
    else:
        days = conn.execute(sa.text(
            "SELECT DISTINCT day FROM position_days WHERE receiver_id = ANY(:r) "
            "AND last_inserted_at > :a"), {"r": rids, "a": after}).scalars()
    return sorted(days)


def time_filter(days: list[dt.date], column: str = "time", placeholder: str = ":{}"
                ) -> tuple[str, dict]:
    """A condition limiting ``column`` to ``days`` (consecutive days joined into one range) and
    its parameters (``placeholder``: ":{}" for SQLAlchemy text, "%({})s" for a psycopg2
    cursor); ``false`` for no day. The bounds are constants, so the planner keeps only those
    days' partitions: no scan, lock or plan node for any other day."""
    runs: list[list[dt.date]] = []
    for day in sorted(set(days)):
        if runs and day == runs[-1][1] + dt.timedelta(days=1):
            runs[-1][1] = day
        else:
            runs.append([day, day])
    if not runs:
        return "false", {}
    conds, params = [], {}
    for i, (first, last) in enumerate(runs):
        lo, hi = placeholder.format(f"day_from_{i}"), placeholder.format(f"day_to_{i}")
        conds.append(f"({column} >= {lo} AND {column} < {hi})")
        params[f"day_from_{i}"] = dt.datetime.combine(first, dt.time(), dt.timezone.utc)
        params[f"day_to_{i}"] = dt.datetime.combine(last + dt.timedelta(days=1), dt.time(),
                                                    dt.timezone.utc)
    return "(" + " OR ".join(conds) + ")", params
