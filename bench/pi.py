"""A Raspberry Pi's night, estimated from this machine (docs/benchmarks.md, "A Raspberry Pi's
night"). Pinned to one core (sched_setaffinity, TensorFlow intra/inter-op threads 1, BLAS 1
thread), it measures in one run:

* the project's fit (bench/train.py's default row) and a forward pass (validation), images/s;
* float32 matrix multiplication (NumPy, 1024x1024), GFLOPS: what one core of this CPU does
  on the kind of arithmetic convolutions are made of;
* the model's floating-point work per image, counted from its layers (multiply-adds x 2;
  training = forward + backward, ~3 x forward), hence the share of the core's matmul rate the
  fit reaches here.

The Pi's figure is this machine's single-core time scaled by the ratio of float32 matmul rates
per core: Raspberry Pi 4 (Cortex-A72, 1.5 GHz), 8 GFLOPS on 4 cores in double precision with
HPL (Feiereisen, "Benchmarking the Raspberry Pi 4 with Raspberry Pi OS64", 2022), i.e. 2 GFLOPS
a core, and 4 in float32 (a 128-bit NEON register holds 4 floats or 2 doubles); Raspberry Pi 5
(Cortex-A76, 2.4 GHz) at 1.85 x a Pi 4 core (sysbench single-thread, 2,737 vs 1,478 events/s,
leoncode.co.uk "Raspberry Pi CPU Benchmarks"; an integer figure, so likely low for float
work). Four cores are counted as --cores-gain squared x one core (TensorFlow's gain from one to
two cores, measured here with bench/train.py both ways). The fit is assumed to reach the same share of a Pi core's matmul
rate as of this one's; the estimate is good to a factor of ~2, not better.
Usage: python bench/pi.py [--flights 4000] [--window 12000] [--epochs 30,60]"""

from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import argparse  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402

PI_CORE_GFLOPS = {"Raspberry Pi 4": 4.0, "Raspberry Pi 5": 4.0 * 1.85}


def matmul_gflops(n: int = 1024, repeats: int = 5) -> float:
    a = np.random.default_rng(0).random((n, n), dtype=np.float32)
    b = a.T.copy()
    a @ b
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t0)
    return 2 * n ** 3 / best / 1e9


def forward_flops(model) -> float:
    """Floating-point operations of one image's forward pass (multiply-adds x 2) through the
    convolutions, transposed convolutions and dense layers."""
    flops = 0.0
    for layer in _layers(model):
        kind = type(layer).__name__
        if kind == "Conv2D":                      # kernel (kh, kw, in, out), per output pixel
            kh, kw, c_in, c_out = layer.kernel.shape
            flops += 2.0 * layer.output.shape[1] * layer.output.shape[2] * kh * kw * c_in * c_out
        elif kind == "Conv2DTranspose":           # kernel (kh, kw, out, in), per input pixel
            kh, kw, c_out, c_in = layer.kernel.shape
            flops += 2.0 * layer.input.shape[1] * layer.input.shape[2] * kh * kw * c_in * c_out
        elif kind == "Dense":
            flops += 2.0 * layer.kernel.shape[0] * layer.kernel.shape[1]
    return flops


def _layers(model):
    for layer in model.layers:
        if hasattr(layer, "layers"):
            yield from _layers(layer)
        else:
            yield layer


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--flights", type=int, default=4000)
    ap.add_argument("--window", type=int, default=12000,
                    help="flights of the night's window (a busy week: ~12,000 kept of 14,000)")
    ap.add_argument("--epochs", default="30,60", help="epochs each fold runs (bench/week.py)")
    ap.add_argument("--cores-gain", type=float, default=1.5,
                    help="TensorFlow's gain from 1 to 2 cores (bench/train.py both ways)")
    args = ap.parse_args()
    os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    import _data
    from pipeline.model import autoencoder, errors
    from train import measure

    gemm = matmul_gflops()
    images = _data.paris_images(args.flights)
    print(f"one core ({sorted(os.sched_getaffinity(0))}), TF threads 1; float32 matmul "
          f"{gemm:.1f} GFLOPS; {_data.load_avg()}", flush=True)
    ref = _data.plain_keras_fit_rate(images[:2000])
    _, fit_rate = measure(images, 2)
    model = autoencoder.build(autoencoder.Architecture(), images.shape[-1])[2]
    run = errors.forward(model, channels=images.shape[-1], probabilities=False)
    x = tf.convert_to_tensor(images[:256], tf.float32)
    run(x)
    t0 = time.perf_counter()
    for _ in range(3):
        run(x)
    val_rate = 3 * 256 / (time.perf_counter() - t0)
    gemm_after = matmul_gflops()
    fwd = forward_flops(model)
    share = 3 * fwd * fit_rate / (gemm * 1e9)
    print(f"model: {fwd / 1e6:.1f} MFLOP a forward pass, ~{3 * fwd / 1e6:.0f} MFLOP a training "
          f"image; fit {fit_rate:.0f} images/s ({fit_rate / ref:.2f} x the plain Keras fit, "
          f"{ref:.0f}/s) = {share:.0%} of the core's matmul rate; forward (validation) "
          f"{val_rate:.0f} images/s; matmul again at the end {gemm_after:.1f} GFLOPS; "
          f"{_data.load_avg()}", flush=True)
    gain = args.cores_gain ** 2
    for profile, n, k in (("full", args.window, 3), ("small", min(args.window, 6000), 2)):
        # An epoch of every fold: each fold trains on (k-1)/k of the window, validates on 1/k.
        here = n * (k - 1) / fit_rate + n / val_rate
        line = [f"{profile:>5} ({n} flights, {k} folds): one core here {here:5.0f} s an epoch"]
        for pi, gflops in PI_CORE_GFLOPS.items():
            per_epoch = here * gemm / gflops / gain
            line.append(f"{pi} {per_epoch / 60:5.1f} min an epoch, " + ", ".join(
                f"{int(e)} epochs {per_epoch * int(e) / 3600:4.1f} h"
                for e in args.epochs.split(",")))
        print("; ".join(line), flush=True)


if __name__ == "__main__":
    main()
