"""Training data: images of finished flights in the data window, and the tf.data pipeline."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import numpy as np
import sqlalchemy as sa
import tensorflow as tf

from pipeline.config import Settings
from pipeline.flights.clock import data_clock
from pipeline.flights.raster import decode_pngs


@dataclass
class Window:
    """Flights of one training window: ids, aircraft, images (n, 64, 64, 2) uint8, the flights
    the active model flagged and their tortuosity (both used to leave flights out of training,
    see train.py)."""

    start: dt.datetime
    end: dt.datetime
    ids: np.ndarray
    icao24: list[str]
    images: np.ndarray
    flagged: np.ndarray
    tortuosity: np.ndarray


def decode_images(blobs: list[bytes]) -> np.ndarray:
    return decode_pngs(blobs)


def load_window(engine: sa.Engine, settings: Settings,
                active_model_id: int | None = None) -> Window:
    """The newest ADSB_TRAIN_MAX_FLIGHTS finished flights of the last ADSB_TRAIN_DAYS of the
    data clock (a replay of an old capture trains on that capture)."""
    with engine.connect() as conn:
        end = data_clock(conn)
        start = end - dt.timedelta(days=settings.train_days)
        rows = conn.execute(sa.text("""
            SELECT id, icao24, image, coalesce(flagged AND model_id = :active, false),
                   coalesce(tortuosity, 1)
              FROM flights
             WHERE state = 'finished' AND image IS NOT NULL
               AND last_seen > :start AND last_seen <= :end
             ORDER BY last_seen DESC, id DESC
             LIMIT :limit"""), {"start": start, "end": end, "limit": settings.train_max_flights,
                                "active": active_model_id or -1}).all()
    rows.sort(key=lambda r: r[0])          # a stable order: the split depends only on the seed
    return Window(start, end, np.array([r[0] for r in rows], dtype=np.int64),
                  [r[1] for r in rows], decode_images([r[2] for r in rows]),
                  np.array([bool(r[3]) for r in rows], dtype=bool),
                  np.array([r[4] for r in rows], dtype=np.float64))


def split(n: int, val_fraction: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Indices of train and validation flights (a flight is in exactly one)."""
    order = rng.permutation(n)
    n_val = max(1, int(round(n * val_fraction)))
    return np.sort(order[n_val:]), np.sort(order[:n_val])


def dataset(images: np.ndarray, batch: int, shuffle_seed: int | None) -> tf.data.Dataset:
    """(x, x) batches. Built from arrays: each batch is its own tensor (no shared buffer that a
    generator could overwrite). No augmentation: in the receiver frame position is information,
    shifting or flipping would teach the model that off-corridor tracks are normal."""
    assert images.ndim == 4 and images.shape[1:] == (64, 64, 2), images.shape
    ds = tf.data.Dataset.from_tensor_slices(images).map(lambda x: tf.cast(x, tf.float32))
    ds = ds.cache()
    if shuffle_seed is not None:
        ds = ds.shuffle(len(images), seed=shuffle_seed, reshuffle_each_iteration=True)
    return ds.batch(batch).map(lambda x: (x, x)).prefetch(tf.data.AUTOTUNE)
