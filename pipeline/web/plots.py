"""Small SVG charts drawn on the server (no chart library, no script): flags per day, the score
distribution against the threshold, altitude and ground-speed profiles.

Each chart is one ``<svg>`` element with a viewBox, so it scales with the page; bars and points
carry a ``<title>`` that the browser shows on hover. Every text is escaped.
"""

from __future__ import annotations

import datetime as dt
import math
from typing import Sequence

from markupsafe import Markup, escape

W, H = 720, 220
LEFT, RIGHT, TOP, BOTTOM = 52, 12, 14, 34


def _nice_step(span: float, ticks: int = 5) -> float:
    raw = max(span, 1e-12) / ticks
    mag = 10 ** math.floor(math.log10(raw))
    for m in (1, 2, 2.5, 5, 10):
        if raw <= m * mag:
            return m * mag
    return 10 * mag


def _fmt(v: float) -> str:
    if abs(v) >= 1000:
        return f"{v:,.0f}"
    if v == int(v):
        return f"{int(v)}"
    return f"{v:.3g}"


def _svg(body: list[str], label: str, css: str) -> Markup:
    return Markup(f'<svg class="chart {css}" viewBox="0 0 {W} {H}" role="img" '
                  f'aria-label="{escape(label)}" xmlns="http://www.w3.org/2000/svg">'
                  + "".join(body) + "</svg>")


def _y_axis(body: list[str], y_max: float, unit: str = "") -> float:
    """Horizontal grid lines and labels; returns the top of the axis (a round number)."""
    step = _nice_step(y_max)
    top = max(step, math.ceil(y_max / step) * step)
    v = 0.0
    while v <= top + 1e-9:
        y = H - BOTTOM - (H - TOP - BOTTOM) * v / top
        body.append(f'<line class="grid" x1="{LEFT}" x2="{W - RIGHT}" y1="{y:.1f}" y2="{y:.1f}"/>'
                    f'<text class="tick" x="{LEFT - 6}" y="{y + 4:.1f}" text-anchor="end">'
                    f"{escape(_fmt(v))}{escape(unit)}</text>")
        v += step
    return top


