"""The network benchmark's own logic (bench/_network_tools.py): where receivers stand and
what each hears, the per-receiver streams and their paced server, and the comparison of
stored positions and flights against the simulator's truth. The bench runs for a quarter of an
hour and is not part of the suite; these keep its figures honest."""

from __future__ import annotations

import socket
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

from _network_tools import (  # noqa: E402
    FlightTruth,
    PacedReceiver,
    PositionCount,
    SharedClock,
    grid,
    hear,
    in_range,
    match_flights,
    neighbour_radius,
    pieces,
    transmission_index,
)
from pipeline.evaluation import simulate  # noqa: E402
from pipeline.geo import to_local_km  # noqa: E402
from pipeline.receiver.beast import COUNTER_HZ, BeastParser  # noqa: E402

CENTRE = (48.88, 2.42)
HALF = 0.92 * 121.0


def test_grid_covers_the_area_with_overlap_and_bounded_clock_offsets():
    rx = grid(5, 4, HALF, CENTRE, max_offset_s=0.5, seed=1)
    radius = neighbour_radius(5, 4, HALF)
    assert [r.id for r in rx][:3] == ["r00", "r01", "r02"] and len(rx) == 20
    assert all(abs(r.clock_offset_s) <= 0.5 for r in rx)
    assert len({r.clock_offset_s for r in rx}) == 20
    # The stored lat/lon is where the grid says (the ingest decodes relative to it).
    x, y = to_local_km([r.lat for r in rx], [r.lon for r in rx], *CENTRE)
    assert np.allclose(x, [r.x_km for r in rx], atol=0.01)
    assert np.allclose(y, [r.y_km for r in rx], atol=0.01)
    # Every receiver hears its four neighbours' positions; every point of the simulator's
    # circle is heard by at least one receiver.
    xy = np.array([(r.x_km, r.y_km) for r in rx])
    d = np.hypot(*(xy[:, None, :] - xy[None, :, :]).transpose(2, 0, 1))
    assert ((d > 0) & (d <= radius)).sum(axis=1).min() >= 2          # corners: 2 neighbours
    assert ((d > 0) & (d <= radius)).sum(axis=1).max() == 4
    rng = np.random.default_rng(0)
    a, r = rng.uniform(0, 2 * np.pi, 20_000), HALF * np.sqrt(rng.uniform(0, 1, 20_000))
    heard = in_range(r * np.cos(a), r * np.sin(a), rx, radius)
    assert heard.any(axis=1).all()
    assert heard.sum(axis=1).mean() > 2


def test_each_receiver_streams_exactly_what_it_hears():
    rx = grid(5, 4, HALF, CENTRE, seed=2)
    radius = neighbour_radius(5, 4, HALF)
    flights = simulate.generate(6, 1, seed=4, ref_lat=CENTRE[0], ref_lon=CENTRE[1],
                                duration_s=400.0)
    net = hear(flights, rx, CENTRE, radius, loss=0.0, seed=4)
    assert net.transmitted == sum(len(list(simulate.messages(f))) for f in flights)
    for f in flights:
        tr = net.truth[f.icao24]
        # Without loss: heard exactly by the receivers within the radius.
        x, y = to_local_km(f.lat, f.lon, *CENTRE)
        assert (tr.heard == in_range(x, y, rx, radius)).all()
    total_positions = 0
    for r, s in enumerate(net.streams):
        assert (np.diff(s.times) >= 0).all() and len(s.blob) == (s.ends[-1] if s.frames else 0)
        counters, messages = BeastParser().feed_hex(s.blob)
        assert len(messages) == s.frames
        # Counters are the simulated seconds of the stream (12 MHz).
        assert np.allclose(np.asarray(counters) / COUNTER_HZ, s.times, atol=1e-6)
        pos = [(m[2:8].lower(), t) for m, t in zip(messages, s.times)
               if int(m[8:10], 16) >> 3 == 11]
        assert len(pos) == s.positions
        total_positions += len(pos)
        for icao, tr in net.truth.items():
            mine = np.array([t for i, t in pos if i == icao])
            assert np.array_equal(mine, tr.t0 + np.flatnonzero(tr.heard[:, r]))
    assert total_positions == sum(int(tr.heard.sum()) for tr in net.truth.values())
    # With loss, each receiver misses about that share of what is in range.
    lossy = hear(flights, rx, CENTRE, radius, loss=0.1, seed=4)
    kept = sum(int(lossy.truth[i].heard.sum()) for i in lossy.truth) / total_positions
    assert 0.87 < kept < 0.93


