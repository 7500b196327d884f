"""Synthetic flights in the receiver frame, with labelled anomalies, as positions or Beast.

Normal traffic follows a few fixed corridors (derived from the receiver range only, so every
run with the same receiver sees the same corridors): straight-ish transits, and approaches and
departures of two airports. Anomalies are the patterns the service is meant to find: holding
racetracks, orbits (circling to burn fuel), survey lawn-mower grids, calibration-style
back-and-forth passes, and transits off every corridor.

As Beast: DF17 airborne position (TC 11, CPR even/odd alternating, 1 Hz), identification
(TC 4) and airborne velocity (TC 19, subtype 1) every ~5 s, with a valid CRC (pyModeS's CRC).
pyModeS decodes but does not *encode* CPR, so :func:`cpr_encode` follows the CPR definition of
DO-260B §A.1.7 (tests decode these frames with pyModeS). The Beast counter is a 12 MHz clock
relative to the stream's start time; ``adsb-pipeline ingest FILE --start-time ISO`` puts it back.
"""

from __future__ import annotations

import csv
import datetime as dt
import heapq
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
from pyModeS.util import cprNL, crc

from pipeline.config import Settings
from pipeline.geo import EARTH_RADIUS_KM
from pipeline.receiver.beast import COUNTER_HZ, encode_frame

log = logging.getLogger(__name__)

KT_TO_KMS = 1.852 / 3600.0
ANOMALY_KINDS = ("holding", "orbit", "survey", "calibration", "off_corridor")
# Injected into real traffic: "off the corridors" only means something for the simulated
# corridors, a random straight transit is ordinary in real traffic, so it is not injected there.
PATTERN_KINDS = ("holding", "orbit", "survey", "calibration")
NORMAL_KINDS = ("transit", "approach", "departure")
ICAO_PREFIX = 0xF00000            # unassigned block: simulated aircraft never clash with real ones
PARIS_WINDOW_START = dt.datetime(2021, 10, 7, 12, 0, 1, tzinfo=dt.timezone.utc)
PARIS_WINDOW_S = 3 * 3600.0


@dataclass
class SimFlight:
    """One synthetic flight: ~1 Hz positions; ``t`` in seconds since the stream's start."""

    icao24: str
    callsign: str
    kind: str
    label: int                      # 1 = anomalous
    t: np.ndarray
    lat: np.ndarray
    lon: np.ndarray
    alt: np.ndarray                 # ft
    gs: np.ndarray                  # kt
    track: np.ndarray               # deg
    vrate: np.ndarray               # ft/min


# ---- geometry in the receiver's local km frame ----------------------------------------------
def _unit(heading_deg: float) -> np.ndarray:
    h = math.radians(heading_deg)
    return np.array([math.sin(h), math.cos(h)])


def _arc(center: np.ndarray, radius: float, a0: float, a1: float, step_km: float = 0.2) -> np.ndarray:
    """Points of a circular arc from angle a0 to a1 (radians, counter-clockwise if a1 > a0)."""
    n = max(2, int(abs(a1 - a0) * radius / step_km))
    a = np.linspace(a0, a1, n)
    return center + radius * np.stack([np.cos(a), np.sin(a)], axis=1)


def _resample(points: np.ndarray, step_km: float) -> np.ndarray:
    """Points every ``step_km`` along a polyline (one per second at the flight's speed)."""
    seg = np.hypot(*np.diff(points, axis=0).T)
    cum = np.concatenate([[0.0], np.cumsum(seg)])
    s = np.arange(0.0, cum[-1], step_km)
    return np.stack([np.interp(s, cum, points[:, 0]), np.interp(s, cum, points[:, 1])], axis=1)


def _edge_point(bearing_deg: float, radius: float) -> np.ndarray:
    return radius * _unit(bearing_deg)


def _chord(heading: float, offset: float, radius: float) -> tuple[np.ndarray, np.ndarray]:
    """Entry and exit of a straight line with ``heading`` at signed ``offset`` from the centre."""
    d, n = _unit(heading), _unit(heading + 90)
    half = math.sqrt(max(radius ** 2 - offset ** 2, 1.0))
    return offset * n - half * d, offset * n + half * d


