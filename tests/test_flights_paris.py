"""Acceptance on real traffic: the Paris Beast capture replayed, then ``process --final``.

Only :func:`load_positions` knows how positions get into the database; everything after it
is what a user runs.
"""

from __future__ import annotations

import tempfile
from collections import defaultdict

import numpy as np
import pytest
import sqlalchemy as sa

from conftest import PARIS_BEAST, PARIS_CSV, PARIS_LAT, PARIS_LON, PARIS_RANGE_KM, PARIS_START, need
from helpers_positions import read_paris_airborne
from pipeline import cli, config
from pipeline.flights import raster, segment
from pipeline.geo import to_local_km
from pipeline.receiver.ingest import ingest_file

pytestmark = pytest.mark.slow
GAP_S = 600.0
# Position times may differ from the CSV only where a position could not be decoded.
TIME_TOLERANCE_S = 5.0
SETTINGS = ["--receiver-lat", str(PARIS_LAT), "--receiver-lon", str(PARIS_LON),
            "--range-km", str(PARIS_RANGE_KM)]


def load_positions(engine: sa.Engine, url: str) -> None:
    """The real ingest path: the Paris Beast capture replayed with its start time."""
    with tempfile.TemporaryDirectory() as tmp:
        settings = config.load({}, {"database_url": url, "data_dir": tmp,
                                    "receiver_lat": PARIS_LAT, "receiver_lon": PARIS_LON,
                                    "range_km": PARIS_RANGE_KM})
        stats = ingest_file(settings, need(PARIS_BEAST), start_time=PARIS_START, progress=False)
    assert stats.rows_written > 220_000


def expected_flights() -> list[tuple[str, float, float, int]]:
    """(icao24, first, last, n) per flight, computed from the CSV alone with the gap rule."""
    times = defaultdict(list)
    for p in read_paris_airborne(need(PARIS_CSV)):
        times[p.icao24].append(p.time.timestamp())
    out = []
    for icao, ts in times.items():
        ts = np.sort(np.array(ts))
        cuts = np.flatnonzero(np.diff(ts) > GAP_S)
        for a, b in zip(np.r_[0, cuts + 1], np.r_[cuts, ts.size - 1]):
            out.append((icao, ts[a], ts[b], int(b - a + 1)))
    return out


@pytest.fixture(scope="module")
def paris(databases):
    need(PARIS_CSV)
    url = databases.create()
    engine = sa.create_engine(url)
    load_positions(engine, url)
    assert cli.main(["process", "--final", "--no-score", "--database-url", url] + SETTINGS) == 0
    yield engine, url
    engine.dispose()


def stored_flights(engine):
    with engine.connect() as conn:
        return [r._asdict() for r in conn.execute(sa.text("SELECT * FROM flights ORDER BY id"))]


