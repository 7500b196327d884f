"""A week of a busy site, judged as deployed: 7 simulated days (default 2,000 flights a day,
~14,000 flights), trained on days 1-6 with the default settings (budget 600 s, 3 folds), judged
on day 7. Prints the training time, the epochs each fold reached and whether the budget cut it
short, then the evaluation table (ordinary flag rate, flag precision/recall, AUC/AP beside the
baselines fitted on the same days, seen/unseen median ratio). The reference, measured in the
same run on 2,000 images of the window: a plain Keras fit of the same architecture
(bench/_data.py), so the training figures read as ratios on any machine.
Levers, one at a time: --batch N, --patience N (epochs), --min-gain X (relative), --max-epochs N,
--filters 8,16,32,
--folds N, --budget S, --no-augment.
Usage: python bench/week.py [--per-day 2000] [--anomalies 0.02] [--seed 0]"""

from __future__ import annotations

import argparse
import logging
import time

import sqlalchemy as sa

import _data
import sim_week  # noqa: E402  (tests/ is on the path through _data)
from pipeline import config
from pipeline.evaluation import evaluate
from pipeline.model import autoencoder, data, train


class _Seen(logging.Handler):
    """The trainer's warnings (which folds the budget stopped)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.seen: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.seen.append(record.getMessage())


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--per-day", type=int, default=2000)
    ap.add_argument("--anomalies", type=float, default=0.02)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--folds", type=int, default=None)
    ap.add_argument("--budget", type=float, default=None)
    ap.add_argument("--no-augment", action="store_true")
    ap.add_argument("--batch", type=int, default=None)
    ap.add_argument("--patience", type=int, default=None)
    ap.add_argument("--max-epochs", type=int, default=train.MAX_EPOCHS)
    ap.add_argument("--min-gain", type=float, default=None)
    ap.add_argument("--filters", default=None, help="e.g. 8,16,32 (default 16,32,64)")
    ap.add_argument("--epoch-log", action="store_true", help="log every epoch of every fold")
    ap.add_argument("--profile", default=None)
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    if not args.epoch_log:
        logging.getLogger("pipeline.model.train").setLevel(logging.WARNING)
    train.BATCH = args.batch or train.BATCH
    train.PATIENCE = args.patience or train.PATIENCE
    train.MIN_GAIN = train.MIN_GAIN if args.min_gain is None else args.min_gain
    url = _data.new_database()
    engine = sa.create_engine(url)
    try:
        t0 = time.monotonic()
        w = sim_week.load_week(engine, days=7, flights_per_day=args.per_day,
                               anomaly_fraction=args.anomalies, seed=args.seed)
        print(f"{len(w['labels'])} flights loaded in {time.monotonic() - t0:.0f} s", flush=True)
        values: dict = {"database_url": url, "data_dir": "/tmp/adsb-bench-week"}
        for key, value in (("train_folds", args.folds), ("train_budget_s", args.budget),
                           ("train_profile", args.profile)):
            if value:
                values[key] = value
        settings = config.load({}, values)
        window = data.load_window(engine, settings, None, until=w["last_day_start"])
        ref = _data.plain_keras_fit_rate(window.images[:2000])
        print(f"reference: plain Keras fit of the same architecture, 2,000 images in memory: "
              f"{ref:.0f} images/s; {_data.load_avg()}", flush=True)
        budget = _Seen()
        logging.getLogger("pipeline.model.train").addHandler(budget)
        fitted: list = []
        fit_candidate = train.fit_candidate

        def timed(*a, **kw):
            # evaluate_split trains through this: the candidate is fitted once, and timed.
            t0 = time.monotonic()
            cand = fit_candidate(*a, **kw)
            fitted.append((cand, time.monotonic() - t0))
            return cand

        train.fit_candidate = timed
        labels = evaluate.Labels(w["labels"], {a: k for a, k in w["kinds"].items()
                                               if w["labels"][a]})
        arch = autoencoder.Architecture(
            filters=tuple(int(f) for f in args.filters.split(","))) if args.filters else None
        report = evaluate.evaluate_split(engine, settings, labels, w["last_day_start"], seed=1,
                                         augment=not args.no_augment, max_epochs=args.max_epochs,
                                         arch=arch)
        cand, seconds = fitted[0]
        ref_end = _data.plain_keras_fit_rate(window.images[:2000])
        n_fit = int(cand.keep.sum())
        k = len(cand.cross.fits)
        cut = [any(m.startswith(f"fold {i + 1}/{k}: training budget reached") for m in budget.seen)
               for i in range(k)]
        rate = sum(f.images_per_s * f.seconds for f in cand.cross.fits) / \
            sum(f.seconds for f in cand.cross.fits)
        print(f"trained on {n_fit} of {len(window.ids)} flights in {seconds:.0f} s "
              f"(budget {settings.train_budget_s:.0f} s, {k} folds): epochs "
              + ", ".join(f"{f.epochs} (best {f.best_epoch}, {f.images_per_s:.0f} img/s)"
                          for f in cand.cross.fits)
              + ("; cut short by the budget in folds " + str([i + 1 for i, c in enumerate(cut) if c])
                 if any(cut) else "; every fold stopped early on its own")
              + f"; fit {rate:.0f} images/s = {rate / ref:.2f} x the reference before, "
              f"{rate / ref_end:.2f} x after ({ref_end:.0f} images/s); "
              f"out-of-fold loss {cand.val_loss:.5f}; {_data.load_avg()}", flush=True)
        print(evaluate.format_report(report))
    finally:
        engine.dispose()
        _data.drop_database(url)


if __name__ == "__main__":
    main()
