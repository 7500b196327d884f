"""Cheap geometric features of a track: honest baselines for the model and handy in SQL."""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np

from pipeline.flights import ragged
from pipeline.geo import to_local_km


@dataclass(frozen=True)
class Features:
    path_km: float
    straight_km: float
    tortuosity: float        # path / straight (1 = a straight line; large = circling)
    turning_deg: float       # total absolute heading change along the track
    max_distance_km: float   # farthest point from the receiver


NAMES = tuple(f.name for f in fields(Features))

# Heading changes over less than this distance are position jitter, not turns.
_MIN_SEGMENT_KM = 0.2


def compute(lat: np.ndarray, lon: np.ndarray, ref_lat: float, ref_lon: float) -> Features:
    x, y = to_local_km(lat, lon, ref_lat, ref_lon)
    return compute_xy(x, y)


def compute_xy(x: np.ndarray, y: np.ndarray) -> Features:
    x = np.asarray(x, dtype=np.float64).ravel()
    if x.size == 0:
        return Features(0.0, 0.0, 0.0, 0.0, 0.0)
    many = compute_many(x, y, np.array([0, x.size]))
    return Features(*(float(many[name][0]) for name in NAMES))


def compute_many(x: np.ndarray, y: np.ndarray, offsets: np.ndarray) -> dict[str, np.ndarray]:
    """Features of many tracks at once, as {name: array (n,)} in :class:`Features`' order.

    Positions are laid out as in :mod:`pipeline.flights.ragged`: track i is
    ``x[offsets[i]:offsets[i + 1]]``; every track needs at least one position."""
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    offsets = np.asarray(offsets, dtype=np.int64)
    if (np.diff(offsets) <= 0).any():
        raise ValueError("every track needs at least one position")
    n = offsets.size - 1
    out = {name: np.empty(n) for name in NAMES}
    for i, j in ragged.spans(offsets):
        lo, hi = offsets[i], offsets[j]
        for name, values in zip(NAMES, _features(x[lo:hi], y[lo:hi], offsets[i:j + 1] - lo)):
            out[name][i:j] = values
    return out


def _features(x: np.ndarray, y: np.ndarray, offsets: np.ndarray) -> tuple[np.ndarray, ...]:
    n = offsets.size - 1
    starts, ends = offsets[:-1], offsets[1:] - 1
    # seg[i]: from position i to i + 1, 0 where i + 1 starts the next track (or is past the end).
    dx, dy = np.diff(x), np.diff(y)
    seg = np.zeros(x.size)
    np.sqrt(dx * dx + dy * dy, out=seg[:-1])
    seg[ends] = 0.0
    # Distance along each track's path: a cumulative sum per track, so a track's figures do
    # not depend on the tracks batched before it.
    cum = np.empty(x.size)
    for s, e in zip(starts.tolist(), ends.tolist()):
        cum[s] = 0.0
        np.cumsum(seg[s:e], out=cum[s + 1:e + 1])
    path = cum[ends]
    straight = np.hypot(x[ends] - x[starts], y[ends] - y[starts])
    # Tortuosity is unbounded for closed loops; floor the denominator at 1 km.
    tort = path / np.maximum(straight, 1.0)
    # Resample every _MIN_SEGMENT_KM along the path, so jitter between close positions adds
    # no turning but a slow, tight orbit still counts in full. cum is non-decreasing within a
    # track, so the first index of each bin is where the bin number changes.
    bins = np.floor(cum / _MIN_SEGMENT_KM)
    keep = np.empty(x.size, dtype=bool)
    keep[0] = True
    np.not_equal(bins[1:], bins[:-1], out=keep[1:])
    keep[starts] = True
    idx = np.flatnonzero(keep)
    track = np.repeat(np.arange(n), np.add.reduceat(keep, starts, dtype=np.int64))
    rx, ry = x[idx], y[idx]
    heading = np.arctan2(np.diff(rx), np.diff(ry))             # heading[j]: idx[j] -> idx[j + 1]
    turn = np.abs(np.diff(heading))                             # turn[j]: at idx[j + 1]
    np.minimum(turn, 2 * np.pi - turn, out=turn)                # the short way round
    # A turn counts when its three resampled points belong to the same track.
    same = track[:-2] == track[2:]
    turning = np.degrees(np.bincount(track[:-2][same], weights=turn[same], minlength=n))
    maxd = np.maximum.reduceat(np.hypot(x, y), starts)
    return path, straight, tort, turning, maxd
