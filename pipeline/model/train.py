"""The training job: window of recent flights -> screen -> K fold models -> threshold -> registry.

Runs in its own process (the scheduler spawns ``adsb-pipeline train``), so TensorFlow is never
loaded by the ingest process and an out-of-memory kill cannot take the scheduler down.

The model is judged as it is deployed: it is trained at night and scores flights it has never
seen all day. So every figure that decides something comes from flights a model did not train
on (measured on real traffic: ordinary flights the model trained on scored a median 0.52,
those of the next hours 9.9; a threshold from the training flights' own errors flagged 41 % of
the next day's ordinary traffic):

0. the user's verdicts (newest per flight, ``flight_verdicts``) come first: a flight judged
   anomalous is never trained on; one judged normal is always trained on, even when 1. or 2.
   would leave it out (the user has seen it: it is the site's traffic, however rare);
1. flights the active model flagged are left out (they were flagged already), but at most
   ``ADSB_TRAIN_FLAGGED_MAX_SHARE`` of the window, those flagged by the widest margin: a model
   that flags far more than a site's anomalies met a change of traffic (the other runway in
   use), and the next model must learn it rather than leave it out for ever;
2. screen: flights whose log tortuosity is above median + ``ADSB_TRAIN_SCREEN_K`` x MAD of the
   window AND above ``ADSB_TRAIN_SCREEN_MIN_TORTUOSITY`` are left out: circling, holding,
   survey and calibration patterns are never learnt as normal, however often they occur, while
   the floor keeps ordinary turns and vectored approaches in (on straight en-route traffic the
   relative rule alone cut at 1.036 and left 155 ordinary flights out, which were then flagged);
3. cross-fitting: the kept flights are dealt into ``ADSB_TRAIN_FOLDS`` folds by blocks of time
   (data.folds); fold model k is trained on the other folds and early-stopped on fold k, so
   every kept flight gets an *out-of-fold* error from a model that never saw it nor any flight
   of its hours;
4. the normaliser (median, MAD per channel group) and the threshold (the ``1 - ADSB_FLAG_RATE``
   quantile of the out-of-fold scores) come from those unseen errors only, so the share of
   tomorrow's ordinary flights that is flagged is the setting. The fixed-frame groups (where,
   direction) are part of the score only once the window spans ``ADSB_ROUTES_MIN_HOURS`` of
   traffic: trained on the first 90 minutes of the Paris day, 23 % of the next 90 minutes'
   ordinary flights scored above a 1 % threshold in *where* (routes the morning did not fly;
   their errors were 1.5x those of held-out flights of the morning), while *shape* held;
5. the deployed model is the ensemble of the fold models (errors averaged): no flight of the
   window needs a refit, and averaging narrows the spread of ordinary flights' errors.
``--plain`` skips 1-2 (not 0). Every excluded flight is recorded, with the reason, in
``models.excluded``; ``models.params["verdicts"]`` counts the flights judged normal that were
kept and how many of them 1. or 2. would have left out.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import math
import os
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import sqlalchemy as sa

from pipeline import parent
from pipeline.config import Settings
from pipeline.flights import raster

if TYPE_CHECKING:
    from pipeline.model.data import Images

log = logging.getLogger(__name__)

BATCH = 64                     # measured: 64 at 2e-3 reached a lower validation loss in
                               # the same time than 32 at 1e-3 or 128 at 3e-3
MAX_EPOCHS = 200
PATIENCE = 10                  # epochs without a better validation loss, at least ...
PATIENCE_STEPS = 200           # ... and at least this many batches: a few hundred flights make
                               # epochs of a handful of batches, and sparse images plateau for a
                               # while (all black) before the lines are learnt
MIN_STEPS = 300                # the budget stops a fold only after this many batches: cut after
                               # one epoch (4 batches of 57 flights), a run's folds had learnt no
                               # line yet (lit-pixel recall of where 0.000) and the model was
                               # rejected, which on a slow host would leave it without any model
MIN_GAIN = 0.0                 # relative: an epoch is better when it lowers the loss by this share
LEARNING_RATE = 2e-3
# Seconds of the budget kept for scoring the folds and saving, per 1,000 flights.
TAIL_S_PER_1000 = 3.0
AUGMENT = True                 # see data.dataset; measured in docs/model.md
OOF_CHUNK = 256                # flights scored at once out of fold (probabilities: 40 MB)
# Promotion rules (see docs/model.md).
RECALL_FLOOR = 0.5             # lit-pixel recall on validation flights, each channel
MAX_WORSE = 0.2                # candidate loss may exceed the active one's by at most 20 %
MAX_LIT_SPEARMAN = 0.9         # above this the score is a lit-pixel counter, not a model
MIN_COMPARED = 20              # new flights needed to compare a candidate with the active model


# ADSB_TRAIN_PROFILE (docs/model.md, "Small hosts"): what "small" changes, and which hosts
# "auto" calls small (a Raspberry Pi 4 or 5 with 4 GB: 4 cores, ~3.7 GiB visible).
SMALL_FOLDS = 2
SMALL_MAX_FLIGHTS = 6000
SMALL_HOST_CPUS = 4
SMALL_HOST_MEMORY_GIB = 6.0


def host_size() -> tuple[int, float]:
    """(CPUs, total memory in GiB) of this host."""
    try:
        memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2 ** 30
    except (ValueError, OSError, AttributeError):
        memory = float("inf")
    return os.cpu_count() or 1, memory


def profile(setting: str, cpus: int, memory_gib: float) -> str:
    """'full' or 'small': the setting, or for 'auto' what the host's size calls for."""
    if setting != "auto":
        return setting
    small = cpus <= SMALL_HOST_CPUS and memory_gib < SMALL_HOST_MEMORY_GIB
    return "small" if small else "full"


