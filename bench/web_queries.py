"""The web pages' queries on a year of a busy site: a million finished flights (images, scores,
1 % flagged, a model a day, verdicts on a third of the flags) and the last day's positions,
loaded with generate_series into a scratch database. Each query of each page is run as the
page runs it (pipeline.web.queries) and timed: the first (cold) run, then the median and the
worst of the next runs. Fails loudly when a median is over 200 ms. Then each page is requested
whole (templates, pictures' queries) for reference.

Usage: python bench/web_queries.py [--flights 1000000] [--runs 7] [--keep]
"""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import statistics
import sys
import time
from typing import Callable

import numpy as np
import sqlalchemy as sa

import _data
from pipeline import config
from pipeline.db import partitions
from pipeline.flights import raster
from pipeline.flights.clock import data_clock
from pipeline.model.score import reconstruction_png
from pipeline.web import queries as q

LIMIT_MS = 200.0
DAYS = 365
AIRCRAFT = 20_000           # distinct icao24 addresses: each flies about every week
CALLSIGNS = 6_000
FLAG_EVERY = 97             # ~1 % of flights flagged
POSITION_STEP_S = 8         # the last day's positions: one every 8 s per flight


def _blobs() -> tuple[bytes, bytes]:
    """A real track image (PNG as the rasterizer stores it) and a reconstruction PNG."""
    lat = np.linspace(48.5, 49.3, 300)
    lon = np.linspace(1.9, 3.0, 300)
    img, _ = raster.rasterize(lat, lon, 48.88, 2.42, 121.0)
    blur = sum(np.roll(np.roll(img.astype(float), dy, 0), dx, 1)
               for dy in (-1, 0, 1) for dx in (-1, 0, 1)) / 9
    return raster.encode_png(img), reconstruction_png(np.clip(0.02 + 0.9 * blur, 0, 1))


