"""The per-flight reconstruction error: the loss, and the measure of the threshold and scores.

Training minimises the mean of :func:`channel_errors`; the threshold is a quantile of
:func:`Normaliser.score` of out-of-fold terms (:func:`channel_terms`, of which the loss is one),
and the scorer computes the very same numbers from the same terms, so a flight is never judged
with a different measure than the one the threshold came from (scoring a weighted-BCE model
with plain BCE flips rankings).

Channels are read in *groups*: ``where``, ``shape`` and, for images of format 2, ``direction``
(the mean of the 8 heading channels). The loss weighs each group equally (8 direction channels
would otherwise outweigh the other two together), and a group's loss is the mean of its
channels' errors.

What a group *scores* (``MEASURE``, stored with each model): *shape* scores its loss, the
weighted cross-entropy over the whole picture, since a pattern shows as much in what the model
draws where the flight did not fly as in what it misses. *Where* and *direction* score how few
flights of the training window crossed the flight's pixels nearby (the same way, for
direction): :mod:`pipeline.model.counts`, measure "counts". Why not the network: it generalises
the lines it has seen to nearby places and headings, which a shape detector should do and a
route detector should not. On the Swiss week (trained on days 1-6, judged on day 7, six
arrangements) the counts ranked route anomalies at ROC AUC 0.998 / AP 0.974 (mean), the
network's surprise at the flight's pixels at 0.978 / 0.894, and found 94 % of all anomalies
instead of 76 % (8 ordinary flights of 1,058 flagged instead of 5; docs/model.md, "Route
groups: traffic counts"). Models saved before carry their own measure and score as they were
calibrated: "lit" (the network's surprise per lit pixel: the mean of -log p over the group's
lit pixels) or, with no measure stored, "pixels" (every group its loss).

Score = max over groups of the group's *rarity*: how rare its error is among flights the model
never trained on (the out-of-fold errors, see train.py), as -log10 of the share of them that
score higher (:class:`Tail`): 2 is one ordinary flight in a hundred, 3 one in a thousand. The
max lets any group that raises flags do so alone (train.scored_groups): an off-corridor transit,
or a flight against the traffic, in *direction*; an orbit mostly in *shape*. Why rarities, not the errors in
robust spreads (median and MAD, still the first step): the groups' tails differ, and the
heaviest took the flags. On the Swiss week *where* put 10 % of unseen ordinary flights beyond
7 spreads and 1 % beyond 66, so a glider 20 spreads out in *shape* ranked below ordinary
transits 50-200 spreads out in *where*; read as rarities, each group spends its share of the
flag rate (docs/model.md, "Route groups"). Models saved before tails existed score in spreads,
as calibrated.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import keras
import numpy as np
import tensorflow as tf

from pipeline.flights import raster
from pipeline.model import autoencoder
from pipeline.model.counts import Counts

if TYPE_CHECKING:
    from pipeline.model.data import Images

LOSSES = ("wbce", "focal", "dice")
DEFAULT_LOSS = "wbce"
# Weight of a lit pixel in the weighted BCE. Lit pixels are ~1-3 % of an image; weight 1 lets
# the model predict "all black", the full unlit/lit ratio (~50) paints thick blurry lines.
# Measured on the Paris day with injected anomalies (docs/model.md), validation flights of a
# fit early-stopped on them: 10 gave lit-pixel recall 0.75/0.78 (where/shape), 15 gave
# 0.85/0.86, 20 gave 0.88/0.88 at precision ~0.2, with the same anomaly ranking (ROC AUC
# 0.99-1.0). 20 keeps recall above 0.8 in both channels with a margin.
POS_WEIGHT = 20.0
FOCAL_GAMMA = 2.0
FOCAL_ALPHA = 0.9


SHAPE_GROUP = 1                 # index of the shape group in groups()
# Below the shape floor flights are ordered by tortuosity; the network's score moves a flight
# by at most this share of the floor's log tortuosity (1.3: 0.0003 of tortuosity), so it only
# breaks ties.
STRAIGHT_TIE = 1e-3
# The last axis of the per-channel terms of channel_terms: the channel's loss (the mean
# weighted cross-entropy over the picture), the sum of -log p over its lit pixels, the number
# of its lit pixels.
LOSS, SURPRISE, LIT = 0, 1, 2
# What the where and direction groups score (module docstring): "pixels" their loss, "lit" the
# network's surprise per lit pixel, "counts" how few window flights crossed the flight's pixels
# (pipeline/model/counts.py).
MEASURES = ("pixels", "lit", "counts")
MEASURE = "counts"              # ... in models trained now


def groups(channels: int) -> tuple[str, ...]:
    """Names of the channel groups of images with ``channels`` channels."""
    return ("where", "shape", "direction") if channels > 2 else ("where", "shape")


def group_matrix(channels: int) -> np.ndarray:
    """(channels, groups) matrix: channel errors @ it = group errors (mean within a group)."""
    m = np.zeros((channels, len(groups(channels))), dtype=np.float32)
    m[raster.WHERE, 0] = 1.0
    m[raster.SHAPE, 1] = 1.0
    if channels > 2:
        m[raster.DIRECTION, 2] = 1.0 / raster.SECTORS
    return m


def group_losses(terms: np.ndarray) -> np.ndarray:
    """(n, groups) losses from (n, channels, 3) channel terms: the mean of the group's channel
    losses (what training minimises)."""
    e = np.asarray(terms, dtype=np.float64)[..., LOSS]
    return e @ group_matrix(e.shape[-1]).astype(np.float64)


def group_errors(terms: np.ndarray, measure: str = MEASURE,
                 routes: np.ndarray | None = None) -> np.ndarray:
    """(n, groups) errors the score is made of, from (n, channels, 3) channel terms: with
    ``measure`` "lit", *where* and *direction* are the mean -log p over the group's lit pixels
    (0 for a flight with none), *shape* its loss; with "pixels" every group its loss; with
    "counts", *where* and *direction* are ``routes``, the (n, route groups) errors of
    :meth:`pipeline.model.counts.Counts.errors`, *shape* its loss."""
    if measure not in MEASURES:
        raise ValueError(f"unknown error measure {measure!r}; expected one of {MEASURES}")
    t = np.asarray(terms, dtype=np.float64)
    out = group_losses(t)
    if measure == "counts":
        if routes is None:
            raise ValueError("the counts measure needs the route errors of the flights' images")
        r = np.asarray(routes, dtype=np.float64)
        out[:, 0] = r[:, 0]
        if out.shape[1] > 2:
            out[:, 2] = r[:, 1]
    elif measure == "lit":
        m = group_matrix(t.shape[1]) > 0
        for g in range(m.shape[1]):
            if g != SHAPE_GROUP:
                lit = t[:, m[:, g], LIT].sum(axis=1)
                out[:, g] = t[:, m[:, g], SURPRISE].sum(axis=1) / np.maximum(lit, 1.0)
    return out


def channel_terms(y: tf.Tensor, logits: tf.Tensor, loss: str = DEFAULT_LOSS,
                  pos_weight: float = POS_WEIGHT) -> tf.Tensor:
    """(n, C, 3) terms of each image and channel (``LOSS``, ``SURPRISE``, ``LIT``); y is 0/1
    float (n, 64, 64, C). -log p is softplus(-logit), exact where p rounds to 0."""
    y = tf.cast(y, logits.dtype)
    if loss == "wbce":
        # The weighted cross-entropy of a lit pixel is pos_weight x -log p: one pass over the
        # pixels gives both (a second softplus over them cost the scorer a third of its rate).
        per_pixel = tf.nn.weighted_cross_entropy_with_logits(y, logits, pos_weight)
        err = tf.reduce_mean(per_pixel, axis=(1, 2))
        surprise = tf.reduce_sum(y * per_pixel, axis=(1, 2)) / pos_weight
    else:
        err = channel_errors(y, logits, loss, pos_weight)
        surprise = tf.reduce_sum(y * tf.math.softplus(-logits), axis=(1, 2))
    return tf.stack([err, surprise, tf.reduce_sum(y, axis=(1, 2))], axis=-1)


def channel_errors(y: tf.Tensor, logits: tf.Tensor, loss: str = DEFAULT_LOSS,
                   pos_weight: float = POS_WEIGHT) -> tf.Tensor:
    """(n, C) error of each image and channel; y is 0/1 float (n, 64, 64, C)."""
    y = tf.cast(y, logits.dtype)
    if loss == "wbce":
        per_pixel = tf.nn.weighted_cross_entropy_with_logits(y, logits, pos_weight)
        return tf.reduce_mean(per_pixel, axis=(1, 2))
    if loss == "focal":
        p = tf.sigmoid(logits)
        ce = tf.nn.sigmoid_cross_entropy_with_logits(y, logits)
        p_t = y * p + (1 - y) * (1 - p)
        alpha_t = y * FOCAL_ALPHA + (1 - y) * (1 - FOCAL_ALPHA)
        return tf.reduce_mean(alpha_t * (1 - p_t) ** FOCAL_GAMMA * ce, axis=(1, 2))
    if loss == "dice":
        p = tf.sigmoid(logits)
        inter = tf.reduce_sum(p * y, axis=(1, 2))
        total = tf.reduce_sum(p, axis=(1, 2)) + tf.reduce_sum(y, axis=(1, 2))
        return 1.0 - (2.0 * inter + 1.0) / (total + 1.0)
    raise ValueError(f"unknown loss {loss!r}; expected one of {LOSSES}")


@keras.saving.register_keras_serializable(package="adsb")
class ReconstructionLoss(keras.losses.Loss):
    """Keras loss = mean of :func:`channel_errors` (so loss and score are one measure)."""

    def __init__(self, kind: str = DEFAULT_LOSS, pos_weight: float = POS_WEIGHT,
                 name: str = "reconstruction", **kwargs) -> None:
        super().__init__(name=name, **kwargs)
        self.kind, self.pos_weight = kind, float(pos_weight)

    def call(self, y_true, y_pred):
        # Mean over groups of the group errors: each group weighs the same in the fit.
        errs = channel_errors(y_true, y_pred, self.kind, self.pos_weight)
        m = group_matrix(int(y_pred.shape[-1]))
        return tf.reduce_mean(tf.matmul(errs, tf.constant(m, errs.dtype)), axis=-1)

    def get_config(self) -> dict:
        return {**super().get_config(), "kind": self.kind, "pos_weight": self.pos_weight}


# Each group's normalised scores are read as how rare they are among unseen ordinary flights:
# the share of them at least as high, from the empirical distribution up to TAIL_FROM and an
# exponential tail fitted to the scores above it (extrapolated beyond the highest one).
TAIL_FROM = 0.9
TAIL_LEVELS = 91                # quantiles kept: 0, 1, ..., 90 %
MIN_MEAN_EXCESS = 1e-3          # of a tail whose scores are all equal


@dataclass(frozen=True)
class Tail:
    """How often unseen ordinary flights reach a normalised score in one group."""

    quantiles: tuple[float, ...]        # at levels 0 .. TAIL_FROM, TAIL_LEVELS of them
    mean_excess: float                  # mean of (score - top quantile) above the top one

    @classmethod
    def fit(cls, scores: np.ndarray) -> "Tail":
        s = np.asarray(scores, dtype=np.float64)
        q = np.quantile(s, np.linspace(0.0, TAIL_FROM, TAIL_LEVELS))
        above = s[s > q[-1]] - q[-1]
        excess = float(above.mean()) if above.size else 0.0
        return cls(tuple(map(float, q)), max(excess, MIN_MEAN_EXCESS))

    def rarity(self, x: np.ndarray) -> np.ndarray:
        """-log10 of the share of unseen ordinary flights scoring above ``x``: 1 = one in ten,
        2 = one in a hundred; 0 below the lowest. Increasing in ``x``."""
        x = np.asarray(x, dtype=np.float64)
        quantiles = np.array(self.quantiles)
        # Of tied quantiles (many flights with the same score) the highest level: the share
        # above the tied value is what lies beyond its last occurrence.
        q, last = np.unique(quantiles[::-1], return_index=True)
        levels = np.linspace(0.0, TAIL_FROM, TAIL_LEVELS)[len(quantiles) - 1 - last]
        below = -np.log10(1.0 - np.interp(x, q, levels, left=0.0))
        above = -np.log10(1.0 - TAIL_FROM) + (x - q[-1]) / (self.mean_excess * np.log(10.0))
        return np.where(x > q[-1], above, below)

    def to_json(self) -> dict:
        return {"quantiles": list(self.quantiles), "mean_excess": self.mean_excess}

    @classmethod
    def from_json(cls, data: dict) -> "Tail":
        return cls(tuple(map(float, data["quantiles"])), float(data["mean_excess"]))


@dataclass(frozen=True)
class Normaliser:
    """Per-group centre and scale of the errors of flights the model did not train on, which
    groups make up the score (all unless the window was too short for routes, see train.py),
    and the tortuosity below which the *shape* group cannot raise a flag.

    Why the floor: on real en-route traffic judged the afternoon after a 7-hour morning, every
    false flag was carried by the shape group, and they were ordinary airliners with a smooth
    bend (tortuosity 1.0-1.28) redrawn a pixel off the line; the patterns the shape group is
    for (orbits, holdings, surveys, calibration, gliders climbing in thermals) fly a longer path
    than their ends need. Below the floor a flight's shape score is pressed into [-1, 0):
    below 0 (the median of unseen ordinary flights), whose score no threshold goes under
    (:meth:`median_score`, train.py), so it never flags through *shape*. Among themselves
    the flights below the floor are ordered by their tortuosity (``straight_by``), the
    network's score only breaking ties: the floor is there because the network's pixel error
    of a nearly straight flight is drawing noise, so it should not order them either. A
    glider climbing in thermals too small for the picture (tortuosity 1.13 on the Swiss
    split) then ranks above the straight airliners, where by the network's order it ranked
    among them (ROC AUC 0.992 -> 0.999). Models saved before ``straight_by`` existed keep
    the network's order (``"network"``; a flat 0 had tied them all before that). *Where*
    and *direction* still flag a straight flight on the wrong route.

    The threshold is set on the out-of-fold scores *with* the floor, so the flag rate is spent
    on the flights that can be flagged. Set without it (as before), it was read off the noise
    of straight flights the floor then silenced: on the Swiss split it fell between patterns,
    which made recall 0.94 / 0.89 / 0.86 over three trainings; with it, 0.97 for each.
    Measured in docs/model.md ("Calibration on real traffic")."""

    median: tuple[float, ...]
    scale: tuple[float, ...]
    scored: tuple[bool, ...] | None = None
    shape_min_tortuosity: float | None = None
    measure: str = "pixels"           # what the groups' errors are (group_errors)
    tails: tuple[Tail, ...] | None = None
    counts: Counts | None = None      # the window's traffic, with the measure "counts"
    straight_by: str = "tortuosity"   # order below the shape floor: "tortuosity" or "network"

    def with_tails(self, errors: np.ndarray, tortuosity: np.ndarray | None = None
                   ) -> "Normaliser":
        """This normaliser, its group scores read as rarities (:class:`Tail`) among the (n,
        groups) errors of unseen flights, shape floor included as they are judged."""
        spreads = self.spreads(errors, tortuosity)
        return dataclasses.replace(self, tails=tuple(Tail.fit(spreads[:, g])
                                                     for g in range(spreads.shape[1])))

    @classmethod
    def fit(cls, errors: np.ndarray, scored: tuple[bool, ...] | None = None,
            shape_min_tortuosity: float | None = None, measure: str = "pixels",
            counts: Counts | None = None) -> "Normaliser":
        """From (n, groups) errors of unseen flights, measured by ``measure`` (with "counts",
        against the window's ``counts``)."""
        if measure == "counts" and counts is None:
            raise ValueError("the counts measure needs the window's counts")
        med = np.median(errors, axis=0)
        mad = np.median(np.abs(errors - med), axis=0) * 1.4826
        # A channel every training flight reconstructs equally well must not divide by zero.
        scale = np.maximum(mad, 1e-6 + 1e-3 * np.abs(med))
        return cls(tuple(map(float, med)), tuple(map(float, scale)), scored,
                   shape_min_tortuosity or None, measure, None, counts)

    def groups(self, terms: np.ndarray, images: np.ndarray | None = None) -> np.ndarray:
        """(n, groups) errors of (n, channels, 3) channel terms of the flights' uint8
        ``images``, by this model's measure (only "counts" reads the images)."""
        if self.measure != "counts":
            return group_errors(terms, self.measure)
        if images is None or self.counts is None:
            raise ValueError("a model that scores routes by traffic counts needs the images")
        return group_errors(terms, self.measure, self.counts.errors(images))

    def channels(self, errors: np.ndarray, tortuosity: np.ndarray | None = None) -> np.ndarray:
        """(n, groups) group scores of (n, groups) group errors: their rarity among unseen
        ordinary flights (-log10 of the share as high, :class:`Tail`), or, for a model saved
        before tails existed, their :meth:`spreads`."""
        ch = self.spreads(errors, tortuosity)
        if self.tails is not None:
            ch = np.stack([t.rarity(ch[:, g]) for g, t in enumerate(self.tails)], axis=1) \
                if len(ch) else ch
        return ch

    def spreads(self, errors: np.ndarray, tortuosity: np.ndarray | None = None) -> np.ndarray:
        """(n, groups) normalised group errors (distance from the median in robust spreads);
        with the flights' ``tortuosity``, the shape score of flights below the floor is pressed
        into [-1, 0), ordered by ``straight_by`` (a flight whose tortuosity is unknown is not
        pressed)."""
        ch = (np.asarray(errors, dtype=np.float64) - np.array(self.median)) / np.array(self.scale)
        if self.shape_min_tortuosity and tortuosity is not None and len(ch):
            t = np.asarray(tortuosity, dtype=np.float64)
            straight = t < self.shape_min_tortuosity
            shape = ch[:, SHAPE_GROUP]
            # The network's order in (0, 1). Rational, not logistic: a logistic rounds every
            # score above ~37 to the same value.
            network = np.where(shape >= 0, 1.0 - 0.5 / (1.0 + np.maximum(shape, 0.0)),
                               0.5 / (1.0 - np.minimum(shape, 0.0)))
            if self.straight_by == "network":
                pressed = network - 1.0
            else:
                # Log tortuosity as a share of the floor's, in [0, 1) below it; the network's
                # order moves a flight by at most STRAIGHT_TIE of it (ties: a two-point track
                # is 1). Flights not below the floor (or of unknown tortuosity) keep ``shape``.
                share = np.log(np.maximum(t, 1.0)) / np.log(self.shape_min_tortuosity)
                pressed = (1.0 - STRAIGHT_TIE) * share + STRAIGHT_TIE * network - 1.0
            ch[:, SHAPE_GROUP] = np.where(straight, pressed, shape)
        return ch

    def mask(self, groups: int) -> np.ndarray:
        return np.array(self.scored if self.scored is not None else (True,) * groups)

    def combine(self, channels: np.ndarray) -> np.ndarray:
        """The score: the largest normalised score of the groups that are scored."""
        return np.where(self.mask(channels.shape[1]), channels, -np.inf).max(axis=1)

    def top(self, channels: np.ndarray) -> np.ndarray:
        """Index of the group that carried each score."""
        return np.where(self.mask(channels.shape[1]), channels, -np.inf).argmax(axis=1)

    def score(self, errors: np.ndarray, tortuosity: np.ndarray | None = None) -> np.ndarray:
        return self.combine(self.channels(errors, tortuosity))

    def median_score(self) -> float:
        """The score of a flight with the median error of unseen flights in every group (not
        pressed by the shape floor), under which no threshold goes (see train.py): 0 in
        spreads; as a rarity -log10 0.5, or more where the floor pressed most flights below
        the median (1.09 on the straight en-route traffic of the Swiss split)."""
        return float(self.score(np.array([self.median]))[0])

    def to_json(self) -> dict:
        out: dict[str, Any] = {"median": list(self.median), "scale": list(self.scale)}
        if self.scored is not None:
            out["scored"] = list(self.scored)
        if self.shape_min_tortuosity:
            out["shape_min_tortuosity"] = self.shape_min_tortuosity
        out["measure"] = self.measure
        if self.tails is not None:
            out["tails"] = [t.to_json() for t in self.tails]
        if self.counts is not None:
            out["counts"] = self.counts.to_json()
        out["straight_by"] = self.straight_by
        return out

    @classmethod
    def from_json(cls, data: dict) -> "Normaliser":
        scored = data.get("scored")
        tails = data.get("tails")
        counts = data.get("counts")
        # A model saved before the measure was stored was calibrated on "pixels".
        return cls(tuple(data["median"]), tuple(data["scale"]),
                   tuple(bool(v) for v in scored) if scored is not None else None,
                   data.get("shape_min_tortuosity"), data.get("measure", "pixels"),
                   tuple(Tail.from_json(t) for t in tails) if tails is not None else None,
                   Counts.from_json(counts) if counts is not None else None,
                   # A model saved before the order was stored kept the network's.
                   data.get("straight_by", "network"))


def threshold(scores: np.ndarray, quantile: float) -> float:
    """A quantile of scores."""
    return float(np.quantile(np.asarray(scores, dtype=np.float64), quantile))


def flag_threshold(unseen_scores: np.ndarray, flag_rate: float) -> float:
    """The score above which ``flag_rate`` of ordinary flights lie: the (1 - rate) quantile of
    the scores of flights the model never trained on (out-of-fold scores, see train.py).

    Why unseen flights: a model reconstructs the flights it was fitted on far better than the
    next day's ordinary flights (measured on real en-route traffic: median score 0.52 seen,
    9.9 unseen), so a threshold from its own training flights flagged 41 % of the next day's
    ordinary traffic. The out-of-fold scores are distributed like the scores of tomorrow's
    flights, so the share of ordinary flights flagged is what the setting says (a little less:
    the deployed ensemble averages its members' errors, which narrows the tail)."""
    return threshold(unseen_scores, 1.0 - flag_rate)


def members(model: keras.Model) -> list[keras.Model]:
    """The autoencoders of an ensemble (layers named ``member_*``), or the model itself."""
    found = [layer for layer in model.layers if layer.name.startswith("member_")]
    return found or [model]


def network_channels(measure: str) -> tuple[int, ...] | None:
    """The channels whose network terms a score of ``measure`` reads, or None for all of them:
    with "counts" *where* and *direction* score the window's traffic counts, so only *shape*'s
    (the scorer then computes that channel alone: :func:`forward`'s ``outputs``)."""
    return (raster.SHAPE,) if measure == "counts" else None


def forward(model: keras.Model, loss: str = DEFAULT_LOSS, pos_weight: float = POS_WEIGHT,
            channels: int = raster.NCH, probabilities: bool = True,
            outputs: tuple[int, ...] | None = None):
    """A compiled inference pass: images (n, 64, 64, C) -> (channel terms (n, C, 3) of
    :func:`channel_terms`, probabilities (n, 64, 64, C), or None with ``probabilities=False``).

    For an ensemble of fold models the terms are the mean of the members' terms (not the
    error of their mean picture: each member's error of a new flight is distributed like the
    out-of-fold errors the threshold came from, and their mean keeps that centre), and the
    probabilities the mean of theirs. Members run one after the other (each waits for the
    previous one's errors), so only one member's logits and per-pixel errors are in memory:
    in one graph they would otherwise run side by side. The scorer asks for errors only and
    for probabilities of flagged flights only: probabilities are 160 KB a flight (float32),
    ~80 MB a batch of 512 per member. One trace for every batch size; ``training=False`` so
    that any layer that behaves differently in training cannot change the scores.

    With ``outputs`` (channel indices, :func:`network_channels`) the members compute those
    channels' logits only (autoencoder.narrowed: the same numbers) and the terms of every
    other channel are 0; not with probabilities, which pictures want of every channel."""
    if outputs is not None and probabilities:
        raise ValueError("probabilities are of every channel: ask for them without outputs")
    spec = tf.TensorSpec([None, 64, 64, channels], tf.float32)
    parts = members(model)
    if outputs is not None:
        parts = [autoencoder.narrowed(m, outputs) for m in parts]

    @tf.function(input_signature=[spec])
    def run(x):
        errs: Any = None
        probs: Any = None
        y = x if outputs is None else tf.gather(x, list(outputs), axis=-1)
        for m in parts:
            with tf.control_dependencies([] if errs is None else [errs]):
                logits = m(x, training=False)
            e = channel_terms(y, logits, loss, pos_weight)
            errs = e if errs is None else errs + e
            if probabilities:
                p = tf.sigmoid(logits)
                probs = p if probs is None else probs + p
        if outputs is not None:
            # The computed channels' terms in their places of the (n, channels, 3) terms.
            full = tf.zeros([channels, tf.shape(x)[0], 3], errs.dtype)
            errs = tf.transpose(tf.tensor_scatter_nd_update(
                full, [[c] for c in outputs], tf.transpose(errs, [1, 0, 2])), [1, 0, 2])
        n = float(len(parts))
        return errs / n, (probs / n if probabilities else None)

    return run


def errors_of(model: keras.Model, images: Images, loss: str = DEFAULT_LOSS,
              pos_weight: float = POS_WEIGHT, batch: int = 256,
              with_probabilities: bool = False):
    """Channel terms (n, C, 3) of uint8 images, batch by batch; optionally the
    probabilities."""
    c = images.shape[-1]
    run = forward(model, loss, pos_weight, c, probabilities=with_probabilities)
    errs, probs = [], []
    for start in range(0, len(images), batch):
        e, p = run(tf.convert_to_tensor(images[start:start + batch], tf.float32))
        errs.append(e.numpy())
        if with_probabilities:
            probs.append(p.numpy())
    e = np.concatenate(errs) if errs else np.zeros((0, c, 3))
    if with_probabilities:
        return e, (np.concatenate(probs) if probs else np.zeros((0, 64, 64, c)))
    return e


def pixel_errors(images: np.ndarray, probs: np.ndarray, pos_weight: float = POS_WEIGHT
                 ) -> np.ndarray:
    """Per-pixel weighted cross-entropy (n, 64, 64, C) of probabilities against the images (for
    pictures and explanations; the scores come from :func:`channel_errors`)."""
    y = images.astype(np.float32)
    p = np.clip(probs.astype(np.float32), 1e-6, 1 - 1e-6)
    return -(pos_weight * y * np.log(p) + (1 - y) * np.log1p(-p))


def error_pixels(images: np.ndarray, probs: np.ndarray, top: np.ndarray,
                 pos_weight: float = POS_WEIGHT, measure: str = "pixels",
                 counts: Counts | None = None) -> np.ndarray:
    """(n, 2) pixel (row, col) of the largest error of each flight within the channels of the
    group that carried its score (``top``: group index, from ``Normaliser.top``); with
    ``measure`` "lit", among the flight's own pixels for *where* and *direction* (what those
    groups score), so the pixel says where the flight went that the model did not expect; with
    "counts" (and the model's ``counts``), the flight's pixel of those groups that the fewest
    window flights crossed nearby."""
    names = groups(images.shape[-1])
    if measure == "counts" and counts is not None:
        rare = {i: counts.rarest_pixel(images[i], names[g])
                for i, g in enumerate(np.asarray(top).tolist()) if names[g] != "shape"}
        if len(rare) == len(images):
            return np.array([rare[i] for i in range(len(images))], dtype=np.int64).reshape(-1, 2)
        out = error_pixels(images, probs, top, pos_weight, "pixels")
        for i, rc in rare.items():
            out[i] = rc
        return out
    err = pixel_errors(images, probs, pos_weight)
    if measure == "lit":
        route = np.arange(images.shape[-1]) != raster.SHAPE
        err[..., route] = np.where(images[..., route] > 0, err[..., route], 0.0)
    m = group_matrix(images.shape[-1]) > 0                       # (C, G)
    where = np.zeros((len(images), 2), dtype=np.int64)
    for i, g in enumerate(top):
        e = err[i][:, :, m[:, g]].max(axis=-1)
        where[i] = np.unravel_index(int(np.argmax(e)), e.shape)
    return where


def lit_recall_precision(images: np.ndarray, probs: np.ndarray) -> list[tuple[float, float]]:
    """Per group (recall, precision) of lit pixels, a pixel predicted lit when p > 0.5."""
    out = []
    m = group_matrix(images.shape[-1]) > 0
    for g in range(m.shape[1]):
        truth = images[..., m[:, g]] > 0
        pred = probs[..., m[:, g]] > 0.5
        tp = float(np.logical_and(truth, pred).sum())
        out.append((tp / max(float(truth.sum()), 1.0), tp / max(float(pred.sum()), 1.0)))
    return out


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman rank correlation (average ranks for ties)."""
    ra, rb = _ranks(np.asarray(a, float)), _ranks(np.asarray(b, float))
    if ra.std() == 0 or rb.std() == 0:
        return 0.0
    return float(np.corrcoef(ra, rb)[0, 1])


def _ranks(x: np.ndarray) -> np.ndarray:
    order = np.argsort(x, kind="mergesort")
    ranks = np.empty(len(x), float)
    ranks[order] = np.arange(len(x), dtype=float)
    # Average ranks of ties so that a constant block does not invent an order.
    _, inverse, counts = np.unique(x, return_inverse=True, return_counts=True)
    sums = np.bincount(inverse, weights=ranks)
    return sums[inverse] / counts[inverse]
