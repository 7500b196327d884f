"""A small database of scored traffic, written straight into the tables (they are the interface
between the scoring stage and everything that reads its results).

Tracks are real geometry around the Paris receiver: straight transits (not flagged) and an
orbit, a lawn-mower survey and a late old orbit (flagged), rasterized with the project's own
raster code; reconstructions are a blurred, dimmed copy, as a real autoencoder gives back.
"""

from __future__ import annotations

import datetime as dt
import io
from dataclasses import dataclass

import numpy as np
import sqlalchemy as sa
from PIL import Image

from conftest import PARIS_LAT, PARIS_LON, PARIS_RANGE_KM
from pipeline.db import partitions
from pipeline.flights import raster

STEP_S = 10


@dataclass
class Flight:
    icao24: str
    callsign: str
    last_seen_ago: dt.timedelta
    lat: np.ndarray
    lon: np.ndarray
    score: float
    id: int = 0

    @property
    def flagged(self) -> bool:
        return self.score > THRESHOLD


THRESHOLD = 0.05


def _line(lat0, lon0, lat1, lon1, n=150):
    return np.linspace(lat0, lat1, n), np.linspace(lon0, lon1, n)


def _orbit(lat, lon, radius_deg=0.05, turns=3, n=180):
    a = np.linspace(0, 2 * np.pi * turns, n)
    return lat + radius_deg * np.sin(a), lon + 1.5 * radius_deg * np.cos(a)


def _lawnmower(lat, lon, legs=6, n_leg=30):
    lats, lons = [], []
    for i in range(legs):
        ys = np.linspace(lat, lat + 0.2, n_leg)
        lats.append(ys if i % 2 == 0 else ys[::-1])
        lons.append(np.full(n_leg, lon + 0.03 * i))
    return np.concatenate(lats), np.concatenate(lons)


def traffic(evil_callsign: str = "SRV<b>&1") -> list[Flight]:
    m = dt.timedelta(minutes=1)
    return [
        Flight("3c6444", "DLH4TK", 5 * m, *_line(49.5, 1.6, 48.3, 3.2), score=0.012),
        Flight("4ca7b3", "RYR12AB", 9 * m, *_line(48.2, 1.9, 49.6, 3.0), score=0.018),
        Flight("39c902", "FHBXA", 3 * m, *_orbit(48.95, 2.55), score=0.31),
        Flight("3b7749", evil_callsign, 12 * m, *_lawnmower(48.6, 2.0), score=0.17),
        Flight("3944f1", "FGZNX", 20 * m, *_orbit(48.75, 2.2, 0.03, 5), score=0.09),
        # Three days back: outside a 24 h report, inside a weekly one.
        Flight("39ac45", "AFR77", dt.timedelta(days=3), *_orbit(49.1, 2.1, 0.04, 2), score=0.5),
    ]


def reconstruction_of(image: np.ndarray) -> np.ndarray:
    """Probabilities (64, 64, 2) in 0..1 like an autoencoder's: blurred, dimmer, a grey floor."""
    img = image.astype(np.float64)
    blur = sum(np.roll(np.roll(img, dy, 0), dx, 1) for dy in (-1, 0, 1) for dx in (-1, 0, 1)) / 9
    return np.clip(0.02 + 0.9 * blur, 0, 1)


def encode_reconstruction(p: np.ndarray) -> bytes:
    side_by_side = np.concatenate([p[:, :, 0], p[:, :, 1]], axis=1)
    buf = io.BytesIO()
    Image.fromarray(np.rint(side_by_side * 255).astype(np.uint8), "L").save(buf, format="PNG")
    return buf.getvalue()


def insert(engine: sa.Engine, flights: list[Flight] | None = None,
           now: dt.datetime | None = None) -> list[Flight]:
    """Insert an active model, the flights (finished, scored), their scores and positions."""
    flights = traffic() if flights is None else flights
    now = now or dt.datetime.now(dt.timezone.utc)
    with engine.begin() as c:
        c.execute(sa.text(
            "INSERT INTO sites (id, latitude, longitude, range_km) VALUES ('default', :lat, :lon, "
            ":r) ON CONFLICT DO NOTHING"), {"lat": PARIS_LAT, "lon": PARIS_LON, "r": PARIS_RANGE_KM})
        c.execute(sa.text("INSERT INTO receivers (id, site) VALUES ('default', 'default') "
                          "ON CONFLICT DO NOTHING"))
        model_id = c.execute(sa.text(
            "INSERT INTO models (version, status, threshold, threshold_method, activated_at, site) "
            "VALUES ('20261123T0300', 'active', :t, 'quantile 0.99', now(), 'default') "
            "RETURNING id"),
            {"t": THRESHOLD}).scalar()
        for f in flights:
            last = now - f.last_seen_ago
            times = [last - dt.timedelta(seconds=STEP_S * (len(f.lat) - 1 - i))
                     for i in range(len(f.lat))]
            partitions.ensure(c, {t.date() for t in times})
            img, side_km = raster.rasterize(f.lat, f.lon, PARIS_LAT, PARIS_LON, PARIS_RANGE_KM)
            f.id = c.execute(sa.text(
                "INSERT INTO flights (icao24, callsign, first_seen, last_seen, n_positions, state,"
                " closed_at, path_km, image, shape_side_km, score, threshold, flagged, model_id,"
                " scored_at, site, receivers) VALUES (:icao24, :callsign, :first, :last, :n,"
                " 'finished', :last, :path, :image, :side, :score, :t, :flagged, :model, now(),"
                " 'default', '{default}') RETURNING id"),
                {"icao24": f.icao24, "callsign": f.callsign, "first": times[0], "last": last,
                 "n": len(times), "path": 123.456, "image": raster.encode_png(img),
                 "side": side_km, "score": f.score, "t": THRESHOLD, "flagged": f.flagged,
                 "model": model_id}).scalar()
            c.execute(sa.text(
                "INSERT INTO flight_scores (flight_id, model_id, score, threshold, flagged,"
                " where_score, shape_score, reconstruction, site, icao24) VALUES (:id, :model,"
                " :score, :t, :flagged, :ws, :ss, :rec, 'default', :icao24)"),
                {"id": f.id, "icao24": f.icao24, "model": model_id, "score": f.score, "t": THRESHOLD,
                 "flagged": f.flagged, "ws": f.score / 3, "ss": f.score,
                 "rec": encode_reconstruction(reconstruction_of(img)) if f.flagged else None})
            c.execute(sa.text(
                "INSERT INTO positions (time, icao24, latitude, longitude, altitude, callsign) "
                "VALUES (:time, :icao24, :lat, :lon, 12000, :callsign)"),
                [{"time": t, "icao24": f.icao24, "lat": float(la), "lon": float(lo),
                  "callsign": f.callsign} for t, la, lo in zip(times, f.lat, f.lon)])
    return flights
