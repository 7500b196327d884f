"""Loading positions straight into the ``positions`` table for the flight tests.

Stands in for the ingest stage: COPY rows (synthetic ones, or the airborne rows of the Paris
CSV) after creating their daily partitions, as the real writer does.
"""

from __future__ import annotations

import csv
import datetime as dt
import gzip
import io
from pathlib import Path
from typing import Iterable, NamedTuple

import sqlalchemy as sa

from pipeline.db import partitions

UTC = dt.timezone.utc
COLUMNS = ("time", "icao24", "latitude", "longitude", "altitude", "callsign", "on_ground",
           "receiver_id")


class Pos(NamedTuple):
    time: dt.datetime
    icao24: str
    latitude: float
    longitude: float
    altitude: int | None = 30000
    callsign: str | None = None
    on_ground: bool = False
    receiver_id: str = "default"


def _cell(v) -> str:
    if v is None:
        return "\\N"
    if isinstance(v, dt.datetime):
        return v.isoformat()
    if isinstance(v, bool):
        return "t" if v else "f"
    return str(v)


def copy_positions(engine: sa.Engine, rows: Iterable[Pos]) -> int:
    """COPY ``rows`` into positions (one transaction); returns the number of rows."""
    rows = list(rows)
    buf = io.StringIO()
    for r in rows:
        buf.write("\t".join(_cell(v) for v in r) + "\n")
    buf.seek(0)
    with engine.begin() as conn:
        partitions.ensure(conn, {r.time.astimezone(UTC).date() for r in rows})
        cur = conn.connection.driver_connection.cursor()
        cur.copy_expert(f"COPY positions ({', '.join(COLUMNS)}) FROM STDIN", buf)
    return len(rows)


def track(icao24: str, start: dt.datetime, n: int, *, step_s: float = 5.0,
          lat: float = 48.88, lon: float = 2.42, dlat: float = 0.002, dlon: float = 0.003,
          callsign: str | None = "TEST1", on_ground: bool = False) -> list[Pos]:
    """A straight synthetic track of ``n`` positions, one every ``step_s`` seconds."""
    return [Pos(start + dt.timedelta(seconds=i * step_s), icao24, lat + i * dlat, lon + i * dlon,
                None if on_ground else 30000, callsign, on_ground) for i in range(n)]


def read_paris_airborne(path: Path) -> list[Pos]:
    """The CSV's airborne rows (the Beast replay holds exactly these)."""
    out = []
    with gzip.open(path, "rt", newline="") as f:
        for row in csv.DictReader(f):
            if row["onground"] != "False":
                continue
            alt = row["altitude"]
            out.append(Pos(dt.datetime.fromtimestamp(float(row["timestamp"]), UTC), row["icao24"],
                           float(row["latitude"]), float(row["longitude"]),
                           int(float(alt)) if alt else None, row["callsign"] or None))
    return out


def load_paris(engine: sa.Engine, path: Path) -> int:
    """Positions of the Paris capture in the database (what replaying the Beast file gives)."""
    return copy_positions(engine, read_paris_airborne(path))