@dataclass(frozen=True)
class Corridors:
    """The fixed route structure of the simulated airspace (fractions of the range)."""

    radius: float
    transits: tuple[tuple[float, float], ...]        # (heading deg, offset km)
    airports: tuple[np.ndarray, ...]
    runway_heading: tuple[float, ...]
    gates: tuple[tuple[float, ...], ...]             # entry/exit bearings per airport

    @classmethod
    def for_range(cls, range_km: float) -> "Corridors":
        r = 0.92 * range_km
        return cls(
            radius=r,
            transits=((20.0, 0.30 * r), (75.0, -0.20 * r), (110.0, 0.45 * r),
                      (160.0, -0.35 * r), (135.0, 0.0)),
            airports=(np.array([-0.08, 0.14]) * range_km, np.array([0.05, -0.18]) * range_km),
            runway_heading=(270.0, 240.0),
            gates=((330.0, 45.0, 200.0), (120.0, 250.0, 300.0)))

    def headings(self) -> list[float]:
        return [h for h, _ in self.transits] + list(self.runway_heading)


# ---- flight generators: each returns (points (n, 2) km at 1 s, altitude ft, speed kt) ---------
def _profile(n: int, start_ft: float, end_ft: float) -> np.ndarray:
    return np.linspace(start_ft, end_ft, n)


def _transit(c: Corridors, rng: np.random.Generator):
    heading, offset = c.transits[rng.integers(len(c.transits))]
    heading += rng.normal(0, 1.0) + (180.0 if rng.random() < 0.5 else 0.0)
    a, b = _chord(heading, offset + rng.normal(0, 1.5), c.radius)
    gs = rng.uniform(400, 480)
    pts = _resample(np.stack([a, b]), gs * KT_TO_KMS)
    alt = np.full(len(pts), rng.choice([28000, 31000, 34000, 37000]) + 0.0)
    return pts, alt, gs


def _approach_path(c: Corridors, rng: np.random.Generator) -> tuple[np.ndarray, int]:
    i = int(rng.integers(len(c.airports)))
    apt, rwy = c.airports[i], c.runway_heading[i]
    gate = _edge_point(c.gates[i][rng.integers(len(c.gates[i]))] + rng.normal(0, 1.5), c.radius)
    final_fix = apt - 18.0 * _unit(rwy) + rng.normal(0, 0.3, 2)
    return np.stack([gate, final_fix, apt]), i


def _approach(c: Corridors, rng: np.random.Generator):
    path, _ = _approach_path(c, rng)
    gs = rng.uniform(220, 260)
    pts = _resample(path, gs * KT_TO_KMS)
    return pts, _profile(len(pts), rng.uniform(11000, 15000), 1500), gs


def _departure(c: Corridors, rng: np.random.Generator):
    pts, alt, gs = _approach(c, rng)
    return pts[::-1].copy(), alt[::-1].copy(), gs


def _with_pattern(c: Corridors, rng: np.random.Generator, pattern: np.ndarray, gs: float,
                  alt_ft: float):
    """Come from 10-40 km away, fly the pattern, leave 10-40 km the other way: low, slow
    working flights are heard only near their work area (and take off from nearby fields)."""
    def away(p: np.ndarray) -> np.ndarray:
        q = p + rng.uniform(10, 40) * _unit(rng.uniform(0, 360))
        r = float(np.hypot(*q))
        return q if r < c.radius else q * (c.radius / r)

    path = np.concatenate([[away(pattern[0])], pattern, [away(pattern[-1])]])
    pts = _resample(path, gs * KT_TO_KMS)
    return pts, np.full(len(pts), alt_ft), gs


def _random_spot(c: Corridors, rng: np.random.Generator, margin: float) -> np.ndarray:
    r = rng.uniform(0.1, 1.0) * (c.radius - margin)
    return _edge_point(rng.uniform(0, 360), r)


def _racetrack(center: np.ndarray, heading: float, leg: float, radius: float, laps: int) -> np.ndarray:
    d, n = _unit(heading), _unit(heading + 90)
    h = math.atan2(d[1], d[0])
    p0, p1 = center - leg / 2 * d, center + leg / 2 * d
    # Math angle of the inbound direction; turns go the far way round each end of the legs.
    lap = np.concatenate([
        np.stack([p0, p1]),
        _arc(p1 + radius * n, radius, h + math.pi / 2, h - math.pi / 2),
        np.stack([p1 + 2 * radius * n, p0 + 2 * radius * n]),
        _arc(p0 + radius * n, radius, h - math.pi / 2, h - 3 * math.pi / 2),
    ])
    return np.concatenate([lap] * laps)


