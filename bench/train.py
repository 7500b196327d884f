"""Training throughput on today's images (format 2, ten channels): seconds per epoch and
images/s of the project's fit (tf.data of packed images, augmentation, early-stopping
callbacks), beside a plain Keras fit of the same architecture on a float32 array in memory
measured in the same run (the reference), so that the figures read as ratios on any machine.
Rows: the default fit, and one lever changed at a time (no augmentation, batch 128, half the
filters); last, a plain Keras fit reconstructing the shape channel only (``--only shape outputs``).
Usage: python bench/train.py [--flights 4000] [--epochs 3] [--only default,...]
Pin it to one core for the single-core figure (docs/benchmarks.md, "A Raspberry Pi's night"):
ADSB_BENCH_THREADS=1 taskset -c 0 python bench/train.py"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np

import _data
from pipeline.flights import raster
from pipeline.model import autoencoder, data, train

VARIANTS: dict[str, dict] = {
    "default": {},
    "no augmentation": {"augment": False},
    "batch 128": {"batch": 128},
    "filters (8, 16, 32)": {"arch": autoencoder.Architecture(filters=(8, 16, 32))},
}


def threads() -> None:
    """ADSB_BENCH_THREADS=N: TensorFlow's intra- and inter-op pools of N threads each."""
    n = int(os.environ.get("ADSB_BENCH_THREADS", "0"))
    if n:
        import tensorflow as tf

        tf.config.threading.set_intra_op_parallelism_threads(n)
        tf.config.threading.set_inter_op_parallelism_threads(n)


def measure(images: np.ndarray, epochs: int, **lever) -> tuple[float, float]:
    """(seconds per epoch, images/s) of the project's fit, the first epoch (tracing) excluded."""
    n_val = len(images) // 5
    packed = data.PackedImages.pack(images)
    out = train.fit(data.Subset(packed, np.arange(n_val, len(images))),
                    data.Subset(packed, np.arange(n_val)), seed=1,
                    deadline=time.monotonic() + 3600, max_epochs=1 + epochs, label="bench",
                    **lever)
    per_epoch = float(np.mean(out.epoch_seconds[1:]))
    return per_epoch, (len(images) - n_val) / per_epoch


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--flights", type=int, default=4000)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--only", default="")
    args = ap.parse_args()
    threads()
    images = _data.paris_images(args.flights)
    n_train = args.flights - args.flights // 5
    print(f"{args.flights} flights ({n_train} training images, {images.shape[-1]} channels), "
          f"{args.epochs} timed epochs after one untimed, {os.cpu_count()} CPUs, "
          f"{os.environ.get('ADSB_BENCH_THREADS', 'default')} TF threads; {_data.load_avg()}",
          flush=True)
    ref = _data.plain_keras_fit_rate(images[args.flights // 5:])
    print(f"reference: plain Keras fit, same architecture, float32 in memory, batch 64: "
          f"{ref:7.0f} images/s ({n_train / ref:.2f} s/epoch); {_data.load_avg()}", flush=True)
    for name, lever in VARIANTS.items():
        if args.only and name not in args.only.split(","):
            continue
        per_epoch, rate = measure(images, args.epochs, **lever)
        print(f"{name:<20} {per_epoch:6.2f} s/epoch {rate:7.0f} images/s  "
              f"{rate / ref:.2f} x the reference; {_data.load_avg()}", flush=True)
    ref2 = _data.plain_keras_fit_rate(images[args.flights // 5:])
    print(f"reference again at the end: {ref2:7.0f} images/s ({ref2 / ref:.2f} of the first)")
    if not args.only or "shape outputs" in args.only.split(","):
        # Lever: the route groups score traffic counts, so the network's where and direction
        # outputs only draw pictures; a network reconstructing the shape channel alone (every
        # channel still in) does less work a step. Plain Keras beside plain Keras.
        shape = _data.plain_keras_fit_rate(images[args.flights // 5:], outputs=(raster.SHAPE,))
        print(f"lever, plain Keras fit reconstructing the shape channel only: {shape:7.0f} "
              f"images/s = {shape / ((ref + ref2) / 2):.2f} x the reference (mean of both)")


if __name__ == "__main__":
    main()
