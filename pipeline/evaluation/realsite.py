"""A real site to judge the model by: the Swiss day of traffic with real patterns flown in it.

What is real and what is arranged (say it with every figure measured on it):

* **real**: every ordinary flight: the ``traffic`` package's day over Switzerland (2018-08-01,
  05-22 UTC, 1,244 flights of 842 aircraft, one position every 10 s, OpenSky Network), with
  its real times, positions and altitudes; and every anomalous *pattern*: real flights that
  navaid-calibration aircraft, survey aircraft, fire fighters, TV relays over a race,
  refuelling tankers, gliders and sky-drawing pilots flew elsewhere (Europe, North America).
* **arranged**: where and when the patterns fly. Each pattern flight is moved, rigidly on the
  local plane, so that its middle lies at a random point of the central part of the Swiss
  frame, cut to the coverage box (its longest stretch inside) and to at most
  ``PATTERN_MAX_HOURS``, thinned to the site's cadence (one position every 10 s, as the Swiss
  day has), and given a random start within the day. Its shape, size, speeds,
  altitudes and timing within the flight are the real ones. A moved flight counts as a pattern
  only if it still turns through ``PATTERN_MIN_TURNING_DEG`` within coverage (two full circles:
  the Swiss day's ordinary flights turn at most 556 degrees), so that a flight labelled a
  pattern is one: a calibration aircraft's ferry leg is not.

The flights reach the database through the product's own path: written as SBS/BaseStation
lines (what dump1090 serves on port 30003), replayed by the ingest, cut into flights and drawn
by the flights pass. ``adsb-pipeline realsite swiss --labels FILE`` does it, then ``evaluate
--labels FILE --train-until 2018-08-01T12:00:00Z`` judges as deployed: trained on the 7-hour
morning, judged on the afternoon it never saw.
"""

from __future__ import annotations

import csv
import dataclasses
import datetime as dt
import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from pipeline.config import Settings
from pipeline.evaluation import samples
from pipeline.evaluation.routes import Box, edge_depth_km, to_latlon
from pipeline.evaluation.samples import Track
from pipeline.flights import features
from pipeline.geo import to_local_km

log = logging.getLogger(__name__)

# The Swiss sample was cut to this box: coverage ends at its edges.
SWISS_BOX = Box(45.818, 47.808, 5.956, 10.488)
# The frame: the box's centre, and a range that takes in its corners' east-west extent
# (172 km) so that every position of the box is drawn.
SWISS_CENTRE = (46.813, 8.222)
SWISS_RANGE_KM = 175.0
SWISS_DAY = dt.datetime(2018, 8, 1, tzinfo=dt.timezone.utc)
SWISS_SPLIT = dt.datetime(2018, 8, 1, 12, 0, tzinfo=dt.timezone.utc)   # 7 h of morning to train
TRAFFIC_HOURS = (5.0, 22.0)             # the sample's hours of the day

# Real pattern flights by kind: sample files (relative to the samples folder, globs allowed).
PATTERN_SOURCES: dict[str, tuple[str, ...]] = {
    "calibration": ("calibration/*.json.gz", "collections/savan.json.gz"),
    "survey": ("surveys/*.json.gz", "surveillance/*.json.gz"),
    "firefighting": ("firefighting/*.json.gz",),
    "tv_relay": ("tv_relay/*.json.gz",),
    "refuelling": ("military/inflight_refuelling.json.gz",),
    "glider": ("gliders/*.json.gz",),
    "sky_drawing": tuple(f"featured/{n}.json.gz" for n in (
        "easter_rabbit", "kiwi", "texas_longhorn", "thankyou", "turkish_flag", "anzac_day",
        "airbus_tree", "switzerland_map", "zero_gravity", "belevingsvlucht")),
}
PATTERN_MIN_TURNING_DEG = 720.0
SWISS_CADENCE_S = 10.0                  # the Swiss sample has one position every 10 s
PATTERN_MAX_HOURS = 3.0
PATTERN_ICAO_PREFIX = 0xF80000          # unassigned block, apart from simulate's and routes'
_CENTRAL = 0.6                          # pattern middles fall in the central 60 % of the box