def _holding(c: Corridors, rng: np.random.Generator):
    path, i = _approach_path(c, rng)
    fix = path[0] + (path[1] - path[0]) * rng.uniform(0.4, 0.8)
    hold = _racetrack(fix, rng.uniform(0, 360), rng.uniform(8, 14), rng.uniform(3, 4.5),
                      int(rng.integers(2, 5)))
    gs = rng.uniform(210, 240)
    pts = _resample(np.concatenate([path[:1], [fix], hold, [fix], path[1:]]), gs * KT_TO_KMS)
    return pts, np.full(len(pts), rng.uniform(8000, 14000)), gs


def _orbit(c: Corridors, rng: np.random.Generator):
    r = rng.uniform(3, 8)
    center = _random_spot(c, rng, r + 5)
    laps = rng.uniform(3, 7)
    a0 = rng.uniform(0, 2 * math.pi)
    circle = _arc(center, r, a0, a0 + 2 * math.pi * laps)
    return _with_pattern(c, rng, circle, rng.uniform(180, 240), rng.uniform(5000, 15000))


def _survey(c: Corridors, rng: np.random.Generator):
    leg, spacing, legs = rng.uniform(20, 35), rng.uniform(2, 4), int(rng.integers(5, 10))
    origin = _random_spot(c, rng, leg + spacing * legs)
    heading = rng.uniform(0, 360)
    d, n = _unit(heading), _unit(heading + 90)
    pts = []
    for k in range(legs):
        a = origin + k * spacing * n
        pts += [a, a + leg * d] if k % 2 == 0 else [a + leg * d, a]
    return _with_pattern(c, rng, np.array(pts), rng.uniform(120, 160), rng.uniform(3000, 9000))


def _calibration(c: Corridors, rng: np.random.Generator):
    length, passes = rng.uniform(30, 60), int(rng.integers(3, 7))
    start = _random_spot(c, rng, length)
    heading = rng.uniform(0, 360)
    d, n = _unit(heading), _unit(heading + 90)
    h = math.atan2(d[1], d[0])
    pts = [start[None]]
    for k in range(passes):
        a, b = (start, start + length * d) if k % 2 == 0 else (start + length * d, start)
        pts.append(np.stack([a, b]))
        # Reverse with a 2 km half circle beyond the end of the pass, then fly the line back.
        end = h - math.pi / 2 if k % 2 == 0 else h + 3 * math.pi / 2
        pts.append(_arc(b + 2.0 * n, 2.0, h + math.pi / 2, end))
    return _with_pattern(c, rng, np.concatenate(pts), rng.uniform(160, 200), rng.uniform(2000, 6000))


def _off_corridor(c: Corridors, rng: np.random.Generator):
    headings = c.headings()
    for _ in range(100):
        h = rng.uniform(0, 180)
        gap = min(min(abs((h - k) % 180), 180 - abs((h - k) % 180)) for k in headings)
        if gap >= 20:
            break
    a, b = _chord(h + (180 if rng.random() < 0.5 else 0), rng.uniform(-0.5, 0.5) * c.radius,
                  c.radius)
    # A dog-leg through a point off the line: real off-route flights rarely fly a ruler line.
    mid = (a + b) / 2 + rng.uniform(-15, 15) * _unit(h + 90)
    gs = rng.uniform(300, 450)
    pts = _resample(np.stack([a, mid, b]), gs * KT_TO_KMS)
    return pts, np.full(len(pts), rng.uniform(15000, 30000)), gs


GENERATORS = {"transit": _transit, "approach": _approach, "departure": _departure,
              "holding": _holding, "orbit": _orbit, "survey": _survey,
              "calibration": _calibration, "off_corridor": _off_corridor}


# ---- assembling flights ---------------------------------------------------------------------
def _to_latlon(x: np.ndarray, y: np.ndarray, ref_lat: float, ref_lon: float):
    """Inverse of :func:`pipeline.geo.to_local_km`."""
    k = math.pi / 180.0 * EARTH_RADIUS_KM
    return ref_lat + y / k, ref_lon + x / (k * math.cos(math.radians(ref_lat)))


def _callsign(rng: np.random.Generator) -> str:
    letters = "".join(chr(ord("A") + int(i)) for i in rng.integers(0, 26, 3))
    return f"{letters}{int(rng.integers(10, 9999))}"


