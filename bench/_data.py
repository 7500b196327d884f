"""Shared steps of the model benchmarks: throw-away databases, and the Paris day plus injected
anomalies through the real ingest path (tests/paris_replay.py)."""

from __future__ import annotations

import sys
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np
import psycopg2
import sqlalchemy as sa

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

import helpers_flights as hf  # noqa: E402, F401  (re-exported: bench scripts use _data.hf)
import paris_replay  # noqa: E402
from pipeline.db import migrate  # noqa: E402

ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"
PARIS_CSV = ROOT.parent / "shared" / "data" / "paris_2021-10-07.csv.gz"


def new_database() -> str:
    name = f"adsb_bench_{uuid.uuid4().hex[:10]}"
    conn = psycopg2.connect(ADMIN)
    conn.autocommit = True
    conn.cursor().execute(f'CREATE DATABASE "{name}"')
    conn.close()
    url = f"postgresql+psycopg2://postgres@127.0.0.1:5432/{name}"
    engine = sa.create_engine(url)
    migrate.upgrade(engine)
    engine.dispose()
    return url


def drop_database(url: str) -> None:
    conn = psycopg2.connect(ADMIN)
    conn.autocommit = True
    conn.cursor().execute(f'DROP DATABASE IF EXISTS "{sa.engine.make_url(url).database}" WITH (FORCE)')
    conn.close()


def load(engine: sa.Engine, fraction: float, seed: int = 0) -> dict[str, int]:
    """The Paris day plus ``fraction`` (of all flights) injected anomalies, through the real
    path (tests/paris_replay.py). Returns the labels per icao24 (1 = injected anomaly)."""
    with tempfile.TemporaryDirectory() as tmp:
        return paris_replay.load(engine, fraction, Path(tmp), seed=seed)


def load_avg() -> str:
    """The 1-minute load average, printed beside every figure (the machine is shared)."""
    import os

    return f"load {os.getloadavg()[0]:.2f}"


def paris_images(n: int) -> np.ndarray:
    """``n`` track images of today's format (uint8, 64x64xNCH): the Paris flights, repeated."""
    from pipeline.flights import raster

    tracks = hf.paris_tracks(PARIS_CSV)
    base = np.stack([raster.rasterize(t.lat, t.lon, 48.88, 2.42, 121.0)[0] for t in tracks])
    return base[np.arange(n) % len(base)]


def plain_keras_fit_rate(images: np.ndarray, epochs: int = 2, batch: int = 64,
                         outputs: tuple[int, ...] | None = None) -> float:
    """The reference of the training figures: images/s of a plain Keras fit (``model.fit`` on a
    float32 NumPy array in memory: no tf.data pipeline, no augmentation, no folds, no callbacks)
    of the project's architecture with Keras' binary cross-entropy from logits, on ``images``;
    the first epoch (tracing) untimed, the best of the others. With ``outputs`` (a lever), the
    network reconstructs those channels only (every channel in, ``autoencoder.narrowed``)."""
    import keras

    from pipeline.model import autoencoder

    keras.utils.set_random_seed(0)
    model = autoencoder.build(autoencoder.Architecture(), images.shape[-1])[2]
    if outputs is not None:
        model = autoencoder.narrowed(model, outputs)
    model.compile(optimizer=keras.optimizers.Adam(2e-3),
                  loss=keras.losses.BinaryCrossentropy(from_logits=True))
    x = images.astype(np.float32)
    y = x if outputs is None else x[..., list(outputs)]
    model.fit(x, y, batch_size=batch, epochs=1, verbose=0)
    best = float("inf")
    for _ in range(epochs):
        t0 = time.perf_counter()
        model.fit(x, y, batch_size=batch, epochs=1, verbose=0)
        best = min(best, time.perf_counter() - t0)
    return len(x) / best


def plain_keras_forward_rate(images: np.ndarray, batch: int = 128, repeats: int = 5) -> float:
    """The reference of the scoring figures: images/s of a plain Keras forward pass
    (``model.predict_on_batch``) of the project's architecture, one model, on full batches."""
    from pipeline.model import autoencoder

    model = autoencoder.build(autoencoder.Architecture(), images.shape[-1])[2]
    x = images[:batch].astype(np.float32)
    model.predict_on_batch(x)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        model.predict_on_batch(x)
        best = min(best, time.perf_counter() - t0)
    return len(x) / best
