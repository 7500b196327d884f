"""Judged as deployed on real traffic: the Swiss day (pipeline.evaluation.realsite), trained on
the 7-hour morning, judged on the afternoon it never saw, for several training seeds; or, with
``--site swiss-week``, the Swiss week, trained on days 1-6 and judged on day 7 with its route
anomalies (real flights rotated about the centre) reported on their own.

    python bench/realsite.py [--site swiss|swiss-week] [--seeds 0,1,2] [--floor 1.3]
                             [--fraction 0.05] [--site-seed 0] [--keep]

Prints evaluate's full report for each seed, then one line per seed and the spread of the
figures the product promises (ordinary flag rate against ADSB_FLAG_RATE, flag precision and
recall, ROC AUC, AP) beside the tortuosity baseline. ``--floor 0`` measures without the shape
floor (ADSB_SHAPE_MIN_TORTUOSITY), for comparison. About 4-5 minutes a seed on 2 cores.
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from pathlib import Path

import numpy as np
import sqlalchemy as sa

import _data
from pipeline import config
from pipeline.evaluation import evaluate, realsite, samples


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--site", choices=("swiss", "swiss-week"), default="swiss")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--floor", type=float, default=None,
                    help="ADSB_SHAPE_MIN_TORTUOSITY (default: the setting's default)")
    ap.add_argument("--fraction", type=float, default=0.05)
    ap.add_argument("--site-seed", type=int, default=0,
                    help="seed of the site's arrangement (days drawn, patterns placed, rotations)")
    ap.add_argument("--keep", action="store_true", help="keep the database")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    url = _data.new_database()
    tmp = Path(tempfile.mkdtemp())
    overrides: dict = {"database_url": url, "data_dir": str(tmp)}
    if args.floor is not None:
        overrides["shape_min_tortuosity"] = args.floor
    settings = config.load({}, overrides)
    try:
        week = args.site == "swiss-week"
        site = (realsite.swiss_week if week else realsite.swiss)(
            samples.fetch(), fraction=args.fraction, seed=args.site_seed)
        split = realsite.judged_day_start() if week else realsite.SWISS_SPLIT
        print("\n".join(site.notes))
        realsite.load(settings, site)
        labels_path = tmp / "labels.csv"
        realsite.write_labels(labels_path, site)
        labels = evaluate.read_labels(labels_path)
        engine = sa.create_engine(url)
        lines: list[tuple] = []
        route_lines: list[tuple] = []
        for seed in (int(s) for s in args.seeds.split(",")):
            t0 = time.monotonic()
            r = evaluate.evaluate_split(engine, settings, labels, split, seed=seed)
            print(f"\n=== seed {seed} ({time.monotonic() - t0:.0f} s)\n{evaluate.format_report(r)}")
            rows = {row.name: row for row in r.rows}
            m, t = rows["model"], rows["tortuosity"]
            lines.append((seed, m.flag_rate, m.precision, m.recall, m.auc, m.ap, t.auc, t.ap))
            if "rotated_transit" in r.by_kind:
                routes = {row.name: row for row in r.by_kind["rotated_transit"]}
                best = max((row for name, row in routes.items() if not name.startswith("model")),
                           key=lambda row: row.auc)
                route_lines.append((seed, routes["model"].auc, routes["model"].ap, best.name,
                                    best.auc, best.ap))
        print(f"\nfloor {settings.shape_min_tortuosity}, flag rate set to {settings.flag_rate}")
        print("seed  ord flag  flag P  flag R   AUC     AP   | tortuosity AUC  AP")
        for v in lines:
            print(f"{v[0]:>4}  {v[1]:8.3f} {v[2]:7.3f} {v[3]:7.3f} {v[4]:6.3f} {v[5]:6.3f} | "
                  f"{v[6]:14.3f} {v[7]:6.3f}")
        arr = np.array([v[1:6] for v in lines])
        print("range " + " ".join(f"{lo:.3f}-{hi:.3f}" for lo, hi in zip(arr.min(0), arr.max(0))))
        if route_lines:
            print("route anomalies (rotated real flights) only: seed, model AUC AP | best baseline")
            for v in route_lines:
                print(f"{v[0]:>4}  {v[1]:6.3f} {v[2]:6.3f} | {v[3]:<16} {v[4]:6.3f} {v[5]:6.3f}")
        engine.dispose()
    finally:
        if not args.keep:
            _data.drop_database(url)


if __name__ == "__main__":
    main()
