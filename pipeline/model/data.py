"""Training data: images of finished flights in the data window, and the tf.data pipeline."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any, Sequence, Union

import numpy as np
import sqlalchemy as sa
import tensorflow as tf

from pipeline.config import Settings
from pipeline.flights import raster
from pipeline.flights.clock import data_clock
from pipeline.flights.raster import decode_pngs


class PackedImages:
    """(n, 64, 64, C) uint8 0/1 images held as bits: each flight's pixels packed with
    np.packbits, 5 KB a flight of 10 channels instead of 40 KB (20,000 flights: 100 MB instead
    of 800 MB, measured in docs/model.md "Memory").

    Read like the array it replaces: ``shape``, ``len()``, and ``images[key]`` for an int, a
    slice, a boolean mask or an index array, which unpacks those flights into a new uint8 array
    (never a view of a shared buffer, so what a caller holds is never overwritten)."""

    dtype = np.dtype(np.uint8)
    ndim = 4

    def __init__(self, bits: np.ndarray, pixel_shape: tuple[int, ...]) -> None:
        self.pixel_shape = tuple(int(v) for v in pixel_shape)
        self._size = int(np.prod(self.pixel_shape))
        assert bits.ndim == 2 and bits.dtype == np.uint8 and \
            bits.shape[1] == (self._size + 7) // 8, (bits.shape, self.pixel_shape)
        self.bits = bits

    @classmethod
    def pack(cls, images: np.ndarray) -> "PackedImages":
        """Bits of 0/1 images (any nonzero pixel is lit)."""
        images = np.asarray(images)
        return cls(np.packbits(images.reshape(len(images), -1) != 0, axis=1), images.shape[1:])

    @property
    def shape(self) -> tuple[int, ...]:
        return (len(self.bits), *self.pixel_shape)

    @property
    def nbytes(self) -> int:
        return int(self.bits.nbytes)

    def __len__(self) -> int:
        return len(self.bits)

    def __getitem__(self, key: Any) -> np.ndarray:
        if isinstance(key, tuple):
            # images[..., c] would index the bytes, not the pixels: unpack flights first.
            raise TypeError("PackedImages are indexed by flight only: images[rows][..., c]")
        rows = self.bits[key]
        if rows.ndim == 1:                                # one flight
            return np.unpackbits(rows, count=self._size).reshape(self.pixel_shape)
        out = np.unpackbits(rows, axis=1, count=self._size)
        return out.reshape(len(rows), *self.pixel_shape)

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        out = self[:]
        return out if dtype is None else out.astype(dtype)


class Subset:
    """Flights ``rows`` of an image source (an array, PackedImages or another Subset), read like
    an array of those flights without copying them: folds and the kept flights of a window are
    index arrays, and only the batch being read is unpacked."""

    dtype = np.dtype(np.uint8)
    ndim = 4

    def __init__(self, source: "Images", rows: np.ndarray) -> None:
        picked = np.asarray(rows)
        if picked.dtype == bool:
            picked = np.flatnonzero(picked)
        if isinstance(source, Subset):                    # one level: rows of the real source
            picked, source = source.rows[picked], source.source
        self.source: Images = source
        self.rows: np.ndarray = picked.astype(np.int64)

    @property
    def shape(self) -> tuple[int, ...]:
        return (len(self.rows), *self.source.shape[1:])

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, key: Any) -> np.ndarray:
        if isinstance(key, tuple):
            raise TypeError("a Subset is indexed by flight only: images[rows][..., c]")
        return np.asarray(self.source[self.rows[key]])

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        out = self[:]
        return out if dtype is None else out.astype(dtype)


# What training and scoring read images from: a uint8 array or one of the two views above.
Images = Union[np.ndarray, PackedImages, Subset]


def lit_pixels(images: Images) -> np.ndarray:
    """Lit pixels (all channels) of each flight, without unpacking the whole set at once."""
    if isinstance(images, PackedImages):
        return np.bitwise_count(images.bits).sum(axis=1, dtype=np.int64)
    if isinstance(images, Subset):
        return lit_pixels(images.source)[images.rows]
    return np.asarray(images).reshape(len(images), -1).sum(axis=1, dtype=np.int64)


@dataclass
class Window:
    """Flights of one training window: ids, aircraft, images (n, 64, 64, C) 0/1 of the current
    image format (held as bits: :class:`PackedImages`, indexed like an array), the flights the
    active model flagged and their tortuosity (both used to leave flights out of training, see
    train.py), when each began, and the user's newest verdict on each ('normal', 'anomalous',
    '' for none; it overrules both, see train.screen)."""

    start: dt.datetime
    end: dt.datetime
    ids: np.ndarray
    icao24: list[str]
    images: PackedImages
    flagged: np.ndarray
    tortuosity: np.ndarray
    first_seen: np.ndarray          # datetime64[us] UTC
    verdicts: np.ndarray | None = None
    # score / threshold of the active model (NaN where it did not score the flight): of the
    # flights it flagged, those flagged by the widest margin are left out first.
    flag_margin: np.ndarray | None = None

    def verdict_is(self, verdict: str) -> np.ndarray:
        if self.verdicts is None:
            return np.zeros(len(self.ids), dtype=bool)
        return self.verdicts == verdict


def decode_images(blobs: list[bytes], channels: int | None = None) -> np.ndarray:
    return decode_pngs(blobs, channels)


def pack_pngs(blobs: Sequence[bytes], channels: int, chunk: int = 1024) -> PackedImages:
    """Stored PNGs decoded straight into bits, ``chunk`` at a time: the whole window is never
    held unpacked (40 KB a flight), only one chunk of it."""
    size = raster.SIZE * raster.SIZE * channels
    bits = np.empty((len(blobs), (size + 7) // 8), dtype=np.uint8)
    for lo in range(0, len(blobs), chunk):
        part = decode_pngs(list(blobs[lo:lo + chunk]), channels)
        bits[lo:lo + len(part)] = np.packbits(part.reshape(len(part), -1), axis=1)
    return PackedImages(bits, (raster.SIZE, raster.SIZE, channels))


def load_window(engine: sa.Engine, settings: Settings, active_model_id: int | None = None,
                until: dt.datetime | None = None, site: str | None = None) -> Window:
    """The newest ADSB_TRAIN_MAX_FLIGHTS finished flights of a site (default: the site of
    the settings' receiver, ``settings.site_id``) of the last ADSB_TRAIN_DAYS of the
    data clock (a replay of an old capture trains on that capture), images of the current
    format only. ``until`` ends the window earlier (evaluation on a later period): only flights
    that ended before it. Flights the user judged normal are taken first, so a busy site's
    ADSB_TRAIN_MAX_FLIGHTS never leaves them out."""
    with engine.connect() as conn:
        end = until if until is not None else data_clock(conn)
        start = end - dt.timedelta(days=settings.train_days)
        # A flag that is part of a traffic change is not left out as flagged: it is the new
        # traffic the next model must learn (pipeline/model/changes.py).
        rows = conn.execute(sa.text("""
            SELECT f.id, f.icao24, f.image,
                   coalesce(f.flagged AND f.model_id = :active AND f.traffic_change_id IS NULL,
                            false),
                   coalesce(f.tortuosity, 1), f.first_seen, coalesce(v.verdict, ''),
                   CASE WHEN f.model_id = :active THEN f.score / nullif(f.threshold, 0) END
              FROM flights f
              LEFT JOIN flight_verdicts v ON v.icao24 = f.icao24 AND v.flight_id = f.id
             WHERE f.state = 'finished' AND f.image IS NOT NULL AND f.image_format = :format
               AND f.site = :site
               AND f.last_seen > :start AND f.last_seen <= :end
               AND (CAST(:until AS timestamptz) IS NULL OR f.last_seen < :until)
             ORDER BY v.verdict IS NOT DISTINCT FROM 'normal' DESC, f.last_seen DESC, f.id DESC
             LIMIT :limit"""), {"start": start, "end": end, "limit": settings.train_max_flights,
                                "active": active_model_id or -1, "format": raster.FORMAT,
                                "until": until, "site": site or settings.site_id}).all()
    return window_from_rows(start, end, rows)


def window_from_rows(start: dt.datetime, end: dt.datetime, rows: Sequence[Any]) -> Window:
    """The Window of the query's rows (id, icao24, image PNG, flagged, tortuosity, first_seen,
    verdict[, score / threshold of the active model]); bench/memory.py builds its windows here
    too."""
    rows = sorted(rows, key=lambda r: r[0])   # a stable order: the folds depend on the seed
    return Window(start, end, np.array([r[0] for r in rows], dtype=np.int64),
                  [r[1] for r in rows], pack_pngs([r[2] for r in rows], raster.NCH),
                  np.array([bool(r[3]) for r in rows], dtype=bool),
                  np.array([r[4] for r in rows], dtype=np.float64),
                  np.array([r[5].replace(tzinfo=None) for r in rows], dtype="datetime64[us]"),
                  np.array([r[6] for r in rows], dtype=object),
                  np.array([np.nan if len(r) < 8 or r[7] is None else float(r[7]) for r in rows],
                           dtype=np.float64))


def folds(n: int, k: int, rng: np.random.Generator,
          first_seen: np.ndarray | None = None) -> np.ndarray:
    """Fold (0..k-1) of each of n flights; every flight is in exactly one.

    With the flights' start times, folds are blocks of time: the flights, in time order, are
    cut into B = max(k, days spanned) runs of equal count and run b goes to fold b mod k (a day
    at a time in a week's window, half an hour at a time in 90 minutes). Why: flights of the
    same hour follow the same streams, runways and vectors; with random folds every held-out
    flight has near twins in its fold model's training set and its error says little about a
    later period. Measured on the Paris day (trained on the first 90 minutes): random folds put
    the threshold at the 99th percentile of out-of-fold scores, yet 23 % of the next 90
    minutes' ordinary flights scored above it (their *where* errors were 4x the out-of-fold
    median). Without times: a seeded shuffle dealt round."""
    out = np.empty(n, dtype=np.int64)
    if first_seen is None or n < k:
        out[rng.permutation(n)] = np.arange(n) % k
        return out
    order = np.argsort(first_seen, kind="stable")
    span_days = float((first_seen.max() - first_seen.min()) / np.timedelta64(1, "D"))
    blocks = max(k, int(np.ceil(span_days)))
    block = np.minimum(np.arange(n) * blocks // n, blocks - 1)
    out[order] = block % k
    return out


PREFETCH = 2                    # batches gathered ahead of the fit


def dataset(images: Images, batch: int, shuffle_seed: int | None,
            augment: bool = False) -> tf.data.Dataset:
    """(x, x) batches of float32 images. Only flight *indices* go through tf.data (8 bytes a
    flight; shuffled with the seed, so the order is the one the whole images shuffled with it
    had); each batch is gathered from ``images`` when it is due (unpacked when the window is
    held as bits, see :class:`PackedImages`) and cast to float32 then. Measured (docs/model.md,
    "Memory"): the cached float32 copy of the training set, the copy ``from_tensor_slices``
    made of it and the slices of each fold took ~0.39 MB a flight; this takes none.

    Each batch is a new array (a fancy-indexed gather, then a new tensor): never a buffer reused
    from batch to batch, which tf.data may still hold (prefetch) when the next one is written.

    ``augment`` (training only) changes each image in ways that keep its meaning: the fixed
    frame (where and direction channels) moves by at most one pixel (~4 km at 121 km range:
    the day's wind and a slightly different route, never another corridor), and the own-frame
    shape channel is turned by a multiple of 90 degrees or mirrored (a track's orientation in
    its own frame says nothing the direction channels do not; an orbit is an orbit whichever
    way it is drawn)."""
    shape = tuple(images.shape)
    assert len(shape) == 4 and shape[1:3] == (64, 64), shape
    ds = index_batches(len(images), batch, shuffle_seed)
    # Augmented in NumPy as the batch is gathered, with a generator of the dataset's own
    # seed: as TensorFlow ops per image (unbatch, map, batch) the augmentation took half of a
    # small fit's epoch (70 flights: 0.27 s an epoch, 0.14 s without), and as TensorFlow ops on
    # the whole batch longer still. The batches are gathered in order (no parallel map), so
    # the draws are made in order too: same seed, same batches.
    rng = np.random.default_rng(shuffle_seed) if augment else None

    def gather(idx: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(images[idx], dtype=np.uint8)
        return x if rng is None else augmented(x, rng)

    def load(idx: tf.Tensor) -> tf.Tensor:
        x = tf.numpy_function(gather, [idx], tf.uint8, stateful=rng is not None)
        x.set_shape((None, *shape[1:]))
        return tf.cast(x, tf.float32)

    # A fixed prefetch, and tf.data's autotuning off: on 2 cores its tuning made epochs at
    # random about 1.6 x slower (a plain Keras fit of a tf.data dataset, the same data: epochs
    # of 1.54-1.68 s and 2.44-2.59 s with it, 1.52-1.60 s without). Gathering a batch takes a
    # fraction of a step, so a batch or two ready ahead is all the fit needs.
    options = tf.data.Options()
    options.autotune.enabled = False
    return ds.map(load).map(lambda x: (x, x)).prefetch(PREFETCH).with_options(options)


def index_batches(n: int, batch: int, shuffle_seed: int | None) -> tf.data.Dataset:
    """Batches of flight indices 0..n-1: each index once an epoch, shuffled anew each epoch
    with the seed (unshuffled without one)."""
    ds = tf.data.Dataset.range(n)
    if shuffle_seed is not None:
        ds = ds.shuffle(max(n, 1), seed=shuffle_seed, reshuffle_each_iteration=True)
    return ds.batch(batch)


def augmented(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """uint8 images (n, 64, 64, C) changed as described in :func:`dataset`, each with its own
    draws: the fixed frame (every channel but shape) moved by (dy, dx) in {-1, 0, 1}^2, zeros
    moved in; the shape channel turned by k x 90 degrees and mirrored with probability 1/2."""
    n = len(x)
    out = np.zeros_like(x)
    dy, dx = rng.integers(-1, 2, (2, n))
    turns = rng.integers(0, 4, n)
    mirror = rng.random(n) < 0.5
    for i in range(n):
        # out[r, c] = x[r + dy, c + dx] where that pixel is inside the image (every channel
        # moved; the shape channel is written over next).
        sy, sx = int(dy[i]), int(dx[i])
        out[i, max(0, -sy):64 - max(0, sy), max(0, -sx):64 - max(0, sx)] = \
            x[i, max(0, sy):64 - max(0, -sy), max(0, sx):64 - max(0, -sx)]
        own = np.rot90(x[i, :, :, raster.SHAPE], int(turns[i]))
        out[i, :, :, raster.SHAPE] = own[:, ::-1] if mirror[i] else own
    return out
