"""``adsb-pipeline report``: an HTML page of the flagged flights, with what the model saw.

For each flagged flight (the top N by score whose last position lies within ``--since`` of the
data clock) one PNG shows, for each channel group (where, direction, shape), the stored track
image, the model's reconstruction and the per-pixel error |original - reconstruction| side by
side. The 8 direction channels are drawn as one picture, each pixel in the colour of its heading
(compass legend). The group that carried the flag is named, and the pixel that explains it is ringed
(*shape*: its largest error; *where*, *direction*: the place it crossed that the fewest flights
of the model's training window crossed). All three are
drawn on one fixed 0..1 scale with a legend: rescaling each picture to its own range would make
a washed-out 0.3 reconstruction look as crisp as a perfect one and hide exactly what the score
measures.
"""

from __future__ import annotations

import datetime as dt
import html
import io
import logging
import re
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

import numpy as np
import sqlalchemy as sa
from PIL import Image, ImageDraw, ImageFont

from pipeline.config import Settings
from pipeline.db import schema
from pipeline.db.engine import make_engine
from pipeline.flights import raster, show
from pipeline.flights.clock import data_clock

log = logging.getLogger(__name__)

# ---- layout of one flight's picture ------------------------------------------------------------
ZOOM = 4                                  # 64 px -> 256 px panels
PANEL = raster.SIZE * ZOOM
GAP = 12
ROW_LABEL_W = 84                          # fits "direction *"
HEADER_H = 24
LEGEND_H = 44
COLUMNS = ("original", "reconstruction", "error |original - reconstruction|")
ROWS = ("where", "direction", "shape")     # format 1 images have no direction row
WIDTH = ROW_LABEL_W + len(COLUMNS) * PANEL + (len(COLUMNS) - 1) * GAP
COMPASS_H = 24                            # the direction legend under the other two
HEIGHT = HEADER_H + len(ROWS) * PANEL + (len(ROWS) - 1) * GAP + LEGEND_H + COMPASS_H
BACKGROUND = (255, 255, 255)
INK = (30, 30, 30)

# The error colour scale: a perceptually ordered ramp from black (no error) through purple and
# red to pale yellow (error 1), so that zero error reads like the black background.
_HEAT_STOPS = np.array([0.0, 0.25, 0.5, 0.75, 1.0])
_HEAT_RGB = np.array([(0, 0, 4), (87, 16, 110), (188, 55, 84), (249, 142, 9), (252, 255, 164)],
                     dtype=np.float64)

_SINCE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_STALE = re.compile(r"^flight_\d+\.png$")


@dataclass
class FlaggedFlight:
    flight_id: int
    icao24: str
    callsign: str | None
    first_seen: dt.datetime
    last_seen: dt.datetime
    duration: dt.timedelta
    n_positions: int
    path_km: Decimal | None
    score: Decimal
    threshold: Decimal
    score_ratio: Decimal | None
    model_version: str | None
    where_score: float | None
    shape_score: float | None
    direction_score: float | None
    channel: str | None
    error_row: int | None
    error_col: int | None
    image: bytes | None
    reconstruction: bytes | None
    site: str | None = None


def parse_since(text: str) -> dt.timedelta:
    """``24h``, ``90m``, ``7d``, ``2w``, ``3600s`` -> timedelta."""
    m = _SINCE.match(text)
    if not m or float(m.group(1)) <= 0:
        raise ValueError(f"--since {text!r}: expected a positive number with a unit s, m, h, d "
                         "or w (e.g. 24h, 7d)")
    return dt.timedelta(seconds=float(m.group(1)) * _UNITS[m.group(2)])


def fetch(conn: sa.Connection, since: dt.timedelta, top: int,
          clock: dt.datetime | None = None) -> tuple[dt.datetime, list[FlaggedFlight]]:
    """The data clock and the ``top`` flagged flights by score that ended within ``since`` of it."""
    clock = clock or data_clock(conn)
    v, f, s = schema.flagged_flights, schema.flights, schema.flight_scores
    query = (
        sa.select(*[c for c in v.c if c.name != "channel"], s.c.where_score, s.c.shape_score,
                  s.c.direction_score, s.c.channel, s.c.error_row, s.c.error_col, f.c.image,
                  s.c.reconstruction)
        .join(f, f.c.id == v.c.flight_id)
        .outerjoin(s, sa.and_(s.c.icao24 == f.c.icao24, s.c.flight_id == f.c.id,
                              s.c.model_id == f.c.model_id))
        .where(v.c.last_seen > clock - since, v.c.last_seen <= clock)
        .order_by(f.c.score.desc(), v.c.flight_id)
        .limit(top))
    rows = conn.execute(query).mappings().all()
    return clock, [FlaggedFlight(**{k: r[k] for k in FlaggedFlight.__dataclass_fields__})
                   for r in rows]


