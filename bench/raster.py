"""Track images: flights per second, image only and end to end from the database.

    python bench/raster.py [--flights 1000] [--points 300] [--admin-url URL]

Image only: project + draw both channels (+ PNG + features) of synthetic 300-point tracks on
one core, beside Pillow drawing one 300-point polyline (the floor we build on). End to end:
positions COPYed into a fresh database, placed into open flights by one pass, then timed: the
pass that reads every flight's positions, draws, computes features and writes them back.
"""

from __future__ import annotations

import argparse
import datetime as dt
import io
import sys
import time
import uuid

import numpy as np
import psycopg2
import sqlalchemy as sa
from PIL import Image, ImageDraw

from pipeline import config
from pipeline.db import migrate, partitions
from pipeline.flights import features, raster, store

LAT, LON, RANGE_KM = 48.88, 2.42, 121.0


def tracks(n: int, points: int, seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    """Smooth random tracks of ``points`` positions (1 s apart, ~230 m/s) across the range."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        heading = rng.uniform(0, 2 * np.pi) + np.cumsum(rng.normal(0, 0.01, points))
        x = rng.uniform(-80, 80) + np.cumsum(0.23 * np.sin(heading))
        y = rng.uniform(-80, 80) + np.cumsum(0.23 * np.cos(heading))
        lat = LAT + y / 111.2
        lon = LON + x / (111.2 * np.cos(np.radians(LAT)))
        out.append((lat, lon))
    return out


def rate(fn, items) -> float:
    started = time.perf_counter()
    for it in items:
        fn(it)
    return len(items) / (time.perf_counter() - started)


def pillow_floor(track) -> None:
    img = Image.new("L", (64, 64), 0)
    pts = np.rint(np.random.default_rng(0).uniform(0, 63, (track[0].size, 2))).astype(np.int32)
    ImageDraw.Draw(img).line(pts.ravel().tolist(), fill=1)


def image_only(ts) -> None:
    floor = rate(pillow_floor, ts[:500])
    img_rate = rate(lambda t: raster.rasterize(t[0], t[1], LAT, LON, RANGE_KM), ts)

    def full(t):
        img, side = raster.rasterize(t[0], t[1], LAT, LON, RANGE_KM)
        raster.encode_png(img)
        features.compute(t[0], t[1], LAT, LON)

    full_rate = rate(full, ts)
    print(f"Pillow, one random 300-point polyline:          {floor:10,.0f} /s")
    print(f"image only (project + both channels):           {img_rate:10,.0f} flights/s")
    print(f"image + PNG + features:                          {full_rate:10,.0f} flights/s")


def end_to_end(ts, admin_url: str) -> None:
    name = f"adsb_bench_{uuid.uuid4().hex[:8]}"
    admin = psycopg2.connect(admin_url)
    admin.autocommit = True
    admin.cursor().execute(f'CREATE DATABASE "{name}"')
    url = sa.engine.make_url(admin_url).set(database=name, drivername="postgresql+psycopg2")
    engine = sa.create_engine(url)
    try:
        migrate.upgrade(engine)
        settings = config.load({}, {"database_url": url.render_as_string(hide_password=False),
                                    "receiver_lat": LAT, "receiver_lon": LON,
                                    "range_km": RANGE_KM})
        t0 = dt.datetime(2021, 10, 7, 12, 0, tzinfo=dt.timezone.utc)
        buf = io.StringIO()
        for i, (lat, lon) in enumerate(ts):
            start = t0 + dt.timedelta(seconds=i * 0.1)     # all still open after the first pass
            for k in range(lat.size):
                buf.write(f"{(start + dt.timedelta(seconds=k)).isoformat()}\t{i:06x}\t"
                          f"{lat[k]:.6f}\t{lon[k]:.6f}\t{30000 + k}\tBENCH{i % 97}\n")
        buf.seek(0)
        started = time.perf_counter()
        with engine.begin() as conn:
            partitions.ensure(conn, [t0.date()])
            conn.connection.driver_connection.cursor().copy_expert(
                "COPY positions (time, icao24, latitude, longitude, altitude, callsign) "
                "FROM STDIN", buf)
            conn.execute(sa.text("ANALYZE positions"))
        n_rows = sum(t[0].size for t in ts)
        print(f"loaded {n_rows:,} positions in {time.perf_counter() - started:.1f} s")
        store.COMMIT_MARGIN = dt.timedelta(0)
        placed = store.process_flights(engine, settings)          # places; nothing due yet
        closed = store.process_flights(engine, settings, final=True)
        assert placed.created == len(ts) and closed.closed == len(ts), (placed, closed)
        print(f"place {placed.new_positions:,} new positions into open flights: "
              f"{placed.seconds:.2f} s ({placed.new_positions / placed.seconds:,.0f} positions/s)")
        print(f"end to end (read positions -> image + features -> write), {closed.closed} flights: "
              f"{closed.seconds:.2f} s = {closed.closed / closed.seconds:,.0f} flights/s")
    finally:
        engine.dispose()
        admin.cursor().execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--flights", type=int, default=1000)
    p.add_argument("--points", type=int, default=300)
    p.add_argument("--admin-url", default="postgresql://postgres@127.0.0.1:5432/postgres")
    p.add_argument("--no-db", action="store_true", help="image-only figures")
    args = p.parse_args(argv)
    ts = tracks(args.flights, args.points)
    print(f"{args.flights} synthetic flights of {args.points} positions, one core")
    image_only(ts)
    if not args.no_db:
        end_to_end(ts, args.admin_url)
    return 0


if __name__ == "__main__":
    sys.exit(main())
