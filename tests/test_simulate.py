"""The simulator: flights in the receiver frame, and Beast frames that pyModeS decodes back."""

from __future__ import annotations

import numpy as np
import pyModeS as pms
from pyModeS.util import crc

from pipeline import simulate
from pipeline.geo import to_local_km


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
