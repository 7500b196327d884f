"""``adsb-pipeline show FLIGHT_ID --out f.png``: one flight's track image, for a human.

The channel groups enlarged side by side with a caption: *where* and *shape* in grey, the eight
*direction* channels as one picture with each pixel in the colour of its heading of travel (a
compass legend under it). The scale is fixed (0 white, 1 black; a direction pixel at full
colour), never stretched to each image's own range, so a faint reconstruction cannot pass for
a sharp one. When the flight was scored, the group that carried its score is named and, for a
flagged flight, the pixel of its largest error is ringed.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import numpy as np
import sqlalchemy as sa
from PIL import Image, ImageDraw, ImageFont

from pipeline.config import Settings
from pipeline.db.engine import make_engine
from pipeline.flights import raster, segment

log = logging.getLogger(__name__)

SCALE = 6            # 64 px -> 384 px: single pixels stay visible
PAD = 12
CAPTION_LINES = 5
LINE_H = 14
COMPASS = ("N", "NE", "E", "SE", "S", "SW", "W", "NW")
# One hue per heading sector, around the colour wheel, so that neighbouring headings look alike
# and opposite ones differ; bright enough on black (report) and on white (here).
SECTOR_RGB = np.array([(230, 40, 40), (240, 150, 20), (200, 190, 0), (60, 180, 50),
                       (20, 180, 190), (40, 110, 240), (140, 70, 230), (220, 60, 190)],
                      dtype=np.float64)


def compass(values: np.ndarray) -> np.ndarray:
    """(64, 64, 8) 0..1 direction channels -> RGB on black: each pixel in the colour of its
    strongest heading, as bright as that channel's value (0 black, 1 full colour)."""
    top = np.argmax(values, axis=-1)
    strength = np.clip(values.max(axis=-1), 0.0, 1.0)
    return np.rint(SECTOR_RGB[top] * strength[..., None]).astype(np.uint8)


def compass_on_white(values: np.ndarray) -> np.ndarray:
    """As :func:`compass` but on a white background (0 white, 1 full colour)."""
    top = np.argmax(values, axis=-1)
    strength = np.clip(values.max(axis=-1), 0.0, 1.0)[..., None]
    return np.rint(255 - (255 - SECTOR_RGB[top]) * strength).astype(np.uint8)


def to_gray(channel: np.ndarray) -> np.ndarray:
    """0..1 values to 8-bit gray on a fixed scale: 0 white, 1 black, clipped outside."""
    return (255 - np.clip(channel, 0.0, 1.0) * 255).round().astype(np.uint8)


def picture(image: np.ndarray, titles: tuple[str, ...], caption: list[str],
            marked: str | None = None, pixel: tuple[int, int] | None = None) -> Image.Image:
    """The channel groups of a (64, 64, C) image enlarged and framed (where, direction, shape;
    where and shape for two-channel images), titles above, caption and legend below; the
    group ``marked`` is titled in red and its ``pixel`` (row, col) ringed."""
    groups = ("where", "direction", "shape") if image.shape[-1] > 2 else ("where", "shape")
    side = raster.SIZE * SCALE
    width = PAD + len(groups) * (side + PAD)
    legend = 2 * LINE_H if len(groups) == 3 else 0
    height = PAD + LINE_H + side + PAD + LINE_H * len(caption) + legend + PAD
    out = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(out)
    font = ImageFont.load_default()
    for k, (name, title) in enumerate(zip(groups, titles)):
        left = PAD + k * (side + PAD)
        if name == "direction":
            rgb = compass_on_white(image[:, :, raster.DIRECTION].astype(np.float64))
        else:
            ch = raster.WHERE if name == "where" else raster.SHAPE
            rgb = np.repeat(to_gray(image[:, :, ch])[..., None], 3, axis=-1)
        big = Image.fromarray(rgb, "RGB").resize((side, side), Image.Resampling.NEAREST)
        out.paste(big, (left, PAD + LINE_H))
        draw.rectangle([left - 1, PAD + LINE_H - 1, left + side, PAD + LINE_H + side],
                       outline=(128, 128, 128))
        draw.text((left, PAD), title + (" *" if name == marked else ""),
                  fill=(200, 0, 0) if name == marked else (0, 0, 0), font=font)
        if name == marked and pixel is not None:
            cy = PAD + LINE_H + pixel[0] * SCALE + SCALE // 2
            cx = left + pixel[1] * SCALE + SCALE // 2
            draw.ellipse((cx - 16, cy - 16, cx + 16, cy + 16), outline=(0, 160, 255), width=2)
    top = PAD + LINE_H + side + PAD
    for i, line in enumerate(caption):
        draw.text((PAD, top + i * LINE_H), line, fill=(0, 0, 0), font=font)
    if legend:
        y = top + len(caption) * LINE_H + 4
        draw.text((PAD, y), "direction of travel:", fill=(0, 0, 0), font=font)
        x = PAD + 130
        for k, label in enumerate(COMPASS):
            draw.rectangle((x, y, x + 10, y + 10), fill=tuple(int(v) for v in SECTOR_RGB[k]),
                           outline=(0, 0, 0))
            draw.text((x + 14, y), label, fill=(0, 0, 0), font=font)
            x += 44
    return out


