"""The data clock: the wall clock in live operation, the newest stored position during a replay.

Everything that asks "is this flight finished?" or "which flights are recent enough to train
on?" uses it, so that replaying an old capture behaves exactly like living through that day.
"""

from __future__ import annotations

import datetime as dt

import sqlalchemy as sa

# A newest position older than this is a replay of an old capture (or a receiver that has been
# down for a day, whose flights were closed long ago by the wall clock anyway).
REPLAY_AFTER = dt.timedelta(hours=24)


def newest_position(conn: sa.Connection) -> dt.datetime | None:
    # max(time) over a partitioned table with a BRIN index: each partition's index answers it.
    return conn.execute(sa.text("SELECT max(time) FROM positions")).scalar()


def data_clock(conn: sa.Connection, now: dt.datetime | None = None) -> dt.datetime:
    now = now or dt.datetime.now(dt.timezone.utc)
    newest = newest_position(conn)
    if newest is not None and now - newest > REPLAY_AFTER:
        return newest
    return now
