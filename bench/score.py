"""Scoring throughput end to end (read images -> score -> write), flights per second.
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
        settings = config.load({}, {"database_url": url, "data_dir": "/tmp/adsb-bench-score",
                                    "train_max_flights": 2000})
        r = train.run_training(settings, seed=1, plain=True, verbose=False, engine=engine,
                               max_epochs=3)
        if r.status != "active":
            # Throughput does not depend on quality: use the candidate anyway.
            with engine.begin() as conn:
                conn.execute(sa.text("UPDATE models SET status = 'active' WHERE id = :i"),
                             {"i": r.model_id})
        # Load the model and trace the forward pass once, as the worker does at its first
        # tick; then time what every later tick costs.
        import numpy as np
        import tensorflow as tf

        with engine.connect() as conn:
            scorer = score.scorer_for(registry.active(conn))
        batch = tf.zeros((score.BATCH, 64, 64, 2), tf.float32)
        scorer.forward(batch)
        t0 = time.monotonic()
        for _ in range(5):
            errs, _probs = scorer.forward(batch)
            np.asarray(errs)
        fwd = 5 * score.BATCH / (time.monotonic() - t0)
        t0 = time.monotonic()
        n = score.score_pending(engine, settings)
        s = time.monotonic() - t0
        with engine.connect() as conn:
            flagged = conn.execute(sa.text("SELECT count(*) FROM flights WHERE flagged")).scalar()
        print(f"forward pass alone: {fwd:,.0f} images/s")
        print(f"{n} flights scored in {s:.2f} s: {n / s:,.0f} flights/s end to end "
              f"(read images -> score -> write; {flagged} flagged, reconstructions written); "
              f"ratio to the forward pass {n / s / fwd:.2f}")
    finally:
        engine.dispose()
        _data.drop_database(url)


if __name__ == "__main__":
    main()
