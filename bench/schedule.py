"""Learning-rate schedules on one fold of a busy week: is the fit slow to converge because of the
optimiser's step size, or because the fold needs that many batches to learn its traffic?

The busy week of bench/week.py (simulated, default 2,000 flights a weekday), days 1-6 as the
trainer sees them; fold 1 of the default three time-blocked folds is fitted from scratch, the
other two folds' flights as training and fold 1's as validation, once per schedule, for the same
wall time (default 200 s: a fold's share of the 600 s budget). Every variant runs the trainer's
own fit (batch, augmentation, early stopping) with only its learning rate changed; a cosine
schedule decays to 0 over the epochs that fit in that time (measured on the first variant), so
it ends on its own instead of being cut. Prints the validation loss at epochs 10, 20 and the last
one, as a ratio to the constant default's of the same run.
Usage: python bench/schedule.py [--per-day 2000] [--seconds 200] [--only NAME,...]"""

from __future__ import annotations

import argparse
import logging
import math
import time

import numpy as np
import sqlalchemy as sa

import _data
import sim_week  # noqa: E402  (tests/ is on the path through _data)
from pipeline import config
from pipeline.model import data, train

# name: (initial learning rate, cosine decay to 0 or constant)
VARIANTS = {
    "constant 2e-3 (default)": (2e-3, False),
    "constant 4e-3": (4e-3, False),
    "cosine from 2e-3": (2e-3, True),
    "cosine from 4e-3": (4e-3, True),
}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--per-day", type=int, default=2000)
    ap.add_argument("--seconds", type=float, default=200.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--only", default="", help="comma-separated variant names")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(message)s")
    import keras

    url = _data.new_database()
    engine = sa.create_engine(url)
    try:
        w = sim_week.load_week(engine, days=7, flights_per_day=args.per_day,
                               anomaly_fraction=0.02, seed=args.seed)
        settings = config.load({}, {"database_url": url, "data_dir": "/tmp/adsb-bench-schedule"})
        window = data.load_window(engine, settings, None, until=w["last_day_start"])
    finally:
        engine.dispose()
        _data.drop_database(url)
    images = window.images
    fold = data.folds(len(images), settings.train_folds, np.random.default_rng(1),
                      window.first_seen)
    held = fold == 0
    fit_on, judge_on = data.Subset(images, np.flatnonzero(~held)), \
        data.Subset(images, np.flatnonzero(held))
    steps = math.ceil(len(fit_on) / train.batch_size(len(fit_on)))
    print(f"{len(images)} flights of days 1-6; fold 1: {len(fit_on)} fitted, {len(judge_on)} "
          f"judged; {steps} batches an epoch; {args.seconds:.0f} s a variant; {_data.load_avg()}",
          flush=True)

    default_lr = train.LEARNING_RATE
    epochs_in_time: int | None = None
    reference: list[float] | None = None
    names = [n for n in VARIANTS if not args.only or n in args.only.split(",")]
    for name in names:
        lr, cosine = VARIANTS[name]
        if cosine:
            if epochs_in_time is None:
                raise SystemExit("a cosine variant needs a constant one run before it (its length)")
            # Decays to 0 over the constant fit's epochs; a quarter more time, so they end it.
            train.LEARNING_RATE = keras.optimizers.schedules.CosineDecay(lr, epochs_in_time * steps)
            max_epochs, seconds = epochs_in_time, args.seconds * 1.25
        else:
            train.LEARNING_RATE = lr
            max_epochs, seconds = train.MAX_EPOCHS, args.seconds
        t0 = time.monotonic()
        try:
            out = train.fit(fit_on, judge_on, seed=1, deadline=time.monotonic() + seconds,
                            max_epochs=max_epochs, label=name)
        finally:
            train.LEARNING_RATE = default_lr
        val = out.model.history.history["val_loss"]
        if epochs_in_time is None:
            epochs_in_time = len(val)
        if reference is None:
            reference = val
            print(f"ratios below: against {name}, fitted first", flush=True)
        at = [e for e in (10, 20) if e <= len(val)] + [len(val)]
        cells = ", ".join(
            f"epoch {e}: {val[e - 1]:.4f} ({val[e - 1] / reference[min(e, len(reference)) - 1]:.2f} x)"
            for e in at)
        print(f"{name}: {out.epochs} epochs in {time.monotonic() - t0:.0f} s, best "
              f"{min(val):.4f} at epoch {out.best_epoch}; validation loss {cells}; "
              f"{_data.load_avg()}", flush=True)


if __name__ == "__main__":
    main()