@dataclass
class Site:
    """Tracks of a site with their labels, and the frame to draw them in."""

    tracks: list[Track]
    centre: tuple[float, float]
    range_km: float
    box: Box
    notes: list[str]

    @property
    def labels(self) -> dict[str, tuple[int, str]]:
        return {t.icao24: (t.label, t.kind) for t in self.tracks}


def swiss_day(samples_dir: Path) -> list[Track]:
    """The real Swiss day, flights cut at silences over 10 minutes (the product's default)."""
    return samples.read(samples_dir / "collections" / "switzerland.json.gz")


def pattern_pool(samples_dir: Path) -> list[Track]:
    """Every real pattern flight of the samples, labelled 1 with its kind (not yet moved)."""
    out = []
    for kind, globs in PATTERN_SOURCES.items():
        for pattern in globs:
            for path in sorted(samples_dir.glob(pattern)):
                for tr in samples.read(path):
                    tr.label, tr.kind = 1, kind
                    out.append(tr)
    return out


def thin(tr: Track, cadence_s: float) -> Track:
    """The flight with at most one position every ``cadence_s`` (the first row at or after
    each step). Why: pattern samples come at 1-5 s, the Swiss day at 10 s; left as they are, a
    pattern would stand out by its denser, noisier track (total turning grows with position
    noise), which no real site's patterns do."""
    keep, last = [], -np.inf
    for i, t in enumerate(tr.t):
        if t - last >= cadence_s - 1e-6:
            keep.append(i)
            last = t
    idx = np.array(keep, dtype=np.int64)
    return Track(tr.icao24, tr.callsign, tr.t[idx], tr.lat[idx], tr.lon[idx], tr.alt[idx],
                 tr.label, tr.kind)


def relocate(tr: Track, centre: tuple[float, float], start_unix: float, box: Box,
             max_hours: float = PATTERN_MAX_HOURS) -> Track | None:
    """The flight moved so that its middle (median position) lies at ``centre``, cut to its
    longest stretch inside ``box`` and to ``max_hours`` around its middle, starting at
    ``start_unix``; None if too little is left. The move is rigid on the local plane of the
    flight's middle (distances within the flight kept to well under 1 % over a pattern's tens
    of km)."""
    mid_lat, mid_lon = float(np.median(tr.lat)), float(np.median(tr.lon))
    x, y = to_local_km(tr.lat, tr.lon, mid_lat, mid_lon)
    lat, lon = to_latlon(x, y, centre[0], centre[1])
    bx, by = to_local_km(lat, lon, centre[0], centre[1])
    inside = edge_depth_km(bx, by, box, centre[0], centre[1]) > 0
    lo, hi = _longest_run(inside)
    t = tr.t[lo:hi]
    if t.size < 20:
        return None
    if t[-1] - t[0] > max_hours * 3600:
        mid = float(np.median(t))
        keep = np.abs(t - mid) <= max_hours * 1800
        idx = np.arange(lo, hi)[keep]
        lo, hi = int(idx[0]), int(idx[-1]) + 1
    return Track(tr.icao24, tr.callsign, tr.t[lo:hi] - tr.t[lo] + start_unix, lat[lo:hi],
                 lon[lo:hi], tr.alt[lo:hi], tr.label, tr.kind)


def _longest_run(inside: np.ndarray) -> tuple[int, int]:
    best, start, run = (0, 0), None, 0
    for i, v in enumerate(np.append(inside, False)):
        if v and start is None:
            start = i
        elif not v and start is not None:
            if i - start > run:
                best, run = (start, i), i - start
            start = None
    return best


def turning_deg(tr: Track, centre: tuple[float, float]) -> float:
    return features.compute(tr.lat, tr.lon, centre[0], centre[1]).turning_deg


