"""The simulator: flights in the receiver frame, and Beast frames that pyModeS decodes back."""

from __future__ import annotations

import datetime as dt
import math

import numpy as np
import pyModeS as pms
import pytest
import sqlalchemy as sa
from pyModeS.util import crc

from pipeline.evaluation import simulate
from pipeline.geo import to_local_km
from pipeline.receiver.beast import BeastParser


def test_flights_are_labelled_unique_and_inside_the_range():
    flights = simulate.generate(30, 10, seed=2)
    assert len({f.icao24 for f in flights}) == 40
    assert sum(f.label for f in flights) == 10
    assert {f.kind for f in flights if f.label} == set(simulate.ANOMALY_KINDS)
    for f in flights:
        x, y = to_local_km(f.lat, f.lon, 48.88, 2.42)
        assert np.hypot(x, y).max() <= 121.0
        assert np.allclose(np.diff(f.t), 1.0) and f.t[0] >= 0 and f.t[-1] < simulate.PARIS_WINDOW_S


def test_position_frames_decode_to_the_simulated_positions():
    flights = simulate.generate(3, 3, seed=4)
    decoder = pms.PipeDecoder()
    errors_m, decoded, sent = [], 0, 0
    for f in flights:
        for k in range(200):
            msg = simulate.position_message(f.icao24, f.lat[k], f.lon[k], f.alt[k], odd=bool(k % 2))
            assert crc(msg.hex()) == 0
            r = decoder.decode(msg.hex(), timestamp=float(f.t[k]))
            sent += 1
            assert r["altitude"] == int(f.alt[k]) and r["cpr_format"] == k % 2
            if r.get("latitude") is not None:
                decoded += 1
                dy = (r["latitude"] - f.lat[k]) * 111_195
                dx = (r["longitude"] - f.lon[k]) * 111_195 * np.cos(np.radians(f.lat[k]))
                errors_m.append(np.hypot(dx, dy))
    assert decoded > 0.95 * sent
    assert max(errors_m) < 10.0          # CPR 17-bit resolution is ~5 m


def test_identification_and_velocity_frames_decode():
    f = simulate.generate(1, 0, seed=1)[0]
    ident = pms.decode(simulate.identification_message(f.icao24, f.callsign).hex())
    assert ident["crc_valid"] and ident["callsign"] == f.callsign
    vel = pms.decode(simulate.velocity_message(f.icao24, 250.0, 300.0, -1280).hex())
    assert vel["crc_valid"] and abs(vel["groundspeed"] - 250) <= 1
    assert abs((vel["track"] - 300 + 180) % 360 - 180) < 0.5 and vel["vertical_rate"] == -1280


def test_stream_is_time_ordered_beast_with_counter_relative_to_start(tmp_path):
    flights = simulate.generate(2, 1, seed=3, duration_s=1200)
    frames = list(simulate.stream(flights, start_unix=1000.0))
    times = [t for t, _ in frames]
    assert times == sorted(times) and times[0] >= 1000.0
    t, frame = frames[0]
    assert frame[0] == 0x1A and frame[1] == 0x33
    raw = frame[2:].replace(b"\x1a\x1a", b"\x1a")
    assert int.from_bytes(raw[:6], "big") == round((t - 1000.0) * 12e6)
    n = simulate.write_beast(tmp_path / "s.beast", flights)
    assert n == len(frames) and (tmp_path / "s.beast").stat().st_size > 0


def test_paris_anomaly_stream_and_labels(tmp_path):
    flights = simulate.write_paris_anomalies(tmp_path / "a.beast", tmp_path / "a.csv", 4, seed=1)
    lines = (tmp_path / "a.csv").read_text().splitlines()
    assert lines[0] == "icao24,label,kind" and len(lines) == 5
    assert all(f.label == 1 and f.kind in simulate.PATTERN_KINDS for f in flights)


# ---- several days of one site (generate_days) ------------------------------------------------
DAY_S = 86400.0
REF = (48.88, 2.42)
CORRIDORS = simulate.Corridors.for_range(121.0)


@pytest.fixture(scope="module")
def week():
    return simulate.generate_days(7, 150, seed=0)


def _xy(f) -> np.ndarray:
    x, y = to_local_km(f.lat, f.lon, *REF)
    return np.stack([x, y], axis=1)


def _corridor_km(f) -> tuple[int, float]:
    """(nearest transit corridor, mean distance in km of the track to its line). A corridor is
    flown both ways, each way at +-offset from the centre (see ``_chord``)."""
    p = _xy(f)
    dist = []
    for h, off in CORRIDORS.transits:
        across = p @ simulate._unit(h + 90)
        dist.append(min(np.abs(across - off).mean(), np.abs(across + off).mean()))
    return int(np.argmin(dist)), float(min(dist))


