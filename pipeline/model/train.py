"""The training job: window of recent flights -> screened (trimmed) fit -> threshold -> registry.

Runs in its own process (the scheduler spawns ``adsb-pipeline train``), so TensorFlow is never
loaded by the ingest process and an out-of-memory kill cannot take the scheduler down.

Contamination-robust fitting (the window holds the very anomalies the model must flag). Measured
on the Paris day with injected anomalies (docs/model.md): whatever anomalies stay in the
training set are learnt, even a handful of them (they repeat a few patterns), and then score
like ordinary flights; anomalies left out score tens to hundreds of times higher. So the job is
to leave them out:
1. flights the active model flagged are left out;
2. screen: flights whose log tortuosity is above median + ``ADSB_TRAIN_SCREEN_K`` x MAD of the
   window are left out (circling, holding, survey and calibration patterns are never learnt as
   normal, however often they occur);
3. optional trimmed refit (``ADSB_TRAIN_TRIM`` > 0): a first fit, its highest-scoring flights
   left out;
4. a fit on training flights early-stopped on validation flights (split by flight) chooses the
   number of epochs and gives the honest held-out figures (loss, lit-pixel recall/precision);
   the model is then refitted from scratch on all kept flights, training and validation, for
   that many epochs: an ordinary flight held out for validation would otherwise score like an
   unseen one;
5. the normaliser and threshold come from the errors of the flights of the final fit only.
``--plain`` skips 1-3. Every excluded flight is recorded, with the reason, in ``models.excluded``.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
import os
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import sqlalchemy as sa

from pipeline.config import Settings

log = logging.getLogger(__name__)

VAL_FRACTION = 0.2
BATCH = 32
MAX_EPOCHS = 200
PATIENCE = 10                  # epochs without a better validation loss, at least ...
PATIENCE_STEPS = 200           # ... and at least this many batches: a few hundred flights make
                               # epochs of a handful of batches, and sparse images plateau for a
                               # while (all black) before the lines are learnt
LEARNING_RATE = 1e-3
# Promotion rules (see docs/model.md).
RECALL_FLOOR = 0.5             # lit-pixel recall on validation flights, each channel
MAX_WORSE = 0.2                # candidate loss may exceed the active one's by at most 20 %
MAX_LIT_SPEARMAN = 0.9         # above this the score is a lit-pixel counter, not a model


class TrainingRefused(RuntimeError):
    """Not enough data to train (the message says how much there is and how much is needed)."""


@dataclass
class FitOutcome:
    model: Any
    epochs: int
    best_epoch: int
    seconds: float
    images_per_s: float
    epoch_seconds: list[float] = field(default_factory=list)


@dataclass
class TrainResult:
    model_id: int
    version: str
    status: str                    # active | rejected
    reason: str
    val_loss: float
    recall: tuple[float, float]
    precision: tuple[float, float]
    threshold: float
    n_train: int
    n_val: int
    n_excluded: int
    epochs: int
    seconds: float
    params: dict[str, Any] = field(default_factory=dict)


def configure_determinism(seed: int) -> None:
    """Same seed, same data -> same weights: seeded Python/NumPy/TF RNGs and deterministic ops."""
    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(seed)
    tf.config.experimental.enable_op_determinism()


def _callbacks(deadline: float, label: str, patience: int = PATIENCE):
    import keras

    class EpochLog(keras.callbacks.Callback):
        """One log line per epoch (the worker has no progress bar), and the wall-clock budget."""

        def __init__(self) -> None:
            super().__init__()
            self.t0 = time.monotonic()
            self.epochs = 0
            self.durations: list[float] = []

        def on_epoch_begin(self, epoch, logs=None):
            self.t0 = time.monotonic()

        def on_epoch_end(self, epoch, logs=None):
            self.epochs = epoch + 1
            self.durations.append(time.monotonic() - self.t0)
            logs = logs or {}
            val = f" val_loss {logs['val_loss']:.5f}" if "val_loss" in logs else ""
            log.info("%s epoch %d: loss %.5f%s (%.1f s)", label, epoch + 1,
                     logs.get("loss", float("nan")), val, time.monotonic() - self.t0)
            if time.monotonic() > deadline:
                log.warning("%s: training budget reached after %d epochs", label, epoch + 1)
                self.model.stop_training = True

    stop = keras.callbacks.EarlyStopping(monitor="val_loss", patience=patience,
                                         restore_best_weights=True)
    return [EpochLog(), stop], stop


def fit(train_images: np.ndarray, val_images: np.ndarray | None, *, seed: int, deadline: float,
        verbose: bool = False, loss: str | None = None, arch=None,
        max_epochs: int = MAX_EPOCHS, label: str = "fit") -> FitOutcome:
    """One fit from scratch, early-stopped on the validation flights, best weights restored;
    without validation flights, exactly ``max_epochs`` epochs (or until the deadline)."""
    import keras

    from pipeline.model import autoencoder, data, errors

    configure_determinism(seed)
    arch = arch or autoencoder.Architecture()
    _, _, model = autoencoder.build(arch)
    model.compile(optimizer=keras.optimizers.Adam(LEARNING_RATE),
                  loss=errors.ReconstructionLoss(loss or errors.DEFAULT_LOSS))
    steps = math.ceil(len(train_images) / BATCH)
    callbacks, stop = _callbacks(deadline, label, max(PATIENCE, math.ceil(PATIENCE_STEPS / steps)))
    if val_images is None:
        callbacks.remove(stop)
    t0 = time.monotonic()
    hist = model.fit(data.dataset(train_images, BATCH, shuffle_seed=seed),
                     validation_data=None if val_images is None else
                     data.dataset(val_images, 256, shuffle_seed=None),
                     epochs=max_epochs, callbacks=callbacks, verbose=1 if verbose else 0)
    seconds = time.monotonic() - t0
    epochs = len(hist.history["loss"])
    val = hist.history.get("val_loss", [])
    best = int(np.nanargmin(val)) + 1 if val and np.isfinite(val).any() else epochs
    return FitOutcome(model, epochs, best, seconds, epochs * len(train_images) / max(seconds, 1e-9),
                      callbacks[0].durations)


def _make_engine(settings: Settings):
    from pipeline.db.engine import make_engine
    return make_engine(settings)


def run_training(settings: Settings, *, seed: int | None = None, plain: bool = False,
                 verbose: bool = True, engine: sa.Engine | None = None,
                 loss: str | None = None, arch=None, max_epochs: int = MAX_EPOCHS) -> TrainResult:
    """Train a candidate on the data window, register it, promote it or record why not."""
    from pipeline.model import autoencoder, data, errors, registry

    t_start = time.monotonic()
    deadline = t_start + settings.train_budget_s
    engine = engine or _make_engine(settings)
    seed = seed if seed is not None else settings.train_seed
    if seed is None:
        seed = int.from_bytes(os.urandom(4), "little") >> 1      # recorded, so rerunnable
    loss = loss or errors.DEFAULT_LOSS
    arch = arch or autoencoder.Architecture()

    with engine.connect() as conn:
        current = registry.active(conn)
    window = data.load_window(engine, settings, current.id if current else None)
    n = len(window.ids)
    if n < settings.train_min_flights:
        raise TrainingRefused(
            f"only {n} finished flights between {window.start:%Y-%m-%d %H:%M} and "
            f"{window.end:%Y-%m-%d %H:%M} UTC (data clock); at least {settings.train_min_flights} "
            f"are needed (ADSB_TRAIN_MIN_FLIGHTS)")
    log.info("training on %d flights of %s .. %s (seed %d, %s)", n, window.start, window.end,
             seed, "plain" if plain else
             f"screen k {settings.train_screen_k:g}, trim {settings.train_trim:g}")

    rng = np.random.default_rng(seed)
    train_idx, val_idx = data.split(n, VAL_FRACTION, rng)
    keep = np.ones(n, dtype=bool)
    excluded: dict[str, Any] = {}
    if not plain:
        keep &= ~window.flagged                 # (1) flights the active model flagged
        excluded["flagged_by_active"] = {"model_id": current.id if current else None,
                                         "flights": window.ids[window.flagged].tolist()}
        if settings.train_screen_k > 0:         # (2) circling and patterns
            screened, cutoff = tortuous(window.tortuosity, settings.train_screen_k)
            screened &= keep
            excluded["screened"] = {
                "rule": f"log tortuosity > median + {settings.train_screen_k:g} MAD",
                "tortuosity_cutoff": cutoff, "flights": window.ids[screened].tolist()}
            keep &= ~screened

    def fit_on(mask: np.ndarray, label: str, until: float) -> FitOutcome:
        return fit(window.images[train_idx[mask[train_idx]]], window.images[val_idx[mask[val_idx]]],
                   seed=seed, deadline=until, verbose=verbose, loss=loss, arch=arch,
                   max_epochs=max_epochs, label=label)

    budget = settings.train_budget_s
    fits = []
    if not plain and settings.train_trim > 0:   # (3) trimmed refit
        first = fit_on(keep, "first fit", t_start + budget / 3)
        fits.append(first)
        errs = errors.errors_of(first.model, window.images, loss)
        norm = errors.Normaliser.fit(errs[train_idx[keep[train_idx]]])
        scores = norm.score(errs)
        cutoff = float(np.quantile(scores[train_idx[keep[train_idx]]], 1 - settings.train_trim))
        trimmed = keep & (scores > cutoff)
        excluded["trimmed"] = {"fraction": settings.train_trim, "score_cutoff": cutoff,
                               "flights": window.ids[trimmed].tolist()}
        keep = keep & ~trimmed
    # (4) epochs and held-out figures from a validated fit, then the final fit on all kept.
    validated = fit_on(keep, "validated fit", t_start + budget * 2 / 3)
    fits.append(validated)
    tr, va = train_idx[keep[train_idx]], val_idx[keep[val_idx]]
    val_errs, probs_val = errors.errors_of(validated.model, window.images[va], loss,
                                           with_probabilities=True)
    val_loss = float(val_errs.mean())
    (rw, pw), (rs, ps) = errors.lit_recall_precision(window.images[va], probs_val)
    fitted = np.sort(np.concatenate([tr, va]))
    final = fit(window.images[fitted], None, seed=seed, deadline=deadline, verbose=verbose,
                loss=loss, arch=arch, max_epochs=validated.best_epoch, label="final fit")
    fits.append(final)

    # (5) normaliser and threshold from the flights of the final fit only: an outlier rule
    # over them, floored at their ADSB_FLAG_QUANTILE.
    errs_all = errors.errors_of(final.model, window.images, loss)
    norm = errors.Normaliser.fit(errs_all[fitted])
    fitted_scores = norm.score(errs_all[fitted])
    thr = max(errors.threshold(fitted_scores, settings.flag_quantile),
              errors.outlier_threshold(fitted_scores, settings.flag_mad_k))
    lit = window.images[keep].reshape(int(keep.sum()), -1).sum(axis=1)
    rho = errors.spearman(norm.score(errs_all[keep]), lit)

    params = {
        "loss": loss, "pos_weight": errors.POS_WEIGHT, "architecture": arch.to_json(),
        "normaliser": norm.to_json(), "seed": seed, "plain": plain, "trim": settings.train_trim,
        "screen_k": settings.train_screen_k, "validated_epochs": validated.best_epoch,
        "val_fraction": VAL_FRACTION, "batch": BATCH, "flag_quantile": settings.flag_quantile,
        "flag_mad_k": settings.flag_mad_k,
        "spearman_lit": rho, "n_params": int(final.model.count_params()),
        "fits": [{"epochs": f.epochs, "best_epoch": f.best_epoch, "seconds": round(f.seconds, 2),
                  "images_per_s": round(f.images_per_s, 1)} for f in fits],
    }
    version = registry.new_version()
    path, digest = registry.save_model(final.model, settings.models_path, version)
    n_excl = int((~keep).sum())
    values = dict(
        version=version, data_from=window.start, data_to=window.end, n_train=len(tr),
        n_val=len(va), n_excluded=n_excl, excluded=excluded,
        epochs=sum(f.epochs for f in fits), seconds=time.monotonic() - t_start,
        val_loss=val_loss, recall_where=rw, precision_where=pw, recall_shape=rs,
        precision_shape=ps, threshold=thr,
        threshold_method=f"median + {settings.flag_mad_k:g} MAD of log(1 + score) over the "
                         f"{len(fitted)} flights of the final fit (train + validation), not below "
                         f"their {settings.flag_quantile:g} quantile",
        params=params, path=str(path), sha256=digest)

    active_loss = _loss_of_active(current, window.images[va], loss)
    params["active_val_loss"] = active_loss
    problem = promotion_problem(val_loss, (rw, rs), rho, active_loss)
    with engine.begin() as conn:
        model_id = registry.insert_candidate(conn, values)
        if problem:
            registry.reject(conn, model_id, problem)
            status, reason = "rejected", problem
        else:
            reason = (f"val_loss {val_loss:.5f}" + (
                f" vs active {active_loss:.5f}" if active_loss is not None else " (first model)"))
            registry.activate(conn, model_id, reason)
            status = "active"
    log.info("model %s (%s): %s; val_loss %.5f, recall where %.3f shape %.3f, precision where "
             "%.3f shape %.3f, threshold %.3f, %d excluded, %.1f s", version, status, reason,
             val_loss, rw, rs, pw, ps, thr, n_excl, values["seconds"])
    return TrainResult(model_id, version, status, reason, val_loss, (rw, rs), (pw, ps), thr,
                       len(tr), len(va), n_excl, values["epochs"], values["seconds"], params)


def tortuous(tortuosity: np.ndarray, k: float) -> tuple[np.ndarray, float]:
    """Flights whose log tortuosity is above median + k x MAD of the window, and the cutoff.

    Why log: tortuosity is >= 1 with a long right tail (an orbit is 5-150); on the log scale
    ordinary flights are compact and median/MAD are not moved by the patterns themselves, so the
    rule needs no guess of how many there are. Measured on the Paris day: ordinary flights reach
    about 3 MADs, the injected patterns start near 3 (8 % injected) to 5 (3 %)."""
    t = np.log(np.maximum(np.nan_to_num(np.asarray(tortuosity, float), nan=1.0), 1.0))
    med = float(np.median(t)) if t.size else 0.0
    mad = float(np.median(np.abs(t - med))) * 1.4826 if t.size else 0.0
    cut = med + k * max(mad, 1e-3)
    return t > cut, float(np.exp(cut))


def _loss_of_active(current, val_images: np.ndarray, loss: str) -> float | None:
    """The active model's loss on the candidate's validation flights (same measure), or None
    when there is no comparable active model."""
    from pipeline.model import errors, registry

    if current is None or current.params.get("loss", loss) != loss:
        return None
    try:
        model = registry.load_model(current)
    except registry.ModelFileError as e:
        log.error("cannot compare with the active model: %s", e)
        return None
    return float(errors.errors_of(model, val_images, loss,
                                  current.params.get("pos_weight", errors.POS_WEIGHT)).mean())


def promotion_problem(val_loss: float, recalls: tuple[float, float], spearman_lit: float,
                      active_loss: float | None) -> str | None:
    """Why a candidate must not become active, or None."""
    if not math.isfinite(val_loss):
        return f"validation loss is not finite ({val_loss})"
    for name, r in zip(("where", "shape"), recalls):
        if not r >= RECALL_FLOOR:
            return f"lit-pixel recall of the {name} channel {r:.3f} is below {RECALL_FLOOR}"
    if abs(spearman_lit) > MAX_LIT_SPEARMAN:
        return (f"scores follow the lit-pixel count (Spearman {spearman_lit:.3f} > "
                f"{MAX_LIT_SPEARMAN}): a counter, not a model")
    if active_loss is not None and val_loss > active_loss * (1 + MAX_WORSE):
        return (f"validation loss {val_loss:.5f} is more than {MAX_WORSE:.0%} worse than the "
                f"active model's {active_loss:.5f} on the same flights")
    return None


def command(settings: Settings, args) -> int:
    """``adsb-pipeline train [--seed N] [--plain] [--quiet]``."""
    try:
        result = run_training(settings, seed=args.seed, plain=args.plain,
                              verbose=not args.quiet)
    except TrainingRefused as e:
        log.error("training refused: %s", e)
        return 1
    print(f"model {result.version}: {result.status} ({result.reason}); val_loss "
          f"{result.val_loss:.5f}; lit-pixel recall where {result.recall[0]:.3f} shape "
          f"{result.recall[1]:.3f}, precision where {result.precision[0]:.3f} shape "
          f"{result.precision[1]:.3f}; threshold {result.threshold:.3f}; "
          f"{result.n_train} train / {result.n_val} val / {result.n_excluded} excluded; "
          f"{result.epochs} epochs in {result.seconds:.1f} s")
    return 0