def make_flight(kind: str, icao24: str, start_s: float, c: Corridors, rng: np.random.Generator,
                ref_lat: float, ref_lon: float) -> SimFlight:
    pts, alt, gs = GENERATORS[kind](c, rng)
    pts = pts + rng.normal(0, 0.01, pts.shape)           # ~10 m position noise
    n = len(pts)
    step = np.diff(pts, axis=0, append=pts[-1:] + (pts[-1:] - pts[-2:-1]))
    track = np.degrees(np.arctan2(step[:, 0], step[:, 1])) % 360
    alt = np.round(alt / 25) * 25
    vrate = np.gradient(alt) * 60.0 if n > 1 else np.zeros(n)
    lat, lon = _to_latlon(pts[:, 0], pts[:, 1], ref_lat, ref_lon)
    return SimFlight(icao24, _callsign(rng), kind, int(kind in ANOMALY_KINDS),
                     start_s + np.arange(n, dtype=float), lat, lon, alt, np.full(n, gs),
                     track, np.round(vrate / 64) * 64)


def generate(n_normal: int, n_anomalies: int, *, seed: int = 0, ref_lat: float = 48.88,
             ref_lon: float = 2.42, range_km: float = 121.0, duration_s: float = PARIS_WINDOW_S,
             anomaly_kinds: Iterable[str] = ANOMALY_KINDS) -> list[SimFlight]:
    """Flights starting within ``[0, duration_s)``; anomalies cycle through ``anomaly_kinds``."""
    rng = np.random.default_rng(seed)
    c = Corridors.for_range(range_km)
    kinds = [NORMAL_KINDS[int(rng.integers(len(NORMAL_KINDS)))] for _ in range(n_normal)]
    anomaly_kinds = tuple(anomaly_kinds)
    kinds += [anomaly_kinds[i % len(anomaly_kinds)] for i in range(n_anomalies)]
    addresses = rng.choice(1 << 16, size=len(kinds), replace=False)
    flights = []
    for kind, addr in zip(kinds, rng.permutation(addresses)):
        f = make_flight(kind, f"{ICAO_PREFIX + int(addr):06x}", 0.0, c, rng, ref_lat, ref_lon)
        # Whole flights inside the window: a replay then sees each one complete.
        latest = max(duration_s - len(f.t) - 1, 0.0)
        f.t = f.t + float(rng.uniform(0, latest))
        flights.append(f)
    return flights


def generate_for(settings: Settings, n_normal: int, n_anomalies: int, seed: int = 0,
                 duration_s: float = PARIS_WINDOW_S) -> list[SimFlight]:
    return generate(n_normal, n_anomalies, seed=seed, ref_lat=settings.receiver_lat,
                    ref_lon=settings.receiver_lon, range_km=settings.range_km,
                    duration_s=duration_s)


# ---- ADS-B encoding ---------------------------------------------------------------------------
_CHARSET = "#ABCDEFGHIJKLMNOPQRSTUVWXYZ##### ###############0123456789######"
CPR_BITS = 1 << 17


def _with_parity(icao24: str, me: int) -> bytes:
    """DF17 (CA 5) message for a 56-bit ME field, parity from pyModeS's CRC."""
    head = (0x8D << 24) | int(icao24, 16)
    data = (head << 56 | me) << 24
    parity = crc(f"{data:028X}")            # remainder of data * x^24 = the parity field
    return (data | parity).to_bytes(14, "big")


def altitude_code(alt_ft: float) -> int:
    """12-bit AC field with the Q bit set (25 ft steps, up to 50,175 ft)."""
    n = int(round((alt_ft + 1000) / 25))
    n = min(max(n, 0), 2047)
    return ((n >> 4) << 5) | (1 << 4) | (n & 0xF)


def cpr_encode(lat: float, lon: float, odd: bool) -> tuple[int, int]:
    """Airborne CPR (17 bits) of a position: (YZ, XZ) for the even (0) or odd (1) format."""
    i = 1 if odd else 0
    dlat = 360.0 / (60 - i)
    yz = math.floor(CPR_BITS * (lat % dlat) / dlat + 0.5)
    rlat = dlat * (yz / CPR_BITS + math.floor(lat / dlat))
    dlon = 360.0 / max(cprNL(rlat) - i, 1)
    xz = math.floor(CPR_BITS * (lon % dlon) / dlon + 0.5)
    return yz % CPR_BITS, xz % CPR_BITS


def position_message(icao24: str, lat: float, lon: float, alt_ft: float, odd: bool) -> bytes:
    yz, xz = cpr_encode(lat, lon, odd)
    me = (11 << 51) | (altitude_code(alt_ft) << 36) | (int(odd) << 34) | (yz << 17) | xz
    return _with_parity(icao24, me)


