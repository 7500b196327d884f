"""``adsb-pipeline show FLIGHT_ID --out f.png``: one flight's track image, for a human.

Both channels enlarged side by side with a caption. The scale is fixed (0 white, 1 black), never
stretched to each image's own range, so a faint reconstruction cannot pass for a sharp one.
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
from pipeline.flights import raster

log = logging.getLogger(__name__)

SCALE = 6            # 64 px -> 384 px: single pixels stay visible
PAD = 12
CAPTION_LINES = 4
LINE_H = 14


def to_gray(channel: np.ndarray) -> np.ndarray:
    """0..1 values to 8-bit gray on a fixed scale: 0 white, 1 black, clipped outside."""
    return (255 - np.clip(channel, 0.0, 1.0) * 255).round().astype(np.uint8)


def picture(image: np.ndarray, titles: tuple[str, str], caption: list[str]) -> Image.Image:
    """Both channels of a (64, 64, 2) image enlarged and framed, titles above, caption below."""
    side = raster.SIZE * SCALE
    width = 3 * PAD + 2 * side
    height = PAD + LINE_H + side + PAD + LINE_H * len(caption) + PAD
    out = Image.new("L", (width, height), 255)
    draw = ImageDraw.Draw(out)
    font = ImageFont.load_default()
    for ch in range(2):
        left = PAD + ch * (side + PAD)
        big = Image.fromarray(to_gray(image[:, :, ch])).resize((side, side), Image.NEAREST)
        out.paste(big, (left, PAD + LINE_H))
        draw.rectangle([left - 1, PAD + LINE_H - 1, left + side, PAD + LINE_H + side], outline=128)
        draw.text((left, PAD), titles[ch], fill=0, font=font)
    top = PAD + LINE_H + side + PAD
    for i, line in enumerate(caption):
        draw.text((PAD, top + i * LINE_H), line, fill=0, font=font)
    return out


def describe(f: dict, range_km: float) -> tuple[tuple[str, str], list[str]]:
    titles = (f"where: receiver frame, +-{range_km:g} km",
              f"shape: flight frame, {f['shape_side_km']:.1f} km side")
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
    else:
        caption.append("not scored yet")
    return titles, caption


def render_flight(engine: sa.Engine, flight_id: int, range_km: float) -> Image.Image | None:
    with engine.connect() as conn:
        row = conn.execute(sa.text("SELECT * FROM flights WHERE id = :id"), {"id": flight_id}).first()
    if row is None:
        return None
    f = row._asdict()
    if f["image"] is None:
        raise ValueError(f"flight {flight_id} has no image yet (state {f['state']})")
    titles, caption = describe(f, range_km)
    return picture(raster.decode_png(f["image"]), titles, caption)


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
