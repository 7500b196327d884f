"""Finished flights with images for model tests and benchmarks, without the ingest stage.

Tracks come from the Paris CSV (airborne rows, split per aircraft at gaps > 600 s) and from
``pipeline.evaluation.simulate``; they are rasterized with the project's rasterizer and inserted
into ``flights`` as finished flights. The newest position of every flight is also stored in
``positions``, so that the data clock of the database is the capture's time (a replay).
"""

from __future__ import annotations

import datetime as dt
import gzip
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import sqlalchemy as sa

from pipeline.db import partitions
from pipeline.db.schema import flights, positions
from pipeline.flights import features, raster

GAP_S = 600.0
MIN_POSITIONS = 30


@dataclass
class Track:
    icao24: str
    callsign: str | None
    t: np.ndarray            # Unix seconds
    lat: np.ndarray
    lon: np.ndarray
    alt: np.ndarray          # ft, NaN where unknown
    label: int = 0
    kind: str = "real"


def paris_tracks(csv_path: Path, gap_s: float = GAP_S, min_positions: int = MIN_POSITIONS
                 ) -> list[Track]:
    """Airborne rows of the Paris CSV cut into flights at silences longer than ``gap_s``."""
    cols = {"icao24": [], "callsign": [], "t": [], "lat": [], "lon": [], "alt": []}
    with gzip.open(csv_path, "rt") as f:
        header = f.readline().strip().split(",")
        i = {name: header.index(name) for name in ("icao24", "callsign", "timestamp", "latitude",
                                                   "longitude", "altitude", "onground")}
        for line in f:
            v = line.rstrip("\n").split(",")
            if v[i["onground"]] == "True":
                continue
            cols["icao24"].append(v[i["icao24"]])
            cols["callsign"].append(v[i["callsign"]] or None)
            cols["t"].append(float(v[i["timestamp"]]))
            cols["lat"].append(float(v[i["latitude"]]))
            cols["lon"].append(float(v[i["longitude"]]))
            cols["alt"].append(float(v[i["altitude"]]) if v[i["altitude"]] else np.nan)
    icao = np.array(cols["icao24"])
    t, lat, lon, alt = (np.array(cols[k]) for k in ("t", "lat", "lon", "alt"))
    calls = np.array(cols["callsign"], dtype=object)
    out = []
    for a in np.unique(icao):
        idx = np.flatnonzero(icao == a)
        idx = idx[np.argsort(t[idx], kind="stable")]
        cuts = np.flatnonzero(np.diff(t[idx]) > gap_s) + 1
        for part in np.split(idx, cuts):
            if len(part) >= min_positions:
                cs = next((c for c in calls[part][::-1] if c), None)
                out.append(Track(str(a), cs, t[part], lat[part], lon[part], alt[part]))
    return out


def sim_tracks(sim_flights, start: dt.datetime) -> list[Track]:
    t0 = start.timestamp()
    return [Track(f.icao24, f.callsign, f.t + t0, f.lat, f.lon, f.alt.astype(float),
                  f.label, f.kind) for f in sim_flights]


def _ts(t: float) -> dt.datetime:
    return dt.datetime.fromtimestamp(float(t), dt.timezone.utc)


def flight_row(tr: Track, ref_lat: float, ref_lon: float, range_km: float) -> dict:
    img, side = raster.rasterize(tr.lat, tr.lon, ref_lat, ref_lon, range_km)
    feat = features.compute(tr.lat, tr.lon, ref_lat, ref_lon)
    where_lit, shape_lit = raster.lit_fractions(img)
    alt = tr.alt[np.isfinite(tr.alt)]
    return dict(
        icao24=tr.icao24, callsign=tr.callsign, receiver_id="default", site="default",
        receivers=["default"],
        first_seen=_ts(tr.t[0]), last_seen=_ts(tr.t[-1]), n_positions=len(tr.t),
        state="finished", late=False, closed_at=_ts(tr.t[-1]),
        path_km=feat.path_km, straight_km=feat.straight_km, tortuosity=feat.tortuosity,
        turning_deg=feat.turning_deg, max_distance_km=feat.max_distance_km,
        min_altitude=int(alt.min()) if alt.size else None,
        max_altitude=int(alt.max()) if alt.size else None,
        image=raster.encode_png(img), where_lit=where_lit, shape_lit=shape_lit,
        shape_side_km=side)


