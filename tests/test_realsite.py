"""The real site to judge by: the Swiss day of the traffic package's samples with real patterns
moved into it, and its way into the database through the ingest (SBS) and the flights pass."""

from __future__ import annotations

import numpy as np
import pytest
import sqlalchemy as sa

from pipeline import config
from pipeline.evaluation import realsite, routes, samples
from pipeline.geo import haversine_km, to_local_km


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    try:
        return samples.fetch()
    except samples.SamplesUnavailable as e:
        pytest.skip(f"the traffic package's sample data could not be fetched: {e}")


@pytest.fixture(scope="module")
def site(folder):
    return realsite.swiss(folder, fraction=0.05, seed=0)


def test_ordinary_flights_are_the_real_swiss_day(folder, site):
    ordinary = [t for t in site.tracks if t.label == 0]
    assert len(ordinary) == 1244                      # 842 aircraft cut at 10-minute silences
    assert len({t.icao24 for t in ordinary}) == 842
    t = np.concatenate([tr.t for tr in ordinary])
    assert realsite.SWISS_DAY.timestamp() + 5 * 3600 <= t.min()
    assert t.max() < realsite.SWISS_DAY.timestamp() + 22 * 3600
    assert all(tr.kind == "real" for tr in ordinary)


def test_patterns_are_real_flights_placed_as_documented(site):
    patterns = [t for t in site.tracks if t.label == 1]
    assert len(patterns) == round(0.05 / 0.95 * 1244)
    assert len({t.icao24 for t in patterns}) == len(patterns)
    assert all(int(t.icao24, 16) >= realsite.PATTERN_ICAO_PREFIX for t in patterns)
    assert {t.kind for t in patterns} >= {"calibration", "survey", "glider", "tv_relay",
                                         "sky_drawing", "firefighting"}
    split = realsite.SWISS_SPLIT.timestamp()
    box = realsite.SWISS_BOX
    for t in patterns:
        assert (t.t[-1] < split) or (t.t[0] >= split), "a pattern spans the split"
        assert np.all(np.diff(t.t) >= realsite.SWISS_CADENCE_S - 1e-6)
        assert box.lat_min <= t.lat.min() and t.lat.max() <= box.lat_max
        assert box.lon_min <= t.lon.min() and t.lon.max() <= box.lon_max
        assert (t.t[-1] - t.t[0]) <= realsite.PATTERN_MAX_HOURS * 3600
        assert realsite.turning_deg(t, realsite.SWISS_CENTRE) >= realsite.PATTERN_MIN_TURNING_DEG
    both = sum(t.t[0] < split for t in patterns), sum(t.t[0] >= split for t in patterns)
    assert min(both) >= 20, both                      # both halves hold patterns
    again = realsite.swiss(samples.fetch(), fraction=0.05, seed=0)
    assert [t.icao24 for t in again.tracks] == [t.icao24 for t in site.tracks]
    assert all(np.array_equal(a.lat, b.lat) for a, b in zip(again.tracks, site.tracks))


def test_relocation_keeps_the_shape(folder):
    pool = realsite.pattern_pool(folder)
    src = next(t for t in pool if t.kind == "survey")
    moved = realsite.relocate(src, (46.5, 8.0), 1e9, realsite.Box(40, 50, 0, 15), max_hours=24)
    assert moved is not None and len(moved.t) == len(src.t)
    idx = np.linspace(0, len(src.t) - 1, 40).astype(int)
    d_src = haversine_km(src.lat[idx][:, None], src.lon[idx][:, None], src.lat[idx], src.lon[idx])
    d_new = haversine_km(moved.lat[idx][:, None], moved.lon[idx][:, None], moved.lat[idx],
                         moved.lon[idx])
    assert np.allclose(d_new, d_src, rtol=0.01, atol=0.05)
    assert abs(float(np.median(moved.lat)) - 46.5) < 0.01
    assert moved.t[0] == 1e9 and np.array_equal(np.diff(moved.t), np.diff(src.t))
    x, _ = to_local_km(moved.lat, moved.lon, 46.5, 8.0)
    assert np.ptp(x) > 1.0                            # not collapsed


