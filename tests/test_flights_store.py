"""Flights from positions in a real PostgreSQL: gap rule, open/finished, late positions,
landings, idempotence and two workers at once."""

from __future__ import annotations

import datetime as dt
import threading

import numpy as np
import pytest
import sqlalchemy as sa

from helpers_positions import UTC, copy_positions, track
from pipeline.flights import features, raster, store

T0 = dt.datetime(2021, 10, 7, 12, 0, tzinfo=UTC)
S = dt.timedelta(seconds=1)


@pytest.fixture
def no_margin(monkeypatch):
    """Rows written by the test commit at once: no need to wait out the commit margin."""
    monkeypatch.setattr(store, "COMMIT_MARGIN", dt.timedelta(0))


def flights(engine, icao24=None):
    q = "SELECT * FROM flights" + (" WHERE icao24 = :i" if icao24 else "") + " ORDER BY first_seen"
    with engine.connect() as conn:
        return [r._asdict() for r in conn.execute(sa.text(q), {"i": icao24})]


def clock_at(engine, when):
    """A far-away aircraft whose last position sets the replay's data clock."""
    copy_positions(engine, track("ffffff", when, 1, lat=49.5, lon=3.0))


def test_gap_splits_a_flight_shorter_silence_does_not(engine, settings, no_margin):
    a = track("aaaaaa", T0, 20) + track("aaaaaa", T0 + 95 * S + 601 * S, 20)
    b = track("bbbbbb", T0, 20) + track("bbbbbb", T0 + 95 * S + 500 * S, 20)
    copy_positions(engine, a + b)
    clock_at(engine, T0 + dt.timedelta(hours=2))
    res = store.process_flights(engine, settings)
    fa, fb = flights(engine, "aaaaaa"), flights(engine, "bbbbbb")
    assert [(f["first_seen"], f["last_seen"], f["n_positions"]) for f in fa] == [
        (T0, T0 + 95 * S, 20), (T0 + 696 * S, T0 + 791 * S, 20)]
    assert [(f["first_seen"], f["n_positions"]) for f in fb] == [(T0, 40)]
    assert all(f["state"] == "finished" and not f["late"] for f in fa + fb)
    assert res.created == 4 and res.closed == 3      # ffffff stays open: clock is its own time


def test_open_flight_grows_over_passes_then_closes_with_all_positions(engine, settings, no_margin):
    pos = track("abc123", T0, 60, step_s=10)
    for i in range(0, 60, 20):
        copy_positions(engine, pos[i:i + 20])
        store.process_flights(engine, settings)
        [f] = flights(engine)
        assert f["state"] == "open" and f["n_positions"] == i + 20 and f["image"] is None
        assert f["last_seen"] == pos[i + 19].time
    clock_at(engine, T0 + dt.timedelta(hours=1))
    store.process_flights(engine, settings)
    f = flights(engine, "abc123")[0]
    assert f["state"] == "finished" and f["n_positions"] == 60 and f["closed_at"] is not None
    assert f["image"] is not None and f["where_lit"] > 0 and f["shape_lit"] > 0


def test_late_positions_make_a_late_flight_and_never_reopen(engine, settings, no_margin):
    copy_positions(engine, track("aaaaaa", T0, 30, step_s=10))
    clock_at(engine, T0 + dt.timedelta(hours=1))
    store.process_flights(engine, settings)
    [before] = flights(engine, "aaaaaa")
    assert before["state"] == "finished"
    # Positions inside and just after the finished flight's time, arriving after it closed.
    late = track("aaaaaa", T0 + 15 * S, 10, step_s=30, lat=48.5, callsign="LATE1")
    copy_positions(engine, late)
    res = store.process_flights(engine, settings)
    old, new = flights(engine, "aaaaaa")
    assert old == before
    assert new["late"] and new["state"] == "finished" and new["n_positions"] == 10
    assert (new["first_seen"], new["last_seen"]) == (late[0].time, late[-1].time)
    assert new["callsign"] == "LATE1" and res.late == 1
    # The late flight's image holds only the late positions (they lie south of the others).
    assert new["shape_side_km"] < 40


def test_landing_then_take_off_splits_within_one_pass_and_across_passes(engine, settings, no_margin):
    first = track("aaaaaa", T0, 10)
    ground = track("aaaaaa", T0 + 60 * S, 5, on_ground=True)
    second = track("aaaaaa", T0 + 120 * S, 10)
    copy_positions(engine, first + ground + second)
    copy_positions(engine, track("bbbbbb", T0, 10) + track("bbbbbb", T0 + 60 * S, 3, on_ground=True))
    store.process_flights(engine, settings)
    copy_positions(engine, track("bbbbbb", T0 + 120 * S, 10))    # take-off seen a pass later
    clock_at(engine, T0 + dt.timedelta(hours=1))
    store.process_flights(engine, settings)
    for icao in ("aaaaaa", "bbbbbb"):
        got = [(f["first_seen"], f["n_positions"]) for f in flights(engine, icao)]
        assert got == [(T0, 10), (T0 + 120 * S, 10)], icao