def load(engine: sa.Engine, n: int, end: dt.datetime) -> None:
    image, rec = _blobs()
    step = dt.timedelta(days=DAYS) / n
    start = end - dt.timedelta(days=DAYS)
    t0 = time.perf_counter()
    with engine.begin() as c:
        c.execute(sa.text("INSERT INTO sites (id, latitude, longitude, range_km) "
                          "VALUES ('default', 48.88, 2.42, 121) ON CONFLICT DO NOTHING"))
        c.execute(sa.text("INSERT INTO receivers (id, site) VALUES ('default', 'default') "
                          "ON CONFLICT DO NOTHING"))
        # A model a day; every 7th was rejected (never active), the newest is active.
        c.execute(sa.text("""
            INSERT INTO models (id, version, created_at, activated_at, data_from, data_to,
                                n_train, n_val, n_excluded, excluded, epochs, seconds, val_loss,
                                recall_where, precision_where, recall_shape, precision_shape,
                                threshold, threshold_method, params, path, sha256, status, reason,
                                site)
            SELECT k, to_char(:start + k * interval '1 day', 'YYYYMMDD"T0300"'),
                   :start + k * interval '1 day',
                   CASE WHEN k % 7 = 3 THEN NULL ELSE :start + k * interval '1 day' END,
                   :start + (k - 7) * interval '1 day', :start + k * interval '1 day',
                   18000, 18000, 400,
                   jsonb_build_object('flagged_by_active', jsonb_build_object(
                       'model_id', k - 1, 'flights', (SELECT jsonb_agg(x) FROM
                       generate_series(1, 180) x))),
                   60, 400, 0.012, 0.9, 0.2, 0.88, 0.2, 6.0, '0.99 quantile',
                   '{"folds": 3, "scored_groups": ["where", "shape", "direction"]}',
                   '/models/m.keras', repeat('0', 64),
                   CASE WHEN k = :days THEN 'active' WHEN k % 7 = 3 THEN 'rejected'
                        ELSE 'retired' END,
                   CASE WHEN k % 7 = 3 THEN 'lit-pixel recall of the where channel 0.4 is '
                        'below 0.5' ELSE 'out-of-fold loss 0.012 vs active 0.013' END,
                   'default'
              FROM generate_series(1, :days) k"""), {"start": start, "days": DAYS})
        c.execute(sa.text("SELECT setval('models_id_seq', :d)"), {"d": DAYS})
        # Flights, oldest first (ids follow time, as the worker creates them).
        c.execute(sa.text("""
            INSERT INTO flights (icao24, callsign, receiver_id, site, receivers, first_seen,
                                 last_seen,
                                 n_positions, state, late, closed_at, path_km, straight_km,
                                 tortuosity, turning_deg, max_distance_km, min_altitude,
                                 max_altitude, image, where_lit, shape_lit, shape_side_km,
                                 image_format, score, threshold, flagged, model_id, scored_at)
            SELECT lpad(to_hex(4194304 + (i * 7919) % :aircraft), 6, '0'),
                   'CS' || lpad(((i * 104729) % :callsigns)::text, 4, '0'),
                   'default', 'default', '{default}',
                   ls - (20 + i % 100) * interval '1 minute', ls,
                   150 + i % 2500, 'finished', false, ls, 40 + i % 300, 30 + i % 250,
                   1.1 + (i % 50) / 20.0, 90 + i % 700, 20 + i % 150, i % 3000,
                   3000 + i % 35000, :image, 0.01, 0.02, 60,
                   2, sc, 6.0, sc > 6.0, m, ls + interval '1 minute'
              FROM (SELECT i, ls,
                           CASE WHEN i % :flag_every = 0 THEN 6.5 + (i % 50) / 4.0
                                ELSE ((i * 2654435761) % 1000) / 125.0 - 2.0 END AS sc,
                           -- the model active then: that day's, or the day before's when
                           -- that day's was rejected
                           greatest(1, least(:days, floor(extract(epoch FROM ls - :start)
                                                          / 86400)::int)) AS d
                      FROM generate_series(1::bigint, :n) i,
                           LATERAL (SELECT :end - (:n - i) * :step AS ls) l) s,
                   LATERAL (SELECT CASE WHEN s.d % 7 = 3 THEN s.d - 1 ELSE s.d END AS m) mm"""),
            {"aircraft": AIRCRAFT, "callsigns": CALLSIGNS, "end": end, "n": n, "step": step,
             "image": image, "flag_every": FLAG_EVERY, "days": DAYS, "start": start})
        c.execute(sa.text("""
            UPDATE flights SET state = 'open', score = NULL, threshold = NULL, flagged = NULL,
                   model_id = NULL, scored_at = NULL, closed_at = NULL, image = NULL
             WHERE last_seen > :end - interval '10 minutes'"""), {"end": end})
    print(f"  flights: {n:,} in {time.perf_counter() - t0:.0f} s", flush=True)
    t0 = time.perf_counter()
    with engine.begin() as c:
        c.execute(sa.text("""
            INSERT INTO flight_scores (icao24, flight_id, model_id, score, threshold, flagged,
                                       where_score, shape_score, direction_score, channel,
                                       error_row, error_col, reconstruction, scored_at)
            SELECT icao24, id, model_id, score, threshold, flagged, score / 2, score, score / 3,
                   (ARRAY['shape', 'where', 'direction'])[1 + id % 3],
                   CASE WHEN flagged THEN id % 64 END, CASE WHEN flagged THEN id % 61 END,
                   CASE WHEN flagged THEN CAST(:rec AS bytea) END, scored_at
              FROM flights WHERE model_id IS NOT NULL"""), {"rec": rec})
        # Verdicts on a third of the flags, a few judged twice.
        c.execute(sa.text("""
            INSERT INTO flight_labels (icao24, flight_id, verdict, note, author, created_at)
            SELECT icao24, id, CASE WHEN id % 2 = 0 THEN 'anomalous' ELSE 'normal' END, 'seen',
                   'ana', last_seen + interval '1 hour'
              FROM flights WHERE flagged AND id % 3 = 0
            UNION ALL
            SELECT icao24, id, 'anomalous', 'second look', 'bob', last_seen + interval '2 hours'
              FROM flights WHERE flagged AND id % 30 = 0"""))
    print(f"  scores and verdicts in {time.perf_counter() - t0:.0f} s", flush=True)
    t0 = time.perf_counter()
    with engine.begin() as c:
        partitions.ensure(c, [(end - dt.timedelta(days=k)).date() for k in range(3)])
        c.execute(sa.text("""
            INSERT INTO positions (time, icao24, latitude, longitude, altitude, groundspeed,
                                   track, vertical_rate, callsign, on_ground, receiver_id,
                                   inserted_at)
            SELECT t, f.icao24, 48.88 + 0.8 * sin(k / 60.0 + f.id), 2.42 + 1.2 * cos(k / 70.0),
                   3000 + (k * 37) % 33000, 250 + k % 200, (k * 3) % 360, 0, f.callsign,
                   false, 'default', t
              FROM flights f
              CROSS JOIN LATERAL generate_series(0, (extract(epoch FROM f.last_seen -
                         f.first_seen) / :step)::int) k
              CROSS JOIN LATERAL (SELECT f.first_seen + k * :step * interval '1 second'
                                  AS t) tt
             WHERE f.last_seen > :end - interval '1 day'"""),
            {"end": end, "step": POSITION_STEP_S})
        n_pos = c.execute(sa.text("SELECT count(*) FROM positions")).scalar()
        c.execute(sa.text("""
            INSERT INTO pipeline_state (key, value, updated_at) VALUES ('ingest:default',
              '{"connected": true, "source": "beast://127.0.0.1:30005", "messages_per_s": 900,
                "positions_per_s": 110}', now())"""))
    print(f"  positions of the last day: {n_pos:,} in {time.perf_counter() - t0:.0f} s",
          flush=True)
    t0 = time.perf_counter()
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as c:
        c.execute(sa.text("VACUUM ANALYZE"))        # what autovacuum leaves a steady database in
    print(f"  vacuum analyze in {time.perf_counter() - t0:.0f} s", flush=True)


