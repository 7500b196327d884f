"""Training throughput: seconds per epoch and images/s on 4,000 flights (Paris images, repeated),
for the project's model and, in the same run, for a plain ~1 M-parameter convolutional
autoencoder (the reference the target was set with: ~800 images/s on a 2-core machine), so
that the figure can be read on any machine as a ratio.
Usage: python bench/train.py [--flights 4000] [--epochs 3]"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np

import _data
from pipeline.flights import raster
from pipeline.model import autoencoder, train

# Same layers, wider: 1.24 M parameters, a "plain conv autoencoder of ~1 M parameters".
REFERENCE = autoencoder.Architecture(filters=(32, 64, 128), bottleneck=64)


def measure(images: np.ndarray, epochs: int, arch: autoencoder.Architecture) -> tuple[int, float, float]:
    """(parameters, seconds per epoch, images/s) of a fit, the first epoch (tracing) excluded."""
    n_val = len(images) // 5
    out = train.fit(images[n_val:], images[:n_val], seed=1, deadline=time.monotonic() + 3600,
                    max_epochs=1 + epochs, label="bench", arch=arch)
    per_epoch = float(np.mean(out.epoch_seconds[1:]))
    return out.model.count_params(), per_epoch, (len(images) - n_val) / per_epoch


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--flights", type=int, default=4000)
    ap.add_argument("--epochs", type=int, default=3)
    args = ap.parse_args()
    tracks = _data.hf.paris_tracks(_data.PARIS_CSV)
    base = np.stack([raster.rasterize(t.lat, t.lon, 48.88, 2.42, 121.0)[0] for t in tracks])
    images = base[np.arange(args.flights) % len(base)]
    print(f"{args.flights} flights ({args.flights - args.flights // 5} training images), batch "
          f"{train.BATCH}, {args.epochs} timed epochs after one untimed, {os.cpu_count()} CPUs")
    rows = [("project model", *measure(images, args.epochs, autoencoder.Architecture())),
            ("reference ~1 M plain conv AE", *measure(images, args.epochs, REFERENCE))]
    for name, params, per_epoch, rate in rows:
        print(f"{name:<30} {params:>10,} parameters  {per_epoch:6.2f} s/epoch  {rate:7.0f} images/s")
    print(f"ratio project / reference: {rows[0][3] / rows[1][3]:.2f} "
          f"(target >= 1: at least the reference's rate, ~800 images/s on the target's machine)")


if __name__ == "__main__":
    main()
