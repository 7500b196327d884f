"""The per-flight reconstruction error: THE measure, used for the loss, the threshold and scores.

Training minimises the mean of :func:`channel_errors`, the threshold is a quantile of
:func:`Normaliser.score` over the flights the model was finally fitted on, and the scorer
computes the very same numbers, so a flight is never judged with a different measure than the
one the threshold came from (scoring a weighted-BCE model with plain BCE flips rankings).

Score = max over channels of the channel error normalised against the training flights
(median and MAD per channel). The two channels have very different error scales (the *where*
channel has fewer lit pixels than the *shape* channel), so a plain sum is dominated by one of
them; the max lets either channel alone raise a flag: an off-corridor transit is unusual only in
*where*, an orbit mostly in *shape*.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import tensorflow as tf
import keras

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


def channel_errors(y: tf.Tensor, logits: tf.Tensor, loss: str = DEFAULT_LOSS,
                   pos_weight: float = POS_WEIGHT) -> tf.Tensor:
    """(n, 2) error of each image and channel; y is 0/1 float (n, 64, 64, 2)."""
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
        return tf.reduce_mean(channel_errors(y_true, y_pred, self.kind, self.pos_weight), axis=-1)

    def get_config(self) -> dict:
        return {**super().get_config(), "kind": self.kind, "pos_weight": self.pos_weight}


@dataclass(frozen=True)
class Normaliser:
    """Per-channel centre and scale of the training flights' errors."""

    median: tuple[float, float]
    scale: tuple[float, float]

    @classmethod
    def fit(cls, errors: np.ndarray) -> "Normaliser":
        med = np.median(errors, axis=0)
        mad = np.median(np.abs(errors - med), axis=0) * 1.4826
        # A channel every training flight reconstructs equally well must not divide by zero.
        scale = np.maximum(mad, 1e-6 + 1e-3 * np.abs(med))
        return cls(tuple(map(float, med)), tuple(map(float, scale)))

    def channels(self, errors: np.ndarray) -> np.ndarray:
        """(n, 2) normalised channel scores."""
        return (np.asarray(errors, dtype=np.float64) - np.array(self.median)) / np.array(self.scale)

    def score(self, errors: np.ndarray) -> np.ndarray:
        return self.channels(errors).max(axis=1)

    def to_json(self) -> dict:
        return {"median": list(self.median), "scale": list(self.scale)}

    @classmethod
    def from_json(cls, data: dict) -> "Normaliser":
        return cls(tuple(data["median"]), tuple(data["scale"]))


def threshold(scores: np.ndarray, quantile: float) -> float:
    """A high quantile of scores: the floor of the flag threshold."""
    return float(np.quantile(np.asarray(scores, dtype=np.float64), quantile))


def outlier_threshold(scores: np.ndarray, k: float) -> float:
    """median + k*MAD of log(1 + score), mapped back to the score scale.

    Why: a model reconstructs the flights it was fitted on better than unseen ordinary ones, so
    a quantile of its own training flights flags a tenth of the next day's traffic (measured on
    the simulated day: 0.99-quantile 7.7 on training flights, 45 on unseen ordinary flights,
    260 and more on the anomalies). The tail of the scores is heavy and spans orders of
    magnitude; on the log scale the ordinary flights are compact and median/MAD ignore the
    few outliers that remain, so the rule needs no assumption about how many there are."""
    logs = np.log1p(np.maximum(np.asarray(scores, dtype=np.float64), 0.0))
    med = float(np.median(logs))
    mad = float(np.median(np.abs(logs - med))) * 1.4826
    return float(np.expm1(med + k * mad))


def forward(model: keras.Model, loss: str = DEFAULT_LOSS, pos_weight: float = POS_WEIGHT):
    """A compiled inference pass: images (n, 64, 64, 2) -> (errors (n, 2), probabilities).

    One trace for every batch size (``None`` batch dimension); ``training=False`` so that any
    layer that behaves differently in training cannot change the scores."""
    spec = tf.TensorSpec([None, 64, 64, 2], tf.float32)

    @tf.function(input_signature=[spec])
    def run(x):
        logits = model(x, training=False)
        return channel_errors(x, logits, loss, pos_weight), tf.sigmoid(logits)

    return run


def errors_of(model: keras.Model, images: np.ndarray, loss: str = DEFAULT_LOSS,
              pos_weight: float = POS_WEIGHT, batch: int = 512,
              with_probabilities: bool = False):
    """Channel errors (n, 2) of uint8 images, batch by batch; optionally the probabilities."""
    run = forward(model, loss, pos_weight)
    errs, probs = [], []
    for start in range(0, len(images), batch):
        e, p = run(tf.convert_to_tensor(images[start:start + batch], tf.float32))
        errs.append(e.numpy())
        if with_probabilities:
            probs.append(p.numpy())
    e = np.concatenate(errs) if errs else np.zeros((0, 2))
    if with_probabilities:
        return e, (np.concatenate(probs) if probs else np.zeros((0, 64, 64, 2)))
    return e


def lit_recall_precision(images: np.ndarray, probs: np.ndarray) -> list[tuple[float, float]]:
    """Per channel (recall, precision) of lit pixels, a pixel predicted lit when p > 0.5."""
    out = []
    for c in range(images.shape[-1]):
        truth = images[..., c] > 0
        pred = probs[..., c] > 0.5
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
