"""Route anomalies of the Paris day: rotated real flights, clipped to coverage, as Beast."""

from __future__ import annotations

import collections
import math

import numpy as np
import pyModeS as pms
import pytest
from pyModeS.util import crc

from conftest import PARIS_CSV, need
from helpers_flights import Track, paris_tracks
from pipeline.evaluation import routes
from pipeline.evaluation.simulate import KT_TO_KMS, PARIS_WINDOW_START
from pipeline.geo import haversine_km, to_local_km
from pipeline.receiver.beast import BeastParser

REF = {"ref_lat": 48.88, "ref_lon": 2.42}
BOX = routes.PARIS_BOX


@pytest.fixture(scope="module")
def paris():
    tracks = paris_tracks(need(PARIS_CSV))
    return tracks, routes.rotated_flights(tracks, 0.2, seed=3)


def _xy(lat, lon):
    return np.stack(to_local_km(lat, lon, **REF), axis=1)


def _depth(lat, lon):
    xy = _xy(lat, lon)
    return routes.edge_depth_km(xy[:, 0], xy[:, 1], BOX, **REF)


def _bearing(lat, lon):
    """Initial great-circle bearing from the receiver (deg)."""
    p0, p1 = np.radians(REF["ref_lat"]), np.radians(lat)
    dl = np.radians(lon - REF["ref_lon"])
    return np.degrees(np.arctan2(np.sin(dl) * np.cos(p1),
                                 np.cos(p0) * np.sin(p1) - np.sin(p0) * np.cos(p1) * np.cos(dl)))


def _check(tracks, anomalies):
    """Every property a fair route anomaly must have."""
    sites = np.array(list(routes.AIRPORTS.values()))
    for a in anomalies:
        src = tracks[a.source]
        assert a.label == 1 and a.source_icao24 == src.icao24 and a.kind in routes.KINDS
        # Same timing and altitudes, positions rotated: shape kept where not clipped.
        assert np.array_equal(a.t, src.t[a.first:a.last])
        assert np.array_equal(a.alt, src.alt[a.first:a.last], equal_nan=True)
        lat0, lon0 = src.lat[a.first:a.last], src.lon[a.first:a.last]
        # Rotated on the sphere: great-circle distances between positions are kept exactly
        # (shape and ground speed), and so is each position's distance to the receiver.
        sub = np.linspace(0, len(a.t) - 1, 40).astype(int)
        d0 = haversine_km(lat0[sub, None], lon0[sub, None], lat0[None, sub], lon0[None, sub])
        d1 = haversine_km(a.lat[sub, None], a.lon[sub, None], a.lat[None, sub],
                          a.lon[None, sub])
        assert np.allclose(d0, d1, rtol=0, atol=1e-6)
        assert np.allclose(haversine_km(REF["ref_lat"], REF["ref_lon"], lat0, lon0),
                           haversine_km(REF["ref_lat"], REF["ref_lon"], a.lat, a.lon),
                           rtol=0, atol=1e-6)
        # Rotated by angle_deg about the receiver (bearings from it), at least min_angle.
        turn = _bearing(a.lat, a.lon) - _bearing(lat0, lon0)
        far = haversine_km(REF["ref_lat"], REF["ref_lon"], lat0, lon0) > 5
        assert np.allclose((turn[far] - a.angle_deg + 180) % 360 - 180, 0, atol=1e-6)
        assert 60.0 <= abs(a.angle_deg) <= 180.0
        rot = _xy(a.lat, a.lon)
        # Clipped to coverage, long enough to show a route.
        depth = _depth(a.lat, a.lon)
        assert depth.min() >= 0 and len(a.t) >= routes.MIN_POSITIONS
        assert routes.path_km(*rot.T) >= routes.MIN_KM
        src_depth = _depth(src.lat[[0, -1]], src.lon[[0, -1]])
        if a.kind == "rotated_transit":
            # Both ends at the edge of coverage, entering and leaving at the original's levels:
            # no mid-frame appearance, at cruise level or low.
            assert depth[0] <= routes.EDGE_KM and depth[-1] <= routes.EDGE_KM
            for end, whole in ((a.alt, src.alt), (a.alt[::-1], src.alt[::-1])):
                assert abs(end[np.isfinite(end)][0] - whole[np.isfinite(whole)][0]) <= 2500
        else:
            low = [routes._end_alt(src.alt, s) <= routes.LOW_FT and d > routes.EDGE_KM
                   for s, d in ((True, src_depth[0]), (False, src_depth[1]))]
            assert any(low)
            for end, is_low in ((0, low[0]), (-1, low[1])):
                if is_low:          # the airport end: kept whole, and nowhere near an airport
                    assert (a.first == 0) if end == 0 else (a.last == len(src.t))
                    km = haversine_km(a.lat[end], a.lon[end], sites[:, 0], sites[:, 1])
                    assert km.min() >= routes.NOWHERE_KM
                else:               # the other end: no deeper inside than the original's
                    assert depth[end] <= max(routes.EDGE_KM, src_depth[end]) + 1e-9


