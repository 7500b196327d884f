"""Airports near a point, from the ``airportsdata`` package (ICAO-keyed, ~28,000 airports,
airfields and heliports with their coordinates), loaded once."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import airportsdata
import numpy as np

from pipeline.geo import haversine_km


@dataclass(frozen=True)
class Airport:
    icao: str
    iata: str
    name: str
    city: str
    country: str
    lat: float
    lon: float
    km: float                 # distance from the point asked about
    bearing: float            # degrees from the point asked about, clockwise from north

    @property
    def code(self) -> str:
        return f"{self.icao}/{self.iata}" if self.iata else self.icao


@functools.lru_cache(maxsize=1)
def _table() -> tuple[list[Any], np.ndarray, np.ndarray]:
    rows = list(airportsdata.load("ICAO").values())
    lat = np.array([float(r["lat"]) for r in rows])
    lon = np.array([float(r["lon"]) for r in rows])
    return rows, lat, lon


def _bearing(lat0: float, lon0: float, lat1: np.ndarray, lon1: np.ndarray) -> np.ndarray:
    p0, p1 = np.radians(lat0), np.radians(lat1)
    dl = np.radians(lon1 - lon0)
    x = np.sin(dl) * np.cos(p1)
    y = np.cos(p0) * np.sin(p1) - np.sin(p0) * np.cos(p1) * np.cos(dl)
    return np.degrees(np.arctan2(x, y)) % 360


def _airports(lat: float, lon: float, idx: np.ndarray, km: np.ndarray) -> list[Airport]:
    rows, alat, alon = _table()
    bearing = _bearing(lat, lon, alat[idx], alon[idx])
    return [Airport(rows[i]["icao"], rows[i].get("iata") or "", rows[i]["name"],
                    rows[i].get("city") or "", rows[i].get("country") or "", float(alat[i]),
                    float(alon[i]), float(d), float(b))
            for i, d, b in zip(idx.tolist(), km.tolist(), bearing.tolist())]


def nearest(lat: float, lon: float, n: int = 3) -> list[Airport]:
    """The ``n`` airports nearest to (lat, lon), nearest first."""
    _, alat, alon = _table()
    d = haversine_km(lat, lon, alat, alon)
    idx = np.argsort(d)[:n]
    return _airports(lat, lon, idx, d[idx])


def within(lat: float, lon: float, radius_km: float, limit: int = 400) -> list[Airport]:
    """Airports within ``radius_km`` of (lat, lon), nearest first, at most ``limit``."""
    _, alat, alon = _table()
    d = haversine_km(lat, lon, alat, alon)
    idx = np.flatnonzero(d <= radius_km)
    idx = idx[np.argsort(d[idx])][:limit]
    return _airports(lat, lon, idx, d[idx])