def _heading(a: np.ndarray, b: np.ndarray) -> float:
    return math.degrees(math.atan2(b[0] - a[0], b[1] - a[1])) % 360


def _angle(a: float, b: float) -> float:
    return abs((a - b + 180) % 360 - 180)


def _airport(p: np.ndarray) -> int:
    return int(np.argmin([np.hypot(*(p - a)) for a in CORRIDORS.airports]))


def test_days_keep_the_same_corridors(week):
    by_day = {}
    for d in (0, 6):
        transits = [_corridor_km(f) for f in week if f.day == d and f.kind == "transit"]
        km = np.array([k for _, k in transits])
        assert len(transits) >= 20
        # Offset noise (sd 1.5 km), heading noise (1 deg) and the day's drift (<= 4 km) only.
        assert np.median(km) < 3.0 and km.max() < 8.0, (d, np.round(km, 1))
        by_day[d] = {i for i, _ in transits}
    assert len(by_day[0] & by_day[6]) >= 4


def test_wind_drifts_routes_downwind_and_changes_ground_speed():
    windy = simulate.DayConditions(day=3, wind_from_deg=270.0, wind_kt=55.0, drift_km=4.0)
    for seed in range(20):
        calm_f, windy_f = (simulate.make_flight("transit", "f00001", 0.0, CORRIDORS,
                                                np.random.default_rng(seed), *REF, cond)
                           for cond in (simulate.CALM, windy))
        assert windy_f.day == 3 and calm_f.day == 0
        p, q = _xy(calm_f), _xy(windy_f)
        heading = _heading(p[0], p[-1])
        shift = (q @ simulate._unit(heading + 90)).mean() - (p @ simulate._unit(heading + 90)).mean()
        # The whole line moves east (downwind of a westerly) by at most 4 km...
        assert abs(shift) <= 4.0 + 0.05
        assert shift * simulate._unit(heading + 90)[0] >= -0.05
        # ...and eastbound flights are faster, westbound slower, by up to 55/400.
        tail = math.sin(math.radians(heading))
        ratio = windy_f.gs[0] / calm_f.gs[0]
        assert ratio == pytest.approx(1 + 55.0 / 400.0 * tail, abs=0.01)


def test_runway_of_the_day_turns_final_approaches_and_departures(week):
    conditions = simulate.day_conditions(7, seed=0)
    flipped = [c.runway_flipped for c in conditions]
    assert len(set(flipped)) > 1                     # at least one change during the week
    assert sum(f == (False, False) for f in flipped) >= 4      # the preferred direction mostly
    departures = {}
    for f in week:
        p = _xy(f)
        if f.kind == "approach":
            i = _airport(p[-1])
            # The last 40 s lie on final: the runway of the day, not the usual one.
            assert _angle(_heading(p[-40], p[-1]), conditions[f.day].runway(CORRIDORS, i)) < 8
        elif f.kind == "departure":
            i = _airport(p[0])
            departures.setdefault((f.day, i), []).append(_heading(p[0], p[40]))
    for (d, i), headings in departures.items():
        usual = departures.get((0, i), [])
        expected = 180.0 if flipped[d][i] != flipped[0][i] else 0.0
        assert all(_angle(_angle(h, u), expected) < 10 for h in headings for u in usual)


def test_volume_and_daily_shape_vary_like_a_real_site(week):
    counts = [sum(f.day == d for f in week) for d in range(7)]
    assert len(set(counts)) >= 5
    assert all(0.8 * 0.85 * 150 - 1 <= n <= 1.05 * 1.15 * 150 + 1 for n in counts), counts
    assert np.mean(counts[5:]) < np.mean(counts[:5])            # day 0 is a Monday
    hour = np.array([(f.t[0] % DAY_S) / 3600 for f in week])
    assert np.mean((hour >= 5) & (hour < 23)) > 0.95
    morning, midday, evening = (np.sum((hour >= a) & (hour < a + 2)) for a in (7, 11.5, 17))
    assert morning > 1.3 * midday and evening > 1.3 * midday