def test_flights_match_the_gap_rule_on_the_csv(paris):
    engine, _ = paris
    got = stored_flights(engine)
    want = expected_flights()
    assert all(f["state"] == "finished" for f in got)
    # Every flight long enough to draw has its image; the rest (ghosts: a few positions) none.
    drawable = segment.drawn([f["n_positions"] for f in got],
                                [round(f["first_seen"].timestamp() * 1e6) for f in got],
                                [round(f["last_seen"].timestamp() * 1e6) for f in got])
    assert [f["image"] is not None for f in got] == drawable.tolist()
    assert drawable.sum() >= 0.99 * len(got)
    assert abs(len(got) - len(want)) <= 0.01 * len(want), (len(got), len(want))
    by_icao = defaultdict(list)
    for f in got:
        by_icao[f["icao24"]].append((f["first_seen"].timestamp(), f["last_seen"].timestamp()))
    off = []
    for icao, first, last, _ in want:
        match = [(a, b) for a, b in by_icao[icao] if a <= last and first <= b]
        if len(match) != 1 or abs(match[0][0] - first) > TIME_TOLERANCE_S \
                or abs(match[0][1] - last) > TIME_TOLERANCE_S:
            off.append((icao, first, last, match))
    print(f"\nParis: {len(got)} flights stored, {len(want)} expected, {len(off)} with other times")
    # A flight may start later or end earlier than in the CSV only where the CSV's positions
    # could not be decoded (real glitches: e.g. altitude jumping to 35,000 ft on the runway,
    # which pyModeS rejects): no stored position may lie in the part the flight lacks.
    unexplained = []
    with engine.connect() as conn:
        for icao, first, last, match in off:
            match = sorted(match)
            # Split in two where undecodable positions left a silence longer than the gap.
            if not match or any(nxt[0] - prev[1] <= GAP_S for prev, nxt in zip(match, match[1:])):
                unexplained.append((icao, first, last, match))
                continue
            a, b = match[0][0], match[-1][1]
            n = conn.execute(sa.text(
                "SELECT count(*) FROM positions WHERE icao24 = :i AND NOT on_ground AND "
                "((time >= to_timestamp(:f) AND time < to_timestamp(:a)) OR "
                " (time > to_timestamp(:b) AND time <= to_timestamp(:l)))"),
                {"i": icao, "f": float(first), "a": float(a), "b": float(b), "l": float(last)}).scalar()
            if n:
                unexplained.append((icao, first, last, match, n))
    assert not unexplained, unexplained[:5]
    assert len(off) <= 0.1 * len(want), off[:5]


def test_every_position_falls_on_a_lit_pixel_in_both_channels(paris):
    engine, _ = paris
    with engine.connect() as conn:
        rows = conn.execute(sa.text(
            "SELECT f.id, p.latitude, p.longitude FROM flights f JOIN positions p "
            "ON p.icao24 = f.icao24 AND p.time BETWEEN f.first_seen AND f.last_seen "
            "WHERE NOT p.on_ground ORDER BY f.id, p.time")).all()
    pts = defaultdict(list)
    for fid, lat, lon in rows:
        pts[fid].append((lat, lon))
    flights = {f["id"]: f for f in stored_flights(engine)}
    worst = {0: 1.0, 1: 1.0}
    lit = {0: [], 1: []}
    for fid, f in flights.items():
        if f["image"] is None:          # too short to draw (checked above)
            continue
        lat, lon = np.array(pts[fid]).T
        x, y = to_local_km(lat, lon, PARIS_LAT, PARIS_LON)
        img = raster.decode_png(f["image"])
        side = f["shape_side_km"]
        frames = {0: (-PARIS_RANGE_KM, PARIS_RANGE_KM, 2 * PARIS_RANGE_KM),
                  1: ((x.min() + x.max()) / 2 - side / 2, (y.min() + y.max()) / 2 + side / 2, side)}
        for ch, (west, north, width) in frames.items():
            col = np.floor((x - west) / width * 64).astype(int)
            row = np.floor((north - y) / width * 64).astype(int)
            inside = (col >= 0) & (col < 64) & (row >= 0) & (row < 64)
            if ch == 1:
                assert inside.all(), fid    # the flight's own frame holds all of it
            if inside.any():
                on = img[row[inside], col[inside], ch].mean()
                worst[ch] = min(worst[ch], on)
            lit[ch].append(img[:, :, ch].mean())
            assert f[("where_lit", "shape_lit")[ch]] == pytest.approx(img[:, :, ch].mean())
    print(f"\nParis: positions on lit pixels, worst flight: where {worst[0]:.3f}, "
          f"shape {worst[1]:.3f}; mean lit fraction: where {np.mean(lit[0]):.4f}, "
          f"shape {np.mean(lit[1]):.4f}")
    assert worst[0] >= 0.95 and worst[1] >= 0.95


def test_processing_again_changes_nothing(paris):
    engine, url = paris
    before = stored_flights(engine)
    assert cli.main(["process", "--final", "--no-score", "--database-url", url] + SETTINGS) == 0
    assert cli.main(["process", "--no-score", "--database-url", url] + SETTINGS) == 0
    assert stored_flights(engine) == before
