"""ROC AUC / average precision of plain vs contamination-robust fitting, at 0, 3 and 8 %
injected anomalies on the Paris day. Usage: python bench/contamination.py [--seed N]"""

from __future__ import annotations

import argparse
import logging
import time

import sqlalchemy as sa

import _data
from pipeline import config, evaluate
from pipeline.model import train


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--fractions", default="0,0.03,0.08")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    out = []
    for fraction in (float(f) for f in args.fractions.split(",")):
        for plain in (True, False):
            url = _data.new_database()
            engine = sa.create_engine(url)
            labels = _data.load(engine, fraction, seed=args.seed)
            settings = config.load({}, {"database_url": url, "data_dir": f"/tmp/adsb-bench-{fraction}"})
            t0 = time.monotonic()
            r = train.run_training(settings, seed=args.seed, plain=plain, verbose=False, engine=engine)
            seconds = time.monotonic() - t0
            if fraction == 0:
                # No injected anomalies to rank: measure with a held-out set of them instead.
                labels = labels_with_probe(engine, args.seed)
            rows, _, y, _, _ = evaluate.evaluate(engine, labels, model_id=r.model_id)
            m = {name: (auc, apr, pk) for name, auc, apr, pk in rows}
            out.append((fraction, "plain" if plain else "robust", int(y.sum()), *m["model"],
                        m["pca_both"][0], m["tortuosity"][0], r.recall, seconds))
            print(f"{fraction:.0%} {'plain' if plain else 'robust'}: AUC {m['model'][0]:.3f} "
                  f"AP {m['model'][1]:.3f} ({seconds:.0f} s)", flush=True)
            engine.dispose()
            _data.drop_database(url)
    print(f"\n{'anomalies':>9} {'fit':>6} {'n':>3} {'AUC':>6} {'AP':>6} {'P@k':>6} "
          f"{'PCA AUC':>7} {'tort AUC':>8} {'recall w/s':>11} {'train s':>7}")
    for f, mode, n, auc, apr, pk, pca, tort, rec, s in out:
        print(f"{f:>9.0%} {mode:>6} {n:>3} {auc:6.3f} {apr:6.3f} {pk:6.3f} {pca:7.3f} {tort:8.3f} "
              f"{rec[0]:5.2f}/{rec[1]:4.2f} {s:7.0f}")


def labels_with_probe(engine: sa.Engine, seed: int) -> dict[str, int]:
    """Fitted without anomalies: add 8 probe anomalies *after* training, to be ranked."""
    from pipeline import simulate

    sims = _data.hf.sim_tracks(simulate.generate(0, 8, seed=seed + 100,
                                                 anomaly_kinds=simulate.PATTERN_KINDS),
                               simulate.PARIS_WINDOW_START)
    _data.hf.insert_tracks(engine, sims)
    with engine.connect() as conn:
        icao = conn.execute(sa.text("SELECT DISTINCT icao24 FROM flights")).scalars().all()
    probe = {t.icao24 for t in sims}
    return {a: int(a in probe) for a in icao}


if __name__ == "__main__":
    main()
