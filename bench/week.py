"""A week of a busy site, judged as deployed: 7 simulated days (default 2,000 flights a day,
~14,000 flights), trained on days 1-6 with the default settings (budget 600 s, 3 folds), judged
on day 7. Prints the training time, the epochs each fold reached and whether the budget cut it
short, then the evaluation table (ordinary flag rate, flag precision/recall, AUC/AP beside the
baselines fitted on the same days, seen/unseen median ratio).
Usage: python bench/week.py [--per-day 2000] [--anomalies 0.02] [--seed 0] [--no-augment]"""

from __future__ import annotations

import argparse
import logging
import time

import sqlalchemy as sa

import _data
import sim_week  # noqa: E402  (tests/ is on the path through _data)
from pipeline import config, evaluate
from pipeline.model import data, train


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--per-day", type=int, default=2000)
    ap.add_argument("--anomalies", type=float, default=0.02)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--folds", type=int, default=None)
    ap.add_argument("--budget", type=float, default=None)
    ap.add_argument("--no-augment", action="store_true")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    for noisy in ("pipeline.model.train",):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    url = _data.new_database()
    engine = sa.create_engine(url)
    try:
        t0 = time.monotonic()
        w = sim_week.load_week(engine, days=7, flights_per_day=args.per_day,
                               anomaly_fraction=args.anomalies, seed=args.seed)
        print(f"{len(w['labels'])} flights loaded in {time.monotonic() - t0:.0f} s", flush=True)
        values = {"database_url": url, "data_dir": "/tmp/adsb-bench-week"}
        if args.folds:
            values["train_folds"] = args.folds
        if args.budget:
            values["train_budget_s"] = args.budget
        settings = config.load({}, values)
        window = data.load_window(engine, settings, None, until=w["last_day_start"])
        t0 = time.monotonic()
        cand = train.fit_candidate(window, settings, seed=1, augment=not args.no_augment)
        seconds = time.monotonic() - t0
        cut = [f.best_epoch == f.epochs and f.epochs < train.MAX_EPOCHS for f in cand.cross.fits]
        print(f"trained on {int(cand.keep.sum())} of {len(window.ids)} flights in {seconds:.0f} s "
              f"(budget {settings.train_budget_s:.0f} s, {len(cand.cross.fits)} folds): epochs "
              + ", ".join(f"{f.epochs} (best {f.best_epoch}, {f.images_per_s:.0f} img/s)"
                          for f in cand.cross.fits)
              + ("; cut short by the budget in folds " + str([i + 1 for i, c in enumerate(cut) if c])
                 if any(cut) else "; every fold stopped early on its own"), flush=True)
        labels = evaluate.Labels(w["labels"], {a: k for a, k in w["kinds"].items()
                                               if w["labels"][a]})
        report = evaluate.evaluate_split(engine, settings, labels, w["last_day_start"], seed=1)
        print(evaluate.format_report(report))
    finally:
        engine.dispose()
        _data.drop_database(url)


if __name__ == "__main__":
    main()