def with_profile(settings: Settings, host: tuple[int, float] | None = None) -> Settings:
    """The settings a training run uses under ``ADSB_TRAIN_PROFILE``: 'small' caps the folds at
    SMALL_FOLDS and the window at the newest SMALL_MAX_FLIGHTS flights (never raises them)."""
    chosen = profile(settings.train_profile, *(host or host_size()))
    if chosen == "full":
        return settings
    return dataclasses.replace(settings, train_folds=min(settings.train_folds, SMALL_FOLDS),
                               train_max_flights=min(settings.train_max_flights,
                                                     SMALL_MAX_FLIGHTS),
                               train_profile=chosen)


class TrainingRefused(RuntimeError):
    """Not enough data to train (the message says how much there is and how much is needed)."""


# The exit status of ``adsb-pipeline train`` when it is refused (sysexits' EX_TEMPFAIL: try
# again later). A young site's nightly training is refused until it has enough flights; the
# worker records that as a refusal, not as a failure.
EXIT_REFUSED = 75


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


def _callbacks(deadline: float, label: str, patience: int = PATIENCE, min_epochs: int = 1):
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
            if time.monotonic() > deadline and epoch + 1 >= min_epochs:
                log.warning("%s: training budget reached after %d epochs", label, epoch + 1)
                self.model.stop_training = True

    class Stop(keras.callbacks.Callback):
        """Early stopping on the validation loss, the best epoch's weights restored at the end
        (what EarlyStopping(restore_best_weights=True) does); an epoch counts as better only
        when it lowers the best loss by at least MIN_GAIN of it (0: any lower loss). Written on
        the public Callback API: EarlyStopping's min_delta is absolute, and a relative gain
        would have to override its private _is_improvement."""

        def __init__(self, patience: int) -> None:
            super().__init__()
            self.patience = patience

        def on_train_begin(self, logs=None):
            self.wait, self.best, self.best_weights = 0, math.inf, None

        def on_epoch_end(self, epoch, logs=None):
            current = (logs or {}).get("val_loss")
            if current is None:
                return
            if self.best_weights is None:
                self.best_weights = self.model.get_weights()
            self.wait += 1
            if current < self.best * (1 - MIN_GAIN):
                self.best, self.best_weights, self.wait = current, self.model.get_weights(), 0
            elif self.wait >= self.patience and epoch > 0:
                self.model.stop_training = True

        def on_train_end(self, logs=None):
            if self.best_weights is not None:
                self.model.set_weights(self.best_weights)

    stop = Stop(patience)
    return [EpochLog(), stop], stop


