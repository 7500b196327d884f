"""Scoring throughput end to end (read images -> score -> write), flights per second, and in the
same run the forward pass alone of the project's model and of a plain ~1 M-parameter conv
autoencoder (the reference of the target: ~4,000 images/s forward, >= 2,000 flights/s end to
end), so that the figure reads as a ratio on any machine.
Usage: python bench/score.py [--copies 20]  (Paris flights inserted COPIES times)"""

from __future__ import annotations

import argparse
import logging
import time

import sqlalchemy as sa

import _data
from pipeline import config
from pipeline.model import registry, score, train


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--copies", type=int, default=20)
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    url = _data.new_database()
    engine = sa.create_engine(url)
    try:
        tracks = _data.hf.paris_tracks(_data.PARIS_CSV)
        for _ in range(args.copies):
            _data.hf.insert_tracks(engine, tracks)
        # Every copy of a track ends at the same time: train on all of them (a window of the
        # newest N would hold only the latest-ending tracks and flag all the others).
        settings = config.load({}, {"database_url": url, "data_dir": "/tmp/adsb-bench-score"})
        # Enough epochs for a realistic share of flagged flights: each flagged flight also
        # writes its reconstruction PNG, and a half-trained model flags a fifth of them.
        r = train.run_training(settings, seed=1, verbose=False, engine=engine, max_epochs=8)
        if r.status != "active":
            # Throughput does not depend on quality: use the candidate anyway.
            with engine.begin() as conn:
                conn.execute(sa.text("UPDATE models SET status = 'active' WHERE id = :i"),
                             {"i": r.model_id})
        # Load the model and trace the forward pass once, as the worker does at its first
        # tick; then time what every later tick costs.
        from pipeline.model import autoencoder, errors
        from train import REFERENCE

        with engine.connect() as conn:
            scorer = score.scorer_for(registry.active(conn, settings.site_id))
        # Both on images of the stored format (10 channels), the reference built for them too.
        fwd = forward_rate(scorer.forward, scorer.channels)
        ref = forward_rate(errors.forward(autoencoder.build(REFERENCE, scorer.channels)[2],
                                          channels=scorer.channels, probabilities=False),
                           scorer.channels)
        t0 = time.monotonic()
        n = score.score_pending(engine, settings)
        s = time.monotonic() - t0
        with engine.connect() as conn:
            flagged = conn.execute(sa.text("SELECT count(*) FROM flights WHERE flagged")).scalar()
        print(f"forward pass alone, project model:             {fwd:8,.0f} images/s")
        print(f"forward pass alone, reference ~1 M conv AE:     {ref:8,.0f} images/s")
        print(f"end to end (read images -> score -> write):    {n / s:8,.0f} flights/s "
              f"({n} flights in {s:.2f} s, {flagged} flagged with reconstructions written)")
        print(f"ratio end to end / project forward pass: {n / s / fwd:.2f}; end to end / "
              f"reference forward pass: {n / s / ref:.2f} (target >= 0.5: 2,000 of 4,000)")
    finally:
        engine.dispose()
        _data.drop_database(url)


def forward_rate(forward, channels: int, repeats: int = 5) -> float:
    """Images/s of a compiled forward pass on full batches (traced once before timing)."""
    import numpy as np
    import tensorflow as tf

    batch = tf.zeros((score.BATCH, 64, 64, channels), tf.float32)
    np.asarray(forward(batch)[0])
    best = float("inf")
    for _ in range(repeats):
        t0 = time.monotonic()
        np.asarray(forward(batch)[0])
        best = min(best, time.monotonic() - t0)
    return score.BATCH / best


if __name__ == "__main__":
    main()
