"""Peak memory (RSS high-water mark, VmHWM) of training and scoring, each measured in a fresh
process so that peaks never mix:

(a) a training run as the training child does it (window from the stored PNGs -> screen ->
    cross-fit of ADSB_TRAIN_FOLDS fold models -> ensemble -> saved) at several window sizes,
    each fold model trained for at least --min-steps optimizer steps (epochs follow from the
    size); reported as base MB + MB per 1,000 flights (least squares) and extrapolated to
    ADSB_TRAIN_MAX_FLIGHTS (the TensorFlow floor dominates). RSS is also read at the end of every epoch, to show that it does
    not grow epoch after epoch (docs/model.md, "Memory");
(b) scoring a few thousand flights (PNG decode + score.compute: what score._score_batch
    computes, the flagged flights' pixels and reconstructions included, without the database
    writes) with the K-member ensemble the first training saved, in claims (--claims: flights
    decoded and scored at once, score.BATCH) and forward passes (--passes: score.PASS, what the
    peak depends on) of several sizes, with flights/s and CPU time per 1,000 flights (the
    steadier figure on a shared machine);
(c) TensorFlow import + loading that model, alone: the floor under (a) and (b).

Images are the Paris day's flights (rasterized by the project), repeated to the window size;
flights are spread over 7 days (folds are blocks of time, as for a week's window).
Usage: python bench/memory.py [--sizes 2000,6000,14000] [--min-steps 300]
                              [--score-flights 4096] [--passes 512,128]
                              [--claims 512]
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import math
import os
import pickle
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def peak_mb() -> float:
    """VmHWM of this process (ru_maxrss would carry the parent's peak over a vfork + exec)."""
    return _status("VmHWM")


def rss_mb() -> float:
    return _status("VmRSS")


def _status(key: str) -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {key} in /proc/self/status")


# ---- children: each measurement runs in its own process -----------------------------------------
def _blobs(spec: dict) -> list[bytes]:
    with open(spec["blobs"], "rb") as fh:
        return pickle.load(fh)


def _window(spec: dict):
    """The training window of ``spec["flights"]`` flights, built by data.window_from_rows (as
    data.load_window builds it) from rows like the query's, each image its own bytes object as
    the database driver returns it."""
    from pipeline.model import data

    base, n = _blobs(spec), spec["flights"]
    end = dt.datetime(2021, 10, 14)
    first = end - dt.timedelta(days=7)
    rows = [(i + 1, f"{i:06x}", bytes(bytearray(base[i % len(base)])), False, 1.0,
             first + dt.timedelta(days=7 * i / n), "") for i in range(n)]
    return data.window_from_rows(end - dt.timedelta(days=7), end, rows)


def child_train(spec: dict) -> dict:
    import keras

    from pipeline import config
    from pipeline.model import registry, train

    window = _window(spec)
    after_window = rss_mb()
    per_fold: dict[str, list[float]] = {}
    original = train._callbacks

    def callbacks(deadline, label, *a, **kw):
        cbs, stop = original(deadline, label, *a, **kw)
        seen = per_fold.setdefault(label, [])

        class Rss(keras.callbacks.Callback):
            def on_epoch_end(self, epoch, logs=None):
                seen.append(rss_mb())

        return [*cbs, Rss()], stop

    train._callbacks = callbacks
    settings = config.load({}, {"database_url": "postgresql://unused/none",
                                "data_dir": spec["dir"], "train_budget_s": 7200})
    t0 = time.monotonic()
    cand = train.fit_candidate(window, settings, seed=1, max_epochs=spec["epochs"])
    seconds = time.monotonic() - t0
    path, digest = registry.save_model(cand.model, Path(spec["dir"]), f"bench-{spec['flights']}")
    if spec.get("model_out"):
        with open(spec["model_out"], "w") as fh:
            json.dump({"path": str(path), "sha256": digest, "threshold": cand.threshold,
                       "params": cand.params}, fh)
    return {"peak_mb": peak_mb(), "file_mb": _status("RssFile"), "window_mb": after_window,
            "rss_per_epoch": list(per_fold.values()), "folds": cand.params["folds"],
            "epochs": [f.epochs for f in cand.cross.fits], "seconds": seconds}


def _scorer(spec: dict):
    from pipeline.model import registry, score

    with open(spec["model"]) as fh:
        m = json.load(fh)
    row = registry.ModelRow(1, "bench", m["path"], m["sha256"], m["threshold"], m["params"],
                            "active")
    return score.scorer_for(row)


def child_floor(spec: dict) -> dict:
    import tensorflow  # noqa: F401

    _scorer(spec)
    return {"peak_mb": peak_mb(), "file_mb": _status("RssFile")}


def child_score(spec: dict) -> dict:
    from pipeline.model import score

    s = _scorer(spec)
    base, n, batch = _blobs(spec), spec["flights"], spec["claim"]
    score.PASS = spec["pass"]
    rows = [(i + 1, bytes(bytearray(base[i % len(base)]))) for i in range(n)]
    first = score.compute(s, score._decode(rows[:batch], s.channels)[1])   # traced once, as
    # a worker's first claim. What share of these images the model's own threshold flags
    # depends on its short training (a quarter to half of them, measured): the threshold is set
    # to the first claim's 98th percentile, so that ~2 % of the flights take the flagged path
    # (their probabilities, pixel and reconstruction), as new ones would. That first claim,
    # flagged in bulk like a traffic change, is where the peak is reached.
    s.model = dataclasses.replace(s.model, threshold=float(np.quantile(first.scores, 0.98)))
    t0, cpu0 = time.monotonic(), _cpu_s()
    flagged = 0
    for lo in range(0, n, batch):
        _, images, _ = score._decode(rows[lo:lo + batch], s.channels)
        flagged += int(score.compute(s, images).flags.sum())
    seconds, cpu = time.monotonic() - t0, _cpu_s() - cpu0
    return {"peak_mb": peak_mb(), "file_mb": _status("RssFile"), "flights_per_s": n / seconds,
            "cpu_ms_per_1000": 1000 * cpu / n * 1000, "flagged": flagged}


def _cpu_s() -> float:
    """CPU seconds of this process, all threads: the cost of scoring, which other load on the
    machine changes far less than it changes flights/s."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


CHILDREN = {"train": child_train, "floor": child_floor, "score": child_score}


def run_child(spec: dict) -> dict:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, __file__, "--child", json.dumps(spec)], env=env,
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"child {spec['kind']} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ---- parent ---------------------------------------------------------------------------------------
def paris_blobs(path: Path) -> None:
    sys.path.insert(0, str(ROOT / "bench"))
    import _data
    from pipeline.flights import raster

    tracks = _data.hf.paris_tracks(_data.PARIS_CSV)
    base = np.stack([raster.rasterize(t.lat, t.lon, 48.88, 2.42, 121.0)[0] for t in tracks])
    with open(path, "wb") as fh:
        pickle.dump(raster.encode_pngs(base), fh)


def epochs_for(n: int, folds: int, min_steps: int) -> int:
    """Epochs that give each fold model at least ``min_steps`` optimizer steps. RSS climbs for
    the first few hundred steps of a fit (the allocator's pools filling, then flat: see the RSS
    printed at each epoch end), so windows of every size are measured after the same climb and
    the slope per 1,000 flights is not the climb's difference."""
    from pipeline.model import train

    n_train = n - n // folds
    steps = math.ceil(n_train / train.batch_size(n_train))
    return max(2, math.ceil(min_steps / steps))


def _fold_line(rss: list[float]) -> str:
    if len(rss) <= 4:
        return ", ".join(f"{v:,.0f}" for v in rss)
    return f"{rss[0]:,.0f}, {rss[1]:,.0f} .. {rss[-2]:,.0f}, {rss[-1]:,.0f} (max {max(rss):,.0f})"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--child")
    ap.add_argument("--sizes", default="2000,6000,14000")
    ap.add_argument("--min-steps", type=int, default=300,
                    help="optimizer steps per fold model at least (epochs follow)")
    ap.add_argument("--score-flights", type=int, default=4096)
    ap.add_argument("--passes", default="512,128", help="flights per forward pass")
    ap.add_argument("--claims", default=None,
                    help="flights decoded and scored per claim (default score.BATCH)")
    args = ap.parse_args()
    if args.child:
        spec = json.loads(args.child)
        print(json.dumps(CHILDREN[spec["kind"]](spec)))
        return

    from pipeline import config
    from pipeline.model import score

    settings = config.load({}, {"database_url": "postgresql://unused/none"})
    max_flights = settings.train_max_flights
    sizes = sorted(int(s) for s in args.sizes.split(","))
    passes = [int(b) for b in args.passes.split(",")]
    claims = [int(b) for b in (args.claims or str(score.BATCH)).split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        blobs, model = str(Path(tmp) / "blobs.pkl"), str(Path(tmp) / "model.json")
        paris_blobs(Path(blobs))
        print(f"{os.cpu_count()} CPUs; Paris images repeated; each figure the peak RSS (VmHWM) "
              f"of a fresh process; 'shared' is its RSS of mapped files (TensorFlow's libraries: "
              f"one copy in RAM for the worker and the training child together)")
        print(f"\n(a) training (window from PNG rows -> screen -> {settings.train_folds}-fold "
              f"cross-fit -> ensemble -> save), >= {args.min_steps} steps per fold model")
        train_rows = []
        for i, n in enumerate(sizes):
            epochs = epochs_for(n, settings.train_folds, args.min_steps)
            r = run_child({"kind": "train", "blobs": blobs, "flights": n, "epochs": epochs,
                           "dir": tmp, "model_out": model if i == 0 else None})
            train_rows.append((n, r["peak_mb"]))
            print(f"  {n:>6,} flights: peak {r['peak_mb']:7,.0f} MB (shared {r['file_mb']:,.0f}); "
                  f"window loaded {r['window_mb']:,.0f} MB; epochs {r['epochs']}, "
                  f"{r['seconds']:.0f} s")
            for k, rss in enumerate(r["rss_per_epoch"]):
                print(f"          RSS at epoch ends, fold {k + 1}: {_fold_line(rss)}")
        if len(train_rows) > 1:
            x = np.array([n for n, _ in train_rows], float) / 1000
            y = np.array([p for _, p in train_rows])
            slope, base = np.polyfit(x, y, 1)
            print(f"  fit: {base:,.0f} MB + {slope:,.1f} MB per 1,000 flights -> "
                  f"{base + slope * max_flights / 1000:,.0f} MB at ADSB_TRAIN_MAX_FLIGHTS="
                  f"{max_flights:,}")
        print(f"\n(b) scoring {args.score_flights:,} flights (PNG decode + score.compute, the "
              f"flagged flights' pixels and reconstructions included), the ensemble of (a)'s "
              f"first window; defaults: score.BATCH = {score.BATCH} flights a claim, "
              f"score.PASS = {score.PASS} a forward pass")
        for c, b in [(c, b) for c in claims for b in passes if b <= c]:
            r = run_child({"kind": "score", "blobs": blobs, "model": model, "pass": b, "claim": c,
                           "flights": args.score_flights})
            print(f"  claim {c:>4}, pass {b:>4}: peak {r['peak_mb']:7,.0f} MB (shared {r['file_mb']:,.0f})  "
                  f"{r['flights_per_s']:7,.0f} flights/s, {r['cpu_ms_per_1000']:,.0f} CPU ms "
                  f"per 1,000 flights  ({r['flagged']} flagged)")
        r = run_child({"kind": "floor", "model": model})
        print(f"\n(c) TensorFlow import + model load alone: peak {r['peak_mb']:,.0f} MB "
              f"(shared {r['file_mb']:,.0f})")


if __name__ == "__main__":
    main()