def place_patterns(pool: Sequence[Track], n: int, rng: np.random.Generator, box: Box,
                   centre: tuple[float, float], windows: Sequence[tuple[float, float]],
                   prefix: int = PATTERN_ICAO_PREFIX, cadence_s: float = SWISS_CADENCE_S
                   ) -> list[Track]:
    """``n`` pattern flights drawn from ``pool`` without repeats, each moved to a random place
    of the central part of ``box`` and a random start within one of ``windows`` (Unix s,
    one drawn at random for each), so that the flight ends inside its window. Flights that no longer turn
    ``PATTERN_MIN_TURNING_DEG`` once moved and cut are skipped."""
    out: list[Track] = []
    half_lat = (box.lat_max - box.lat_min) / 2 * _CENTRAL
    half_lon = (box.lon_max - box.lon_min) / 2 * _CENTRAL
    mid = ((box.lat_min + box.lat_max) / 2, (box.lon_min + box.lon_max) / 2)
    for i in _interleaved(pool, rng):
        if len(out) >= n:
            break
        lo, hi = windows[int(rng.integers(len(windows)))]
        where = (mid[0] + rng.uniform(-half_lat, half_lat), mid[1] + rng.uniform(-half_lon, half_lon))
        moved = relocate(thin(pool[i], cadence_s), where, 0.0, box)
        if moved is None or turning_deg(moved, centre) < PATTERN_MIN_TURNING_DEG:
            continue
        span = float(moved.t[-1])
        if span >= hi - lo:
            continue
        moved.t = moved.t + rng.uniform(lo, hi - span)
        moved.icao24 = f"{prefix + len(out):06x}"
        out.append(moved)
    if len(out) < n:
        log.warning("only %d of %d pattern flights could be placed", len(out), n)
    return out


def _interleaved(pool: Sequence[Track], rng: np.random.Generator) -> list[int]:
    """Indices of ``pool`` shuffled within each kind, then taken a kind at a time, so that
    every kind is drawn (fire fighting alone has more flights than the others together)."""
    kinds = sorted({t.kind for t in pool})
    per = [[i for i in rng.permutation(len(pool)).tolist() if pool[i].kind == k] for k in kinds]
    return [q[j] for j in range(max(map(len, per), default=0)) for q in per if j < len(q)]


def split_pool(pool: Sequence[Track], rng: np.random.Generator
               ) -> tuple[list[Track], list[Track]]:
    """``pool`` dealt into two halves that share no flight, alternately from the order that
    takes a kind at a time: patterns to judge by and patterns to put in a training window, so
    that no judged pattern was trained on."""
    order = _interleaved(pool, rng)
    return [pool[i] for i in order[0::2]], [pool[i] for i in order[1::2]]


def swiss_halves() -> tuple[tuple[float, float], tuple[float, float]]:
    """(start, end) in Unix seconds of the Swiss day's morning (trained on) and afternoon
    (judged)."""
    day0, split = SWISS_DAY.timestamp(), SWISS_SPLIT.timestamp()
    return (day0 + TRAFFIC_HOURS[0] * 3600, split), (split, day0 + TRAFFIC_HOURS[1] * 3600)


def swiss(samples_dir: Path, *, fraction: float = 0.05, seed: int = 0) -> Site:
    """The Swiss day plus real patterns making ``fraction`` of the flights of each half of the
    day (the 7-hour morning that is trained on and the afternoon that is judged), none of them
    flown twice."""
    ordinary = swiss_day(samples_dir)
    rng = np.random.default_rng(seed)
    windows = list(swiss_halves())
    n = round(fraction / (1 - fraction) * len(ordinary)) if fraction else 0
    patterns = place_patterns(pattern_pool(samples_dir), n, rng, SWISS_BOX, SWISS_CENTRE,
                              windows)
    notes = [f"ordinary: {len(ordinary)} real flights of the traffic sample 'switzerland' "
             "(2018-08-01)",
             f"patterns: {len(patterns)} real pattern flights moved into the frame and re-timed "
             f"({', '.join(f'{k} {sum(p.kind == k for p in patterns)}' for k in PATTERN_SOURCES)})"]
    return Site(ordinary + patterns, SWISS_CENTRE, SWISS_RANGE_KM, SWISS_BOX, notes)