def test_paced_receiver_sends_its_stream_once_on_the_shared_clock():
    rx = grid(1, 1, 50.0, CENTRE)
    flights = simulate.generate(2, 0, seed=5, duration_s=40.0)
    s = hear(flights, rx, CENTRE, 100.0, loss=0.0).streams[0]
    clock = SharedClock(speed=1e5)
    server = PacedReceiver(s, clock, tick_s=0.01).start()
    try:
        data = b""
        with socket.create_connection(("127.0.0.1", server.port), timeout=5) as c:
            assert server.connected.wait(5)
            clock.start(float(s.times[0]))
            c.settimeout(0.5)
            deadline = time.monotonic() + 10
            while len(data) < len(s.blob) and time.monotonic() < deadline:
                try:
                    data += c.recv(1 << 16)
                except socket.timeout:
                    pass
        assert data == s.blob
        assert server.finished.wait(5) and server.frames_sent == s.frames
        assert clock.wall_of(float(s.times[0])) == clock.wall0
    finally:
        server.stop()


def test_stored_times_map_back_to_transmissions_and_are_counted():
    anchor, t0 = 1_700_000_000.0 + 0.3125, 17.25
    sent = np.arange(10)
    # Stored as anchor + t0 + k with microsecond rounding; transmission 0-2 never decoded (the
    # decoder's CPR pairing), 5 stored twice, one row at no transmission's time.
    stored = np.round((anchor + t0 + np.array([3, 4, 5, 5, 6, 7, 8, 9])) * 1e6) / 1e6
    stored = np.append(stored, anchor + t0 + 9.5)
    k = transmission_index(stored, anchor, t0)
    assert k.tolist() == [3, 4, 5, 5, 6, 7, 8, 9, -1]
    pc = PositionCount()
    pc.add(sent, k)
    assert (pc.sent, pc.stored, pc.lost, pc.duplicated, pc.extra) == (10, 9, 3, 1, 1)
    assert pc.shortfall == {3: 1} and pc.aircraft_short == 1
    total = PositionCount()
    total.merge(pc)
    total.merge(pc)
    assert total.lost == 6 and total.shortfall == {3: 2}


def _truth(icao: str, n: int) -> FlightTruth:
    return FlightTruth(icao, 0.0, np.ones((n, 2), dtype=bool))


def test_flights_are_matched_against_the_truth():
    gap = 600.0
    assert pieces(np.array([], np.int64), gap) == 0
    assert pieces(np.arange(100), gap) == 1
    assert pieces(np.concatenate([np.arange(10), np.arange(700, 710)]), gap) == 2
    truth = {i: _truth(i, 100) for i in ("a", "b", "c", "d", "e", "f")}
    truth["g"] = _truth("g", 2000)
    stored = {i: np.arange(3, 100) for i in truth}
    stored["e"] = np.empty(0, np.int64)                     # never stored: not heard
    stored["g"] = np.concatenate([np.arange(3, 500), np.arange(1200, 2000)])   # two pieces
    flights = {
        "a": [("finished", 97)],                            # merged, positions exact
        "b": [("finished", 50), ("finished", 47)],          # split
        "c": [("finished", 120)],                           # merged, positions off
        # "d": missing
        "f": [("finished", 97), ("open", 0)],               # split, one unfinished
        "g": [("finished", 1297)],                          # joined across the gap
        "x": [("finished", 30)],                            # never simulated
        "e": [("finished", 5)],                             # simulated, never stored
    }
    m = match_flights(truth, stored, flights, gap)
    assert (m.simulated, m.heard) == (7, 6)
    assert (m.merged, m.split, m.joined, m.missing, m.spurious) == (2, 2, 1, 1, 2)
    assert m.unfinished == 1
    assert m.positions_exact == 1 and m.positions_off == [("c", 120, 97)]
    # Heard by the receivers (every transmission here) minus stored by any: 3 per flight.
    assert m.short_of_heard[3] == 5
