"""A day of the other runway that the model never saw: how many alerts reach the user.

    python bench/traffic_change.py [--per-day 150,600] [--epochs 20] [--seed 1]

For each volume: a simulated site trained on two ordinary days (westerly runways), then an
ordinary unseen day and a day on which both airports land the other way
(``tests/runway_swap.py``), scored a few flights at a time in time order as the worker's passes
do. Prints, for the swapped day: ordinary flights flagged, the alerts of single flags, the
traffic-change alerts, how long after its first flight the change was found; beside the
flag rate's allowance (twice ADSB_FLAG_RATE of the day's ordinary flights) and what every flag
alerting on its own would have sent.
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from pathlib import Path

import sqlalchemy as sa

import _data
import runway_swap as rs  # noqa: E402  (tests/ is on the path through _data)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--per-day", default="150,600")
    ap.add_argument("--epochs", type=int, default=20, help="epochs a fold at most")
    ap.add_argument("--seed", type=int, default=rs.SEED)
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    rows = []
    for per_day in (int(v) for v in args.per_day.split(",")):
        url = _data.new_database()
        engine = sa.create_engine(url)
        try:
            t0 = time.monotonic()
            by_id = rs.load(engine, per_day, args.seed)
            settings = _data.hf.model_settings(url, Path(tempfile.mkdtemp()),
                                               alert_webhook_url="http://127.0.0.1:9/hook")
            rs.train_before_day_two(engine, settings, max_epochs=args.epochs)
            rs.score_as_the_worker_does(engine, settings)
            f = rs.figures(engine, by_id)
            rows.append((per_day, f, settings.flag_rate, time.monotonic() - t0))
        finally:
            engine.dispose()
            _data.drop_database(url)
    print("flights/day  ordinary flagged  single alerts (allowed 2x rate)  change alerts  "
          "found after  (every flag alone)")
    for per_day, f, rate, seconds in rows:
        found = ", ".join(f"{m:.0f} min" for m in f["found_after_min"]) or "-"
        print(f"{per_day:>11}  {f['ordinary_flagged']:>7} of {f['ordinary']:<6}  "
              f"{f['own_alerts']:>6} ({2 * rate * f['ordinary']:.0f})"
              f"{'':>20}{f['change_alerts']:>5}  {found:>12}  ({f['ordinary_flagged']})"
              f"   [{seconds:.0f} s]")


if __name__ == "__main__":
    main()
