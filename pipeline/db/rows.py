"""Position rows in PostgreSQL's binary COPY format, built for a whole batch with NumPy.

Text COPY would need one string format per row (times, coordinates and numbers printed, then
parsed again by the server); in binary the fixed-width columns of a batch are one NumPy record
array, and a row is a slice of it followed by the bytes of the aircraft's latest ground speed,
track, vertical rate and callsign, which only change with an aircraft's velocity or
identification messages and are encoded once per change (``details()``).
"""

from __future__ import annotations

import math
import struct

import numpy as np

# Fixed-width columns first, then altitude (NULL when unknown), then the details.
COLUMNS = ("time", "icao24", "latitude", "longitude", "on_ground", "receiver_id", "altitude",
           "groundspeed", "track", "vertical_rate", "callsign")
COPY_SQL = f"COPY positions ({', '.join(COLUMNS)}) FROM STDIN WITH (FORMAT binary)"
HEADER = b"PGCOPY\n\xff\r\n\x00" + bytes(8)      # signature, flags, no header extension
TRAILER = b"\xff\xff"
_PG_EPOCH_S = 946684800.0                         # 2000-01-01 UTC, origin of timestamptz
_NULL = b"\xff\xff\xff\xff"
_INT4 = 2 ** 31
_FLOAT4_MAX = 3.4e38
_FLOAT4 = struct.Struct(">if")
_INT4_FIELD = struct.Struct(">ii")
_SPEED_TRACK_RATE = struct.Struct(">ififii")


def details(groundspeed: float | None, track: float | None, vertical_rate: int | None,
            callsign: str | None) -> bytes:
    """The last four fields of a row. A value a column cannot hold (a float beyond float4, an
    integer beyond int4) is stored as NULL rather than failing the whole batch."""
    try:
        head = _SPEED_TRACK_RATE.pack(4, groundspeed, 4, track, 4, vertical_rate)
    except (struct.error, OverflowError, TypeError):    # a None, or a value out of range
        head = b"".join([_float4(groundspeed), _float4(track), _int4(vertical_rate)])
    if callsign is None:
        return head + _NULL
    text = callsign.encode()
    if b"\x00" in text:                 # PostgreSQL text cannot hold NUL
        text = text.replace(b"\x00", b"")
    return head + len(text).to_bytes(4, "big") + text


def _float4(value: float | None) -> bytes:
    if value is None or (math.isfinite(value) and abs(value) > _FLOAT4_MAX):
        return _NULL
    return _FLOAT4.pack(4, value)


def _int4(value: int | float | None) -> bytes:
    if value is None or not -_INT4 < value < _INT4:     # NaN fails both comparisons
        return _NULL
    return _INT4_FIELD.pack(4, int(value))


class RowEncoder:
    """Encodes batches of positions of one receiver."""

    def __init__(self, receiver_id: str) -> None:
        rid = receiver_id.replace("\x00", "").encode() or b"default"
        self._receiver_id = np.frombuffer(rid, np.uint8)
        self._dtype = np.dtype([
            ("fields", ">i2"), ("time_len", ">i4"), ("time", ">i8"), ("icao_len", ">i4"),
            ("icao", "S6"), ("lat_len", ">i4"), ("lat", ">f8"), ("lon_len", ">i4"),
            ("lon", ">f8"), ("ground_len", ">i4"), ("ground", "u1"), ("receiver_len", ">i4"),
            ("receiver", "u1", (len(rid),)), ("altitude_len", ">i4"), ("altitude", ">i4")])
        self.width = self._dtype.itemsize

    def encode(self, t: np.ndarray, icao: np.ndarray, lat: np.ndarray, lon: np.ndarray,
               on_ground: np.ndarray, altitude: np.ndarray, details: list[bytes]) -> bytes:
        """Rows (without COPY header and trailer). ``t``: Unix seconds; ``icao``: 'S6' array;
        ``altitude``: feet, NaN where unknown; ``details``: ``details()`` of each row."""
        n = len(t)
        rec = np.empty(n, self._dtype)
        rec["fields"] = len(COLUMNS)
        rec["time_len"], rec["icao_len"], rec["lat_len"], rec["lon_len"] = 8, 6, 8, 8
        rec["time"] = np.rint((t - _PG_EPOCH_S) * 1e6)
        rec["icao"] = icao
        rec["lat"], rec["lon"] = lat, lon
        rec["ground_len"], rec["ground"] = 1, on_ground
        rec["receiver_len"], rec["receiver"] = len(self._receiver_id), self._receiver_id
        known = np.isfinite(altitude) & (np.abs(altitude) < _INT4)
        rec["altitude_len"] = np.where(known, 4, -1)
        rec["altitude"] = np.where(known, altitude, 0).astype(np.int32)
        flat = rec.tobytes()
        width = self.width
        if known.all():
            prefixes = [flat[i:i + width] for i in range(0, n * width, width)]
        else:           # a NULL altitude is its length field alone
            ends = (np.arange(1, n + 1) * width - 4 * ~known).tolist()
            prefixes = [flat[i:e] for i, e in zip(range(0, n * width, width), ends)]
        parts = [b""] * (2 * n)
        parts[0::2] = prefixes
        parts[1::2] = details
        return b"".join(parts)