def test_paris_day_gives_approaches_to_nowhere(paris):
    tracks, anomalies = paris
    kinds = collections.Counter(routes.kind_of(tr) for tr in tracks)
    made = collections.Counter(a.kind for a in anomalies)
    print(f"\nParis day: {len(tracks)} flights, candidates {dict(kinds)}, made {dict(made)}")
    # Every flight of the Paris sample flies to or from an airport of the region: no transit
    # has both ends at the edge of coverage, so the day gives approaches to nowhere only.
    assert kinds["approach_nowhere"] > 200 and made["approach_nowhere"] > 20
    _check(tracks, anomalies)
    icaos = [a.icao24 for a in anomalies]
    assert len(set(icaos)) == len(icaos)
    assert all(0xF40000 <= int(i, 16) < 0xF50000 for i in icaos)
    callsigns = {tr.callsign for tr in tracks}
    assert all(a.callsign not in callsigns for a in anomalies)
    assert len({a.source for a in anomalies}) == len(anomalies)
    # Timing kept: they fit the capture's window.
    start = PARIS_WINDOW_START.timestamp()
    assert all(start <= a.t[0] and a.t[-1] < start + 3 * 3600 for a in anomalies)


def test_the_default_fraction_and_determinism(paris):
    tracks, _ = paris
    a = routes.rotated_flights(tracks, seed=7)
    b = routes.rotated_flights(tracks, seed=7)
    per_kind = collections.Counter(routes.kind_of(tr) for tr in tracks)
    assert collections.Counter(x.kind for x in a) == {
        kind: max(1, round(0.05 * per_kind[kind])) for kind in routes.KINDS if per_kind[kind]}
    assert [(x.source, x.angle_deg, x.callsign) for x in a] == \
        [(x.source, x.angle_deg, x.callsign) for x in b]
    assert all(np.array_equal(x.lat, y.lat) for x, y in zip(a, b))
    c = routes.rotated_flights(tracks, seed=8)
    assert [x.source for x in c] != [x.source for x in a]
    assert not routes.rotated_flights(tracks, 0.0)
    with pytest.raises(ValueError):
        routes.rotated_flights(tracks, 1.5)


def _cruise(i: int, rng: np.random.Generator) -> Track:
    """A straight cruise flight from one edge of the box to another (the Paris day has none)."""
    x0, y0 = to_local_km(BOX.lat_min, BOX.lon_min, **REF)
    x1, y1 = to_local_km(BOX.lat_max, BOX.lon_max, **REF)
    corners = [(x0, y0), (x1, y0), (x1, y1), (x0, y1)]

    def on_edge(k: int) -> np.ndarray:
        (ax, ay), (bx, by) = corners[k], corners[(k + 1) % 4]
        f = rng.uniform(0.1, 0.9)
        inward = np.array([by - ay, ax - bx]) / math.hypot(bx - ax, by - ay)
        return np.array([ax + f * (bx - ax), ay + f * (by - ay)]) - 0.2 * inward

    side = int(rng.integers(4))
    a, b = on_edge(side), on_edge((side + int(rng.integers(1, 4))) % 4)
    n = int(math.hypot(*(b - a)) / (450 * KT_TO_KMS))
    f = np.linspace(0, 1, n)
    lat, lon = routes.to_latlon(a[0] + f * (b[0] - a[0]), a[1] + f * (b[1] - a[1]), **REF)
    alt = np.full(n, float(rng.choice([31000, 35000, 37000])))
    return Track(f"c{i:05x}", f"TST{i}", 1633608001.0 + 60 * i + np.arange(n), lat, lon, alt)


def test_rotated_transits_keep_their_ends_at_the_edge_of_coverage():
    rng = np.random.default_rng(1)
    tracks = [_cruise(i, rng) for i in range(80)]
    assert all(routes.kind_of(tr) == "rotated_transit" for tr in tracks)
    anomalies = routes.rotated_flights(tracks, 0.5, seed=2)
    print(f"\nsynthetic cruise: {len(anomalies)} of 40 wanted rotated transits made, "
          f"{sum(a.first > 0 or a.last < len(tracks[a.source].t) for a in anomalies)} clipped")
    assert len(anomalies) >= 30 and {a.kind for a in anomalies} == {"rotated_transit"}
    assert any(a.first > 0 or a.last < len(tracks[a.source].t) for a in anomalies)
    _check(tracks, anomalies)