def timed(engine: sa.Engine, fn: Callable[[sa.Connection], object], runs: int
          ) -> tuple[float, float, float]:
    """(cold, median, worst) milliseconds; each run on the same connection, as a page does."""
    ms = []
    with engine.connect() as conn:
        for _ in range(runs + 1):
            t = time.perf_counter()
            fn(conn)
            ms.append((time.perf_counter() - t) * 1000)
            conn.rollback()
    return ms[0], statistics.median(ms[1:]), max(ms[1:])


def cases(engine: sa.Engine, receiver: str) -> list[tuple[str, str, Callable]]:
    with engine.connect() as c:
        clock = data_clock(c)
        today = q.day_start(clock)
        week = today - dt.timedelta(days=6)
        active = q.active_model(c)
        assert active is not None
        ids = c.execute(sa.text("SELECT min(id), max(id) FROM flights")).one()
        mid = c.execute(sa.text("SELECT id, last_seen, icao24, callsign FROM flights "
                                "WHERE id = :i"), {"i": (ids[0] + ids[1]) // 2}).one()
        flagged_mid = c.execute(sa.text(
            "SELECT id, last_seen FROM flights WHERE flagged AND id >= :i ORDER BY id LIMIT 1"),
            {"i": mid.id}).one()
        recent = c.execute(sa.text(
            "SELECT id, icao24, first_seen, last_seen FROM flights WHERE flagged AND state = "
            "'finished' ORDER BY last_seen DESC LIMIT 1")).one()
        model_ids = [r[0] for r in c.execute(sa.text(
            "SELECT id FROM models ORDER BY id DESC LIMIT 20"))]
    day = dt.datetime.combine(mid.last_seen.date(), dt.time(), dt.timezone.utc)
    F = q.FlightFilter
    mid_cursor = q.Cursor(mid.last_seen, mid.id)
    flag_cursor = q.Cursor(flagged_mid.last_seen, flagged_mid.id)
    page = 50
    return [
        ("home", "data clock", lambda c: data_clock(c)),
        ("home", "heartbeat", lambda c: q.heartbeat(c, receiver)),
        ("home", "aircraft now", lambda c: q.aircraft_now(c, clock)),
        ("home", "flights today", lambda c: q.flights_since(c, today)),
        ("home", "positions today", lambda c: q.positions_on(c, receiver, today.date())),
        ("home", "active model", lambda c: q.active_model(c)),
        ("home", "flag rate of the active model",
         lambda c: q.flag_rates(c, [active["id"]])),
        ("home", "flags today", lambda c: q.flags(c, today, None, 60)),
        ("home", "flags this week", lambda c: q.flags(c, week, today, 60)),
        ("home", "known today", lambda c: q.known_count(c, today, None)),
        ("home", "known this week", lambda c: q.known_count(c, week, today)),
        ("home", "flags per day, 30 days",
         lambda c: q.flags_per_day(c, today - dt.timedelta(days=29))),
        ("home", "score histogram, 7 days",
         lambda c: q.score_histogram(c, active["id"], float(active["threshold"]),
                                     clock - dt.timedelta(days=7))),
        ("home", "precision of judged flags", lambda c: q.precision(c)),
        ("flights", "newest page", lambda c: q.flights_page(c, F(), limit=page)),
        ("flights", "a page half a year back",
         lambda c: q.flights_page(c, F(), older_than=mid_cursor, limit=page)),
        ("flights", "newer page half a year back",
         lambda c: q.flights_page(c, F(), newer_than=mid_cursor, limit=page)),
        ("flights", "flagged only, newest",
         lambda c: q.flights_page(c, F(flagged=True), limit=page)),
        ("flights", "flagged only, half a year back",
         lambda c: q.flights_page(c, F(flagged=True), older_than=flag_cursor, limit=page)),
        ("flights", "one day", lambda c: q.flights_page(
            c, F(since=day, until=day + dt.timedelta(days=1)), limit=page)),
        ("flights", "one day, flagged only", lambda c: q.flights_page(
            c, F(since=day, until=day + dt.timedelta(days=1), flagged=True), limit=page)),
        ("flights", "callsign", lambda c: q.flights_page(c, F(callsign=mid.callsign),
                                                         limit=page)),
        ("flights", "callsign, flagged only",
         lambda c: q.flights_page(c, F(callsign=mid.callsign, flagged=True), limit=page)),
        ("flights", "icao24 (or callsign: 6 hex digits)",
         lambda c: q.flights_page(c, F(icao24=mid.icao24, callsign=mid.icao24.upper()),
                                  limit=page)),
        ("flights", "unknown callsign", lambda c: q.flights_page(c, F(callsign="NOBODY"),
                                                                 limit=page)),
        ("flight", "the flight", lambda c: q.flight(c, recent.id)),
        ("flight", "its positions", lambda c: q.flight_positions(c, recent.id)),
        ("flight", "its images", lambda c: q.flight_images(c, recent.id)),
        ("flight", "scores by model", lambda c: q.score_history(c, recent.id)),
        ("flight", "verdicts", lambda c: q.verdicts(c, recent.id)),
        ("flight", "same aircraft", lambda c: q.same_aircraft(
            c, recent.icao24, recent.first_seen, recent.last_seen)),
        ("models", "newest 20", lambda c: q.models_page(c, None, 20)),
        ("models", "20 from half a year back", lambda c: q.models_page(c, DAYS // 2, 20)),
        ("models", "flag rates of 20 models", lambda c: q.flag_rates(c, model_ids)),
        ("verdict", "store a verdict", lambda c: q.add_verdict(c, recent.id, "anomalous",
                                                               None, "bench")),
    ]


def pages(url: str, engine: sa.Engine, runs: int) -> list[tuple[str, float]]:
    """Whole pages through the application (TestClient): median milliseconds."""
    from starlette.testclient import TestClient

    from pipeline.web.app import create_app

    settings = config.load({}, {"database_url": url, "data_dir": "/tmp/adsb-bench-web"})
    with engine.connect() as c:
        fid = c.execute(sa.text("SELECT id FROM flights WHERE flagged ORDER BY last_seen DESC "
                                "LIMIT 1")).scalar()
    client = TestClient(create_app(settings, engine), base_url="http://127.0.0.1:8760")
    out = []
    for path in ("/", "/flights", "/flights?flagged=1", f"/flights/{fid}", "/models",
                 f"/flights/{fid}/panel/shape/error.png", f"/flights/{fid}/thumb.png"):
        ms = []
        for _ in range(runs + 1):
            t = time.perf_counter()
            r = client.get(path)
            ms.append((time.perf_counter() - t) * 1000)
            assert r.status_code == 200, (path, r.status_code)
        out.append((path, statistics.median(ms[1:])))
    return out


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--flights", type=int, default=1_000_000)
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--keep", action="store_true", help="keep the scratch database")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    url = _data.new_database()
    engine = sa.create_engine(url)
    try:
        end = dt.datetime.now(dt.timezone.utc).replace(second=0, microsecond=0)
        print(f"loading {args.flights:,} flights over {DAYS} days into "
              f"{sa.engine.make_url(url).database}", flush=True)
        load(engine, args.flights, end)
        with engine.connect() as c:
            sizes = c.execute(sa.text(
                "SELECT pg_size_pretty(pg_total_relation_size('flights')), "
                "pg_size_pretty(pg_total_relation_size('flight_scores')), "
                "(SELECT count(*) FROM flights WHERE flagged), "
                "(SELECT count(*) FROM flight_labels)")).one()
        print(f"flights {sizes[0]}, flight_scores {sizes[1]}, {sizes[2]:,} flagged, "
              f"{sizes[3]:,} verdicts\n")
        print(f"{'page':<8} {'query':<40} {'cold ms':>8} {'median':>8} {'worst':>8}")
        over = []
        for page, name, fn in cases(engine, "default"):
            cold, median, worst = timed(engine, fn, args.runs)
            flag = "  OVER 200 ms" if median > LIMIT_MS else ""
            print(f"{page:<8} {name:<40} {cold:8.1f} {median:8.1f} {worst:8.1f}{flag}",
                  flush=True)
            if median > LIMIT_MS:
                over.append(f"{page}: {name} ({median:.0f} ms)")
        print(f"\n{'whole page (TestClient)':<49} {'median ms':>10}")
        for path, ms in pages(url, engine, 3):
            print(f"{path:<49} {ms:10.1f}")
        if over:
            print(f"\nFAIL: {len(over)} queries over {LIMIT_MS:.0f} ms: " + "; ".join(over),
                  file=sys.stderr)
            return 1
        print(f"\nall page queries under {LIMIT_MS:.0f} ms (median of {args.runs} runs)")
        return 0
    finally:
        engine.dispose()
        if not args.keep:
            _data.drop_database(url)
        else:
            print(f"kept {url}")


if __name__ == "__main__":
    sys.exit(main())
