"""How many flights of the training window crossed each place of the fixed frame, each way:
what the route groups (*where* and *direction*) score.

A route group asks whether a flight went where, or the way, nobody goes. The network answers a
different question: it generalises the lines it has seen to nearby places and headings, which
a shape detector should do and a route detector should not. On the Swiss week (trained on days
1-6, judged on day 7, six arrangements; docs/model.md, "Route groups: traffic counts") the
network's surprise at the flight's pixels ranked rotated transits at ROC AUC 0.978 / AP 0.894
in the mean, the counts of single pixels (where and direction scored) at 0.996 / 0.963, and
the counts with a pixel of leeway (:data:`NEIGHBOURHOOD`: the day's wind, a slightly different
route; the network is taught as much by the one-pixel shifts of training; direction scored)
at 0.998 / 0.974, above pixel x heading rarity (0.997 / 0.971).

A flight's group error is the mean, over its lit pixels of the group's channels, of
-log((c + 1) / (N + 1)), c the number of window flights lit in the 3x3 pixels around it (in the
same heading sector, for *direction*) and N = 9 x the window's flights: a pixel every window
flight crossed scores ~0, one nobody crossed nearby log(N + 1). The mean, not the sum, so a long
flight is not unusual for being long. The window flights' own errors (the threshold's) come from
the counts of the other folds (:func:`out_of_fold`), so each is judged like a new flight, on
traffic it is not part of.

Stored with each model (:meth:`Counts.to_json`, ~22 KB in the model's parameters on the Swiss
week): the scorer needs no access to the window's images.
"""

from __future__ import annotations

import base64
import functools
import zlib
from dataclasses import dataclass, field

import numpy as np
from threadpoolctl import ThreadpoolController

from pipeline.flights import raster

NEIGHBOURHOOD = 3               # pixels on each side of the square a count is taken over
CHUNK = 2048                    # images read at once


@functools.cache
def _blas() -> ThreadpoolController:
    return ThreadpoolController()


def route_channels(channels: int) -> list[int]:
    """Image channels counted, for images with ``channels`` channels: where, then the eight
    heading sectors (format 1 images have where only)."""
    d = raster.DIRECTION
    return [raster.WHERE] + (list(range(d.start, d.stop)) if channels > 2 else [])


def _lit(images: np.ndarray) -> np.ndarray:
    """(n, 64, 64, counted channels) booleans."""
    return np.asarray(images)[..., route_channels(images.shape[-1])] > 0


def _chunks(images: np.ndarray, rows: np.ndarray | None):
    """(start, images) of ``images`` (only ``rows`` of them, when given) CHUNK at a time, so a
    window of a busy week is never copied whole (40 KB a flight)."""
    n = len(images) if rows is None else len(rows)
    for lo in range(0, n, CHUNK):
        yield lo, np.asarray(images[lo:lo + CHUNK] if rows is None
                             else images[rows[lo:lo + CHUNK]])


def _neighbourhood(counts: np.ndarray) -> np.ndarray:
    """Sum of each pixel's 3x3 square (zero beyond the frame), per channel."""
    r = NEIGHBOURHOOD // 2
    padded = np.pad(counts, ((r, r), (r, r), (0, 0)))
    h, w = counts.shape[:2]
    out = np.zeros(counts.shape, dtype=np.float64)
    for dy in range(NEIGHBOURHOOD):
        for dx in range(NEIGHBOURHOOD):
            out += padded[dy:dy + h, dx:dx + w]
    return out


