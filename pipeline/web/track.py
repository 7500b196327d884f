"""What the flight page's map and profiles draw: the track cut into runs of one altitude band
(one colour each, as tar1090 colours tracks), the altitude legend, range rings and grid steps.

The map layers that need no tiles (rings, grid, airports, the track) come from here as data,
so the page shows the flight over the receiver's range even offline.
"""

from __future__ import annotations

import colorsys
import math
from dataclasses import dataclass
from typing import Any, Sequence

MAX_MAP_POINTS = 4000          # a 4-hour flight at 1 Hz is 14,400 positions; the map needs fewer
MAX_PROFILE_POINTS = 720       # about one per horizontal pixel of the chart
# Band edges in feet: fine near the ground, where approaches and departures differ, coarse at
# cruise levels.
BAND_EDGES = (0, 1000, 2000, 4000, 6000, 8000, 10000, 15000, 20000, 25000, 30000, 35000, 40000)
UNKNOWN_COLOUR = "#8c8c8c"


def _hue(ft: float) -> float:
    """tar1090's altitude ramp: orange on the ground, green at 10,000 ft, blue to magenta above."""
    stops = ((0, 20.0), (2000, 20.0), (10000, 140.0), (40000, 300.0))
    if ft <= stops[0][0]:
        return stops[0][1]
    for (a0, h0), (a1, h1) in zip(stops, stops[1:]):
        if ft <= a1:
            return h0 + (h1 - h0) * (ft - a0) / (a1 - a0)
    return stops[-1][1]


def _colour(ft: float) -> str:
    r, g, b = colorsys.hls_to_rgb(_hue(ft) / 360.0, 0.45, 0.85)
    return f"#{round(r * 255):02x}{round(g * 255):02x}{round(b * 255):02x}"


def band(altitude: float | None) -> int:
    """Index of the altitude band (-1: unknown)."""
    if altitude is None or math.isnan(altitude):
        return -1
    for k, edge in enumerate(BAND_EDGES[1:]):
        if altitude < edge:
            return k
    return len(BAND_EDGES) - 1


def band_colour(k: int) -> str:
    if k < 0:
        return UNKNOWN_COLOUR
    lo = BAND_EDGES[k]
    hi = BAND_EDGES[k + 1] if k + 1 < len(BAND_EDGES) else lo + 5000
    return _colour((lo + hi) / 2)


def legend() -> list[dict[str, str]]:
    """Altitude bands, highest first, as the map's legend lists them."""
    out = []
    for k in range(len(BAND_EDGES) - 1, -1, -1):
        lo = BAND_EDGES[k]
        label = (f"≥ {lo:,} ft" if k == len(BAND_EDGES) - 1 else
                 f"{lo:,} – {BAND_EDGES[k + 1]:,} ft")
        out.append({"label": label, "colour": band_colour(k)})
    out.append({"label": "altitude unknown", "colour": UNKNOWN_COLOUR})
    return out


def thin(n: int, most: int) -> list[int]:
    """Indices of at most ``most`` of n points, evenly spread, the first and last kept."""
    if n <= most:
        return list(range(n))
    step = (n - 1) / (most - 1)
    return sorted({round(k * step) for k in range(most)})


@dataclass
class Run:
    colour: str
    points: list[tuple[float, float]]


def runs(lat: Sequence[float], lon: Sequence[float], alt: Sequence[float | None]) -> list[Run]:
    """The track as runs of consecutive points in one altitude band; each run starts at the
    previous run's last point, so the line has no gaps."""
    idx = thin(len(lat), MAX_MAP_POINTS)
    out: list[Run] = []
    current = None
    for i in idx:
        k = band(alt[i])
        p = (round(float(lat[i]), 5), round(float(lon[i]), 5))
        if current is None or k != current:
            start = [out[-1].points[-1]] if out else []
            out.append(Run(band_colour(k), start + [p]))
            current = k
        else:
            out[-1].points.append(p)
    return out


def ring_step_km(range_km: float) -> float:
    """A round ring spacing giving 3 to 6 rings out to the receiver's range."""
    for step in (10, 20, 25, 50, 100, 200, 250, 500):
        if range_km / step <= 6:
            return float(step)
    return 1000.0


def grid_step_deg(range_km: float) -> float:
    """Graticule spacing: about 4 to 10 lines across the range."""
    deg = 2 * range_km / 111.0
    for step in (0.1, 0.25, 0.5, 1.0, 2.0, 5.0):
        if deg / step <= 10:
            return step
    return 10.0


def map_data(*, receiver: tuple[float, float], range_km: float, track: list[Run],
             airports: list[dict[str, Any]], start: tuple[float, float] | None,
             end: tuple[float, float] | None) -> dict[str, Any]:
    """Everything the page's script draws, as JSON."""
    return {
        "receiver": {"lat": receiver[0], "lon": receiver[1]},
        "range_km": range_km,
        "ring_step_km": ring_step_km(range_km),
        "grid_step_deg": grid_step_deg(range_km),
        "track": [{"colour": r.colour, "points": r.points} for r in track],
        "start": start,
        "end": end,
        "airports": airports,
        "legend": legend(),
        "tiles": {
            "url": "https://tile.openstreetmap.org/{z}/{x}/{y}.png",
            "attribution": '&copy; <a href="https://www.openstreetmap.org/copyright">'
                           "OpenStreetMap</a> contributors",
        },
    }