def test_recent_rows_hold_back_closing(engine, settings):
    copy_positions(engine, track("aaaaaa", T0, 10))
    with engine.begin() as conn:    # these rows arrived long ago ...
        conn.execute(sa.text("UPDATE positions SET inserted_at = now() - interval '10 min'"))
    # ... these just now (maybe not all committed yet): the first pass must not use them,
    # nor close the flight they continue even though the data clock is far ahead.
    copy_positions(engine, track("aaaaaa", T0 + 400 * S, 10) + track("ffffff", T0 + 3600 * S, 1))
    store.process_flights(engine, settings)
    [f] = flights(engine, "aaaaaa")
    assert f["state"] == "open" and f["n_positions"] == 10
    store.process_flights(engine, settings, final=True)
    [f] = flights(engine, "aaaaaa")
    assert f["state"] == "finished" and f["n_positions"] == 20


def test_image_features_and_summary_of_a_finished_flight(engine, settings, no_margin):
    pos = track("aaaaaa", T0, 100, dlat=0.01, dlon=0.0, callsign="AFR1")
    pos[3] = pos[3]._replace(callsign="XXX", altitude=1000)
    pos[50] = pos[50]._replace(altitude=None)
    copy_positions(engine, pos)
    store.process_flights(engine, settings, final=True)
    [f] = flights(engine)
    assert f["callsign"] == "AFR1" and (f["min_altitude"], f["max_altitude"]) == (1000, 30000)
    assert f["path_km"] == pytest.approx(99 * 1.112, rel=0.01)    # 0.01 deg of latitude
    assert f["straight_km"] == pytest.approx(f["path_km"], rel=1e-3)
    assert f["tortuosity"] == pytest.approx(1.0, abs=1e-3) and f["turning_deg"] < 1
    img = raster.decode_png(f["image"])
    assert (f["where_lit"], f["shape_lit"]) == pytest.approx(raster.lit_fractions(img))
    # A north-going line: one lit column per channel, spanning its length in the shape frame.
    assert img[:, :, 1].sum(axis=0).max() >= 55 and np.count_nonzero(img[:, :, 1].sum(axis=0)) == 1
    assert f["shape_side_km"] == pytest.approx(99 * 1.112 * (1 + raster.SHAPE_MARGIN), rel=0.01)


def test_other_receivers_rows_are_not_this_workers(engine, settings, no_margin):
    copy_positions(engine, [p._replace(receiver_id="other") for p in track("aaaaaa", T0, 10)])
    store.process_flights(engine, settings, final=True)
    assert flights(engine) == []


def snapshot(engine):
    return [{k: v for k, v in f.items() if k != "closed_at"} for f in flights(engine)]


def many_aircraft(n=60):
    rows = []
    for i in range(n):
        start = T0 + i * 37 * S
        rows += track(f"a{i:05x}", start, 40, step_s=4, dlat=0.003 * np.sin(i), dlon=0.004)
        rows += track(f"a{i:05x}", start + 2000 * S, 30, step_s=4, dlat=-0.003, dlon=0.001 * i)
    return rows


def test_process_twice_changes_nothing(engine, settings):
    copy_positions(engine, many_aircraft())
    store.process_flights(engine, settings, final=True)
    first = snapshot(engine)
    assert len(first) == 120 and all(f["state"] == "finished" for f in first)
    res = store.process_flights(engine, settings, final=True)
    assert res.created == res.closed == res.new_positions == 0
    assert snapshot(engine) == first


def test_two_workers_at_once_no_duplicate_no_loss(engine, settings, no_margin):
    copy_positions(engine, many_aircraft())
    results, errors = [], []
    go = threading.Barrier(2)

    def worker(wait):
        try:
            go.wait()
            results.append(store.process_flights(engine, settings, final=True, wait=wait))
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(w,)) for w in (True, True)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert not errors
    got = flights(engine)
    assert len(got) == 120 and len({(f["icao24"], f["first_seen"]) for f in got}) == 120
    assert sum(f["n_positions"] for f in got) == 60 * 70
    assert sorted(r.created for r in results) == [0, 120]
    # A worker that does not wait skips the pass while another one holds the lock.
    with engine.begin() as conn:
        assert store.take_lock(conn, store.lock_key(settings.receiver_id), wait=False)
        assert store.process_flights(engine, settings, wait=False).skipped


