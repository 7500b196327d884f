"""Several days of one simulated site as finished flights with images, for "as deployed" tests.

``load_week`` inserts ``simulate.generate_days`` flights directly (no Beast ingestion, which
would take minutes for a week): the project's rasterizer makes the images inside
``helpers_flights.insert_tracks``, whatever their channels. A caller trains on the flights
before ``last_day_start`` and judges the flights of the last day, which the model never saw.
"""

from __future__ import annotations

import datetime as dt

import numpy as np
import sqlalchemy as sa

from helpers_flights import Track, insert_tracks, sim_tracks
from pipeline.evaluation import routes, simulate

WEEK_START = simulate.WEEK_START            # a Monday: day 0 of generate_days is one


def load_week(engine: sa.Engine, days: int = 7, flights_per_day: int = 150,
              anomaly_fraction: float = 0.02, seed: int = 0,
              start: dt.datetime = WEEK_START, rotated_fraction: float = 0.0) -> dict:
    """Insert ``days`` days of one site, day 0 beginning at ``start`` (keep it a Monday 00:00
    UTC for the weekday pattern and one calendar date per day); returns
    ``labels`` (icao24 -> 0/1), ``kinds`` (icao24 -> kind), ``days`` (icao24 -> day index),
    ``flight_ids`` (icao24 -> flights.id) and ``last_day_start`` (datetime)."""
    flights = simulate.generate_days(days, flights_per_day, anomaly_fraction=anomaly_fraction,
                                     seed=seed)
    tracks = sim_tracks(flights, start)
    extra = rotated_transits([t for t, f in zip(tracks, flights) if f.day == days - 1],
                             rotated_fraction, seed) if rotated_fraction else []
    ids = insert_tracks(engine, tracks + extra)
    return {
        "labels": {**{f.icao24: f.label for f in flights}, **{t.icao24: 1 for t in extra}},
        "kinds": {**{f.icao24: f.kind for f in flights}, **{t.icao24: t.kind for t in extra}},
        "days": {**{f.icao24: f.day for f in flights}, **{t.icao24: days - 1 for t in extra}},
        "flight_ids": {t.icao24: i for t, i in zip(tracks + extra, ids)},
        "last_day_start": start + dt.timedelta(days=days - 1),
    }


def rotated_transits(day: list[Track], fraction: float, seed: int,
                     min_angle_deg: float = 60.0) -> list[Track]:
    """Copies of ``fraction`` of the day's ordinary transits rotated about the receiver by
    min_angle..360-min_angle degrees: same shape, speed, level and timing, flown where or in a
    direction the site's traffic does not fly. The simulated coverage is a circle about the
    receiver and transits enter and leave on it, so the rotated ends stay at the edge of
    coverage (no endpoint gives them away)."""
    rng = np.random.default_rng(seed + 7)
    transits = [t for t in day if t.kind == "transit"]
    n = max(1, round(fraction * len(day))) if transits else 0
    out = []
    for i, t in enumerate(rng.choice(len(transits), size=min(n, len(transits)), replace=False)):
        src = transits[int(t)]
        angle = float(rng.uniform(min_angle_deg, 360.0 - min_angle_deg))
        lat, lon = routes.rotate_latlon(src.lat, src.lon, angle, 48.88, 2.42)
        out.append(Track(f"{routes.ICAO_PREFIX + 0x8000 + i:06x}", src.callsign, src.t, lat, lon,
                         src.alt, 1, "rotated_transit"))
    return out