# ---- pictures ----------------------------------------------------------------------------------
def decode_reconstruction(data: bytes) -> np.ndarray:
    """flight_scores.reconstruction (8-bit grey PNG (64*C)x64, channels side by side) ->
    (64, 64, C) 0..1."""
    arr = np.asarray(Image.open(io.BytesIO(data)).convert("L"), dtype=np.float64) / 255.0
    if arr.shape[0] != raster.SIZE or arr.shape[1] % raster.SIZE:
        raise ValueError(f"stored reconstruction has shape {arr.shape}, expected (64, 64 * C)")
    c = arr.shape[1] // raster.SIZE
    return np.stack([arr[:, k * raster.SIZE:(k + 1) * raster.SIZE] for k in range(c)], axis=-1)


def row_panels(original: np.ndarray, reconstruction: np.ndarray | None, name: str
               ) -> list[np.ndarray]:
    """RGB panels (original, reconstruction, error) of one channel group."""
    if name == "direction":
        orig = original[:, :, raster.DIRECTION].astype(np.float64)
        panels = [show.compass(orig)]
        if reconstruction is not None:
            rec = reconstruction[:, :, raster.DIRECTION]
            panels += [show.compass(rec), heat(np.abs(orig - rec).max(axis=-1))]
        return panels
    k = raster.WHERE if name == "where" else raster.SHAPE
    orig = original[:, :, k].astype(np.float64)
    panels = [grey(orig)]
    if reconstruction is not None:
        rec = reconstruction[:, :, k]
        panels += [grey(rec), heat(np.abs(orig - rec))]
    return panels


def grey(values: np.ndarray) -> np.ndarray:
    """0..1 -> RGB uint8 on the fixed scale 0 = black, 1 = white (never rescaled)."""
    v = np.rint(np.clip(values, 0.0, 1.0) * 255).astype(np.uint8)
    return np.repeat(v[..., None], 3, axis=-1)


def heat(values: np.ndarray) -> np.ndarray:
    """0..1 -> RGB uint8 on the fixed error colour scale (never rescaled)."""
    v = np.clip(values, 0.0, 1.0)
    rgb = [np.interp(v, _HEAT_STOPS, _HEAT_RGB[:, i]) for i in range(3)]
    return np.rint(np.stack(rgb, axis=-1)).astype(np.uint8)


def panel_box(row: int, col: int) -> tuple[int, int, int, int]:
    """(left, top, right, bottom) of a panel in the flight picture."""
    x = ROW_LABEL_W + col * (PANEL + GAP)
    y = HEADER_H + row * (PANEL + GAP)
    return x, y, x + PANEL, y + PANEL


def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    return ImageFont.load_default(size=size)


def _enlarge(rgb: np.ndarray) -> Image.Image:
    # Nearest neighbour: one stored pixel becomes a ZOOM x ZOOM block, values unchanged.
    return Image.fromarray(rgb, "RGB").resize((PANEL, PANEL), Image.Resampling.NEAREST)


def _legend(draw: ImageDraw.ImageDraw, canvas: Image.Image, x: int, y: int, width: int,
            colours: np.ndarray, title: str) -> None:
    ramp = np.repeat(colours[None, :, :], 10, axis=0)
    canvas.paste(Image.fromarray(ramp, "RGB"), (x, y))
    draw.rectangle((x - 1, y - 1, x + width, y + 10), outline=INK)
    font = _font(11)
    for value in (0.0, 0.5, 1.0):
        tx = x + round(value * (width - 1))
        draw.line((tx, y + 10, tx, y + 14), fill=INK)
        draw.text((tx, y + 15), f"{value:g}", fill=INK, font=font, anchor="mt")
    draw.text((x + width + 8, y + 5), title, fill=INK, font=font, anchor="lm")


