"""Judged as deployed on real traffic: the Swiss day (pipeline.evaluation.realsite), trained on
the 7-hour morning, judged on the afternoon it never saw, for several training seeds; or, with
``--site swiss-week``, the Swiss week, trained on days 1-6 and judged on day 7 with its route
anomalies (real flights rotated about the centre) reported on their own.

    python bench/realsite.py [--site swiss|swiss-week] [--seeds 0,1,2] [--floor 1.3]
                             [--fraction 0.05] [--site-seeds 0] [--keep] [--filters 8,16,32]
                             [--patience 3] [--min-gain 0.02]

Prints evaluate's full report for each seed, then one line per seed and the spread of the
figures the product promises (ordinary flag rate against ADSB_FLAG_RATE, flag precision and
recall, ROC AUC, AP) beside the tortuosity baseline. ``--floor 0`` measures without the shape
floor (ADSB_SHAPE_MIN_TORTUOSITY), for comparison. ``--site-seeds 0,1,2`` builds the site once
per seed (other days drawn, patterns placed, flights rotated) and ends with the ordinary flights
flagged over all of them together: a day of the week judges ~180 ordinary flights, so one
arrangement's flag rate moves by 0.005 a flight. About 4-5 minutes a seed on 2 cores (the
week: about 10).
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
from pipeline.model import autoencoder, train


def judge(args, site_seed: int) -> tuple[list[tuple], list[tuple]]:
    """Build the site of ``site_seed``, train and judge once per training seed: (one line of
    figures per seed, one line of route-anomaly figures per seed)."""
    url = _data.new_database()
    tmp = Path(tempfile.mkdtemp())
    overrides: dict = {"database_url": url, "data_dir": str(tmp)}
    if args.floor is not None:
        overrides["shape_min_tortuosity"] = args.floor
    settings = config.load({}, overrides)
    lines: list[tuple] = []
    route_lines: list[tuple] = []
    try:
        week = args.site == "swiss-week"
        site = (realsite.swiss_week if week else realsite.swiss)(
            samples.fetch(), fraction=args.fraction, seed=site_seed)
        split = realsite.judged_day_start() if week else realsite.SWISS_SPLIT
        print(f"\n##### arrangement {site_seed}\n" + "\n".join(site.notes))
        realsite.load(settings, site)
        labels_path = tmp / "labels.csv"
        realsite.write_labels(labels_path, site)
        labels = evaluate.read_labels(labels_path)
        engine = sa.create_engine(url)
        fit = {"arch": autoencoder.Architecture(
            filters=tuple(int(f) for f in args.filters.split(",")))} if args.filters else {}
        for seed in (int(s) for s in args.seeds.split(",")):
            t0 = time.monotonic()
            r = evaluate.evaluate_split(engine, settings, labels, split, seed=seed, **fit)
            print(f"\n=== seed {seed} ({time.monotonic() - t0:.0f} s)\n{evaluate.format_report(r)}")
            rows = {row.name: row for row in r.rows}
            m, t = rows["model"], rows["tortuosity"]
            ordinary = int((r.y == 0).sum())
            lines.append((site_seed, seed, m.flag_rate, m.precision, m.recall, m.auc, m.ap, t.auc,
                          t.ap, round(m.flag_rate * ordinary), ordinary))
            if "rotated_transit" in r.by_kind:
                routes = {row.name: row for row in r.by_kind["rotated_transit"]}
                best = max((row for name, row in routes.items() if not name.startswith("model")),
                           key=lambda row: row.auc)
                route_lines.append((site_seed, seed, routes["model"].auc, routes["model"].ap,
                                    best.name, best.auc, best.ap))
        engine.dispose()
    finally:
        if not args.keep:
            _data.drop_database(url)
    return lines, route_lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--site", choices=("swiss", "swiss-week"), default="swiss")
    ap.add_argument("--seeds", default="0,1,2", help="training seeds")
    ap.add_argument("--floor", type=float, default=None,
                    help="ADSB_SHAPE_MIN_TORTUOSITY (default: the setting's default)")
    ap.add_argument("--fraction", type=float, default=0.05)
    ap.add_argument("--site-seeds", default="0",
                    help="seeds of the site's arrangement (days drawn, patterns placed, "
                         "rotations), one site built and judged for each")
    ap.add_argument("--keep", action="store_true", help="keep the databases")
    ap.add_argument("--filters", default=None,
                    help="lever: the network's filters, e.g. 8,16,32 (default 16,32,64)")
    ap.add_argument("--patience", type=int, default=None,
                    help="lever: early stopping's patience in epochs (train.PATIENCE)")
    ap.add_argument("--min-gain", type=float, default=None,
                    help="lever: the relative gain an epoch must make to count (train.MIN_GAIN)")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    train.PATIENCE = args.patience or train.PATIENCE
    train.MIN_GAIN = train.MIN_GAIN if args.min_gain is None else args.min_gain
    lines: list[tuple] = []
    route_lines: list[tuple] = []
    for site_seed in (int(s) for s in args.site_seeds.split(",")):
        a, b = judge(args, site_seed)
        lines += a
        route_lines += b
    defaults = config.load({}, {})
    flag_rate = defaults.flag_rate
    floor = args.floor if args.floor is not None else defaults.shape_min_tortuosity
    print(f"\nfloor {floor}, flag rate set to {flag_rate}")
    print("site seed  ord flag  flag P  flag R   AUC     AP   | tortuosity AUC  AP")
    for v in lines:
        print(f"{v[0]:>4} {v[1]:>4}  {v[2]:8.3f} {v[3]:7.3f} {v[4]:7.3f} {v[5]:6.3f} {v[6]:6.3f} | "
              f"{v[7]:14.3f} {v[8]:6.3f}")
    arr = np.array([v[2:7] for v in lines])
    print("range     " + " ".join(f"{lo:.3f}-{hi:.3f}" for lo, hi in zip(arr.min(0), arr.max(0))))
    if len({v[0] for v in lines}) > 1:
        flagged, ordinary = sum(v[9] for v in lines), sum(v[10] for v in lines)
        print(f"all arrangements together: {flagged} of {ordinary} ordinary flights flagged "
              f"({flagged / ordinary:.3f}; allowed 2 x {flag_rate} = {2 * flag_rate:.3f})")
    if route_lines:
        print("route anomalies (rotated real flights) only: site, seed, model AUC AP | best "
              "baseline")
        for v in route_lines:
            print(f"{v[0]:>4} {v[1]:>4}  {v[2]:6.3f} {v[3]:6.3f} | {v[4]:<16} {v[5]:6.3f} "
                  f"{v[6]:6.3f}")


if __name__ == "__main__":
    main()
