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
import struct
import threading
import zlib
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
        pts = np.empty((x.size, 2), dtype=np.float64)
        np.multiply(np.subtract(x, self.cx, out=pts[:, 0]), scale, out=pts[:, 0])
        np.multiply(np.subtract(self.cy, y, out=pts[:, 1]), scale, out=pts[:, 1])   # north up
        pts += SIZE / 2 - 0.5
        # Pillow clips what lies outside the canvas; keep absurd coordinates inside int32.
        np.clip(pts, -1e6, 1e6, out=pts)
        ipts = np.rint(pts, out=pts).astype(np.int32)
        # At 1 position/s many consecutive positions share a pixel (a receiver-frame pixel is
        # ~4 km wide); drawing the repeats changes nothing and costs time. One int64 compare
        # per point checks both coordinates at once.
        if ipts.shape[0] > 1:
            packed = ipts.view(np.int64).ravel()
            moved = np.empty(packed.size, dtype=bool)
            moved[0] = True
            np.not_equal(packed[1:], packed[:-1], out=moved[1:])
            ipts = ipts[moved]
        return ipts


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
    """PNG bytes of a (64, 64, 2) 0/1 image: 128x64, 1 bit per pixel, where on the left, shape
    on the right.

    Written directly (signature, IHDR, one IDAT, IEND) because Pillow's PNG writer costs ~200 us
    per image, more than drawing the track; any PNG reader (Pillow, browsers) reads it."""
    side_by_side = np.concatenate([image[:, :, 0], image[:, :, 1]], axis=1)
    rows = np.packbits(side_by_side.astype(bool), axis=1)                 # (64, 16) bytes
    raw = np.concatenate([np.zeros((SIZE, 1), dtype=np.uint8), rows], axis=1)  # filter 0
    ihdr = struct.pack(">IIBBBBB", 2 * SIZE, SIZE, 1, 0, 0, 0, 0)           # 1-bit greyscale
    return b"".join((_PNG_SIGNATURE, _chunk(b"IHDR", ihdr),
                     _chunk(b"IDAT", zlib.compress(raw.tobytes(), 6)), _IEND))


_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


_IEND = _chunk(b"IEND", b"")


def decode_png(data: bytes) -> np.ndarray:
    """Inverse of :func:`encode_png`: a (64, 64, 2) uint8 0/1 array."""
    arr = np.asarray(Image.open(io.BytesIO(data)).convert("L"), dtype=np.uint8)
    if arr.shape != (SIZE, 2 * SIZE):
        raise ValueError(f"stored track image has shape {arr.shape}, expected (64, 128)")
    out = np.empty((SIZE, SIZE, 2), dtype=np.uint8)
    out[:, :, 0] = arr[:, :SIZE] > 0
    out[:, :, 1] = arr[:, SIZE:] > 0
    return out


_OWN_HEADER = _PNG_SIGNATURE + _chunk(b"IHDR", struct.pack(">IIBBBBB", 2 * SIZE, SIZE, 1, 0, 0, 0, 0))
_ROW_BYTES = 1 + 2 * SIZE // 8                         # filter byte + 128 one-bit pixels


def decode_pngs(blobs: list[bytes]) -> np.ndarray:
    """(n, 64, 64, 2) uint8 0/1 images of many stored PNGs at once.

    PNGs written by :func:`encode_png` (one IDAT, filter 0 on every row) are inflated with zlib
    (its Adler-32 checksum guards the data) and unpacked for the whole batch in one NumPy pass,
    ~20x faster than Pillow per image; any other valid PNG goes through :func:`decode_png`.
    Raises ValueError for an image that cannot be decoded."""
    out = np.empty((len(blobs), SIZE, SIZE, 2), dtype=np.uint8)
    raw, fast = [], []
    head = len(_OWN_HEADER)
    for i, blob in enumerate(blobs):
        blob = bytes(blob)
        if blob.startswith(_OWN_HEADER) and blob[head + 4:head + 8] == b"IDAT" \
                and blob.endswith(_IEND):
            n = struct.unpack(">I", blob[head:head + 4])[0]
            if head + 12 + n + len(_IEND) == len(blob):
                try:
                    data = zlib.decompress(blob[head + 8:head + 8 + n])
                except zlib.error as e:
                    raise ValueError(f"stored track image is corrupt ({e})") from None
                if len(data) == SIZE * _ROW_BYTES and not any(data[::_ROW_BYTES]):
                    raw.append(data)
                    fast.append(i)
                    continue
        out[i] = decode_png(blob)
    if raw:
        rows = np.frombuffer(b"".join(raw), np.uint8).reshape(len(raw), SIZE, _ROW_BYTES)
        bits = np.unpackbits(rows[:, :, 1:], axis=2)                       # (k, 64, 128)
        out[fast, :, :, 0] = bits[:, :, :SIZE]
        out[fast, :, :, 1] = bits[:, :, SIZE:]
    return out


def lit_fractions(image: np.ndarray) -> tuple[float, float]:
    return float(image[:, :, 0].mean()), float(image[:, :, 1].mean())
