"""Training data: images of finished flights in the data window, and the tf.data pipeline."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import numpy as np
import sqlalchemy as sa
import tensorflow as tf

from pipeline.config import Settings
from pipeline.flights import raster
from pipeline.flights.clock import data_clock
from pipeline.flights.raster import decode_pngs


@dataclass
class Window:
    """Flights of one training window: ids, aircraft, images (n, 64, 64, C) uint8 of the
    current image format, the flights the active model flagged and their tortuosity (both used
    to leave flights out of training, see train.py), when each began, and the user's newest
    verdict on each ('normal', 'anomalous', '' for none; it overrules both, see train.screen)."""

    start: dt.datetime
    end: dt.datetime
    ids: np.ndarray
    icao24: list[str]
    images: np.ndarray
    flagged: np.ndarray
    tortuosity: np.ndarray
    first_seen: np.ndarray          # datetime64[us] UTC
    verdicts: np.ndarray | None = None

    def verdict_is(self, verdict: str) -> np.ndarray:
        if self.verdicts is None:
            return np.zeros(len(self.ids), dtype=bool)
        return self.verdicts == verdict


def decode_images(blobs: list[bytes], channels: int | None = None) -> np.ndarray:
    return decode_pngs(blobs, channels)


def load_window(engine: sa.Engine, settings: Settings, active_model_id: int | None = None,
                until: dt.datetime | None = None) -> Window:
    """The newest ADSB_TRAIN_MAX_FLIGHTS finished flights of the last ADSB_TRAIN_DAYS of the
    data clock (a replay of an old capture trains on that capture), images of the current
    format only. ``until`` ends the window earlier (evaluation on a later period): only flights
    that ended before it. Flights the user judged normal are taken first, so a busy site's
    ADSB_TRAIN_MAX_FLIGHTS never leaves them out."""
    with engine.connect() as conn:
        end = until if until is not None else data_clock(conn)
        start = end - dt.timedelta(days=settings.train_days)
        rows = conn.execute(sa.text("""
            SELECT f.id, f.icao24, f.image, coalesce(f.flagged AND f.model_id = :active, false),
                   coalesce(f.tortuosity, 1), f.first_seen, coalesce(v.verdict, '')
              FROM flights f
              LEFT JOIN flight_verdicts v ON v.flight_id = f.id
             WHERE f.state = 'finished' AND f.image IS NOT NULL AND f.image_format = :format
               AND f.last_seen > :start AND f.last_seen <= :end
               AND (CAST(:until AS timestamptz) IS NULL OR f.last_seen < :until)
             ORDER BY v.verdict IS NOT DISTINCT FROM 'normal' DESC, f.last_seen DESC, f.id DESC
             LIMIT :limit"""), {"start": start, "end": end, "limit": settings.train_max_flights,
                                "active": active_model_id or -1, "format": raster.FORMAT,
                                "until": until}).all()
    rows = sorted(rows, key=lambda r: r[0])   # a stable order: the folds depend on the seed
    return Window(start, end, np.array([r[0] for r in rows], dtype=np.int64),
                  [r[1] for r in rows], decode_images([r[2] for r in rows], raster.NCH),
                  np.array([bool(r[3]) for r in rows], dtype=bool),
                  np.array([r[4] for r in rows], dtype=np.float64),
                  np.array([r[5].replace(tzinfo=None) for r in rows], dtype="datetime64[us]"),
                  np.array([r[6] for r in rows], dtype=object))


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


def dataset(images: np.ndarray, batch: int, shuffle_seed: int | None,
            augment: bool = False) -> tf.data.Dataset:
    """(x, x) batches. Built from arrays: each batch is its own tensor (no shared buffer that a
    generator could overwrite).

    ``augment`` (training only) changes each image in ways that keep its meaning: the fixed
    frame (where and direction channels) moves by at most one pixel (~4 km at 121 km range:
    the day's wind and a slightly different route, never another corridor), and the own-frame
    shape channel is turned by a multiple of 90 degrees or mirrored (a track's orientation in
    its own frame says nothing the direction channels do not; an orbit is an orbit whichever
    way it is drawn)."""
    assert images.ndim == 4 and images.shape[1:3] == (64, 64), images.shape
    ds = tf.data.Dataset.from_tensor_slices(images).map(lambda x: tf.cast(x, tf.float32))
    ds = ds.cache()
    if shuffle_seed is not None:
        ds = ds.shuffle(len(images), seed=shuffle_seed, reshuffle_each_iteration=True)
    if augment:
        ds = ds.map(_augment, num_parallel_calls=tf.data.AUTOTUNE)
    return ds.batch(batch).map(lambda x: (x, x)).prefetch(tf.data.AUTOTUNE)


def _augment(x: tf.Tensor) -> tf.Tensor:
    """One image (64, 64, C) changed as described in :func:`dataset`."""
    fixed = tf.concat([x[:, :, raster.WHERE:raster.WHERE + 1], x[:, :, raster.SHAPE + 1:]], -1)
    dy, dx = tf.unstack(tf.random.uniform([2], 0, 3, dtype=tf.int32))
    padded = tf.pad(fixed, [[1, 1], [1, 1], [0, 0]])
    fixed = padded[dy:dy + 64, dx:dx + 64, :]
    shape = tf.image.rot90(x[:, :, raster.SHAPE:raster.SHAPE + 1],
                           tf.random.uniform([], 0, 4, dtype=tf.int32))
    shape = tf.cond(tf.random.uniform([]) < 0.5, lambda: tf.reverse(shape, [1]), lambda: shape)
    return tf.concat([fixed[:, :, :1], shape, fixed[:, :, 1:]], -1)