@dataclass(frozen=True, eq=False)
class Counts:
    """Flights of a window lit at each pixel of the counted channels (where, then the heading
    sectors), and how many flights were counted."""

    flights: int
    lit: np.ndarray = field(repr=False)         # (64, 64, counted channels) uint32

    @classmethod
    def of(cls, images: np.ndarray, rows: np.ndarray | None = None) -> "Counts":
        """The counts of uint8 images (n, 64, 64, C), or of ``rows`` of them."""
        lit = np.zeros((*images.shape[1:3], len(route_channels(images.shape[-1]))),
                       dtype=np.uint32)
        for _, part in _chunks(images, rows):
            lit += _lit(part).sum(axis=0, dtype=np.uint32)
        return cls(len(images) if rows is None else len(rows), lit)

    def minus(self, other: "Counts") -> "Counts":
        return Counts(self.flights - other.flights, self.lit - other.lit)

    @functools.cached_property
    def weights(self) -> np.ndarray:
        """(64, 64, counted channels) surprise -log((c + 1) / (N + 1)) of a lit pixel, c the
        flights lit in its neighbourhood, N = 9 x the flights counted: Laplace's estimate of
        the chance that a new flight crosses it, a predictive probability at any N. So the
        folds (N less a fold) and the whole window judge alike: a pixel nobody crossed costs
        more in the larger window, where it is also rarer (measured: scaling the prior to the
        folds' traffic flagged as many ordinary flights on the Swiss week and found fewer
        anomalies). Computed once per counts: the scorer reads them every batch."""
        area = NEIGHBOURHOOD * NEIGHBOURHOOD
        near = _neighbourhood(self.lit.astype(np.float64))
        return -np.log((near + 1.0) / (area * self.flights + 1.0))

    def _group_matrices(self, channels: int) -> tuple[np.ndarray, np.ndarray]:
        """(pixels x ``channels``, groups) surprise and membership matrices of images with
        ``channels`` channels (the uncounted ones, shape, weigh 0): a flight's flattened image
        times them gives its summed surprise and its lit pixels per group, one product for the
        batch and no copy of the counted channels (5x the elementwise sums, measured on the
        scorer's batches)."""
        key = f"_matrices_{channels}"
        if key not in self.__dict__:
            w = self.weights
            counted = route_channels(channels)
            groups = [counted[:1]] + ([counted[1:]] if len(counted) > 1 else [])
            member = np.zeros((*w.shape[:2], channels, len(groups)), dtype=np.float32)
            surprise = np.zeros_like(member)
            for g, chans in enumerate(groups):
                for c in chans:
                    member[:, :, c, g] = 1.0
                    surprise[:, :, c, g] = w[:, :, counted.index(c)]
            self.__dict__[key] = (surprise.reshape(-1, len(groups)),
                                  member.reshape(-1, len(groups)))
        return self.__dict__[key]

    def errors(self, images: np.ndarray, rows: np.ndarray | None = None) -> np.ndarray:
        """(n, route groups) mean surprise over each flight's lit pixels of *where* and (with
        direction channels) of the eight heading channels together; 0 for a flight with none.
        Of ``images``, or of ``rows`` of them."""
        surprise, member = self._group_matrices(images.shape[-1])
        out = np.zeros((len(images) if rows is None else len(rows), member.shape[1]))
        # On one BLAS thread: the product is bound by memory, not arithmetic, and OpenBLAS's
        # threads keep spinning on the cores after it, which slowed the scorer's next
        # TensorFlow pass by ~40 % (measured: passes of 128 images interleaved with these
        # products ran at 1,125-1,169 images/s, at 1,761-2,036 with the products on one thread).
        with _blas().limit(limits=1, user_api="blas"):
            for lo, part in _chunks(images, rows):
                flat = (part.reshape(len(part), -1) != 0).astype(np.float32)
                # float32 sums of at most 36,864 terms of <= 12: exact enough for a score.
                total, n_lit = (flat @ surprise).astype(np.float64), flat @ member
                out[lo:lo + len(part)] = total / np.maximum(n_lit, 1.0)
        return out

    def rarest_pixel(self, image: np.ndarray, group: str) -> tuple[int, int]:
        """(row, col) of the flight's pixel in ``group`` that the fewest window flights crossed
        nearby (the same way): where it went that nobody goes."""
        w = self.weights
        sl = slice(0, 1) if group == "where" else slice(1, w.shape[-1])
        surprise = np.where(_lit(image[None])[0][..., sl], w[..., sl], -np.inf).max(axis=-1)
        row, col = np.unravel_index(int(np.argmax(surprise)), surprise.shape)
        return int(row), int(col)

    def to_json(self) -> dict:
        raw = zlib.compress(np.ascontiguousarray(self.lit, dtype="<u4").tobytes(), 9)
        return {"flights": self.flights, "shape": list(self.lit.shape),
                "lit_zlib_base64": base64.b64encode(raw).decode("ascii")}

    @classmethod
    def from_json(cls, data: dict) -> "Counts":
        raw = zlib.decompress(base64.b64decode(data["lit_zlib_base64"]))
        lit = np.frombuffer(raw, dtype="<u4").reshape(data["shape"]).astype(np.uint32)
        return cls(int(data["flights"]), lit)

    def __eq__(self, other: object) -> bool:
        return (isinstance(other, Counts) and self.flights == other.flights
                and np.array_equal(self.lit, other.lit))

    def __hash__(self) -> int:
        return hash((self.flights, self.lit.tobytes()))


def out_of_fold(images: np.ndarray, rows: np.ndarray, fold: np.ndarray
                ) -> tuple[Counts, np.ndarray]:
    """(counts of the ``rows`` of ``images``, (len(rows), route groups) errors of each of them
    against the counts of the other folds' flights; ``fold`` of each row): a window flight
    judged like a new one, on traffic it is not part of."""
    rows = np.asarray(rows)
    total = Counts.of(images, rows)
    out = np.zeros((len(rows), 2 if images.shape[-1] > 2 else 1))
    for f in np.unique(fold):
        held = np.flatnonzero(fold == f)
        out[held] = total.minus(Counts.of(images, rows[held])).errors(images, rows[held])
    return total, out
