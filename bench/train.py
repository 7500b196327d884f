"""Training throughput: seconds per epoch and images/s on 4,000 flights (Paris images, repeated).
Usage: python bench/train.py [--flights 4000] [--epochs 3]"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np

import _data
from pipeline.flights import raster
from pipeline.model import train


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--flights", type=int, default=4000)
    ap.add_argument("--epochs", type=int, default=3)
    args = ap.parse_args()
    tracks = _data.hf.paris_tracks(_data.PARIS_CSV)
    base = np.stack([raster.rasterize(t.lat, t.lon, 48.88, 2.42, 121.0)[0] for t in tracks])
    images = base[np.arange(args.flights) % len(base)]
    n_val = args.flights // 5
    t0 = time.monotonic()
    out = train.fit(images[n_val:], images[:n_val], seed=1, deadline=time.monotonic() + 3600,
                    max_epochs=args.epochs, label="bench")
    total = time.monotonic() - t0
    n_train = args.flights - n_val
    print(f"{out.model.count_params():,} parameters, {n_train} training images, "
          f"{out.epochs} epochs, {os.cpu_count()} CPUs")
    print(f"seconds per epoch: {out.seconds / out.epochs:.2f}  images/s (fit incl. validation): "
          f"{out.images_per_s:.0f}  wall incl. build/trace: {total:.1f} s")


if __name__ == "__main__":
    main()
