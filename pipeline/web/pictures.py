"""PNG pictures of a flight's track image for the pages: a small thumbnail (where and shape) and
one panel per channel and kind (original, reconstruction, error).

They use the report's fixed scales (:mod:`pipeline.web.report`): grey 0 = black .. 1 = white for
original and reconstruction, the error ramp for |original - reconstruction|, the compass colours
for the direction channels taken together; nothing is stretched to its own range, so a faint
reconstruction looks faint.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageDraw

from pipeline.flights import raster, show
from pipeline.web.report import decode_reconstruction, grey, heat

KINDS = ("original", "reconstruction", "error")
# The direction channels together (colour = heading), then each channel alone.
HEADINGS = raster.CHANNELS[2:]
CHANNELS = ("where", "shape", "direction") + HEADINGS
GROUP_OF = {"where": "where", "shape": "shape", "direction": "direction"}
PANEL_ZOOM = 3                 # 64 px -> 192 px: one stored pixel stays a visible block
HEADING_ZOOM = 2               # the eight headings alone, side by side
THUMB_ZOOM = 2
THUMB_GAP = 4
RING = (0, 200, 255)


class NoPicture(ValueError):
    """The stored data cannot give this picture (no reconstruction kept, other format)."""


def decode(image: bytes, reconstruction: bytes | None) -> tuple[np.ndarray, np.ndarray | None]:
    """The stored track image (64, 64, C) 0/1 and the reconstruction (64, 64, C) 0..1, None when
    none is kept or it was made for images with another number of channels."""
    original = raster.decode_png(bytes(image))
    rec = decode_reconstruction(bytes(reconstruction)) if reconstruction else None
    if rec is not None and rec.shape[-1] != original.shape[-1]:
        rec = None                      # scored before the image was redrawn in a new format
    return original, rec


def channels_of(original: np.ndarray) -> tuple[str, ...]:
    """The panels an image of this format has (format 1: where and shape only)."""
    return CHANNELS if original.shape[-1] == raster.NCH else ("where", "shape")


def _values(image: np.ndarray, channel: str) -> np.ndarray:
    if channel == "direction":
        return image[:, :, raster.DIRECTION].astype(np.float64)
    return image[:, :, raster.CHANNELS.index(channel)].astype(np.float64)


def panel_rgb(original: np.ndarray, reconstruction: np.ndarray | None, channel: str,
              kind: str) -> np.ndarray:
    """RGB (64, 64, 3) of one channel (or of the 8 direction channels together) and kind."""
    if channel not in channels_of(original):
        raise NoPicture(f"no channel {channel!r} in an image of {original.shape[-1]} channels")
    if kind not in KINDS:
        raise NoPicture(f"no picture kind {kind!r}")
    orig = _values(original, channel)
    if kind == "original":
        return show.compass(orig) if channel == "direction" else grey(orig)
    if reconstruction is None:
        raise NoPicture("no reconstruction stored for this flight (only flagged flights keep one)")
    rec = _values(reconstruction, channel)
    if kind == "reconstruction":
        return show.compass(rec) if channel == "direction" else grey(rec)
    err = np.abs(orig - rec)
    return heat(err.max(axis=-1) if channel == "direction" else err)


def _png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def panel_png(original: np.ndarray, reconstruction: np.ndarray | None, channel: str, kind: str,
              carried: str | None = None, pixel: tuple[int, int] | None = None) -> bytes:
    """One panel, enlarged; on the group that carried the score its largest error is ringed."""
    rgb = panel_rgb(original, reconstruction, channel, kind)
    zoom = HEADING_ZOOM if channel in HEADINGS else PANEL_ZOOM
    side = raster.SIZE * zoom
    img = Image.fromarray(rgb, "RGB").resize((side, side), Image.Resampling.NEAREST)
    if pixel is not None and carried is not None and GROUP_OF.get(channel) == carried:
        cy = pixel[0] * zoom + zoom // 2
        cx = pixel[1] * zoom + zoom // 2
        ImageDraw.Draw(img).ellipse((cx - 10, cy - 10, cx + 10, cy + 10), outline=RING, width=2)
    return _png(img)


def thumbnail_png(original: np.ndarray) -> bytes:
    """Where (receiver frame) and shape (the flight's own frame) side by side, small."""
    side = raster.SIZE * THUMB_ZOOM
    out = Image.new("RGB", (2 * side + THUMB_GAP, side), (255, 255, 255))
    for k, channel in enumerate(("where", "shape")):
        rgb = grey(_values(original, channel))
        out.paste(Image.fromarray(rgb, "RGB").resize((side, side), Image.Resampling.NEAREST),
                  (k * (side + THUMB_GAP), 0))
    return _png(out)