def describe(f: dict, range_km: float, channels: int = raster.NCH
             ) -> tuple[tuple[str, ...], list[str]]:
    titles: tuple[str, ...] = (f"where: receiver frame, +-{range_km:g} km",)
    if channels > 2:
        titles += ("direction: receiver frame, colour = heading",)
    titles += (f"shape: flight frame, {f['shape_side_km']:.1f} km side",)
    minutes = (f["last_seen"] - f["first_seen"]).total_seconds() / 60
    caption = [
        f"flight {f['id']}  {f['callsign'] or '(no callsign)'}  icao24 {f['icao24']}"
        + ("  (late positions)" if f["late"] else ""),
        f"{f['first_seen']:%Y-%m-%d %H:%M:%S} - {f['last_seen']:%H:%M:%S} UTC ({minutes:.0f} min), "
        f"{f['n_positions']} positions, path {f['path_km'] or 0:.0f} km",
        f"lit pixels: where {f['where_lit']:.3f}, shape {f['shape_lit']:.3f}",
    ]
    if f["score"] is not None:
        verdict = "FLAGGED" if f["flagged"] else "not flagged"
        caption.append(f"score {f['score']:.4g}, threshold {f['threshold']:.4g} "
                       f"(model {f['model_id']}): {verdict}")
        if f.get("channel"):
            caption.append(f"carried by the {f['channel']} channel (marked *)"
                           + (", largest error ringed" if f.get("error_row") is not None else ""))
    else:
        caption.append("not scored yet")
    return titles, caption


def render_flight(engine: sa.Engine, flight_id: int, range_km: float) -> Image.Image | None:
    with engine.connect() as conn:
        row = conn.execute(sa.text(
            "SELECT f.*, s.channel, s.error_row, s.error_col FROM flights f "
            "LEFT JOIN flight_scores s ON s.flight_id = f.id AND s.model_id = f.model_id "
            "WHERE f.id = :id"), {"id": flight_id}).first()
    if row is None:
        return None
    f = row._asdict()
    if f["image"] is None:
        if f["state"] == "finished":
            raise ValueError(
                f"flight {flight_id} has no image: {f['n_positions']} positions over "
                f"{(f['last_seen'] - f['first_seen']).total_seconds():.0f} s are too few to draw "
                f"(at least {segment.MIN_DRAWN_POSITIONS} over {segment.MIN_DRAWN_S:.0f} s)")
        raise ValueError(f"flight {flight_id} has no image yet (state {f['state']})")
    image = raster.decode_png(f["image"])
    titles, caption = describe(f, range_km, image.shape[-1])
    pixel = (f["error_row"], f["error_col"]) if f.get("error_row") is not None else None
    return picture(image, titles, caption, f.get("channel"), pixel)


def command(settings: Settings, args) -> int:
    engine = make_engine(settings)
    try:
        pic = render_flight(engine, args.flight_id, settings.range_km)
    except ValueError as e:
        print(f"adsb-pipeline: {e}", file=sys.stderr)
        return 1
    finally:
        engine.dispose()
    if pic is None:
        print(f"adsb-pipeline: no flight with id {args.flight_id}", file=sys.stderr)
        return 1
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    pic.save(args.out)
    print(f"wrote {args.out}")
    return 0
