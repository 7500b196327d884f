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

Several days of one site (:func:`generate_days`): the corridors stay, what a real site changes
from day to day varies (:class:`DayConditions`): traffic volume and its daily shape, the wind
(routes drift downwind by up to 4 km, ground speed changes with heading) and the runway in use
(approaches and departures from the other side when the wind turns).
"""

from __future__ import annotations

import csv
import datetime as dt
import heapq
import logging
import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

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
PARIS_WINDOW_START = dt.datetime(2021, 10, 7, 12, 0, 1, tzinfo=dt.UTC)
PARIS_WINDOW_S = 3 * 3600.0
# Day 0 of generate_days is a Monday (weekends are quieter): replay a multi-day stream from a
# Monday 00:00 UTC such as this one.
WEEK_START = dt.datetime(2026, 3, 2, tzinfo=dt.UTC)


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
    day: int = 0                    # day index of generate_days (0-based); 0 for generate


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
    def for_range(cls, range_km: float) -> Corridors:
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


# ---- what changes from one day to the next ------------------------------------------------
WIND_MAX_KT = 55.0
# Ground speed changes by wind / WIND_REF_KT of itself: 55 kt against a 450 kt jet is ~12 %.
WIND_REF_KT = 400.0
DRIFT_MAX_KM = 4.0                  # downwind shift of the routes at WIND_MAX_KT
TAILWIND_LIMIT_KT = 5.0             # an airport leaves its preferred direction above this
WEEKDAY_FACTOR = (1.0, 1.0, 1.0, 1.0, 1.05, 0.8, 0.85)      # Monday .. Sunday
VOLUME_NOISE = 0.15


@dataclass(frozen=True)
class DayConditions:
    """The weather and runway use of one day. The default (calm, preferred runways) is what
    :func:`generate` flies, so its flights do not change."""

    day: int = 0
    wind_from_deg: float = 0.0          # meteorological: where the wind comes from
    wind_kt: float = 0.0
    drift_km: float = 0.0               # routes shift this far downwind (lateral part only)
    runway_flipped: tuple[bool, ...] = ()   # per airport: landing on runway_heading + 180

    @classmethod
    def draw(cls, day: int, c: Corridors, rng: np.random.Generator) -> DayConditions:
        # Prevailing westerlies with spells of north-easterly wind (as around Paris), so the
        # preferred westerly runways are used most days and the other direction sometimes.
        west = rng.random() < 0.7
        wind_from = float(rng.normal(250.0, 40.0) if west else rng.normal(50.0, 35.0)) % 360
        wind_kt = float(rng.uniform(5.0, WIND_MAX_KT))
        flipped = tuple(_tailwind_kt(wind_from, wind_kt, h) > TAILWIND_LIMIT_KT
                        for h in c.runway_heading)
        return cls(day, wind_from, wind_kt, DRIFT_MAX_KM * wind_kt / WIND_MAX_KT, flipped)

    def runway(self, c: Corridors, i: int) -> float:
        """Landing direction of airport ``i`` today (deg)."""
        flipped = i < len(self.runway_flipped) and self.runway_flipped[i]
        return (c.runway_heading[i] + 180.0) % 360 if flipped else c.runway_heading[i]

    def speed_factor(self, heading_deg: float) -> float:
        """Ground speed / airspeed when flying ``heading_deg``: faster downwind."""
        if self.wind_kt == 0.0:
            return 1.0
        tail = -math.cos(math.radians(heading_deg - self.wind_from_deg))
        return 1.0 + self.wind_kt / WIND_REF_KT * tail

    def lateral_km(self, heading_deg: float) -> float:
        """Downwind shift of a route flown on ``heading_deg``, along its left normal
        (``_unit(heading + 90)``); the same line whichever way it is flown."""
        if self.drift_km == 0.0:
            return 0.0
        downwind = _unit(self.wind_from_deg + 180.0)
        return float(self.drift_km * downwind @ _unit(heading_deg + 90.0))


CALM = DayConditions()


def _tailwind_kt(wind_from_deg: float, wind_kt: float, heading_deg: float) -> float:
    return -wind_kt * math.cos(math.radians(heading_deg - wind_from_deg))


# ---- flight generators: each returns (points (n, 2) km at 1 s, altitude ft, speed kt) ---------
def _profile(n: int, start_ft: float, end_ft: float) -> np.ndarray:
    return np.linspace(start_ft, end_ft, n)


def _transit(c: Corridors, rng: np.random.Generator, day: DayConditions = CALM):
    heading, offset = c.transits[rng.integers(len(c.transits))]
    heading += rng.normal(0, 1.0) + (180.0 if rng.random() < 0.5 else 0.0)
    a, b = _chord(heading, offset + rng.normal(0, 1.5) + day.lateral_km(heading), c.radius)
    gs = rng.uniform(400, 480) * day.speed_factor(heading)
    pts = _resample(np.stack([a, b]), gs * KT_TO_KMS)
    alt = np.full(len(pts), rng.choice([28000, 31000, 34000, 37000]) + 0.0)
    return pts, alt, gs


def _approach_path(c: Corridors, rng: np.random.Generator, day: DayConditions = CALM
                   ) -> tuple[np.ndarray, int]:
    i = int(rng.integers(len(c.airports)))
    apt, rwy = c.airports[i], day.runway(c, i)
    gate = _edge_point(c.gates[i][rng.integers(len(c.gates[i]))] + rng.normal(0, 1.5), c.radius)
    final_fix = apt - 18.0 * _unit(rwy) + rng.normal(0, 0.3, 2)
    if day.drift_km:
        # The inbound leg drifts with the wind; the final approach is flown on the runway axis.
        leg = final_fix - gate
        heading = math.degrees(math.atan2(leg[0], leg[1]))
        gate = gate + day.lateral_km(heading) * _unit(heading + 90.0)
    return np.stack([gate, final_fix, apt]), i


def _approach(c: Corridors, rng: np.random.Generator, day: DayConditions = CALM,
              outbound: bool = False):
    path, i = _approach_path(c, rng, day)
    # The wind on the runway axis sets the ground speed (flown the other way when outbound).
    axis = day.runway(c, i) + (180.0 if outbound else 0.0)
    gs = rng.uniform(220, 260) * day.speed_factor(axis)
    pts = _resample(path, gs * KT_TO_KMS)
    return pts, _profile(len(pts), rng.uniform(11000, 15000), 1500), gs


def _departure(c: Corridors, rng: np.random.Generator, day: DayConditions = CALM):
    pts, alt, gs = _approach(c, rng, day, outbound=True)
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


def _holding(c: Corridors, rng: np.random.Generator, day: DayConditions = CALM):
    path, _ = _approach_path(c, rng, day)
    fix = path[0] + (path[1] - path[0]) * rng.uniform(0.4, 0.8)
    hold = _racetrack(fix, rng.uniform(0, 360), rng.uniform(8, 14), rng.uniform(3, 4.5),
                      int(rng.integers(2, 5)))
    gs = rng.uniform(210, 240)
    pts = _resample(np.concatenate([path[:1], [fix], hold, [fix], path[1:]]), gs * KT_TO_KMS)
    return pts, np.full(len(pts), rng.uniform(8000, 14000)), gs


def _orbit(c: Corridors, rng: np.random.Generator, day: DayConditions = CALM):
    r = rng.uniform(3, 8)
    center = _random_spot(c, rng, r + 5)
    laps = rng.uniform(3, 7)
    a0 = rng.uniform(0, 2 * math.pi)
    circle = _arc(center, r, a0, a0 + 2 * math.pi * laps)
    return _with_pattern(c, rng, circle, rng.uniform(180, 240), rng.uniform(5000, 15000))


def _survey(c: Corridors, rng: np.random.Generator, day: DayConditions = CALM):
    leg, spacing, legs = rng.uniform(20, 35), rng.uniform(2, 4), int(rng.integers(5, 10))
    origin = _random_spot(c, rng, leg + spacing * legs)
    heading = rng.uniform(0, 360)
    d, n = _unit(heading), _unit(heading + 90)
    pts = []
    for k in range(legs):
        a = origin + k * spacing * n
        pts += [a, a + leg * d] if k % 2 == 0 else [a + leg * d, a]
    return _with_pattern(c, rng, np.array(pts), rng.uniform(120, 160), rng.uniform(3000, 9000))


def _calibration(c: Corridors, rng: np.random.Generator, day: DayConditions = CALM):
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


def _off_corridor(c: Corridors, rng: np.random.Generator, day: DayConditions = CALM):
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
    gs = rng.uniform(300, 450) * day.speed_factor(math.degrees(math.atan2(*(b - a))))
    pts = _resample(np.stack([a, mid, b]), gs * KT_TO_KMS)
    return pts, np.full(len(pts), rng.uniform(15000, 30000)), gs


# Working patterns (orbit, survey, calibration) ignore the day: they are flown where the work
# is, at an airspeed, in every direction.
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
                ref_lat: float, ref_lon: float, conditions: DayConditions = CALM) -> SimFlight:
    pts, alt, gs = GENERATORS[kind](c, rng, conditions)
    pts = pts + rng.normal(0, 0.01, pts.shape)           # ~10 m position noise
    n = len(pts)
    step = np.diff(pts, axis=0, append=pts[-1:] + (pts[-1:] - pts[-2:-1]))
    track = np.degrees(np.arctan2(step[:, 0], step[:, 1])) % 360
    alt = np.round(alt / 25) * 25
    vrate = np.gradient(alt) * 60.0 if n > 1 else np.zeros(n)
    lat, lon = _to_latlon(pts[:, 0], pts[:, 1], ref_lat, ref_lon)
    return SimFlight(icao24, _callsign(rng), kind, int(kind in ANOMALY_KINDS),
                     start_s + np.arange(n, dtype=float), lat, lon, alt, np.full(n, gs),
                     track, np.round(vrate / 64) * 64, conditions.day)


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


# ---- several days of one site ----------------------------------------------------------------
def day_conditions(days: int, *, seed: int = 0, range_km: float = 121.0) -> list[DayConditions]:
    """Weather and runway use of each day of :func:`generate_days` with the same arguments."""
    c = Corridors.for_range(range_km)
    return [DayConditions.draw(d, c, _day_rng(seed, d)) for d in range(days)]


def _day_rng(seed: int, day: int) -> np.random.Generator:
    # One stream per day: day d is the same whether 3 or 7 days are generated.
    return np.random.default_rng([seed, day])


def day_volume(day: int, flights_per_day: int, rng: np.random.Generator) -> int:
    """Flights of one day: ``flights_per_day`` on an ordinary weekday (day 0 is a Monday),
    quieter weekends, +-15 % from day to day."""
    noise = rng.uniform(1.0 - VOLUME_NOISE, 1.0 + VOLUME_NOISE)
    return max(round(flights_per_day * WEEKDAY_FACTOR[day % 7] * noise), 0)


def daily_shape(active_hours: tuple[float, float] = (5, 23), bins: int = 1440) -> np.ndarray:
    """Probability of a flight starting in each of ``bins`` equal parts of the day: a few at
    night, a morning peak three hours after the first departures, an evening peak before the
    last. Hours are 24ths of the day, whatever its length."""
    h = (np.arange(bins) + 0.5) * 24.0 / bins
    first, last = active_hours
    peak = (np.exp(-0.5 * ((h - (first + 3.0)) / 1.5) ** 2)
            + 0.8 * np.exp(-0.5 * ((h - (last - 4.5)) / 1.5) ** 2))
    density = np.where((h >= first) & (h < last), 1.0 + peak, 0.08)
    return density / density.sum()


def _start_in_day(rng: np.random.Generator, shape: np.ndarray, day_s: float,
                  duration_s: float) -> float:
    """Start (s since the day's 00:00) drawn from the daily shape, the flight inside the day."""
    b = int(rng.choice(len(shape), p=shape))
    start = (b + rng.random()) * day_s / len(shape)
    return float(min(start, day_s - duration_s - 1.0))


def _anomaly_count(n: int, fraction: float, rng: np.random.Generator) -> int:
    # Rounded at random so that small days still get their share on average.
    return min(math.floor(n * fraction + rng.random()), n)


def generate_days(days: int, flights_per_day: int, *, anomaly_fraction: float = 0.02,
                  seed: int = 0, ref_lat: float = 48.88, ref_lon: float = 2.42,
                  range_km: float = 121.0, anomaly_kinds: Iterable[str] = PATTERN_KINDS,
                  day_s: float = 86400.0, active_hours: tuple[float, float] = (5, 23)
                  ) -> list[SimFlight]:
    """``days`` consecutive days of one site, in start order: the same corridors every day,
    that day's volume, daily shape, wind and runways (:class:`DayConditions`), and about
    ``anomaly_fraction`` of each day's flights anomalous (kinds cycle over the whole run).
    ``t`` is seconds since 00:00 of day 0; every flight lies wholly inside its day; icao24 is
    unique per flight."""
    c = Corridors.for_range(range_km)
    anomaly_kinds = tuple(anomaly_kinds)
    shape = daily_shape(active_hours)
    plans = []
    for d in range(days):
        rng = _day_rng(seed, d)
        conditions = DayConditions.draw(d, c, rng)
        n = day_volume(d, flights_per_day, rng)
        plans.append((rng, conditions, n, _anomaly_count(n, anomaly_fraction, rng)))
    total = sum(n for _, _, n, _ in plans)
    addresses = iter(np.random.default_rng(seed).choice(1 << 20, size=total, replace=False))
    flights: list[SimFlight] = []
    n_anomalies = 0
    for d, (rng, conditions, n, k) in enumerate(plans):
        kinds = [NORMAL_KINDS[int(rng.integers(len(NORMAL_KINDS)))] for _ in range(n - k)]
        kinds += [anomaly_kinds[(n_anomalies + j) % len(anomaly_kinds)] for j in range(k)]
        n_anomalies += k
        flights.extend(_fly_day(kinds, [f"{ICAO_PREFIX + int(next(addresses)):06x}"
                                        for _ in kinds], d, conditions, c, rng, shape, ref_lat,
                                ref_lon, day_s))
    flights.sort(key=lambda f: float(f.t[0]))
    return flights


def generate_day(day: int, conditions: DayConditions, n_normal: int, *,
                 patterns: Iterable[str] = PATTERN_KINDS, seed: int = 0, ref_lat: float = 48.88,
                 ref_lon: float = 2.42, range_km: float = 121.0,
                 icao_base: int = ICAO_PREFIX + 0x90000) -> list[SimFlight]:
    """One day (index ``day`` of a :func:`generate_days` run) flown in the given conditions
    (e.g. both runways the other way), with the daily shape: ``n_normal`` ordinary flights and
    one flight of each of ``patterns``; icao24 from ``icao_base`` on, apart from
    :func:`generate_days`' addresses."""
    c = Corridors.for_range(range_km)
    rng = np.random.default_rng([seed, day, 1])
    kinds = [NORMAL_KINDS[int(rng.integers(len(NORMAL_KINDS)))] for _ in range(n_normal)]
    kinds += list(patterns)
    out = _fly_day(kinds, [f"{icao_base + i:06x}" for i in range(len(kinds))], day, conditions,
                   c, rng, daily_shape(), ref_lat, ref_lon, 86400.0)
    return sorted(out, key=lambda f: float(f.t[0]))


def _fly_day(kinds: list[str], addresses: list[str], day: int, conditions: DayConditions,
             c: Corridors, rng: np.random.Generator, shape: np.ndarray, ref_lat: float,
             ref_lon: float, day_s: float) -> list[SimFlight]:
    """One flight of each kind, each started at a time of day drawn from ``shape``."""
    out = []
    for kind, icao24 in zip(kinds, addresses):
        f = make_flight(kind, icao24, 0.0, c, rng, ref_lat, ref_lon, conditions)
        if len(f.t) + 1.0 > day_s:
            raise ValueError(f"day_s={day_s:g} s is shorter than a {kind} flight ({len(f.t)} s)")
        f.t = f.t + day * day_s + _start_in_day(rng, shape, day_s, len(f.t))
        out.append(f)
    return out


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
    """icao24,label,kind per flight, and day when the flights span several days."""
    with_day = any(fl.day for fl in flights)
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["icao24", "label", "kind"] + (["day"] if with_day else []))
        for fl in flights:
            w.writerow([fl.icao24, fl.label, fl.kind] + ([fl.day] if with_day else []))


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
    """``adsb-pipeline simulate --out FILE.beast [--labels CSV] [--flights N] [--anomalies N]``
    or, for several days of one site, ``--days N [--flights PER_DAY] [--anomaly-fraction F]``."""
    days = getattr(args, "days", 1) or 1
    if days > 1:
        return _days_command(settings, args, days)
    flights = generate_for(settings, args.flights, args.anomalies, seed=args.seed)
    n = write_beast(Path(args.out), flights)
    if args.labels:
        write_labels(Path(args.labels), flights)
    print(f"{len(flights)} flights ({args.anomalies} anomalous), {n} Beast frames -> {args.out}"
          f" (counter tick 0 = start; replay with --start-time, e.g. "
          f"{PARIS_WINDOW_START:%Y-%m-%dT%H:%M:%SZ} to align with the Paris capture)")
    return 0


