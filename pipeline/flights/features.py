"""Cheap geometric features of a track: honest baselines for the model and handy in SQL."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pipeline.geo import to_local_km


@dataclass(frozen=True)
class Features:
    path_km: float
    straight_km: float
    tortuosity: float        # path / straight (1 = a straight line; large = circling)
    turning_deg: float       # total absolute heading change along the track
    max_distance_km: float   # farthest point from the receiver


# Heading changes over less than this distance are position jitter, not turns.
_MIN_SEGMENT_KM = 0.2


def compute(lat: np.ndarray, lon: np.ndarray, ref_lat: float, ref_lon: float) -> Features:
    x, y = to_local_km(lat, lon, ref_lat, ref_lon)
    return compute_xy(x, y)


def compute_xy(x: np.ndarray, y: np.ndarray) -> Features:
    dx, dy = np.diff(x), np.diff(y)
    seg = np.hypot(dx, dy)
    path = float(seg.sum())
    straight = float(np.hypot(x[-1] - x[0], y[-1] - y[0])) if x.size else 0.0
    # Tortuosity is unbounded for closed loops; floor the denominator at 1 km.
    tort = path / max(straight, 1.0)
    # Resample every _MIN_SEGMENT_KM along the path, so jitter between close positions adds
    # no turning but a slow, tight orbit still counts in full.
    cum = np.concatenate([[0.0], np.cumsum(seg)])
    # cum is non-decreasing, so the first index of each bin is where the bin number changes.
    bins = np.floor(cum / _MIN_SEGMENT_KM)
    idx = np.flatnonzero(np.concatenate([[True], bins[1:] != bins[:-1]]))
    rx, ry = x[idx], y[idx]
    if rx.size >= 3:
        heading = np.arctan2(np.diff(rx), np.diff(ry))
        turn = np.diff(heading)
        turn = (turn + np.pi) % (2 * np.pi) - np.pi
        turning = float(np.degrees(np.abs(turn).sum()))
    else:
        turning = 0.0
    maxd = float(np.hypot(x, y).max()) if x.size else 0.0
    return Features(path, straight, tort, turning, maxd)
