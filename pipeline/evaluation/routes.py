"""Route anomalies from real flights: the right flight in the wrong place.

A real flight rotated about the receiver keeps its shape, speed, level and timing but is flown
where, or in a direction, the site's traffic does not fly (docs: autoencoder notes §9). Two
kinds, reported separately because they test different things:

* ``rotated_transit``: an en-route flight (both ends at the edge of coverage, above
  ``CRUISE_FT`` for most of the track) rotated by at least ``min_angle_deg``. What sets it
  apart is only where and which way it crosses the frame.
* ``approach_nowhere``: a flight with a low end inside coverage (an approach to, or a
  departure from, an airport of the region) rotated so that its low end lies at least
  ``NOWHERE_KM`` from every airport: a legitimate anomaly of its own, easier than a transit.

The leak to avoid: rotation keeps each position's distance to the receiver, but coverage is a
box (the Paris data was cut to one), so an end that was at the edge of coverage can land
mid-frame, and a detector would then find a flight that appears out of nowhere at cruise
level instead of the route. So a rotated flight is clipped to the box (its longest stretch
inside it) and kept only when each end is as real as the original's: an end that was at the
edge stays within ``EDGE_KM`` of it, an end that was deeper inside gets no deeper, a low end is
not clipped away; and a transit's clipped ends keep the original's entry and exit altitudes.

Each anomaly gets a fresh address from an unassigned block (``ICAO_PREFIX``, apart from
:mod:`pipeline.evaluation.simulate`'s) and a fresh callsign (the original flies at the same time:
two aircraft with one callsign would be a leak of their own). Timestamps and altitudes are the
original's. :func:`write_beast` encodes the anomalies with
:mod:`pipeline.evaluation.simulate`'s encoders as a stream aligned to the Paris capture;
:func:`write_labels` writes ``icao24,label,kind``.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple, Protocol

import numpy as np

from pipeline.evaluation import simulate
from pipeline.geo import EARTH_RADIUS_KM, haversine_km, to_local_km

KINDS = ("rotated_transit", "approach_nowhere")
ICAO_PREFIX = 0xF40000          # unassigned block, apart from simulate's 0xF00000 block

EDGE_KM = 5.0                   # an end this close to the box edge is "at the edge of coverage"
CRUISE_FT = 15_000.0            # a transit flies above this ...
CRUISE_SHARE = 0.8              # ... for at least this share of its positions with an altitude
LOW_FT = 3_000.0                # an end below this, inside the box, is an airport's
NOWHERE_KM = 15.0               # a low end this far from every airport lands nowhere
MIN_KM = 40.0                   # a clipped track shorter than this, or with fewer positions,
MIN_POSITIONS = 30              # is too short to show a route
END_ALT_FT = 2_000.0            # a transit's clipped ends keep the original's altitude +- this
ROUTE_KM = 5.0                  # a flight within this distance of a position ...
ROUTE_DEG = 30.0                # ... moving within this of its heading flies "there, that way"
ROUTE_CELL_KM = 1.0             # FlownMap's grid: 1 km cells (positions move <= 0.7 km) ...
ROUTE_SECTOR_DEG = 10.0         # ... and 10-degree heading sectors
ROUTE_SECTORS = 36
ANGLE_TRIES = 72                # random angles tried per candidate before giving up on it
_END_ROWS = 5                   # an end's altitude: median of its first 5 known altitudes,
                                # as the first row of a real track can be a 40,000 ft spike
VELOCITY_SPAN_S = 5.0           # ground speed, track, vertical rate: differences over +-5 s


class Box(NamedTuple):
    lat_min: float
    lat_max: float
    lon_min: float
    lon_max: float


# The Paris data was cut to this box (shared/data/README.md): coverage ends at its edges.
PARIS_BOX = Box(47.73, 49.99, 0.78, 4.06)

# Aerodromes of the region that take the traffic an ADS-B receiver sees (airliners, business
# jets, military transports), at their aerodrome reference points (ARP) as the French AIP
# publishes them (AD 2.2, SIA eAIP, www.sia.aviation-civile.gouv.fr), to 1e-4 deg. LFPG, LFPO,
# LFPB as given with the task; checked here: LFPN and LFOB against the eAIP of 21 MAR 2024,
# LFOX and LFPL against their visual approach charts, LFPT against its published 49 05 48 N
# 002 02 27 E, LFPV against where the Paris day's flights to it land (0.1 km); LFPM as
# recalled, unchecked. An error of a km is far below NOWHERE_KM. Every airport where a flight
# of the Paris day starts or ends low is in the list (LFPG, LFPO, LFPB, LFOB, LFPV, LFPN,
# LFOX), and rotated_flights also keeps clear of every low end of its input flights, so a
# field missing here still counts if the data uses it. Light-aircraft strips (Chelles, Meaux,
# Saint-Cyr, the Issy heliport, ...) are left out: an airliner cannot land there, and their
# 15 km disks would cover nearly all of the ring 9-20 km from the receiver into which the Paris
# airports' low ends rotate.
AIRPORTS: dict[str, tuple[float, float]] = {
    "LFPG": (49.0097, 2.5479),   # Paris-Charles de Gaulle
    "LFPO": (48.7233, 2.3794),   # Paris-Orly
    "LFPB": (48.9694, 2.4414),   # Paris-Le Bourget
    "LFOB": (49.4544, 2.1128),   # Beauvais-Tille
    "LFPV": (48.7742, 2.2017),   # Villacoublay-Velizy (military)
    "LFPN": (48.7497, 2.1111),   # Toussus-le-Noble
    "LFPT": (49.0967, 2.0408),   # Pontoise-Cormeilles
    "LFPM": (48.6047, 2.6711),   # Melun-Villaroche
    "LFPL": (48.8219, 2.6228),   # Lognes-Emerainville
    "LFOX": (48.3811, 2.0739),   # Etampes-Mondesir
}


class TrackLike(Protocol):
    """What :func:`rotated_flights` reads of a real flight (e.g. tests' ``Track``)."""

    icao24: str
    callsign: str | None
    t: np.ndarray            # Unix seconds, increasing
    lat: np.ndarray
    lon: np.ndarray
    alt: np.ndarray          # ft, NaN where unknown


@dataclass
class RouteAnomaly:
    """A rotated real flight: positions ``source[first:last]`` of input flight ``source``,
    rotated by ``angle_deg`` clockwise about the receiver."""

    icao24: str
    callsign: str
    kind: str
    label: int
    t: np.ndarray            # Unix seconds (the original's)
    lat: np.ndarray
    lon: np.ndarray
    alt: np.ndarray          # ft (the original's, NaN where unknown)
    angle_deg: float
    source: int
    source_icao24: str
    first: int
    last: int


# ---- geometry -----------------------------------------------------------------------------
def rotate_latlon(lat: np.ndarray, lon: np.ndarray, angle_deg: float, ref_lat: float,
                  ref_lon: float) -> tuple[np.ndarray, np.ndarray]:
    """Points rotated clockwise by ``angle_deg`` about the receiver, on the sphere: a bearing
    b from the receiver becomes b + angle; distances along the track and to the receiver stay
    exact. (A rotation in the local km frame would not: its scale drifts by ~2 % per degree of
    latitude away from the receiver's, which would change ground speeds by as much.)"""
    k = _unit_vector(np.float64(ref_lat), np.float64(ref_lon))
    v = _unit_vector(np.asarray(lat, dtype=np.float64), np.asarray(lon, dtype=np.float64))
    # Rodrigues about the outward axis through the receiver; a right-handed turn about it
    # takes east towards north, i.e. decreases bearings, hence the minus sign.
    a = -math.radians(angle_deg)
    r = v * math.cos(a) + np.cross(k, v) * math.sin(a) + np.outer(v @ k, k) * (1 - math.cos(a))
    return (np.degrees(np.arcsin(np.clip(r[:, 2], -1.0, 1.0))),
            np.degrees(np.arctan2(r[:, 1], r[:, 0])))


def _unit_vector(lat: np.ndarray | np.float64, lon: np.ndarray | np.float64) -> np.ndarray:
    p, q = np.radians(lat), np.radians(lon)
    return np.stack([np.cos(p) * np.cos(q), np.cos(p) * np.sin(q), np.sin(p)], axis=-1)


def to_latlon(x: np.ndarray, y: np.ndarray, ref_lat: float, ref_lon: float
              ) -> tuple[np.ndarray, np.ndarray]:
    """Inverse of :func:`pipeline.geo.to_local_km`."""
    k = math.pi / 180.0 * EARTH_RADIUS_KM
    return ref_lat + y / k, ref_lon + x / (k * math.cos(math.radians(ref_lat)))


def edge_depth_km(x: np.ndarray, y: np.ndarray, box: Box, ref_lat: float, ref_lon: float
                  ) -> np.ndarray:
    """How far inside the box each local point lies from its nearest edge (km; < 0 outside).
    The local projection is equirectangular, so the box is a rectangle in it."""
    x0, y0 = to_local_km(box.lat_min, box.lon_min, ref_lat, ref_lon)
    x1, y1 = to_local_km(box.lat_max, box.lon_max, ref_lat, ref_lon)
    return np.minimum(np.minimum(x - x0, x1 - x), np.minimum(y - y0, y1 - y))


def path_km(x: np.ndarray, y: np.ndarray) -> float:
    return float(np.hypot(np.diff(x), np.diff(y)).sum())


def _longest_run(inside: np.ndarray) -> tuple[int, int]:
    """[lo, hi) of the longest stretch of True (0, 0 if none)."""
    edges = np.diff(np.concatenate([[0], inside.astype(np.int8), [0]]))
    starts, stops = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)
    if starts.size == 0:
        return 0, 0
    i = int(np.argmax(stops - starts))
    return int(starts[i]), int(stops[i])


