"""Helpers shared by the ingest tests: reading stored rows and slicing the Paris capture."""

from __future__ import annotations

import csv
import gzip
import math
from pathlib import Path

import psycopg2

from conftest import PARIS_START
from pipeline.receiver.beast import BeastParser
from pipeline.receiver.ingest import IngestStats, ingest_file

ROW_SQL = ("SELECT extract(epoch FROM time)::float8, icao24, latitude, longitude, altitude, "
           "groundspeed, track, vertical_rate, callsign, on_ground FROM positions "
           "ORDER BY time, icao24")


def stored_rows(db_url: str) -> list[tuple]:
    conn = psycopg2.connect(db_url.replace("postgresql+psycopg2://", "postgresql://"))
    try:
        with conn.cursor() as cur:
            cur.execute(ROW_SQL)
            return cur.fetchall()
    finally:
        conn.close()


def ingest_bytes(settings, tmp_path: Path, data: bytes, fmt: str = "beast",
                 name: str = "input.bin") -> IngestStats:
    """Replay ``data`` as a capture file (Beast/AVR counters anchored at the Paris start)."""
    path = tmp_path / name
    path.write_bytes(data)
    return ingest_file(settings, path, fmt, PARIS_START, progress=False)


def paris_frames(path: Path, max_bytes: int) -> list[tuple[int, bytes]]:
    """(counter, message) of the complete Mode-S frames in the first ``max_bytes``."""
    with open(path, "rb") as fh:
        return BeastParser().feed(fh.read(max_bytes))


def airborne_csv(path: Path) -> dict[tuple[str, int], tuple]:
    """Airborne CSV rows keyed by (icao24, time in ms)."""
    rows = {}
    with gzip.open(path, "rt", newline="") as fh:
        for r in csv.DictReader(fh):
            if r["onground"] == "True":
                continue
            t = float(r["timestamp"])
            rows[(r["icao24"], round(t * 1000))] = (
                t, float(r["latitude"]), float(r["longitude"]),
                int(float(r["altitude"])) if r["altitude"] else None, r["callsign"] or None)
    return rows


def claim_errors(rows: list[tuple], truth: dict) -> list[tuple]:
    """Stored rows that are not within 10 m and 0.01 s of the CSV row they belong to. A row
    0.5 s before a CSV row is the README's extra frame sent ahead of a row after a gap."""
    bad = []
    for r in rows:
        key = round(r[0] * 1000)
        ref = truth.get((r[1], key)) or truth.get((r[1], key + 500))
        if ref is None or metres(r[2], r[3], ref[1], ref[2]) > 10:
            bad.append(r)
    return bad


def metres(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    dy = (lat1 - lat2) * 111_195.0
    dx = (lon1 - lon2) * 111_195.0 * math.cos(math.radians(lat1))
    return math.hypot(dx, dy)


def same_rows(a: list[tuple], b: list[tuple], *, time_tol: float = 1e-3, pos_tol_m: float = 0.5,
              compare_extras: bool = True) -> tuple[int, list]:
    """Pairs rows of ``a`` and ``b`` by (icao24, time); returns (matches, differences)."""
    index = {(r[1], round(r[0], 2)): r for r in b}
    diffs = []
    matched = 0
    for r in a:
        other = index.get((r[1], round(r[0], 2)))
        if other is None or abs(other[0] - r[0]) > time_tol:
            diffs.append(("missing", r))
            continue
        if metres(r[2], r[3], other[2], other[3]) > pos_tol_m or r[4] != other[4]:
            diffs.append(("position", r, other))
            continue
        if compare_extras and not _extras_equal(r, other):
            diffs.append(("extras", r, other))
            continue
        matched += 1
    return matched, diffs


def _extras_equal(r: tuple, o: tuple) -> bool:
    def close(x, y, tol):
        return (x is None and y is None) or (x is not None and y is not None and abs(x - y) <= tol)

    return (close(r[5], o[5], 0.01) and close(r[6], o[6], 0.01) and r[7] == o[7]
            and r[8] == o[8] and r[9] == o[9])
