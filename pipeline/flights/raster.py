"""64x64 two-channel track images of a flight.

Channel 0, *where*: the fixed receiver frame, +-range_km around the receiver, so the usual
corridors fall on the same pixels every day and an off-corridor flight stands out.
Channel 1, *shape*: the flight's own frame (its bounding box plus a margin, never smaller than
``MIN_SHAPE_SIDE_KM``), so an orbit of a few km is drawn as an orbit, not a dot.

Both are binary: 1-pixel lines between consecutive positions, no anti-aliasing, segments
clipped at the frame edge (Pillow clips). Arrays are ``uint8`` of shape (64, 64, 2), values
0/1, row 0 at the north edge.
"""

from __future__ import annotations

import io
import threading
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

from pipeline.geo import to_local_km

SIZE = 64
CHANNELS = ("where", "shape")
SHAPE_MARGIN = 0.08          # 4 % of the side on each edge
MIN_SHAPE_SIDE_KM = 5.0      # a hovering helicopter is not blown up into noise


@dataclass(frozen=True)
class Frame:
    """A square of ``side_km`` centred at (cx, cy) km in the receiver's local projection."""

    cx: float
    cy: float
    side_km: float

    def to_pixels(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Integer pixel coordinates (n, 2) of the points, consecutive repeats dropped."""
        scale = SIZE / self.side_km
        # Pillow draws with integer coordinates; far-away points are clipped, but keep them
        # inside int32 so an absurd coordinate cannot overflow.
        px = np.rint(np.maximum(np.minimum((x - self.cx) * scale + (SIZE / 2 - 0.5), 1e6), -1e6))
        py = np.rint(np.maximum(np.minimum((self.cy - y) * scale + (SIZE / 2 - 0.5), 1e6), -1e6))
        # At 1 position/s many consecutive positions share a pixel (a receiver-frame pixel is
        # ~4 km wide); drawing the repeats changes nothing and costs time.
        if px.size > 1:
            moved = np.empty(px.size, dtype=bool)
            moved[0] = True
            np.not_equal(px[1:], px[:-1], out=moved[1:])
            moved[1:] |= py[1:] != py[:-1]
            px, py = px[moved], py[moved]
        return np.stack([px, py], axis=1).astype(np.int32)


def receiver_frame(range_km: float) -> Frame:
    return Frame(0.0, 0.0, 2.0 * range_km)


def shape_frame(x: np.ndarray, y: np.ndarray) -> Frame:
    x0, x1, y0, y1 = float(x.min()), float(x.max()), float(y.min()), float(y.max())
    side = max(x1 - x0, y1 - y0) * (1.0 + SHAPE_MARGIN)
    return Frame((x0 + x1) / 2, (y0 + y1) / 2, max(side, MIN_SHAPE_SIDE_KM))


class _Canvas(threading.local):
    """One reusable 64x64 image per thread: creating a Pillow image and its Draw object per
    channel costs more than drawing a whole track."""

    def __init__(self) -> None:
        self.image = Image.new("L", (SIZE, SIZE), 0)
        self.draw = ImageDraw.Draw(self.image)


_canvas = _Canvas()


def draw(points: np.ndarray) -> np.ndarray:
    """A (64, 64) uint8 0/1 image of the polyline through integer pixel ``points`` (n, 2)."""
    c = _canvas
    c.image.paste(0, (0, 0, SIZE, SIZE))
    if len(points) == 1:
        c.draw.point([tuple(points[0].tolist())], fill=1)
    else:
        c.draw.line(points.ravel().tolist(), fill=1, width=1)
    # tobytes + frombuffer is several times faster than np.asarray on a Pillow image.
    return np.frombuffer(c.image.tobytes(), dtype=np.uint8).reshape(SIZE, SIZE)


def rasterize_xy(x: np.ndarray, y: np.ndarray, range_km: float) -> tuple[np.ndarray, float]:
    """Image (64, 64, 2) of a track given in local km, and the shape frame's side in km."""
    if x.size == 0:
        raise ValueError("cannot rasterize a flight without positions")
    out = np.empty((SIZE, SIZE, 2), dtype=np.uint8)
    out[:, :, 0] = draw(receiver_frame(range_km).to_pixels(x, y))
    frame = shape_frame(x, y)
    out[:, :, 1] = draw(frame.to_pixels(x, y))
    return out, frame.side_km


def rasterize(lat: np.ndarray, lon: np.ndarray, ref_lat: float, ref_lon: float,
              range_km: float) -> tuple[np.ndarray, float]:
    """Image (64, 64, 2) of a track given in degrees, and the shape frame's side in km."""
    x, y = to_local_km(lat, lon, ref_lat, ref_lon)
    return rasterize_xy(x, y, range_km)


# ---- storage: one lossless 1-bit PNG, channels side by side (where | shape) -------------------
def encode_png(image: np.ndarray) -> bytes:
    """PNG bytes of a (64, 64, 2) 0/1 image: 128x64, where on the left, shape on the right."""
    side_by_side = np.concatenate([image[:, :, 0], image[:, :, 1]], axis=1)
    buf = io.BytesIO()
    Image.fromarray((side_by_side > 0).astype(np.uint8) * 255, "L").convert("1").save(
        buf, format="PNG", optimize=False)
    return buf.getvalue()


def decode_png(data: bytes) -> np.ndarray:
    """Inverse of :func:`encode_png`: a (64, 64, 2) uint8 0/1 array."""
    arr = np.asarray(Image.open(io.BytesIO(data)).convert("L"), dtype=np.uint8)
    if arr.shape != (SIZE, 2 * SIZE):
        raise ValueError(f"stored track image has shape {arr.shape}, expected (64, 128)")
    out = np.empty((SIZE, SIZE, 2), dtype=np.uint8)
    out[:, :, 0] = arr[:, :SIZE] > 0
    out[:, :, 1] = arr[:, SIZE:] > 0
    return out


def lit_fractions(image: np.ndarray) -> tuple[float, float]:
    return float(image[:, :, 0].mean()), float(image[:, :, 1].mean())
