"""What each generalisation lever does to next-day figures: one simulated site, trained on days
1-6, judged on day 7 (pattern anomalies and rotated transits), with one lever changed at a time
against the default design (the "default" row, run first, is the same-run reference of every
other row). Prints, per variant, the ordinary flag rate, flag precision/recall,
ROC AUC / AP of patterns and of rotated transits, the seen/unseen gap and the training time.
Each fold stops after --epochs epochs (as in tests/test_judged_as_deployed.py), so a variant's
figures depend on the seed, not on how busy the machine is.
Usage: python bench/levers.py [--per-day 150] [--epochs 30] [--only NAME,...]"""

from __future__ import annotations

import argparse
import logging
import time

import numpy as np
import sqlalchemy as sa

import _data
import sim_week  # noqa: E402  (tests/ is on the path through _data)
from pipeline import config
from pipeline.evaluation import evaluate
from pipeline.model import autoencoder

VARIANTS = {
    "default": {},
    "no augmentation": {"augment": False},
    "random folds": {"blocked_folds": False},
    "5 folds": {"folds": 5},
    "wider bottleneck (128)": {"bottleneck": 128},
}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--per-day", type=int, default=150)
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--only", default="")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    url = _data.new_database()
    engine = sa.create_engine(url)
    results = []
    try:
        w = sim_week.load_week(engine, days=7, flights_per_day=args.per_day,
                               anomaly_fraction=0.04, seed=0, rotated_fraction=0.05)
        labels = evaluate.Labels(w["labels"], {a: k for a, k in w["kinds"].items()
                                               if w["labels"][a]})
        chosen = [v for v in VARIANTS if not args.only or v in args.only.split(",")]
        for name in chosen:
            v = VARIANTS[name]
            settings = config.load({}, {"database_url": url, "data_dir": "/tmp/adsb-levers",
                                        "train_budget_s": 3600,
                                        "train_folds": v.get("folds", 3)})
            options: dict = {k: v[k] for k in ("augment", "blocked_folds") if k in v}
            options["max_epochs"] = args.epochs
            if "bottleneck" in v:
                options["arch"] = autoencoder.Architecture(bottleneck=v["bottleneck"])
            t0 = time.monotonic()
            r = evaluate.evaluate_split(engine, settings, labels, w["last_day_start"], seed=1,
                                        **options)
            seconds = time.monotonic() - t0
            m = {row.name: row for row in r.rows}["model"]
            routes = {row.name: row for row in r.by_kind["rotated_transit"]}["model"]
            pattern_y = np.array([1 if y and labels.kind.get(a) != "rotated_transit" else 0
                                  for a, y in zip(r.flights.icao24, r.y)])
            keep = (r.y == 0) | (pattern_y == 1)
            pat_auc = evaluate.roc_auc(r.columns["model"][keep], pattern_y[keep])
            results.append((name, m, pat_auc, routes, r.median_ratio, seconds))
            print(f"{name}: flag rate {m.flag_rate:.3f} P {m.precision:.2f} R {m.recall:.2f} "
                  f"patterns AUC {pat_auc:.3f} routes AUC {routes.auc:.3f} AP {routes.ap:.3f} "
                  f"gap {r.median_ratio:.2f} ({seconds:.0f} s; {_data.load_avg()})", flush=True)
    finally:
        engine.dispose()
        _data.drop_database(url)
    print(f"\n{'variant':<24} {'ord flag':>8} {'flag P':>6} {'flag R':>6} {'pat AUC':>7} "
          f"{'route AUC':>9} {'route AP':>8} {'gap':>5} {'s':>4}")
    for name, m, pat_auc, routes, gap, s in results:
        print(f"{name:<24} {m.flag_rate:8.3f} {m.precision:6.2f} {m.recall:6.2f} {pat_auc:7.3f} "
              f"{routes.auc:9.3f} {routes.ap:8.3f} {gap:5.2f} {s:4.0f}")


if __name__ == "__main__":
    main()