def test_an_unclipped_rotation_would_leak_the_endpoint():
    """Why the clip and the checks: rotated whole, most transits start or end mid-frame."""
    rng = np.random.default_rng(1)
    mid = 0
    for i in range(40):
        tr = _cruise(i, rng)
        lat, lon = routes.rotate_latlon(tr.lat, tr.lon, 90.0, **REF)
        x, y = to_local_km(lat, lon, **REF)
        d = routes.edge_depth_km(x[[0, -1]], y[[0, -1]], BOX, **REF)
        mid += bool((d > routes.EDGE_KM).any())
    assert mid > 10


def _decoded_positions(path):
    decoder = pms.PipeDecoder()
    out = collections.defaultdict(list)
    for counter, msg in BeastParser().feed(path.read_bytes()):
        assert crc(msg.hex()) == 0
        r = decoder.decode(msg.hex(), timestamp=counter / 12e6)
        if r.get("typecode") == 11:
            out[r["icao"].lower()].append((counter / 12e6, r.get("latitude"), r.get("longitude"),
                                           r["altitude"]))
    return out


def test_beast_stream_decodes_to_the_rotated_tracks(paris, tmp_path):
    _, anomalies = paris
    some = anomalies[:4]
    n = routes.write_beast(tmp_path / "r.beast", some)
    routes.write_labels(tmp_path / "r.csv", some)
    lines = (tmp_path / "r.csv").read_text().splitlines()
    assert lines[0] == "icao24,label,kind" and len(lines) == 5
    assert lines[1] == f"{some[0].icao24},1,{some[0].kind}"
    decoded = _decoded_positions(tmp_path / "r.beast")
    start = PARIS_WINDOW_START.timestamp()
    sent = got = 0
    worst = 0.0
    for a in some:
        rows = decoded[a.icao24]
        known = np.isfinite(a.alt)
        assert len(rows) == int(known.sum())
        t = a.t[known] - start
        for when, lat, lon, alt in rows:
            k = int(np.argmin(np.abs(t - when)))
            assert abs(t[k] - when) < 1e-3 and alt == int(min(a.alt[known][k], 50175))
            sent += 1
            if lat is None:
                continue
            got += 1
            # pyModeS gives the older half of a globally decoded pair the newer frame's
            # position: compare with the nearest of this row and the next.
            m = min(float(haversine_km(lat, lon, a.lat[known][j], a.lon[known][j]))
                    for j in range(k, min(k + 2, len(t))))
            worst = max(worst, m)
    print(f"\nBeast: {n} frames, {got}/{sent} positions decoded, worst {worst * 1000:.1f} m")
    assert got > 0.95 * sent and worst < 0.05


def test_the_flown_map_knows_where_and_which_way_flights_go():
    rng = np.random.default_rng(4)
    tracks = [_cruise(i, rng) for i in range(10)]
    # Every flight of the map flies where it flies, the way it flies.
    flown = routes.FlownMap(tracks, BOX, **REF)
    assert all(flown.off_route_share(tr.lat, tr.lon) == 0.0 for tr in tracks)
    one = routes.FlownMap(tracks[:1], BOX, **REF)
    tr = tracks[0]
    # Flown backwards it goes the way nobody does; 3 km aside, the same way, it is on its
    # route (ROUTE_KM is 5); 15 km aside it is not.
    assert one.off_route_share(tr.lat[::-1], tr.lon[::-1]) == 1.0
    x, y = to_local_km(tr.lat, tr.lon, **REF)
    d = np.array([x[-1] - x[0], y[-1] - y[0]])
    normal = np.array([-d[1], d[0]]) / np.hypot(*d)
    near = routes.to_latlon(x + 3 * normal[0], y + 3 * normal[1], **REF)
    far = routes.to_latlon(x + 15 * normal[0], y + 15 * normal[1], **REF)
    assert one.off_route_share(*near) == 0.0
    assert one.off_route_share(*far) == 1.0


def test_rotations_onto_a_route_flown_the_same_way_are_refused():
    rng = np.random.default_rng(1)
    tracks = [_cruise(i, rng) for i in range(80)]
    loose = routes.rotated_flights(tracks, 0.5, seed=2)
    strict = routes.rotated_flights(tracks, 0.5, seed=2, min_off_route=0.6)
    flown = routes.FlownMap(tracks, BOX, **REF)
    shares = [flown.off_route_share(a.lat, a.lon) for a in loose]
    print(f"\noff-route share of unchecked rotations: min {min(shares):.2f}, "
          f"median {np.median(shares):.2f}; {len(strict)} of {len(loose)} made with the check")
    assert strict and all(flown.off_route_share(a.lat, a.lon) >= 0.6 for a in strict)
    with pytest.raises(ValueError):
        routes.rotated_flights(tracks, 0.5, min_off_route=1.5)