# ---- a week at one site -------------------------------------------------------------------------
WEEK_DAYS = 7
SWISS_AIRPORTS: dict[str, tuple[float, float]] = {
    "LSZH": (47.4647, 8.5492),          # Zurich
    "LSGG": (46.2381, 6.1090),          # Geneva
    "LFSB": (47.5896, 7.5299),          # Basel-Mulhouse
    "LSZB": (46.9141, 7.4994),          # Bern
    "LSZA": (46.0043, 8.9106),          # Lugano
    "LSZR": (47.4850, 9.5608),          # St. Gallen-Altenrhein
    "LSMP": (46.8433, 6.9150),          # Payerne (military)
    "LSZC": (46.9746, 8.3964),          # Buochs
}


# A rotated transit of the week is a route anomaly only when at least half of its positions
# lie where no real flight of the sample flew near the same way (routes.FlownMap: 5 km, 30
# degrees). Without it, half of them flew >= 87 % of their length along an airway flown that way.
ROUTES_MIN_OFF_ROUTE = 0.5


def judged_day_start() -> dt.datetime:
    """Start of the week's last day: train before it, judge on it."""
    return SWISS_DAY + dt.timedelta(days=WEEK_DAYS - 1)


def swiss_week(samples_dir: Path, *, fraction: float = 0.05, routes_fraction: float = 0.1,
               seed: int = 0, min_off_route: float = ROUTES_MIN_OFF_ROUTE) -> Site:
    """A week at the Swiss site made of the real day: each real flight is flown on one of
    ``WEEK_DAYS`` days at its own time of day (no flight twice, ~180 a day); real patterns make
    ``fraction`` of each day; on the last day, ``routes_fraction`` of its flights are real
    flights of that day rotated about the site's centre (route anomalies, kind
    ``rotated_transit``). The sample is en-route traffic only (every position above 30,000 ft):
    there is no runway whose direction could change, and no approach to rotate."""
    from pipeline.evaluation import routes

    rng = np.random.default_rng(seed)
    day_s = 86400.0
    real = swiss_day(samples_dir)
    days = rng.integers(WEEK_DAYS, size=len(real))
    ordinary = [dataclasses.replace(tr, t=tr.t + d * day_s) for tr, d in zip(real, days.tolist())]
    day0 = SWISS_DAY.timestamp()
    windows = [(day0 + d * day_s + TRAFFIC_HOURS[0] * 3600, day0 + d * day_s + TRAFFIC_HOURS[1] * 3600)
               for d in range(WEEK_DAYS)]
    n = round(fraction / (1 - fraction) * len(ordinary)) if fraction else 0
    patterns = place_patterns(pattern_pool(samples_dir), n, rng, SWISS_BOX, SWISS_CENTRE,
                              windows)
    last = [tr for tr, d in zip(ordinary, days.tolist()) if d == WEEK_DAYS - 1]
    rotated = [Track(a.icao24, a.callsign, a.t, a.lat, a.lon, a.alt, 1, a.kind)
               for a in routes.rotated_flights(last, routes_fraction, seed=seed + 1,
                                               ref_lat=SWISS_CENTRE[0], ref_lon=SWISS_CENTRE[1],
                                               box=SWISS_BOX, airports=SWISS_AIRPORTS,
                                               min_off_route=min_off_route, reference=real)]
    notes = [f"ordinary: {len(ordinary)} real flights of the traffic sample 'switzerland' "
             f"(2018-08-01), each flown on one of {WEEK_DAYS} days (from "
             f"{SWISS_DAY:%Y-%m-%d}) at its own time of day",
             f"patterns: {len(patterns)} real pattern flights moved into the frame, spread over "
             "the days",
             f"route anomalies on day {WEEK_DAYS}: {len(rotated)} of its real flights rotated "
             f"about the centre ({', '.join(f'{k} {sum(r.kind == k for r in rotated)}' for k in routes.KINDS)})"]
    return Site(ordinary + patterns + rotated, SWISS_CENTRE, SWISS_RANGE_KM, SWISS_BOX, notes)