def fit(train_images: Images, val_images: Images | None, *, seed: int, deadline: float,
        verbose: bool = False, loss: str | None = None, arch=None,
        max_epochs: int = MAX_EPOCHS, label: str = "fit", augment: bool = AUGMENT,
        name: str = "autoencoder", batch: int | None = None) -> FitOutcome:
    """One fit from scratch, early-stopped on the validation flights, best weights restored;
    without validation flights, exactly ``max_epochs`` epochs (or until the deadline).
    The images may be views (data.Subset of the window): batches are gathered as they are due."""
    import keras

    from pipeline.model import autoencoder, data, errors

    configure_determinism(seed)
    arch = arch or autoencoder.Architecture()
    _, _, model = autoencoder.build(arch, train_images.shape[-1], name=name)
    model.compile(optimizer=keras.optimizers.Adam(LEARNING_RATE),
                  loss=errors.ReconstructionLoss(loss or errors.DEFAULT_LOSS))
    # Small windows (a fold of a day-one window holds a few dozen flights) get smaller batches:
    # at 64 an epoch of 70 images is 2 steps and 60 epochs left the where channel half learnt.
    batch = batch or batch_size(len(train_images))
    steps = math.ceil(len(train_images) / batch)
    callbacks, stop = _callbacks(deadline, label, patience(steps), math.ceil(MIN_STEPS / steps))
    if val_images is None:
        callbacks.remove(stop)
    t0 = time.monotonic()
    hist = model.fit(data.dataset(train_images, batch, shuffle_seed=seed, augment=augment),
                     validation_data=None if val_images is None else
                     data.dataset(val_images, 256, shuffle_seed=None),
                     epochs=max_epochs, callbacks=callbacks, verbose=1 if verbose else 0,
                     shuffle=False)   # the dataset shuffles itself, seeded, every epoch
    seconds = time.monotonic() - t0
    epochs = len(hist.history["loss"])
    val = hist.history.get("val_loss", [])
    best = int(np.nanargmin(val)) + 1 if val and np.isfinite(val).any() else epochs
    return FitOutcome(model, epochs, best, seconds, epochs * len(train_images) / max(seconds, 1e-9),
                      callbacks[0].durations)


def patience(steps: int) -> int:
    """Epochs without a better validation loss before a fit stops, for ``steps`` batches an
    epoch: PATIENCE epochs and at least PATIENCE_STEPS batches."""
    return max(PATIENCE, math.ceil(PATIENCE_STEPS / steps))