def _end_alt(alt: np.ndarray, at_start: bool) -> float:
    known = alt[np.isfinite(alt)]
    if known.size == 0:
        return math.nan
    return float(np.median(known[:_END_ROWS] if at_start else known[-_END_ROWS:]))


# ---- candidates ---------------------------------------------------------------------------
@dataclass(frozen=True)
class _Ends:
    depth: tuple[float, float]        # start, end: km inside the box
    alt: tuple[float, float]          # ft
    low: tuple[bool, bool]            # an airport's end (low, inside the box)


def _ends(x: np.ndarray, y: np.ndarray, alt: np.ndarray, box: Box, ref_lat: float,
          ref_lon: float) -> _Ends:
    depth = edge_depth_km(x[[0, -1]], y[[0, -1]], box, ref_lat, ref_lon)
    alts = (_end_alt(alt, True), _end_alt(alt, False))
    low = (bool(alts[0] <= LOW_FT and depth[0] > EDGE_KM),
           bool(alts[1] <= LOW_FT and depth[1] > EDGE_KM))
    return _Ends((float(depth[0]), float(depth[1])), alts, low)


def kind_of(track: TrackLike, *, box: Box = PARIS_BOX, ref_lat: float = 48.88,
            ref_lon: float = 2.42) -> str | None:
    """Which kind of anomaly a real flight can become, or None."""
    x, y = to_local_km(track.lat, track.lon, ref_lat, ref_lon)
    alt = np.asarray(track.alt, dtype=np.float64)
    e = _ends(x, y, alt, box, ref_lat, ref_lon)
    if any(e.low):
        return "approach_nowhere"
    known = alt[np.isfinite(alt)]
    cruising = known.size > 0 and float((known > CRUISE_FT).mean()) >= CRUISE_SHARE
    if cruising and max(e.depth) <= EDGE_KM:
        return "rotated_transit"
    return None