def test_loaded_through_the_ingest_and_the_flights_pass(folder, site, db_url, tmp_path):
    """A morning hour of the site (real flights and the patterns of that hour) replayed as SBS:
    one finished flight with an image per track, in the site's frame."""
    lo = realsite.SWISS_DAY.timestamp() + 6 * 3600
    part = [t for t in site.tracks if lo <= t.t[0] and t.t[-1] < lo + 3600]
    some = realsite.Site(part, site.centre, site.range_km, site.box, site.notes)
    settings = config.load({}, {"database_url": db_url, "data_dir": str(tmp_path / "data")})
    counts = realsite.load(settings, some)
    assert counts["flights"] == len(part)
    engine = sa.create_engine(db_url)
    try:
        with engine.connect() as conn:
            frame = conn.execute(sa.text("SELECT latitude, longitude, range_km FROM sites")).one()
            rows = conn.execute(sa.text(
                "SELECT icao24, n_positions, image IS NOT NULL FROM flights "
                "WHERE state = 'finished'")).all()
    finally:
        engine.dispose()
    assert tuple(frame) == (*realsite.SWISS_CENTRE, realsite.SWISS_RANGE_KM)
    by_icao = {t.icao24: len(t.t) for t in part}
    assert sorted(r[0] for r in rows) == sorted(by_icao)
    assert all(r[2] for r in rows)
    # Every position of a track is stored but the odd one the ingest's checks reject.
    assert sum(r[1] for r in rows) >= 0.99 * sum(by_icao.values())
    labels = tmp_path / "labels.csv"
    realsite.write_labels(labels, some)
    text = labels.read_text().splitlines()
    assert text[0] == "icao24,label,kind" and len(text) == len(part) + 1


def test_the_week_flies_each_real_flight_once_on_one_day_at_its_own_time(folder):
    week = realsite.swiss_week(folder, fraction=0.05, routes_fraction=0.1, seed=0)
    day_s = 86400.0
    start = realsite.SWISS_DAY.timestamp()
    real = {(t.icao24, round(float(t.t[0]) % day_s)): t for t in realsite.swiss_day(folder)}
    ordinary = [t for t in week.tracks if t.label == 0]
    assert len(ordinary) == len(real) == 1244
    days = [int((t.t[0] - start) // day_s) for t in ordinary]
    assert set(days) == set(range(realsite.WEEK_DAYS))
    assert min(days.count(d) for d in range(realsite.WEEK_DAYS)) > 1244 / 7 * 0.7
    for tr in ordinary:       # the same positions at the same time of day, some days later
        src = real[(tr.icao24, round(float(tr.t[0]) % day_s))]
        assert np.array_equal(tr.lat, src.lat) and np.allclose((tr.t - src.t) % day_s, 0)

    patterns = [t for t in week.tracks if t.label == 1 and t.kind not in ("rotated_transit",
                                                                       "approach_nowhere")]
    assert {int((p.t[0] - start) // day_s) for p in patterns} == set(range(realsite.WEEK_DAYS))
    rotated = [t for t in week.tracks if t.kind == "rotated_transit"]
    judged = realsite.judged_day_start().timestamp()
    assert len(rotated) >= 10 and all(judged <= r.t[0] and r.label == 1 for r in rotated)
    # Each is a real flight of the judged day, turned about the centre: its distance from the
    # centre is kept, its place is not.
    sources = [t for t in ordinary if t.t[0] >= judged]

    def turned(src, r) -> bool:
        if not set(r.t.tolist()) <= set(src.t.tolist()):
            return False
        idx = np.searchsorted(src.t, r.t)
        return bool(np.allclose(haversine_km(src.lat[idx], src.lon[idx], *realsite.SWISS_CENTRE),
                                haversine_km(r.lat, r.lon, *realsite.SWISS_CENTRE), atol=0.5)
                    and np.max(haversine_km(src.lat[idx], src.lon[idx], r.lat, r.lon)) > 50)

    assert all(any(turned(src, r) for src in sources) for r in rotated)
    # ... and a route anomaly: at least half of it where no real flight flew the same way.
    flown = routes.FlownMap(list(real.values()), realsite.SWISS_BOX, *realsite.SWISS_CENTRE)
    assert min(flown.off_route_share(r.lat, r.lon) for r in rotated) >= \
        realsite.ROUTES_MIN_OFF_ROUTE
    assert len({t.icao24 for t in week.tracks if t.label}) == sum(t.label for t in week.tracks)


def test_the_pool_splits_into_two_halves_that_share_no_flight(folder):
    pool = realsite.pattern_pool(folder)
    judged, window = realsite.split_pool(pool, np.random.default_rng(3))
    ids = [id(t) for t in judged + window]
    assert len(ids) == len(set(ids)) == len(pool)            # every flight, in one half only
    assert abs(len(judged) - len(window)) <= 1
    again, _ = realsite.split_pool(pool, np.random.default_rng(3))
    assert [id(t) for t in again] == [id(t) for t in judged]  # the seed decides
