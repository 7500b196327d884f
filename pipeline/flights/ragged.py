"""Many tracks in one pair of arrays: their positions one after the other, track i being
``x[offsets[i]:offsets[i + 1]]``, so that NumPy handles a whole batch of flights per call."""

from __future__ import annotations

from typing import Iterator

import numpy as np

# Positions handled per NumPy pass inside a batch: each pass reads and writes a dozen arrays of
# this length, which then stay in the CPU's cache (~2x faster than whole-batch passes).
CHUNK_POSITIONS = 1 << 16


def offsets_of(lengths) -> np.ndarray:
    """Offsets (n + 1, from 0) of tracks of these lengths."""
    out = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=out[1:])
    return out


def spans(offsets: np.ndarray, limit: int | None = None) -> Iterator[tuple[int, int]]:
    """Consecutive ranges [i, j) of tracks holding at most ``limit`` (CHUNK_POSITIONS)
    positions together (a longer track is a range of its own), covering all tracks."""
    limit = limit or CHUNK_POSITIONS
    n = len(offsets) - 1
    i = 0
    while i < n:
        j = int(np.searchsorted(offsets, offsets[i] + limit, side="right")) - 1
        j = min(max(j, i + 1), n)
        yield i, j
        i = j