def _sites(tracks: Sequence[TrackLike], airports: dict[str, tuple[float, float]],
           box: Box, ref_lat: float, ref_lon: float) -> np.ndarray:
    """(m, 2) lat, lon of the airports and of every low end of the input flights."""
    pts = list(airports.values())
    for tr in tracks:
        x, y = to_local_km(tr.lat, tr.lon, ref_lat, ref_lon)
        e = _ends(x, y, np.asarray(tr.alt, dtype=np.float64), box, ref_lat, ref_lon)
        pts += [(float(tr.lat[i]), float(tr.lon[i])) for i, low in zip((0, -1), e.low) if low]
    return np.array(pts, dtype=np.float64).reshape(-1, 2)


def _nearest_site_km(lat: float, lon: float, sites: np.ndarray) -> float:
    return float(haversine_km(lat, lon, sites[:, 0], sites[:, 1]).min())


# ---- where the traffic flies, and which way --------------------------------------------------
class FlownMap:
    """Where, and in which direction, the reference flights fly: a grid of ``ROUTE_CELL_KM``
    cells x ``ROUTE_SECTOR_DEG`` heading sectors, each marked when a reference flight passed
    within ``ROUTE_KM`` of the cell moving within ``ROUTE_DEG`` of the sector's heading.

    A rotation can land a flight on another airway flown the same way (dense en-route
    airspace has many): that flight then flies where, and the way, others fly, and is no route
    anomaly whatever its label says. :meth:`off_route_share` measures how much of a flight
    flies where nobody does, independently of any detector's images (finer than their
    pixels, and over every reference flight, not a training window)."""

    def __init__(self, tracks: Sequence[TrackLike], box: Box, ref_lat: float, ref_lon: float):
        self.ref = (ref_lat, ref_lon)
        x0, y0 = to_local_km(box.lat_min, box.lon_min, ref_lat, ref_lon)
        x1, y1 = to_local_km(box.lat_max, box.lon_max, ref_lat, ref_lon)
        pad = ROUTE_KM + ROUTE_CELL_KM
        self.x0, self.y0 = float(x0) - pad, float(y0) - pad
        self.shape = (int((float(x1) + pad - self.x0) / ROUTE_CELL_KM) + 1,
                      int((float(y1) + pad - self.y0) / ROUTE_CELL_KM) + 1, ROUTE_SECTORS)
        seen = np.zeros(self.shape, dtype=bool)
        for tr in tracks:
            ix, iy, sec = self._cells(tr.lat, tr.lon)
            seen[ix, iy, sec] = True
        # Dilate: a disk of ROUTE_KM in space, +-ROUTE_DEG in heading (sectors wrap round).
        r = int(round(ROUTE_KM / ROUTE_CELL_KM))
        near = np.zeros_like(seen)
        for dx in range(-r, r + 1):
            for dy in range(-r, r + 1):
                if dx * dx + dy * dy <= r * r:
                    near |= _shifted(seen, dx, dy)
        k = int(round(ROUTE_DEG / ROUTE_SECTOR_DEG))
        self.flown = np.zeros_like(near)
        for ds in range(-k, k + 1):
            self.flown |= np.roll(near, ds, axis=2)

    def _cells(self, lat: np.ndarray, lon: np.ndarray
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        x, y = to_local_km(lat, lon, *self.ref)
        heading = np.degrees(np.arctan2(np.gradient(x), np.gradient(y))) % 360.0 \
            if len(x) > 1 else np.zeros(len(x))
        ix = np.clip(((x - self.x0) / ROUTE_CELL_KM).astype(int), 0, self.shape[0] - 1)
        iy = np.clip(((y - self.y0) / ROUTE_CELL_KM).astype(int), 0, self.shape[1] - 1)
        sec = (heading // ROUTE_SECTOR_DEG).astype(int) % ROUTE_SECTORS
        return ix, iy, sec

    def off_route_share(self, lat: np.ndarray, lon: np.ndarray) -> float:
        """Share of the positions at which no reference flight flew near, the same way."""
        lat, lon = np.asarray(lat, dtype=np.float64), np.asarray(lon, dtype=np.float64)
        if len(lat) == 0:
            return 0.0
        ix, iy, sec = self._cells(lat, lon)
        return float((~self.flown[ix, iy, sec]).mean())


def _shifted(a: np.ndarray, dx: int, dy: int) -> np.ndarray:
    """``a`` moved by (dx, dy) cells, zeros shifted in (no wrap)."""
    out = np.zeros_like(a)
    nx, ny = a.shape[0], a.shape[1]
    out[max(dx, 0):nx + min(dx, 0), max(dy, 0):ny + min(dy, 0)] = \
        a[max(-dx, 0):nx - max(dx, 0), max(-dy, 0):ny - max(dy, 0)]
    return out


# ---- one rotation -------------------------------------------------------------------------
def _try_rotation(tr: TrackLike, kind: str, angle: float, sites: np.ndarray, box: Box,
                  ref_lat: float, ref_lon: float):
    """(lo, hi, lat, lon) of the rotated, clipped flight, or None when it is no fair anomaly."""
    x, y = to_local_km(tr.lat, tr.lon, ref_lat, ref_lon)
    alt = np.asarray(tr.alt, dtype=np.float64)
    orig = _ends(x, y, alt, box, ref_lat, ref_lon)
    lat, lon = rotate_latlon(tr.lat, tr.lon, angle, ref_lat, ref_lon)
    xr, yr = to_local_km(lat, lon, ref_lat, ref_lon)
    depth = edge_depth_km(xr, yr, box, ref_lat, ref_lon)
    lo, hi = _longest_run(depth >= 0)
    if hi - lo < MIN_POSITIONS or path_km(xr[lo:hi], yr[lo:hi]) < MIN_KM:
        return None
    kept_alt = alt[lo:hi]
    for end, (idx, whole) in enumerate(((lo, 0), (hi - 1, len(x) - 1))):
        if orig.low[end]:
            # The airport end is the point of the anomaly: it must be there, unclipped, and
            # far from every airport (and from every place where an input flight went low).
            if idx != whole or _nearest_site_km(lat[idx], lon[idx], sites) < NOWHERE_KM:
                return None
            continue
        if depth[idx] > max(EDGE_KM, orig.depth[end]):
            return None                       # appears or vanishes deeper inside than it did
        if kind == "rotated_transit" and not (
                abs(_end_alt(kept_alt, end == 0) - orig.alt[end]) <= END_ALT_FT):
            return None                       # enters or leaves at another level than it did
    return lo, hi, lat[lo:hi], lon[lo:hi]


def _fresh_callsign(original: str | None, taken: set[str], rng: np.random.Generator) -> str:
    """The operator's prefix (airline callsigns: 3 letters + flight number) with a flight
    number no input flight uses; registration-like callsigns get random letters."""
    cs = (original or "").strip().upper()
    prefix = cs[:3] if len(cs) > 3 and cs[:3].isalpha() and cs[3].isdigit() else None
    while True:
        head = prefix or "".join(chr(ord("A") + int(i)) for i in rng.integers(0, 26, 3))
        name = f"{head}{int(rng.integers(100, 10000))}"
        if name not in taken:
            taken.add(name)
            return name


# ---- the test set -------------------------------------------------------------------------
def rotated_flights(tracks: Sequence[TrackLike], fraction: float = 0.05, *, seed: int = 0,
                    min_angle_deg: float = 60.0, ref_lat: float = 48.88, ref_lon: float = 2.42,
                    box: Box = PARIS_BOX,
                    airports: dict[str, tuple[float, float]] | None = None,
                    min_off_route: float = 0.0,
                    reference: Sequence[TrackLike] | None = None
                    ) -> list[RouteAnomaly]:
    """Route anomalies made of ``fraction`` of each kind's candidates among ``tracks``
    (rounded, at least one where there is a candidate), each rotated by an angle of at least
    ``min_angle_deg`` either way. Candidates are taken in a random order and each is tried at
    up to ``ANGLE_TRIES`` random angles; one with no fair rotation is skipped, so a kind can
    come out short. Deterministic for a seed; transits first, then approaches.

    ``min_off_route`` > 0 keeps a rotated transit only when at least that share of its
    positions lies where no flight of ``reference`` (default ``tracks``) flew near, the same
    way (:class:`FlownMap`): in dense en-route airspace a rotation often lands a flight on
    another airway flown the same way, which makes no route anomaly. Approaches are kept as
    before: their low end, far from every airport, is the anomaly."""
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"fraction must be within [0, 1], not {fraction}")
    if not 0.0 < min_angle_deg <= 180.0:
        raise ValueError(f"min_angle_deg must be within (0, 180], not {min_angle_deg}")
    if not 0.0 <= min_off_route <= 1.0:
        raise ValueError(f"min_off_route must be within [0, 1], not {min_off_route}")
    rng = np.random.default_rng(seed)
    airports = AIRPORTS if airports is None else airports
    flown = (FlownMap(tracks if reference is None else reference, box, ref_lat, ref_lon)
             if min_off_route > 0 else None)
    sites = _sites(tracks, airports, box, ref_lat, ref_lon)
    kinds = [kind_of(tr, box=box, ref_lat=ref_lat, ref_lon=ref_lon) for tr in tracks]
    taken = {(tr.callsign or "").strip().upper() for tr in tracks}
    out: list[RouteAnomaly] = []
    for kind in KINDS:
        candidates = [i for i, k in enumerate(kinds) if k == kind]
        target = max(1, round(fraction * len(candidates))) if candidates and fraction else 0
        for i in rng.permutation(np.array(candidates, dtype=np.int64)).tolist():
            if sum(a.kind == kind for a in out) >= target:
                break
            tr = tracks[i]
            # Signed angles, |angle| >= min_angle_deg: uniform over the allowed arc.
            for angle in rng.uniform(min_angle_deg, 360.0 - min_angle_deg, ANGLE_TRIES):
                got = _try_rotation(tr, kind, float(angle), sites, box, ref_lat, ref_lon)
                if got is None:
                    continue
                lo, hi, lat, lon = got
                if (flown is not None and kind == "rotated_transit"
                        and flown.off_route_share(lat, lon) < min_off_route):
                    continue
                out.append(RouteAnomaly(
                    f"{ICAO_PREFIX + len(out):06x}", _fresh_callsign(tr.callsign, taken, rng),
                    kind, 1, np.asarray(tr.t[lo:hi], dtype=np.float64), lat, lon,
                    np.asarray(tr.alt[lo:hi], dtype=np.float64),
                    (float(angle) + 180.0) % 360.0 - 180.0, i, tr.icao24, lo, hi))
                break
    return out


# ---- as a Beast stream ----------------------------------------------------------------------
def to_sim_flight(a: RouteAnomaly, start_unix: float) -> simulate.SimFlight:
    """The anomaly as :class:`pipeline.evaluation.simulate.SimFlight` (``t`` from ``start_unix``).

    Positions without an altitude are left out (the encoder has no "altitude unknown"), so
    every value sent is a real one, rotated. Ground speed, track and vertical rate are
    differences over +-``VELOCITY_SPAN_S`` of the rotated positions, so repeated positions of
    the real feed do not give zero or doubled speeds."""
    keep = np.isfinite(a.alt)
    t, lat, lon, alt = a.t[keep], a.lat[keep], a.lon[keep], a.alt[keep]
    gs, track, vrate = _velocities(t, lat, lon, alt)
    return simulate.SimFlight(
        icao24=a.icao24, callsign=a.callsign, kind=a.kind, label=a.label, t=t - start_unix,
        lat=lat, lon=lon, alt=alt, gs=gs, track=track, vrate=vrate)


def _velocities(t: np.ndarray, lat: np.ndarray, lon: np.ndarray, alt: np.ndarray
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Ground speed (kt), track (deg) and vertical rate (ft/min, 64 ft/min steps)."""
    if t.size == 0:
        return np.empty(0), np.empty(0), np.empty(0)
    x, y = to_local_km(lat, lon, float(np.mean(lat)), float(np.mean(lon)))
    t0 = np.maximum(t - VELOCITY_SPAN_S, t[0])
    t1 = np.minimum(t + VELOCITY_SPAN_S, t[-1])
    span = np.maximum(t1 - t0, 1e-3)
    vx = (np.interp(t1, t, x) - np.interp(t0, t, x)) / span          # km/s
    vy = (np.interp(t1, t, y) - np.interp(t0, t, y)) / span
    vrate = (np.interp(t1, t, alt) - np.interp(t0, t, alt)) / span * 60.0
    return (np.hypot(vx, vy) / simulate.KT_TO_KMS, np.degrees(np.arctan2(vx, vy)) % 360.0,
            np.round(vrate / 64.0) * 64.0)


def write_beast(path: Path, anomalies: Sequence[RouteAnomaly],
                start: dt.datetime = simulate.PARIS_WINDOW_START) -> int:
    """Beast stream of the anomalies, counter tick 0 = ``start`` (the Paris capture's first
    row): replay with ``ingest FILE --start-time 2021-10-07T12:00:01Z`` into the database
    that holds the Paris day. Returns the number of frames written."""
    flights = [to_sim_flight(a, start.timestamp()) for a in anomalies]
    return simulate.write_beast(Path(path), [f for f in flights if len(f.t)])


def write_labels(path: Path, anomalies: Sequence[RouteAnomaly]) -> None:
    """CSV ``icao24,label,kind`` (the evaluator's label file)."""
    simulate.write_labels(Path(path), [to_sim_flight(a, 0.0) for a in anomalies])