def batch_size(n: int) -> int:
    """BATCH, or smaller for small training sets: at least ~16 steps an epoch, never below 16."""
    return int(min(BATCH, max(16, n // 16)))


@dataclass
class CrossFit:
    """K fold models and what they say about flights they never saw."""

    members: list[Any]
    fold: np.ndarray                  # fold of each flight fitted
    oof_errors: np.ndarray            # (n, C, 3) channel terms, each from the model that left it out
    lit_counts: np.ndarray            # (groups, 3): true lit, predicted lit, both (out of fold)
    fits: list[FitOutcome]

    def recall_precision(self) -> list[tuple[float, float]]:
        t, p, tp = self.lit_counts.T
        return [(float(a / max(b, 1.0)), float(a / max(c, 1.0))) for a, b, c in zip(tp, t, p)]


def cross_fit(images: Images, k: int, *, seed: int, start: float, budget: float,
              verbose: bool = False, loss: str | None = None, arch=None,
              max_epochs: int = MAX_EPOCHS, augment: bool = AUGMENT,
              first_seen: np.ndarray | None = None) -> CrossFit:
    """Fit ``k`` fold models (each on the other folds, early-stopped on its own), and score each
    flight with the fold model that left it out. Folds are blocks of time when the flights'
    start times are given (see data.folds). Fold i may use the budget up to
    ``start + budget * (i + 1) / k``, less a tail kept for scoring and saving. Folds are index
    views of ``images`` (data.Subset), never copies of them."""
    import tensorflow as tf

    from pipeline.model import data, errors

    loss = loss or errors.DEFAULT_LOSS
    n = len(images)
    fold = data.folds(n, k, np.random.default_rng(seed), first_seen)
    oof = np.zeros((n, images.shape[-1], 3))
    m = errors.group_matrix(images.shape[-1]) > 0
    counts = np.zeros((m.shape[1], 3))
    tail = TAIL_S_PER_1000 * n / 1000
    members, fits = [], []
    for i in range(k):
        held = fold == i
        until = start + (budget - tail) * (i + 1) / k
        idx = np.flatnonzero(held)
        out = fit(data.Subset(images, np.flatnonzero(~held)), data.Subset(images, idx),
                  seed=seed + i, deadline=until, verbose=verbose, loss=loss, arch=arch,
                  max_epochs=max_epochs, label=f"fold {i + 1}/{k}", augment=augment,
                  name=f"member_{i}")
        run = errors.forward(out.model, loss, channels=images.shape[-1])
        # A chunk at a time: its probabilities are 160 KB a flight as float32.
        for lo in range(0, idx.size, OOF_CHUNK):
            part = idx[lo:lo + OOF_CHUNK]
            x = images[part]
            e, probs = run(tf.convert_to_tensor(x, tf.float32))
            oof[part] = e.numpy()
            probs = probs.numpy()
            for g in range(m.shape[1]):
                truth = x[..., m[:, g]] > 0
                pred = probs[..., m[:, g]] > 0.5
                counts[g] += (truth.sum(), pred.sum(), np.logical_and(truth, pred).sum())
            del x, probs
        members.append(out.model)
        fits.append(out)
        log.info("fold %d/%d: %d epochs (best %d), %.0f s, %.0f images/s", i + 1, k, out.epochs,
                 out.best_epoch, out.seconds, out.images_per_s)
    return CrossFit(members, fold, oof, counts, fits)


def _make_engine(settings: Settings):
    from pipeline.db.engine import make_engine
    return make_engine(settings)


@dataclass
class Candidate:
    """A fitted ensemble with its normaliser and threshold, before it is registered."""

    model: Any
    normaliser: Any
    threshold: float
    keep: np.ndarray                  # window flights fitted (not excluded)
    excluded: dict[str, Any]
    cross: CrossFit
    oof_scores: np.ndarray            # (n kept,) normalised out-of-fold scores
    val_loss: float
    recall: list[tuple[float, float]]
    spearman_lit: float
    seconds: float
    params: dict[str, Any]


def scored_groups(names: tuple[str, ...], routes: bool) -> tuple[bool, ...] | None:
    """Which groups raise flags (None: all). Before the window spans ADSB_ROUTES_MIN_HOURS,
    *shape* alone. Then, with direction channels, *shape* and *direction*: *where* is measured
    and stored, but a flight in a place nobody flies also crosses it a way nobody flies, and
    scoring the place as well spent part of the flag rate on short flights in quiet places.
    On the Swiss week (six arrangements, day 7) *where* scored as well found 88 % of the
    anomalies instead of 94 %, at the same flag precision (0.95), and ranked route anomalies
    lower in five of six (docs/model.md, "Route groups: traffic counts")."""
    if not routes:
        return tuple(g == "shape" for g in names)
    return tuple(g != "where" for g in names) if "direction" in names else None


def fit_candidate(window, settings: Settings, *, seed: int, plain: bool = False,
                  verbose: bool = False, loss: str | None = None, arch=None,
                  max_epochs: int = MAX_EPOCHS, augment: bool = AUGMENT,
                  active_id: int | None = None, blocked_folds: bool = True) -> Candidate:
    """Screen the window, cross-fit, calibrate: everything but the database writes (evaluate
    uses this on a time split)."""
    from pipeline.model import autoencoder, counts, data, errors

    t_start = time.monotonic()
    loss = loss or errors.DEFAULT_LOSS
    arch = arch or autoencoder.Architecture()
    n = len(window.ids)
    keep, excluded, verdicts = screen(window, settings, plain, active_id)
    k = max(2, min(settings.train_folds, int(keep.sum()) // 10))
    cross = cross_fit(data.Subset(window.images, keep), k, seed=seed, start=t_start,
                      budget=settings.train_budget_s - (time.monotonic() - t_start),
                      verbose=verbose, loss=loss, arch=arch, max_epochs=max_epochs,
                      augment=augment,
                      first_seen=window.first_seen[keep] if blocked_folds else None)
    model = autoencoder.ensemble(cross.members, window.images.shape[-1])
    # The route groups are scored by the window's traffic counts, each flight's out of fold
    # (pipeline/model/counts.py); the fold is the one the network left the flight out of.
    window_counts, route_oof = counts.out_of_fold(window.images, np.flatnonzero(keep),
                                                  cross.fold)
    groups = errors.group_errors(cross.oof_errors, errors.MEASURE, route_oof)
    names = errors.groups(window.images.shape[-1])
    span_h = float((window.first_seen[keep].max() - window.first_seen[keep].min())
                   / np.timedelta64(1, "h")) if keep.any() else 0.0
    routes = span_h >= settings.routes_min_hours
    scored = scored_groups(names, routes)
    if not routes:
        log.warning("the window spans %.1f h of traffic (< ADSB_ROUTES_MIN_HOURS %g): only the "
                    "shape channel raises flags; direction joins once it spans more",
                    span_h, settings.routes_min_hours)
    norm = errors.Normaliser.fit(groups, scored, settings.shape_min_tortuosity, errors.MEASURE,
                                 window_counts).with_tails(groups, window.tortuosity[keep])
    # The threshold comes from the scores as they will be judged, shape floor included (see
    # errors.Normaliser), and never lies under the score of the median unseen flight: where
    # fewer than ADSB_FLAG_RATE of the window can be flagged at all (straight en-route
    # traffic, whose few curved flights are what the shape group is for) the quantile would
    # otherwise fall among the floored flights.
    oof_scores = norm.score(groups, window.tortuosity[keep])
    thr = max(errors.flag_threshold(oof_scores, settings.flag_rate), norm.median_score())
    lit = data.lit_pixels(window.images)[keep]
    rho = errors.spearman(oof_scores, lit)
    params = {
        "loss": loss, "pos_weight": errors.POS_WEIGHT, "architecture": arch.to_json(),
        "image_format": raster.FORMAT, "channels": int(window.images.shape[-1]),
        "groups": list(errors.groups(window.images.shape[-1])),
        "normaliser": norm.to_json(), "seed": seed, "plain": plain, "folds": k,
        "profile": profile(settings.train_profile, *host_size()),
        "augment": augment, "screen_k": settings.train_screen_k,
        "screen_min_tortuosity": settings.train_screen_min_tortuosity,
        "flag_rate": settings.flag_rate, "spearman_lit": rho,
        "batch": batch_size(int(keep.sum()) * (k - 1) // k),
        "window_hours": round(span_h, 2),
        "verdicts": verdicts,
        "scored_groups": [g for g, on in zip(names, norm.mask(len(names))) if on],
        "n_params": int(model.count_params()),
        "oof_score_quantiles": {q: float(np.quantile(oof_scores, float(q)))
                                for q in ("0.5", "0.9", "0.99")},
        "recall": {g: r for g, (r, _) in zip(errors.groups(window.images.shape[-1]),
                                              cross.recall_precision())},
        "fits": [{"epochs": f.epochs, "best_epoch": f.best_epoch, "seconds": round(f.seconds, 2),
                  "images_per_s": round(f.images_per_s, 1)} for f in cross.fits],
    }
    log.info("cross-fitted %d folds on %d of %d flights in %.0f s; threshold %.3f (%.2f %% of "
             "out-of-fold scores above it)", k, int(keep.sum()), n, time.monotonic() - t_start,
             thr, 100 * float((oof_scores > thr).mean()))
    return Candidate(model, norm, thr, keep, excluded, cross, oof_scores,
                     float(errors.group_losses(cross.oof_errors).mean()),
                     cross.recall_precision(), rho,
                     time.monotonic() - t_start, params)


def _cap_flagged(window, flagged: np.ndarray, max_share: float
                 ) -> tuple[np.ndarray, np.ndarray]:
    """(flights left out, flights flagged but trained on): at most ``max_share`` of the window
    is left out for being flagged, those flagged by the widest margin.

    Why a cap: leaving out every flagged flight feeds on itself. A model that has seen only
    westerly days flags every approach of the first easterly day; the next model, trained
    without them, flags the next easterly day again, and the runway's other direction is never
    learnt (seen in the soak: 811 of 1,991 flights left out, then 34 % of the week's flights
    flagged). Anomalies are a few per cent of a site's traffic; a flagged share far above that
    is a change of traffic, which the next model must learn."""
    n_flagged, cap = int(flagged.sum()), int(max_share * len(window.ids))
    if n_flagged <= cap:
        return flagged, np.zeros_like(flagged)
    margin = window.flag_margin if window.flag_margin is not None else \
        np.full(len(window.ids), np.nan)
    idx = np.flatnonzero(flagged)
    # Widest margin first; a flagged flight without a margin (no score) counts as the widest.
    order = idx[np.argsort(-np.nan_to_num(margin[idx], nan=np.inf), kind="stable")]
    left_out = np.zeros_like(flagged)
    left_out[order[:cap]] = True
    trained_on = flagged & ~left_out
    log.warning("the active model flagged %d of the window's %d flights (%.0f %%), more than "
                "ADSB_TRAIN_FLAGGED_MAX_SHARE (%.0f %%): the traffic has changed (another "
                "runway in use, a new route?). The %d flagged by the widest margin are left "
                "out; the other %d are trained on, so the next model learns the change",
                n_flagged, len(window.ids), 100 * n_flagged / len(window.ids), 100 * max_share,
                cap, int(trained_on.sum()))
    return left_out, trained_on


def screen(window, settings: Settings, plain: bool, active_id: int | None
           ) -> tuple[np.ndarray, dict[str, Any], dict[str, int]]:
    """Which flights of the window are fitted, why the others are not (each excluded flight
    under one reason, the first that applies), and what the verdicts changed."""
    normal = window.verdict_is("normal")
    anomalous = window.verdict_is("anomalous")
    keep = ~anomalous                       # (0) the user's word, whatever the rules say
    excluded: dict[str, Any] = {"judged_anomalous": {"flights": window.ids[anomalous].tolist()}}
    verdicts = {"judged_anomalous_excluded": int(anomalous.sum()),
                "judged_normal_kept": int(normal.sum()),
                "judged_normal_flagged_by_active": 0, "judged_normal_screened": 0}
    if plain:
        return keep, excluded, verdicts
    flagged = window.flagged & keep         # (1) flights the active model flagged
    verdicts["judged_normal_flagged_by_active"] = int((flagged & normal).sum())
    flagged &= ~normal
    flagged, trained_on = _cap_flagged(window, flagged, settings.train_flagged_max_share)
    excluded["flagged_by_active"] = {"model_id": active_id,
                                     "flights": window.ids[flagged].tolist(),
                                     "flagged_but_trained_on": window.ids[trained_on].tolist()}
    keep &= ~flagged
    if settings.train_screen_k > 0:         # (2) circling and patterns
        screened, cutoff = tortuous(window.tortuosity, settings.train_screen_k,
                                    settings.train_screen_min_tortuosity)
        screened &= keep
        verdicts["judged_normal_screened"] = int((screened & normal).sum())
        screened &= ~normal
        excluded["screened"] = {
            "rule": f"log tortuosity > median + {settings.train_screen_k:g} MAD and tortuosity "
                    f"> {settings.train_screen_min_tortuosity:g}",
            "tortuosity_cutoff": cutoff, "flights": window.ids[screened].tolist()}
        keep &= ~screened
    if normal.any() or anomalous.any():
        log.info("verdicts: %d flights judged normal kept (%d flagged by the active model, %d "
                 "above the tortuosity screen), %d judged anomalous left out",
                 verdicts["judged_normal_kept"], verdicts["judged_normal_flagged_by_active"],
                 verdicts["judged_normal_screened"], verdicts["judged_anomalous_excluded"])
    return keep, excluded, verdicts


def run_training(settings: Settings, *, seed: int | None = None, plain: bool = False,
                 verbose: bool = True, engine: sa.Engine | None = None,
                 loss: str | None = None, arch=None, max_epochs: int = MAX_EPOCHS,
                 augment: bool = AUGMENT, until: dt.datetime | None = None) -> TrainResult:
    """Train a candidate of the site of ``settings`` (``ADSB_SITE``, by default the
    receiver's own; the worker sets it per job) on the data window (ending at the data clock, or
    at ``until``), register it, promote it or record why not."""
    from pipeline.model import data, errors, registry

    t_start = time.monotonic()
    engine = engine or _make_engine(settings)
    chosen = with_profile(settings)
    if chosen is not settings:
        log.info("ADSB_TRAIN_PROFILE %s: small (%d CPUs, %.1f GiB): at most %d folds and the "
                 "newest %d flights", settings.train_profile, *host_size(), chosen.train_folds,
                 chosen.train_max_flights)
        settings = chosen
    seed = seed if seed is not None else settings.train_seed
    if seed is None:
        seed = int.from_bytes(os.urandom(4), "little") >> 1      # recorded, so rerunnable
    site = settings.site_id
    with engine.connect() as conn:
        current = registry.active(conn, site)
    window = data.load_window(engine, settings, current.id if current else None, until=until,
                              site=site)
    n = len(window.ids)
    if n < settings.train_min_flights:
        raise TrainingRefused(
            f"only {n} finished flights of site {site} between {window.start:%Y-%m-%d %H:%M} and "
            f"{window.end:%Y-%m-%d %H:%M} UTC (data clock); at least {settings.train_min_flights} "
            f"are needed (ADSB_TRAIN_MIN_FLIGHTS)")
    log.info("training on %d flights of %s .. %s (seed %d, %s)", n, window.start, window.end,
             seed, "plain" if plain else
             f"screen k {settings.train_screen_k:g}, folds {settings.train_folds}")
    cand = fit_candidate(window, settings, seed=seed, plain=plain, verbose=verbose, loss=loss,
                         arch=arch, max_epochs=max_epochs, augment=augment,
                         active_id=current.id if current else None)
    params = cand.params
    (rw, pw), (rs, ps) = cand.recall[0], cand.recall[1]
    version = registry.new_version()
    path, digest = registry.save_model(cand.model, settings.models_path, version)
    n_fit = int(cand.keep.sum())
    epochs = sum(f.epochs for f in cand.cross.fits)
    values = dict(
        version=version, data_from=window.start, data_to=window.end, n_train=n_fit,
        n_val=n_fit, n_excluded=n - n_fit, excluded=cand.excluded,
        epochs=epochs, seconds=time.monotonic() - t_start,
        val_loss=cand.val_loss, recall_where=rw, precision_where=pw, recall_shape=rs,
        precision_shape=ps, threshold=cand.threshold,
        threshold_method=f"{1 - settings.flag_rate:.4g} quantile of the out-of-fold scores of "
                         f"the {n_fit} flights fitted ({params['folds']} folds: each flight "
                         f"scored by the fold model that never saw it), so about "
                         f"{settings.flag_rate:.2%} of ordinary flights are flagged",
        params=params, path=str(path), sha256=digest, site=site)

    # Compared with the active model on the newest flights, which it never saw either.
    new = window.first_seen > np.datetime64(current.data_to.replace(tzinfo=None), "us") \
        if current is not None and current.data_to is not None else np.zeros(n, bool)
    new_fit = new[cand.keep]
    active_loss = _loss_of_active(
        current, data.Subset(window.images, np.flatnonzero(cand.keep)[new_fit]), params)
    cand_loss = float(errors.group_losses(cand.cross.oof_errors[new_fit]).mean()) \
        if active_loss is not None else cand.val_loss
    params["active_val_loss"] = active_loss
    params["compared_on"] = int(new_fit.sum()) if active_loss is not None else 0
    problem = promotion_problem(cand_loss, (rw, rs), cand.spearman_lit, active_loss)
    with engine.begin() as conn:
        model_id = registry.insert_candidate(conn, values)
        if problem:
            registry.reject(conn, model_id, problem)
            status, reason = "rejected", problem
        else:
            reason = (f"out-of-fold loss {cand_loss:.5f}" + (
                f" vs active {active_loss:.5f} on {params['compared_on']} new flights"
                if active_loss is not None else " (first model or nothing to compare on)"))
            registry.activate(conn, model_id, reason)
            status = "active"
    log.info("model %s (%s): %s; out-of-fold loss %.5f, recall where %.3f shape %.3f, "
             "threshold %.3f, %d excluded, %.1f s", version, status, reason, cand.val_loss, rw,
             rs, cand.threshold, n - n_fit, values["seconds"])
    return TrainResult(model_id, version, status, reason, cand.val_loss, (rw, rs), (pw, ps),
                       cand.threshold, n_fit, n_fit, n - n_fit, epochs,
                       time.monotonic() - t_start, params)


def tortuous(tortuosity: np.ndarray, k: float, floor: float = 1.0) -> tuple[np.ndarray, float]:
    """Flights whose log tortuosity is above median + k x MAD of the window and above
    ``floor``, and the cutoff.

    Why log: tortuosity is >= 1 with a long right tail (an orbit is 5-150); on the log scale
    ordinary flights are compact and median/MAD are not moved by the patterns themselves, so the
    rule needs no guess of how many there are. Why the floor: on straight en-route traffic the
    MAD is tiny and the relative cutoff fell to 1.036, leaving gently turning ordinary flights
    out of training. Ordinary Paris flights, vectored approaches included, stay below 1.9 but
    for one (2.3); simulated holdings start at 1.9, calibration passes at 2.1, orbits and
    surveys at 3."""
    t = np.log(np.maximum(np.nan_to_num(np.asarray(tortuosity, float), nan=1.0), 1.0))
    med = float(np.median(t)) if t.size else 0.0
    mad = float(np.median(np.abs(t - med))) * 1.4826 if t.size else 0.0
    cut = max(med + k * max(mad, 1e-3), float(np.log(max(floor, 1.0))))
    return t > cut, float(np.exp(cut))


def _loss_of_active(current, images: Images, params: dict) -> float | None:
    """The active model's loss (mean group error) on ``images``, or None when there is no
    comparable active model (none, another loss or image format) or too few flights."""
    from pipeline.model import errors, registry

    if current is None or len(images) < MIN_COMPARED or \
            current.params.get("loss", params["loss"]) != params["loss"] or \
            current.params.get("image_format", 1) != params["image_format"]:
        return None
    try:
        model = registry.load_model(current)
    except registry.ModelFileError as e:
        log.error("cannot compare with the active model: %s", e)
        return None
    errs = errors.errors_of(model, images, params["loss"],
                            current.params.get("pos_weight", errors.POS_WEIGHT))
    return float(errors.group_losses(errs).mean())


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
        return (f"out-of-fold loss {val_loss:.5f} is more than {MAX_WORSE:.0%} worse than the "
                f"active model's {active_loss:.5f} on the same new flights")
    return None


def command(settings: Settings, args) -> int:
    """``adsb-pipeline train [--seed N] [--plain] [--quiet]``."""
    try:
        parent.die_with_parent()
    except parent.ParentGone as e:
        log.error("training not started: %s", e)
        return 1
    try:
        result = run_training(settings, seed=args.seed, plain=args.plain,
                              verbose=not args.quiet)
    except TrainingRefused as e:
        log.warning("training refused: %s", e)
        return EXIT_REFUSED
    print(f"model {result.version}: {result.status} ({result.reason}); val_loss "
          f"{result.val_loss:.5f}; lit-pixel recall where {result.recall[0]:.3f} shape "
          f"{result.recall[1]:.3f}, precision where {result.precision[0]:.3f} shape "
          f"{result.precision[1]:.3f}; threshold {result.threshold:.3f}; "
          f"{result.n_train} flights in {result.params['folds']} folds / "
          f"{result.n_excluded} excluded; "
          f"{result.epochs} epochs in {result.seconds:.1f} s")
    return 0
