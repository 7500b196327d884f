"""Builders of the convolutional autoencoder for the 64x64xC track images, and of the
ensemble of fold models that is saved and scored as one model.

The encoder and the decoder are built once and the autoencoder is ``decoder(encoder(x))`` of
those very instances, so that the three always share weights (building a second encoder later
would give fresh random weights and silently different outputs).

The decoder ends in *logits*: the loss and the per-flight error work on logits (numerically
stable), probabilities are ``sigmoid(logits)`` only where a picture is wanted.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import keras
from keras import layers

from pipeline.flights.raster import NCH, SIZE

CHANNELS = NCH


@dataclass(frozen=True)
class Architecture:
    """Capacity of the model. Small on purpose: a few hundred to a few thousand images a week,
    and a wide bottleneck learns the anomalies of the training window as well (see docs)."""

    filters: tuple[int, int, int] = (16, 32, 64)
    bottleneck: int = 32

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> "Architecture":
        return cls(filters=tuple(data["filters"]), bottleneck=int(data["bottleneck"]))


def build(arch: Architecture = Architecture(), channels: int = CHANNELS, name: str = "autoencoder"
          ) -> tuple[keras.Model, keras.Model, keras.Model]:
    """(encoder, decoder, autoencoder); the autoencoder is decoder(encoder(x)) of these two."""
    f1, f2, f3 = arch.filters
    inner = SIZE // 8                                        # three stride-2 steps: 64 -> 8

    x_in = keras.Input((SIZE, SIZE, channels), name="image")
    h = layers.Conv2D(f1, 3, strides=2, padding="same", activation="relu")(x_in)
    h = layers.Conv2D(f2, 3, strides=2, padding="same", activation="relu")(h)
    h = layers.Conv2D(f3, 3, strides=2, padding="same", activation="relu")(h)
    h = layers.Flatten()(h)
    code = layers.Dense(arch.bottleneck, name="code")(h)
    encoder = keras.Model(x_in, code, name="encoder")

    z_in = keras.Input((arch.bottleneck,), name="code_in")
    h = layers.Dense(inner * inner * f3, activation="relu")(z_in)
    h = layers.Reshape((inner, inner, f3))(h)
    h = layers.Conv2DTranspose(f2, 3, strides=2, padding="same", activation="relu")(h)
    h = layers.Conv2DTranspose(f1, 3, strides=2, padding="same", activation="relu")(h)
    logits = layers.Conv2DTranspose(channels, 3, strides=2, padding="same", name="logits")(h)
    decoder = keras.Model(z_in, logits, name="decoder")

    x = keras.Input((SIZE, SIZE, channels), name="image")
    autoencoder = keras.Model(x, decoder(encoder(x)), name=name)
    return encoder, decoder, autoencoder


def ensemble(members: list[keras.Model], channels: int = CHANNELS) -> keras.Model:
    """One model holding the fold models (layers ``member_0`` ...), saved and loaded as one
    file; its outputs are the members' logits. Scoring runs the members one by one
    (``errors.forward``) and averages their errors."""
    x = keras.Input((SIZE, SIZE, channels), name="image")
    for i, m in enumerate(members):
        m.name = f"member_{i}"
    return keras.Model(x, [m(x) for m in members], name="ensemble")


def parts(autoencoder: keras.Model) -> tuple[keras.Model, keras.Model]:
    """The encoder and decoder instances inside a (loaded) autoencoder."""
    return autoencoder.get_layer("encoder"), autoencoder.get_layer("decoder")


def narrowed(autoencoder: keras.Model, outputs: Sequence[int]) -> keras.Model:
    """``autoencoder`` computing only the output channels ``outputs``: the same encoder and
    decoder layers (their weights shared, not copied), the last layer cut to those channels'
    kernels. Its logits are the full model's logits of those channels, without the cost of the
    others: the last layer is ~30 % of the multiply-adds of a ten-channel image's pass, and the
    scorer of a model whose route groups score traffic counts reads the network's shape channel
    only (errors.network_channels)."""
    encoder, decoder = parts(autoencoder)
    last = decoder.layers[-1]
    keep = list(outputs)
    head = layers.Conv2DTranspose.from_config(
        {**last.get_config(), "filters": len(keep), "name": "logits_of_" + "_".join(map(str, keep))})
    trunk = keras.Model(decoder.inputs, decoder.layers[-2].output, name="decoder_trunk")
    x = keras.Input(autoencoder.input_shape[1:], name="image")
    logits = head(trunk(encoder(x)))
    kernel, bias = last.get_weights()
    head.set_weights([kernel[:, :, keep, :], bias[keep]])       # (kh, kw, filters, inputs)
    return keras.Model(x, logits, name=autoencoder.name + "_narrowed")
