"""The data clock: the wall clock in live operation, the newest stored position during a replay.

Everything that asks "is this flight finished?" or "which flights are recent enough to train
on?" uses it, so that replaying an old capture behaves exactly like living through that day.
"""

from __future__ import annotations

import datetime as dt

import sqlalchemy as sa

from pipeline.db.schema import position_days

# A newest position older than this is a replay of an old capture (or a receiver that has been
# down for a day, whose flights were closed long ago by the wall clock anyway).
REPLAY_AFTER = dt.timedelta(hours=24)


def newest_position(conn: sa.Connection) -> dt.datetime | None:
    """The newest position time of any receiver. A trigger on ``positions`` keeps each day's
    newest time in ``position_days`` in the transaction that inserts the rows, so this is one
    probe of a small index; ``max(time)`` over ``positions`` visited every daily partition on
    every pass, a cost that grew with the days kept."""
    return conn.execute(sa.select(sa.func.max(position_days.c.newest_time))).scalar()


def data_clock(conn: sa.Connection, now: dt.datetime | None = None) -> dt.datetime:
    now = now or dt.datetime.now(dt.timezone.utc)
    newest = newest_position(conn)
    if newest is not None and now - newest > REPLAY_AFTER:
        return newest
    return now