def test_anomaly_share_labels_and_addresses():
    flights = simulate.generate_days(7, 200, anomaly_fraction=0.05, seed=1)
    assert len({f.icao24 for f in flights}) == len(flights)
    assert all(int(f.icao24, 16) & 0xF00000 == simulate.ICAO_PREFIX for f in flights)
    assert all(f.label == int(f.kind in simulate.PATTERN_KINDS) for f in flights)
    assert {f.kind for f in flights if f.label} == set(simulate.PATTERN_KINDS)
    for d in range(7):
        day = [f for f in flights if f.day == d]
        assert abs(sum(f.label for f in day) - 0.05 * len(day)) < 1.0


def test_every_flight_lies_inside_its_day(week):
    assert [f.t[0] for f in week] == sorted(f.t[0] for f in week)
    for f in week:
        assert np.allclose(np.diff(f.t), 1.0)
        assert f.day * DAY_S <= f.t[0] and f.t[-1] < (f.day + 1) * DAY_S
        assert np.hypot(*_xy(f).T).max() <= 121.0


def test_days_are_deterministic_and_independent_of_the_run_length():
    a, b = simulate.generate_days(3, 30, seed=5), simulate.generate_days(3, 30, seed=5)
    assert [f.icao24 for f in a] == [f.icao24 for f in b]
    assert all(np.array_equal(f.lat, g.lat) and np.array_equal(f.t, g.t) for f, g in zip(a, b))
    assert [f.t[0] for f in simulate.generate_days(3, 30, seed=6)] != [f.t[0] for f in a]
    # Day 0 and 1 are the same days whether two or three are generated (addresses aside).
    short = simulate.generate_days(2, 30, seed=5)
    assert [(f.kind, f.t[0], f.lat[-1]) for f in short] == \
        [(f.kind, f.t[0], f.lat[-1]) for f in a if f.day < 2]


def test_one_day_of_the_week_decodes_from_beast():
    flights = simulate.generate_days(7, 12, seed=2)
    day = [f for f in flights if f.day == 6]
    by_icao = {f.icao24: f for f in day}
    frames = b"".join(frame for _, frame in simulate.stream(day))
    decoder = pms.PipeDecoder()
    sent = decoded = 0
    errors_m = []
    for counter, msg in BeastParser().feed(frames):
        t = counter / 12e6
        assert 6 * DAY_S <= t < 7 * DAY_S           # tick 0 = 00:00 of day 0
        assert crc(msg.hex()) == 0
        r = decoder.decode(msg.hex(), timestamp=t)
        if r.get("typecode") != 11:
            continue
        f = by_icao[r["icao"].lower()]
        k = int(np.rint(t - f.t[0]))
        sent += 1
        assert r["altitude"] == int(f.alt[k])
        if r.get("latitude") is not None:
            decoded += 1
            dy = (r["latitude"] - f.lat[k]) * 111_195
            dx = (r["longitude"] - f.lon[k]) * 111_195 * np.cos(np.radians(f.lat[k]))
            errors_m.append(np.hypot(dx, dy))
    assert sent == sum(len(f.t) for f in day)
    assert decoded > 0.95 * sent and max(errors_m) < 10.0


def test_labels_csv_carries_the_day(tmp_path):
    flights = simulate.generate_days(2, 10, anomaly_fraction=0.2, seed=3)
    simulate.write_labels(tmp_path / "l.csv", flights)
    lines = (tmp_path / "l.csv").read_text().splitlines()
    assert lines[0] == "icao24,label,kind,day" and len(lines) == len(flights) + 1
    assert {line.split(",")[3] for line in lines[1:]} == {"0", "1"}


def test_load_week_inserts_days_of_finished_flights(engine):
    from sim_week import WEEK_START, load_week

    week = load_week(engine, days=7, flights_per_day=30)
    assert week["last_day_start"] == WEEK_START + dt.timedelta(days=6)
    with engine.connect() as conn:
        rows = conn.execute(sa.text(
            "SELECT icao24, first_seen, last_seen, image IS NOT NULL FROM flights "
            "WHERE state = 'finished'")).all()
    assert len(rows) == len(week["labels"]) == len(week["days"])
    per_day = np.bincount([week["days"][r[0]] for r in rows], minlength=7)
    assert len(set(per_day.tolist())) > 1 and per_day.min() > 15
    for icao24, first, last, has_image in rows:
        start = WEEK_START + dt.timedelta(days=week["days"][icao24])
        assert start <= first < last < start + dt.timedelta(days=1) and has_image
    last_day = [r[0] for r in rows if r[1] >= week["last_day_start"]]
    assert len(last_day) == per_day[6]
    labels = week["labels"]
    assert sum(labels.values()) == sum(k in simulate.PATTERN_KINDS for k in week["kinds"].values())
    assert 0 < sum(labels.values()) < 0.06 * len(labels)