def ensure_default_site(conn: sa.Connection, lat: float = 48.88, lon: float = 2.42,
                        range_km: float = 121.0) -> None:
    """The site and receiver 'default' (what the worker registers for the default settings)."""
    conn.execute(sa.text("INSERT INTO sites (id, latitude, longitude, range_km) "
                         "VALUES ('default', :lat, :lon, :r) ON CONFLICT DO NOTHING"),
                 {"lat": lat, "lon": lon, "r": range_km})
    conn.execute(sa.text("INSERT INTO receivers (id, site, latitude, longitude) "
                         "VALUES ('default', 'default', :lat, :lon) ON CONFLICT DO NOTHING"),
                 {"lat": lat, "lon": lon})


def insert_tracks(engine: sa.Engine, tracks: list[Track], ref_lat: float = 48.88,
                  ref_lon: float = 2.42, range_km: float = 121.0) -> list[int]:
    """Insert the tracks as finished flights (ids returned in the same order), and each one's
    newest position, so the data clock follows the tracks' time."""
    rows = [flight_row(tr, ref_lat, ref_lon, range_km) for tr in tracks]
    last = [dict(time=r["last_seen"], icao24=r["icao24"], latitude=float(tr.lat[-1]),
                 longitude=float(tr.lon[-1]), on_ground=False, receiver_id="default",
                 inserted_at=dt.datetime.now(dt.timezone.utc))
            for r, tr in zip(rows, tracks)]
    with engine.begin() as conn:
        ensure_default_site(conn, ref_lat, ref_lon, range_km)
        partitions.ensure(conn, sorted({p["time"].date() for p in last}))
        ids = [conn.execute(flights.insert().values(**r).returning(flights.c.id)).scalar_one()
               for r in rows]
        conn.execute(positions.insert(), last)
    return ids


def labels_of(tracks: list[Track]) -> dict[str, int]:
    """icao24 -> label (a flight's label is its aircraft's)."""
    out: dict[str, int] = {}
    for tr in tracks:
        out[tr.icao24] = max(out.get(tr.icao24, 0), tr.label)
    return out


# ---- a small trained database for model tests --------------------------------------------------
SIM_START = dt.datetime(2021, 10, 7, 12, 0, 1, tzinfo=dt.timezone.utc)


def sim_database(databases, n_normal: int = 80, n_anomalies: int = 6, seed: int = 5):
    """URL of a fresh database holding simulated finished flights, and their tracks."""
    from pipeline.evaluation import simulate

    url = databases.create()
    tracks = sim_tracks(simulate.generate(n_normal, n_anomalies, seed=seed,
                                          anomaly_kinds=simulate.PATTERN_KINDS), SIM_START)
    engine = sa.create_engine(url)
    insert_tracks(engine, tracks)
    engine.dispose()
    return url, tracks


def copy_database(databases, template_url: str) -> str:
    """A fresh copy of a database (PostgreSQL template copy: cheap, no retraining)."""
    import uuid

    import psycopg2

    name = f"adsb_test_{uuid.uuid4().hex[:12]}"
    src = sa.engine.make_url(template_url).database
    conn = psycopg2.connect(databases.admin_url)
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute(f'CREATE DATABASE "{name}" TEMPLATE "{src}"')
    conn.close()
    databases.created.append(name)
    return databases.url_for(name)


def model_settings(url: str, data_dir: Path, **changes):
    from pipeline import config

    # Test trainings are bounded by epochs (max_epochs), not by the wall-clock budget: a budget
    # cut depends on how busy the machine is, and a fold stopped after a few epochs can miss
    # the recall floor.
    values = {"database_url": url, "data_dir": str(data_dir), "train_min_flights": 20,
              "train_budget_s": 900, "receiver_lat": 48.88, "receiver_lon": 2.42,
              "range_km": 121.0}
    values.update(changes)
    return config.load({}, values)


def tiny_arch():
    from pipeline.model.autoencoder import Architecture

    return Architecture(filters=(8, 8, 16), bottleneck=8)


def flight_images(conn) -> np.ndarray:
    blobs = conn.execute(sa.text("SELECT image FROM flights ORDER BY id")).scalars().all()
    return np.stack([raster.decode_png(bytes(b)) for b in blobs])


def activate_copy_of_model(conn) -> None:
    """A second model row on the same file becomes active (the previous one retired): what a
    nightly promotion does, for tests about what is re-scored and re-alerted."""
    conn.execute(sa.text("""
        INSERT INTO models (version, status, threshold, params, path, sha256, site)
        SELECT version || '-b', 'candidate', threshold, params, path, sha256, site FROM models"""))
    conn.execute(sa.text("UPDATE models SET status = 'retired' WHERE status = 'active'"))
    conn.execute(sa.text("UPDATE models SET status = 'active' WHERE version LIKE '%-b'"))
