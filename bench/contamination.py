"""Contamination, judged as deployed: plain vs robust fitting with 0, 3 and 8 % injected pattern
anomalies on the Paris day, trained on the first 90 minutes and judged on the flights that
began in the last 90 (none of them trained on). At 0 % eight probe anomalies are added to the
judged period only, so there is something to rank. Prints each case beside the best baseline
fitted on the same flights, the change of AUC against the same run's 0 % case (target: within
0.01 at 8 %) and the load average.

With ``--site swiss``: the Swiss day (pipeline.evaluation.realsite), trained on the 7-hour
morning with the fractions of real pattern flights in it, judged on the same afternoon every
time (its own 5 % of patterns, drawn from the other half of the pattern pool, so no pattern is
judged that a window held): ~35 patterns judged instead of the Paris split's 4-9, so the change
of AUC is not lost in the bench's own noise.

Usage: python bench/contamination.py [--site paris|swiss] [--seed N] [--fractions 0,0.03,0.08]
                                     [--fits robust,plain]"""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import time
from functools import partial

import sqlalchemy as sa

import _data
from pipeline import config
from pipeline.evaluation import evaluate, realsite, samples, simulate

SPLIT = dt.datetime(2021, 10, 7, 13, 30, tzinfo=dt.timezone.utc)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--fractions", default="0,0.03,0.08")
    ap.add_argument("--site", choices=("paris", "swiss"), default="paris")
    ap.add_argument("--fits", default="plain,robust")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    out = []
    for fraction in (float(f) for f in args.fractions.split(",")):
        for plain in (fit == "plain" for fit in args.fits.split(",")):
            url = _data.new_database()
            engine = sa.create_engine(url)
            settings = config.load({}, {"database_url": url, "train_min_flights": 50,
                                        "data_dir": f"/tmp/adsb-bench-{fraction}"})
            if args.site == "swiss":
                labels = load_swiss(settings, fraction, args.seed)
                split = realsite.SWISS_SPLIT
            else:
                labels = _data.load(engine, fraction, seed=args.seed)
                if fraction == 0:
                    labels.update(add_probes(engine, args.seed))
                split = SPLIT
            t0 = time.monotonic()
            r = evaluate.evaluate_split(engine, settings, evaluate.Labels(labels, {}), split,
                                        seed=args.seed, plain=plain)
            seconds = time.monotonic() - t0
            m = {row.name: row for row in r.rows}
            best = max((row for row in r.rows if not row.name.startswith("model")),
                       key=lambda row: row.auc)
            out.append((fraction, "plain" if plain else "robust", int(r.y.sum()), m["model"],
                        best, r.median_ratio, seconds))
            print(f"{fraction:.0%} {'plain' if plain else 'robust'}: AUC {m['model'].auc:.3f} "
                  f"AP {m['model'].ap:.3f} ordinary flag rate {m['model'].flag_rate:.3f} "
                  f"({seconds:.0f} s; {_data.load_avg()})", flush=True)
            engine.dispose()
            _data.drop_database(url)
    print(f"\n{'anomalies':>9} {'fit':>6} {'n':>3} {'AUC':>6} {'AP':>6} {'P@k':>6} "
          f"{'ord flag':>8} {'flag P':>6} {'flag R':>6} {'best baseline (AUC)':>26} "
          f"{'gap':>5} {'s':>5}")
    for f, mode, n, m, best, gap, s in out:
        print(f"{f:>9.0%} {mode:>6} {n:>3} {m.auc:6.3f} {m.ap:6.3f} {m.pk:6.3f} "
              f"{m.flag_rate:8.3f} {m.precision:6.2f} {m.recall:6.2f} "
              f"{best.name + f' ({best.auc:.3f})':>26} {gap:5.2f} {s:5.0f}")
    # The target: anomalies in the window change the model's AUC by at most 0.01. The
    # reference is the same run's 0 % figure (and the best baseline, fitted on the same flights).
    auc = {(f, mode): m.auc for f, mode, _, m, *_ in out}
    for f, mode in auc:
        if f > 0 and (0.0, mode) in auc:
            print(f"{mode}: AUC at {f:.0%} minus AUC at 0 %: {auc[f, mode] - auc[0.0, mode]:+.3f} "
                  f"(target: within 0.01)")


def load_swiss(settings, fraction: float, seed: int) -> dict[str, int]:
    """The real Swiss day with ``fraction`` of the morning's flights real patterns, and the
    afternoon's 5 % drawn from the other half of the pool (the same for every fraction)."""
    import numpy as np

    folder = samples.fetch()
    ordinary = realsite.swiss_day(folder)
    pool = realsite.pattern_pool(folder)
    judged_pool, window_pool = realsite.split_pool(pool, np.random.default_rng(seed))
    morning, afternoon = realsite.swiss_halves()
    n_morning = sum(float(t.t[0]) < morning[1] for t in ordinary)
    place = partial(realsite.place_patterns, box=realsite.SWISS_BOX, centre=realsite.SWISS_CENTRE)
    judged = place(judged_pool, round(0.05 / 0.95 * (len(ordinary) - n_morning)),
                   np.random.default_rng(seed), windows=[afternoon])
    window = place(window_pool, round(fraction / (1 - fraction) * n_morning),
                   np.random.default_rng(seed + 1), windows=[morning],
                   prefix=realsite.PATTERN_ICAO_PREFIX + 0x8000)
    site = realsite.Site(ordinary + judged + window, realsite.SWISS_CENTRE,
                         realsite.SWISS_RANGE_KM, realsite.SWISS_BOX, [])
    realsite.load(settings, site)
    print(f"{fraction:.0%}: {len(window)} patterns in the window, {len(judged)} judged")
    return {t.icao24: 1 for t in judged + window}


def add_probes(engine: sa.Engine, seed: int) -> dict[str, int]:
    """Eight pattern anomalies in the judged period only (after training's window)."""
    sims = simulate.generate(0, 8, seed=seed + 100, anomaly_kinds=simulate.PATTERN_KINDS,
                             duration_s=85 * 60)
    tracks = _data.hf.sim_tracks(sims, SPLIT + dt.timedelta(minutes=2))
    _data.hf.insert_tracks(engine, tracks)
    return {t.icao24: 1 for t in tracks}


if __name__ == "__main__":
    main()
