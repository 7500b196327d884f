"""Binary COPY rows of positions, as PostgreSQL reads them back."""

from __future__ import annotations

import datetime as dt
import io

import numpy as np
import psycopg2
import pytest

from pipeline.db import partitions
from pipeline.db.rows import COPY_SQL, HEADER, TRAILER, RowEncoder, details

T0 = 1633608001.0


def _copy(engine, data: bytes) -> list[tuple]:
    with engine.begin() as conn:
        partitions.ensure(conn, {dt.date(2021, 10, 7)})
    raw = engine.raw_connection()
    try:
        with raw.cursor() as cur:
            cur.copy_expert(COPY_SQL, io.BytesIO(HEADER + data + TRAILER))
            cur.execute("SELECT extract(epoch FROM time), icao24, latitude, longitude, altitude, "
                        "groundspeed, track, vertical_rate, callsign, on_ground, receiver_id "
                        "FROM positions ORDER BY time")
            rows = cur.fetchall()
        raw.commit()
    finally:
        raw.close()
    return [(float(t), *rest) for t, *rest in rows]


def test_rows_read_back_with_their_values_and_nulls(engine):
    encoder = RowEncoder("roof-antenna")
    data = encoder.encode(
        np.array([T0 + 0.25, T0 + 1.000001, T0 + 2.5]),
        np.array(["4ca7b5", "4ca7b5", "39ceaa"], "S6"),
        np.array([48.8534545898, 48.86, -33.9]), np.array([2.4256591796, 2.43, 151.2]),
        np.array([False, False, True]), np.array([38000, np.nan, 1e12]),
        [details(421.378, 93.5, -64, "KLM1023"), details(None, None, None, None),
         details(1e40, 12.0, 2 ** 40, "A\x00B")])
    assert _copy(engine, data) == [
        (T0 + 0.25, "4ca7b5", 48.8534545898, 2.4256591796, 38000, 421.378,
         93.5, -64, "KLM1023", False, "roof-antenna"),
        (T0 + 1.000001, "4ca7b5", 48.86, 2.43, None, None, None, None, None, False,
         "roof-antenna"),
        # Values the columns cannot hold are NULL, and a NUL byte is dropped from text.
        (T0 + 2.5, "39ceaa", -33.9, 151.2, None, None, 12.0, None, "AB", True, "roof-antenna"),
    ]


def test_an_impossible_row_fails_the_copy_loudly(engine):
    """The encoder's output is checked by the server: a corrupt row is an error, not a row."""
    data = RowEncoder("default").encode(
        np.array([T0]), np.array(["4ca7b5"], "S6"), np.array([48.0]), np.array([2.0]),
        np.array([False]), np.array([1000.0]), [details(None, None, None, None)])
    with pytest.raises(psycopg2.DataError):
        _copy(engine, data[:-3])