def render_flight(original: np.ndarray, reconstruction: np.ndarray | None,
                  channel: str | None = None, error_pixel: tuple[int, int] | None = None
                  ) -> Image.Image:
    """The picture of one flight: rows where/direction/shape (where/shape for images of
    format 1), columns original/reconstruction/error; the row of ``channel`` is marked and its
    ``error_pixel`` (row, col) ringed on every panel of that row."""
    rows = ROWS if original.shape[-1] > 2 else ("where", "shape")
    height = HEIGHT if len(rows) == 3 else HEADER_H + 2 * PANEL + GAP + LEGEND_H
    canvas = Image.new("RGB", (WIDTH, height), BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    font = _font(14)
    for col, name in enumerate(COLUMNS):
        left, _, right, _ = panel_box(0, col)
        draw.text(((left + right) // 2, HEADER_H // 2), name, fill=INK, font=font, anchor="mm")
    for row, name in enumerate(rows):
        left, top, _, bottom = panel_box(row, 0)
        label = f"{name} *" if name == channel else name
        draw.text((left - 8, (top + bottom) // 2), label, fill=(200, 0, 0) if name == channel
                  else INK, font=font, anchor="rm")
        for col, rgb in enumerate(row_panels(original, reconstruction, name)):
            canvas.paste(_enlarge(rgb), panel_box(row, col)[:2])
            if name == channel and error_pixel is not None:
                px, py, _, _ = panel_box(row, col)
                cy = py + error_pixel[0] * ZOOM + ZOOM // 2
                cx = px + error_pixel[1] * ZOOM + ZOOM // 2
                draw.ellipse((cx - 12, cy - 12, cx + 12, cy + 12), outline=(0, 200, 255), width=2)
        if reconstruction is None:
            left, t, _, b = panel_box(row, 1)
            draw.text((left + PANEL // 2, (t + b) // 2), "no reconstruction stored", fill=INK,
                      font=font, anchor="mm")
    y = HEADER_H + len(rows) * (PANEL + GAP) + 4
    ramp = np.linspace(0.0, 1.0, 200)
    _legend(draw, canvas, ROW_LABEL_W, y, 200, grey(ramp), "original, reconstruction")
    _legend(draw, canvas, ROW_LABEL_W + PANEL * 2 + GAP * 2, y, 200, heat(ramp), "error")
    if len(rows) == 3:
        small = _font(11)
        x = ROW_LABEL_W
        draw.text((x, y + 38), "direction of travel:", fill=INK, font=small, anchor="lm")
        x += 120
        for k, label in enumerate(show.COMPASS):
            colour = tuple(int(v) for v in show.SECTOR_RGB[k])
            draw.rectangle((x, y + 32, x + 12, y + 44), fill=colour, outline=INK)
            draw.text((x + 16, y + 38), label, fill=INK, font=small, anchor="lm")
            x += 48
    if channel is not None:
        draw.text((WIDTH - 4, y + 38), f"* carried the flag ({channel})", fill=(200, 0, 0),
                  font=_font(11), anchor="rm")
    return canvas


# ---- the page ----------------------------------------------------------------------------------
_CSS = """
body { font-family: system-ui, sans-serif; margin: 1.5em; color: #1e1e1e; max-width: 1000px; }
h1 { font-size: 1.4em; margin-bottom: .2em; }
.meta { color: #555; margin-top: 0; }
section { border-top: 1px solid #ccc; padding: .8em 0 1.2em; }
h2 { font-size: 1.15em; margin: 0 0 .4em; }
table { border-collapse: collapse; margin-bottom: .6em; font-size: .92em; }
th { text-align: left; font-weight: normal; color: #555; padding: 1px 1.2em 1px 0; }
td { padding: 1px 1.2em 1px 0; font-variant-numeric: tabular-nums; }
img { max-width: 100%; height: auto; display: block; }
code { font-size: .85em; background: #f3f3f3; padding: 1px 3px; }
.warn { color: #a00; }
"""


def _t(value: dt.datetime) -> str:
    return value.astimezone(dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def _num(value: object) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


_WHY = {"where": "where: it used airspace the site's traffic does not use",
        "direction": "direction: it flew where, or the way, the site's traffic does not "
                     "fly",
        "shape": "shape: its own track (circling, a pattern) is unlike the others"}


def _why(fl: FlaggedFlight) -> str:
    text = _WHY.get(fl.channel or "", "–")
    if fl.channel in ("where", "direction") and fl.error_row is not None:
        return f"{text}; ringed: {_place(fl.error_row, fl.error_col)}"
    return text


# The fixed frame's scale, for saying where an error lies; set by ``write`` from the settings.
_RANGE_KM = [121.0]


def _place(row: int, col: int | None) -> str:
    """A fixed-frame pixel as distance and bearing from the receiver."""
    half = raster.SIZE / 2 - 0.5
    km = 2 * _RANGE_KM[0] / raster.SIZE
    x, y = (float(col or 0) - half) * km, (half - row) * km
    bearing = float(np.degrees(np.arctan2(x, y)) % 360)
    return f"{np.hypot(x, y):.0f} km from the receiver, bearing {bearing:03.0f}°"


def _section(rank: int, fl: FlaggedFlight, picture: str | None, problem: str | None,
             size: tuple[int, int] = (WIDTH, HEIGHT)) -> str:
    e = html.escape
    name = fl.callsign.strip() if fl.callsign and fl.callsign.strip() else "(no callsign)"
    facts = [
        ("score", f"{_num(fl.score)} (threshold {_num(fl.threshold)}, "
                  f"{_num(fl.score_ratio)} × threshold)"),
        ("flagged by", _why(fl)),
        ("channel scores", f"where {_num(fl.where_score)}, direction "
                           f"{_num(fl.direction_score)}, shape {_num(fl.shape_score)}"),
        ("seen", f"{_t(fl.first_seen)} – {_t(fl.last_seen)} ({fl.duration})"),
        ("positions", f"{fl.n_positions}, path {_num(fl.path_km)} km"),
        ("model", f"{_num(fl.model_version)} (site {fl.site})"),
        ("flight id", str(fl.flight_id)),
    ]
    rows = "\n".join(f"<tr><th>{e(k)}</th><td>{e(v)}</td></tr>" for k, v in facts)
    body = (f'<img src="{e(picture)}" alt="{e(f"track images of flight {fl.flight_id}")}" '
            f'width="{size[0]}" height="{size[1]}">' if picture else "")
    warn = f'<p class="warn">{e(problem)}</p>' if problem else ""
    sql = (f"SELECT p.* FROM positions p JOIN flights f ON p.icao24 = f.icao24 AND "
           f"p.receiver_id = ANY(f.receivers) AND p.time BETWEEN f.first_seen AND f.last_seen "
           f"WHERE f.id = {fl.flight_id} ORDER BY p.time;")
    return (f'<section id="flight-{fl.flight_id}">\n<h2>{rank}. {e(name)} '
            f"<small>{e(fl.icao24)}</small></h2>\n<table>\n{rows}\n</table>\n{warn}{body}\n"
            f"<p>Positions: <code>{e(sql)}</code></p>\n</section>")


def write(out_dir: Path, clock: dt.datetime, since: dt.timedelta,
          flights: list[FlaggedFlight], range_km: float = 121.0) -> tuple[Path, int]:
    """Write ``index.html`` and one PNG per flight; returns (page, unreadable image count)."""
    _RANGE_KM[0] = range_km
    out_dir.mkdir(parents=True, exist_ok=True)
    for old in out_dir.iterdir():             # pictures of flights no longer in the report
        if _STALE.match(old.name):
            old.unlink()
    sections, unreadable = [], 0
    for rank, fl in enumerate(flights, 1):
        picture, problem, size = None, None, (WIDTH, HEIGHT)
        try:
            if fl.image is None:
                raise ValueError("no track image stored")
            original = raster.decode_png(fl.image)
            rec = decode_reconstruction(fl.reconstruction) if fl.reconstruction else None
            if rec is not None and rec.shape[-1] != original.shape[-1]:
                rec = None                     # scored before the image was redrawn
            picture = f"flight_{fl.flight_id}.png"
            pixel = (fl.error_row, fl.error_col) \
                if fl.error_row is not None and fl.error_col is not None else None
            img = render_flight(original, rec, fl.channel, pixel)
            size = img.size
            img.save(out_dir / picture, format="PNG")
        except Exception as exc:   # one bad stored image must not cost the rest of the report
            unreadable += 1
            picture, problem = None, f"image unreadable: {exc}"
            log.warning("report: flight %s: image unreadable (%s)", fl.flight_id, exc)
        sections.append(_section(rank, fl, picture, problem, size))
    start = clock - since
    summary = (f"{len(flights)} flagged flight{'s' if len(flights) != 1 else ''} that ended "
               f"between {_t(start)} and {_t(clock)} (data clock), highest score first.")
    empty = "" if flights else "<p>No flagged flights in this window.</p>"
    page = f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>Flagged flights up to {html.escape(_t(clock))}</title>
<style>{_CSS}</style>
</head>
<body>
<h1>Flagged flights</h1>
<p class="meta">{html.escape(summary)} Pictures: the stored track image, the model's
reconstruction and the per-pixel error, all on the fixed scale 0..1 (see the legend under each);
<em>where</em> is the receiver's frame, <em>direction</em> the same frame coloured by the
heading of travel, <em>shape</em> the flight's own frame. The row marked * carried the flag;
the pixel that explains it is ringed (shape: its largest error; where and direction: the place
it crossed that the fewest flights of the training window crossed).</p>
{empty}{chr(10).join(sections)}
</body>
</html>
"""
    index = out_dir / "index.html"
    tmp = index.with_suffix(".html.tmp")
    tmp.write_text(page, encoding="utf-8")
    tmp.replace(index)
    return index, unreadable


def command(settings: Settings, args) -> int:
    try:
        since = parse_since(args.since)
    except ValueError as e:
        log.error("%s", e)
        return 2
    if args.top < 1:
        log.error("--top %s: expected at least 1", args.top)
        return 2
    engine = make_engine(settings)
    try:
        with engine.connect() as conn:
            clock, flights = fetch(conn, since, args.top)
    finally:
        engine.dispose()
    index, unreadable = write(Path(args.out), clock, since, flights, settings.range_km)
    log.info("report: %d flagged flights (since %s before %s) written to %s%s", len(flights),
             args.since, clock.isoformat(timespec="seconds"), index,
             f"; {unreadable} with unreadable images" if unreadable else "")
    return 0