def _days_command(settings: Settings, args, days: int) -> int:
    flights = generate_days(days, args.flights, anomaly_fraction=args.anomaly_fraction,
                            seed=args.seed, ref_lat=settings.receiver_lat,
                            ref_lon=settings.receiver_lon, range_km=settings.range_km)
    n = write_beast(Path(args.out), flights)
    if args.labels:
        write_labels(Path(args.labels), flights)
    c = Corridors.for_range(settings.range_km)
    for d, cond in enumerate(day_conditions(days, seed=args.seed, range_km=settings.range_km)):
        day = [f for f in flights if f.day == d]
        runways = ", ".join(f"{cond.runway(c, i):03.0f}" for i in range(len(c.airports)))
        print(f"day {d} ({WEEK_START + dt.timedelta(days=d):%a}): {len(day)} flights "
              f"({sum(f.label for f in day)} anomalous), wind {cond.wind_from_deg:03.0f}/"
              f"{cond.wind_kt:.0f} kt, runways {runways}")
    print(f"{len(flights)} flights over {days} days, {n} Beast frames -> {args.out} (counter "
          f"tick 0 = 00:00 of day 0, a Monday; replay with --start-time "
          f"{WEEK_START:%Y-%m-%dT%H:%M:%SZ})")
    return 0