def test_flights_closed_in_batches_store_what_their_positions_give(engine, settings, no_margin,
                                                                   monkeypatch):
    monkeypatch.setattr(store, "CLOSE_BATCH_POSITIONS", 150)       # a few flights per query
    rows = many_aircraft(12)
    rows = [p._replace(callsign=None, altitude=None) if p.icao24 == "a00003" else p for p in rows]
    copy_positions(engine, rows)
    first = store.process_flights(engine, settings)                 # the first flights close
    assert first.closed == 12
    with engine.begin() as conn:                                    # as retention would
        conn.execute(sa.text("DELETE FROM positions WHERE icao24 = 'a00005' AND time > :t"),
                     {"t": T0 + 1000 * S})
    last = store.process_flights(engine, settings, final=True)
    assert (last.closed, last.empty) == (12, 1)
    with engine.connect() as conn:
        pos = conn.execute(sa.text(
            "SELECT f.id, p.latitude, p.longitude FROM flights f JOIN positions p "
            "ON p.icao24 = f.icao24 AND p.time BETWEEN f.first_seen AND f.last_seen "
            "ORDER BY f.id, p.time")).all()
    by_flight: dict[int, list] = {}
    for fid, lat, lon in pos:
        by_flight.setdefault(fid, []).append((lat, lon))
    got = flights(engine)
    assert len(got) == 24 and all(f["state"] == "finished" for f in got)
    for f in got:
        if f["icao24"] == "a00005" and f["first_seen"] > T0 + 1000 * S:
            assert f["n_positions"] == 0 and f["image"] is None
            continue
        lat, lon = np.array(by_flight[f["id"]]).T
        img, side = raster.rasterize(lat, lon, settings.receiver_lat, settings.receiver_lon,
                                     settings.range_km)
        feat = features.compute(lat, lon, settings.receiver_lat, settings.receiver_lon)
        assert bytes(f["image"]) == raster.encode_png(img) and f["n_positions"] == lat.size
        assert f["shape_side_km"] == pytest.approx(side, rel=1e-6)
        assert (f["where_lit"], f["shape_lit"]) == pytest.approx(raster.lit_fractions(img))
        for name in features.NAMES:
            assert f[name] == pytest.approx(getattr(feat, name), rel=1e-6, abs=1e-6)
        unknown = f["icao24"] == "a00003"
        assert f["callsign"] == (None if unknown else "TEST1")
        assert f["min_altitude"] == f["max_altitude"] == (None if unknown else 30000)


def test_older_format_images_are_redrawn_from_positions_by_the_next_pass(engine, settings,
                                                                         no_margin):
    """After the upgrade to direction channels, stored two-channel images are redrawn from their
    positions, a batch per pass; a flight whose positions are gone keeps its old image."""
    copy_positions(engine, track("aaaaaa", T0, 100, dlat=0.0, dlon=0.01))      # flies east
    copy_positions(engine, track("bbbbbb", T0, 100, dlat=0.01, dlon=0.0))      # flies north
    store.process_flights(engine, settings, final=True)
    before = {f["icao24"]: raster.decode_png(f["image"]) for f in flights(engine)}
    assert all(img.shape[-1] == raster.NCH for img in before.values())
    old = {a: raster.encode_png(img[:, :, :2]) for a, img in before.items()}
    with engine.begin() as conn:
        for a, png in old.items():
            conn.execute(sa.text("UPDATE flights SET image = :p, image_format = 1 WHERE icao24 = :a"),
                         {"p": png, "a": a})
        conn.execute(sa.text("DELETE FROM positions WHERE icao24 = 'bbbbbb'"))
    res = store.process_flights(engine, settings, final=True)
    after = {f["icao24"]: f for f in flights(engine)}
    assert res.redrawn == 1
    assert after["aaaaaa"]["image_format"] == raster.FORMAT
    assert np.array_equal(raster.decode_png(after["aaaaaa"]["image"]), before["aaaaaa"])
    east = raster.decode_png(after["aaaaaa"]["image"])[:, :, raster.DIRECTION].sum(axis=(0, 1))
    assert east[2] > 0 and east.sum() == east[2]                   # sector 2 = east only
    assert after["bbbbbb"]["image_format"] == 1 and after["bbbbbb"]["n_positions"] == 0
    assert bytes(after["bbbbbb"]["image"]) == old["bbbbbb"]
    assert store.process_flights(engine, settings, final=True).redrawn == 0
