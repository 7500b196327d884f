"""Scoring throughput end to end (read images -> score -> write), flights per second, with the
ensemble of fold models (ADSB_TRAIN_FOLDS, 3) on today's images (format 2, ten channels), and
in the same run the forward pass alone of that ensemble (as the scorer runs it, and computing
every output channel as it did before the route groups scored traffic counts) and the reference: a plain Keras
forward pass (``predict_on_batch``) of one model of the same architecture, so that the figure
reads as a ratio on any machine. End to end it alternates, twice each: the pass of every
channel, and the scorer as it runs in claims of 128 flights and of --batch (score.BATCH, 512) a
transaction. Target: >= 1,000 flights/s end to end with the ensemble.
Lever: --filters 8,16,32 (a model of half the filters; the reference stays the default one).
Usage: python bench/score.py [--copies 20] [--filters 8,16,32] [--batch 512] [--pass 128] [--profile]  (Paris flights inserted COPIES times)"""

from __future__ import annotations

import argparse
import cProfile
import dataclasses
import logging
import pstats
import time

import sqlalchemy as sa

import _data
from pipeline import config
from pipeline.model import autoencoder, errors, registry, score, train


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--copies", type=int, default=20)
    ap.add_argument("--filters", default=None, help="lever: e.g. 8,16,32 (default 16,32,64)")
    ap.add_argument("--batch", type=int, default=score.BATCH,
                    help="flights claimed and written per transaction")
    ap.add_argument("--pass", dest="pass_", type=int, default=score.PASS,
                    help="flights per forward pass")
    ap.add_argument("--profile", action="store_true",
                    help="print where the time of the last run goes (cProfile, cumulative)")
    args = ap.parse_args()
    score.PASS = args.pass_
    logging.basicConfig(level=logging.WARNING)
    url = _data.new_database()
    engine = sa.create_engine(url)
    try:
        tracks = _data.hf.paris_tracks(_data.PARIS_CSV)
        for copy in range(args.copies):
            # Each copy 4 hours later than the one before (a position is stored once: same
            # aircraft, same time, same receiver is one row); all copies stay in the window.
            _data.hf.insert_tracks(engine, [dataclasses.replace(t, t=t.t + copy * 4 * 3600)
                                            for t in tracks])
        settings = config.load({}, {"database_url": url, "data_dir": "/tmp/adsb-bench-score"})
        # Enough epochs for a realistic share of flagged flights: each flagged flight also
        # writes its reconstruction PNG, and a half-trained model flags a fifth of them.
        arch = autoencoder.Architecture(
            filters=tuple(int(f) for f in args.filters.split(","))) if args.filters else None
        r = train.run_training(settings, seed=1, verbose=False, engine=engine, max_epochs=8,
                               arch=arch)
        if r.status != "active":
            # Throughput does not depend on quality: use the candidate anyway.
            with engine.begin() as conn:
                conn.execute(sa.text("UPDATE models SET status = 'active' WHERE id = :i"),
                             {"i": r.model_id})
        # Load the model and trace the forward pass once, as the worker does at its first
        # tick; then time what every later tick costs.
        with engine.connect() as conn:
            row = registry.active(conn, settings.site_id)
        scorer = score.scorer_for(row)
        # The scorer computes the channels its score reads (the shape channel, when the route
        # groups score traffic counts); the pass of every channel, as before, beside it.
        every = dataclasses.replace(scorer, forward=errors.forward(
            registry.load_model(row), row.params["loss"], channels=scorer.channels,
            probabilities=False))
        fwd = forward_rate(scorer.forward, scorer.channels)
        fwd_every = forward_rate(every.forward, scorer.channels)
        ref = _data.plain_keras_forward_rate(_data.paris_images(score.PASS), score.PASS)
        members = int(r.params["folds"])
        print(f"reference: plain Keras forward pass, one model: {ref:8,.0f} images/s; "
              f"{_data.load_avg()}")
        print(f"forward pass alone, ensemble of {members} (errors), as scored: {fwd:8,.0f} "
              f"images/s = {fwd / ref:.2f} x the reference; every channel: {fwd_every:8,.0f} "
              f"= {fwd_every / ref:.2f} x ({fwd / fwd_every:.2f} x faster as scored)")
        # As scored in claims of 128 flights (the claim was the forward pass until both were
        # one batch) beside claims of --batch; the pass of every channel beside them.
        variants = [("every channel", every, args.batch),
                    ("as scored, claims of 128", scorer, 128),
                    (f"as scored, claims of {args.batch}", scorer, args.batch)]
        for label, used, claim in variants + variants:
            # Alternated, twice each: the machine's speed moves between runs.
            with engine.begin() as conn:
                for table in ("flight_scores", "traffic_changes", "alert_outbox"):
                    conn.execute(sa.text(f"DELETE FROM {table}"))
                conn.execute(sa.text("UPDATE flights SET model_id = NULL, score = NULL, "
                                     "flagged = NULL, scored_at = NULL"))
            score._cache[(row.id, row.sha256)] = used
            profiler = cProfile.Profile() if args.profile and used is scorer \
                and claim == args.batch else None
            t0 = time.monotonic()
            if profiler is not None:
                profiler.enable()
            n = score.score_pending(engine, settings, batch=claim)
            s = time.monotonic() - t0
            if profiler is not None:
                profiler.disable()
                pstats.Stats(profiler).sort_stats("cumulative").print_stats(25)
            with engine.connect() as conn:
                flagged = conn.execute(sa.text("SELECT count(*) FROM flights WHERE flagged")
                                       ).scalar()
            print(f"end to end (read images -> score -> write), {label}: {n / s:8,.0f} "
                  f"flights/s ({n} flights in {s:.2f} s, {flagged} flagged with reconstructions "
                  f"written; target >= 1,000) = {n / s / ref:.2f} x the reference; "
                  f"{_data.load_avg()}")
    finally:
        engine.dispose()
        _data.drop_database(url)


def forward_rate(forward, channels: int, repeats: int = 5) -> float:
    """Images/s of a compiled forward pass on full batches (traced once before timing)."""
    import numpy as np
    import tensorflow as tf

    batch = tf.zeros((score.PASS, 64, 64, channels), tf.float32)
    np.asarray(forward(batch)[0])
    best = float("inf")
    for _ in range(repeats):
        t0 = time.monotonic()
        np.asarray(forward(batch)[0])
        best = min(best, time.monotonic() - t0)
    return score.PASS / best


if __name__ == "__main__":
    main()