# ---- into the database through the product's path ---------------------------------------------
def write_sbs(path: Path, tracks: Sequence[Track]) -> int:
    """The tracks as SBS lines in time order: an identification (MSG,1) at each flight's first
    position and every 60 s, an airborne position (MSG,3) for every row. Returns lines written."""
    from pipeline.receiver.sbs import format_line

    events: list[tuple[float, int, int]] = []        # (time, track, row)
    for k, tr in enumerate(tracks):
        events.extend((float(t), k, j) for j, t in enumerate(tr.t))
    events.sort()
    last_id: dict[int, float] = {}
    n = 0
    with open(path, "w") as out:
        for t, k, j in events:
            tr = tracks[k]
            if tr.callsign and t - last_id.get(k, -1e18) >= 60.0:
                out.write(format_line(1, tr.icao24, t, callsign=_callsign(tr.callsign)) + "\n")
                last_id[k] = t
                n += 1
            alt = tr.alt[j]
            out.write(format_line(3, tr.icao24, t, altitude=None if not np.isfinite(alt)
                                  else int(round(alt)), latitude=round(float(tr.lat[j]), 6),
                                  longitude=round(float(tr.lon[j]), 6)) + "\n")
            n += 1
    return n


def _callsign(cs: str) -> str:
    clean = "".join(c for c in cs.upper() if c.isalnum())[:8]
    return clean or "UNKNOWN"


def site_settings(settings: Settings, site: Site) -> Settings:
    """The settings of a receiver at the site's centre with its range."""
    return dataclasses.replace(settings, receiver_lat=site.centre[0], receiver_lon=site.centre[1],
                               range_km=site.range_km)


def load(settings: Settings, site: Site, *, progress: bool = False) -> dict[str, int]:
    """Replay the site's tracks through the ingest (SBS) into the database of ``settings`` and
    close every flight (images drawn). Returns the counts of the flights pass."""
    from pipeline.db.engine import make_engine
    from pipeline.flights import store
    from pipeline.receiver.ingest import ingest_file

    s = site_settings(settings, site)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "site.sbs"
        lines = write_sbs(path, site.tracks)
        log.info("replaying %d SBS lines of %d flights", lines, len(site.tracks))
        stats = ingest_file(s, path, fmt="sbs", progress=progress)
    engine = make_engine(s)
    try:
        res = store.process_all(engine, s, final=True)
    finally:
        engine.dispose()
    return {"positions": int(getattr(stats, "positions", 0)), "flights": res.created,
            "closed": res.closed}


def write_labels(path: Path, site: Site) -> None:
    """CSV ``icao24,label,kind`` (the evaluator's labels; aircraft not listed are ordinary)."""
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["icao24", "label", "kind"])
        for icao, (label, kind) in sorted(site.labels.items()):
            w.writerow([icao, label, kind if label else ""])


def command(settings: Settings, args) -> int:
    """``adsb-pipeline realsite swiss|swiss-week --labels FILE [--fraction F] [--seed N]``."""
    try:
        folder = samples.fetch()
    except samples.SamplesUnavailable as e:
        log.error("%s", e)
        return 1
    week = args.name == "swiss-week"
    site = swiss_week(folder, fraction=args.fraction, seed=args.seed) if week \
        else swiss(folder, fraction=args.fraction, seed=args.seed)
    split = judged_day_start() if week else SWISS_SPLIT
    for line in site.notes:
        print(line)
    counts = load(settings, site, progress=not args.no_progress)
    write_labels(Path(args.labels), site)
    print(f"{counts['flights']} flights stored; labels -> {args.labels}; judge as deployed with "
          f"`adsb-pipeline evaluate --labels {args.labels} --train-until "
          f"{split:%Y-%m-%dT%H:%M:%SZ}`")
    return 0