def identification_message(icao24: str, callsign: str) -> bytes:
    me = 4 << 51
    for k, ch in enumerate(callsign.upper().ljust(8)[:8]):
        idx = _CHARSET.find(ch) if ch != "#" else -1
        me |= (idx if idx > 0 else 32) << (42 - 6 * k)
    return _with_parity(icao24, me)


def velocity_message(icao24: str, gs_kt: float, track_deg: float, vrate_fpm: float) -> bytes:
    """TC 19 subtype 1 (ground speed), barometric vertical rate."""
    vx = gs_kt * math.sin(math.radians(track_deg))
    vy = gs_kt * math.cos(math.radians(track_deg))
    vew, vns = min(int(round(abs(vx))) + 1, 1023), min(int(round(abs(vy))) + 1, 1023)
    vr = min(int(round(abs(vrate_fpm) / 64)) + 1, 511)
    me = ((19 << 51) | (1 << 48) | (int(vx < 0) << 42) | (vew << 32) | (int(vy < 0) << 31)
          | (vns << 21) | (1 << 20) | (int(vrate_fpm < 0) << 19) | (vr << 10))
    return _with_parity(icao24, me)


def messages(f: SimFlight) -> Iterator[tuple[float, bytes]]:
    """(seconds since start, raw message) of one flight, in time order."""
    for k in range(len(f.t)):
        t = float(f.t[k])
        yield t, position_message(f.icao24, f.lat[k], f.lon[k], f.alt[k], odd=bool(k % 2))
        if k % 5 == 0:
            yield t + 0.1, identification_message(f.icao24, f.callsign)
            yield t + 0.2, velocity_message(f.icao24, f.gs[k], f.track[k], f.vrate[k])


def stream(flights: list[SimFlight], start_unix: float = 0.0) -> Iterator[tuple[float, bytes]]:
    """(Unix time, Beast frame) of all flights merged in time order; the 12 MHz counter is
    relative to ``start_unix`` (a live server can sleep until each time and send the bytes)."""
    for t, msg in heapq.merge(*(messages(f) for f in flights), key=lambda m: m[0]):
        yield start_unix + t, encode_frame(msg, int(round(t * COUNTER_HZ)), signal=160)


def write_beast(path: Path, flights: list[SimFlight]) -> int:
    """Write the Beast stream (counter tick 0 = the stream's start); returns frames written."""
    n = 0
    tmp = Path(str(path) + ".tmp")
    with open(tmp, "wb") as out:
        for _, frame in stream(flights):
            out.write(frame)
            n += 1
    tmp.replace(path)
    return n


def write_labels(path: Path, flights: list[SimFlight]) -> None:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["icao24", "label", "kind"])
        for fl in flights:
            w.writerow([fl.icao24, fl.label, fl.kind])


def write_paris_anomalies(beast: Path, labels: Path, n_anomalies: int, seed: int = 0,
                          ref_lat: float = 48.88, ref_lon: float = 2.42,
                          range_km: float = 121.0) -> list[SimFlight]:
    """Anomaly-only Beast stream aligned to the Paris capture (tick 0 = 2021-10-07T12:00:01Z,
    3 h): replay it with ``ingest FILE --start-time 2021-10-07T12:00:01Z`` into the database
    that holds the Paris day to get the Paris day plus injected anomalies."""
    flights = generate(0, n_anomalies, seed=seed, ref_lat=ref_lat, ref_lon=ref_lon,
                       range_km=range_km, duration_s=PARIS_WINDOW_S, anomaly_kinds=PATTERN_KINDS)
    write_beast(beast, flights)
    write_labels(labels, flights)
    return flights


def command(settings: Settings, args) -> int:
    """``adsb-pipeline simulate --out FILE.beast [--labels CSV] [--flights N] [--anomalies N]``."""
    flights = generate_for(settings, args.flights, args.anomalies, seed=args.seed)
    n = write_beast(Path(args.out), flights)
    if args.labels:
        write_labels(Path(args.labels), flights)
    print(f"{len(flights)} flights ({args.anomalies} anomalous), {n} Beast frames -> {args.out}"
          f" (counter tick 0 = start; replay with --start-time, e.g. "
          f"{PARIS_WINDOW_START:%Y-%m-%dT%H:%M:%SZ} to align with the Paris capture)")
    return 0