def flags_per_day(days: Sequence[tuple[dt.datetime, int, int]], first: dt.date, last: dt.date
                  ) -> Markup:
    """Bars: flights flagged per UTC day from ``first`` to ``last`` (days without flights
    included), hover: flagged of scored."""
    by_day = {d.date() if isinstance(d, dt.datetime) else d: (s, f) for d, s, f in days}
    n = (last - first).days + 1
    body: list[str] = []
    top = _y_axis(body, max([f for _, f in by_day.values()] + [1]))
    width = (W - LEFT - RIGHT) / n
    for k in range(n):
        day = first + dt.timedelta(days=k)
        scored, flagged = by_day.get(day, (0, 0))
        h = (H - TOP - BOTTOM) * flagged / top
        x = LEFT + k * width
        pct = f" ({100 * flagged / scored:.1f} %)" if scored else ""
        body.append(f'<rect class="bar" x="{x + 1:.1f}" y="{H - BOTTOM - h:.1f}" '
                    f'width="{max(width - 2, 1):.1f}" height="{h:.1f}"><title>'
                    f"{day:%a %d %b}: {flagged} flagged of {scored} scored{pct}</title></rect>")
        if n <= 16 or k % max(1, n // 10) == 0 or k == n - 1:
            body.append(f'<text class="tick" x="{x + width / 2:.1f}" y="{H - BOTTOM + 16}" '
                        f'text-anchor="middle">{day:%d %b}</text>')
    return _svg(body, "flags per day", "per-day")


def score_histogram(edges: Sequence[float], counts: Sequence[int], threshold: float) -> Markup:
    """Bars of the score distribution on a log count axis (1 % of flights are over the
    threshold, the bulk would flatten them), the threshold as a red line."""
    lo, hi = edges[0], edges[-1]
    body: list[str] = []
    peak = max(list(counts) + [1])
    log_top = math.log10(peak + 1)
    for p in range(0, int(math.ceil(log_top)) + 1):
        v = 10 ** p
        if v > 10 * peak:
            break
        y = H - BOTTOM - (H - TOP - BOTTOM) * math.log10(v + 1) / max(log_top, 1e-9)
        if y < TOP - 1:
            break
        body.append(f'<line class="grid" x1="{LEFT}" x2="{W - RIGHT}" y1="{y:.1f}" y2="{y:.1f}"/>'
                    f'<text class="tick" x="{LEFT - 6}" y="{y + 4:.1f}" text-anchor="end">'
                    f"{_fmt(v)}</text>")

    def x_of(v: float) -> float:
        return LEFT + (W - LEFT - RIGHT) * (v - lo) / (hi - lo)

    for k, n in enumerate(counts):
        x0, x1 = x_of(edges[k]), x_of(edges[k + 1])
        h = (H - TOP - BOTTOM) * math.log10(n + 1) / max(log_top, 1e-9)
        over = " over" if edges[k] >= threshold else ""
        span = (f"&lt; {_fmt(edges[1])}" if k == 0 else
                f"≥ {_fmt(edges[k])}" if k == len(counts) - 1 else
                f"{_fmt(edges[k])} – {_fmt(edges[k + 1])}")
        body.append(f'<rect class="bar{over}" x="{x0 + 0.5:.1f}" y="{H - BOTTOM - h:.1f}" '
                    f'width="{max(x1 - x0 - 1, 0.5):.1f}" height="{h:.1f}"><title>score {span}: '
                    f"{n} flights</title></rect>")
    step = _nice_step(hi - lo, 6)
    v = math.ceil(lo / step) * step
    while v <= hi + 1e-9:
        body.append(f'<text class="tick" x="{x_of(v):.1f}" y="{H - BOTTOM + 16}" '
                    f'text-anchor="middle">{escape(_fmt(v))}</text>')
        v += step
    xt = x_of(threshold)
    body.append(f'<line class="threshold" x1="{xt:.1f}" x2="{xt:.1f}" y1="{TOP}" '
                f'y2="{H - BOTTOM}"/><text class="threshold-label" x="{xt + 4:.1f}" '
                f'y="{TOP + 10}">threshold {escape(_fmt(threshold))}</text>')
    return _svg(body, "score distribution against the threshold", "histogram")


def profile(times: Sequence[dt.datetime], values: Sequence[float | None], unit: str,
            label: str) -> Markup:
    """A line over time (UTC); a missing value breaks the line."""
    pts = [(t, v) for t, v in zip(times, values)]
    known = [v for _, v in pts if v is not None]
    body: list[str] = []
    if not pts or not known:
        body.append(f'<text class="empty" x="{W / 2}" y="{H / 2}" text-anchor="middle">'
                    f"no {escape(label)} in the positions</text>")
        return _svg(body, label, "profile")
    t0, t1 = pts[0][0], pts[-1][0]
    span = max((t1 - t0).total_seconds(), 1.0)
    top = _y_axis(body, max(max(known), 1.0), "")

    def xy(t: dt.datetime, v: float) -> str:
        x = LEFT + (W - LEFT - RIGHT) * (t - t0).total_seconds() / span
        y = H - BOTTOM - (H - TOP - BOTTOM) * max(v, 0.0) / top
        return f"{x:.1f},{y:.1f}"

    runs: list[list[str]] = [[]]
    for t, v in pts:
        if v is None:
            if runs[-1]:
                runs.append([])
            continue
        runs[-1].append(xy(t, v))
    for run in runs:
        if len(run) > 1:
            body.append(f'<polyline class="line" points="{" ".join(run)}"/>')
        elif run:
            cx, cy = run[0].split(",")
            body.append(f'<circle class="dot" cx="{cx}" cy="{cy}" r="2"/>')
    step_s = _nice_step(span / 60, 6) * 60
    k = 0.0
    while k <= span + 1e-6:
        x = LEFT + (W - LEFT - RIGHT) * k / span
        t = t0 + dt.timedelta(seconds=k)
        body.append(f'<text class="tick" x="{x:.1f}" y="{H - BOTTOM + 16}" text-anchor="middle">'
                    f"{t:%H:%M}</text>")
        k += step_s
    body.append(f'<text class="unit" x="{LEFT}" y="{TOP - 2}">{escape(unit)}</text>')
    return _svg(body, label, "profile")
