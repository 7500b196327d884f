"""Honest baselines beside the model: simple scores fitted on training-period images.

Each baseline is fitted on the images of a training period (``train``) and scores other
flights (``judge``); higher = more unusual. Images are uint8 0/1 arrays (n, H, W, C) laid out
as :mod:`pipeline.flights.raster` draws them. If the network cannot beat these, it is not
earning its keep (docs: autoencoder notes §6 and §9, where route anomalies set pixel rarity by
direction of travel clearly above the model).

* :func:`pca_scores`: squared reconstruction error under a PCA of the training images.
* :func:`knn_scores`: mean Jaccard distance of a flight's lit pixels to its k nearest
  training flights.
* :func:`pixel_rarity`: how few training flights crossed the pixels the flight crossed;
  with the direction channels, how few crossed them *in the same direction*.

Memory stays bounded whatever the number of flights: images are read a chunk of rows at a
time, and nothing of size n_train x n_judge or (H*W*C)^2 is ever built.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

# Image channel layout contract of pipeline/flights/raster.py:
# channel 0 = "where" (fixed frame centred on the receiver, +-range_km, row 0 north),
# channel 1 = "shape" (the flight's own frame), channels 2..9 = "direction": the fixed frame
# split by heading of travel into 8 sectors, channel 2 + k lit where the flight moved with a
# heading in [k*45 - 22.5, k*45 + 22.5) degrees clockwise from north (k = 0 north,
# 1 north-east, ... 7 north-west). Older images have only channels 0 and 1.
WHERE = 0
SHAPE = 1
DIRECTION = tuple(range(2, 10))

PCA_COMPONENTS = 32
KNN_K = 5
CHUNK_ROWS = 2048               # most rows of images read (and converted) at once
CHUNK_ELEMENTS = 1 << 23        # ... and at most this many values per chunk (64 MB float64)
# PCA: an exact SVD of the centred n x d training matrix when it is small, at most
# EXACT_MAX_ELEMENTS values (128 MB of float64) and EXACT_MAX_WORK = n * d * min(n, d), the
# SVD's cost (2^34: a few seconds; 3,000 flights x 4,096 pixels would take half a minute).
# Beyond, randomized subspace iteration (Halko, Martinsson & Tropp 2011, alg. 4.4), as
# scikit-learn's PCA also switches to for large inputs: it holds (n + d) x (components +
# OVERSAMPLE) values besides one chunk of images, and costs 2 * (POWER_ITERATIONS + 1) passes
# over the images. With 32 extra directions and 6 iterations its scores were within 5e-6
# (relative) of the exact ones on the test corridors (16 and 6: 2e-4; 32 and 10: 1e-8).
EXACT_MAX_ELEMENTS = 1 << 24
EXACT_MAX_WORK = 1 << 34
OVERSAMPLE = 32
POWER_ITERATIONS = 6

Scorer = Callable[[np.ndarray, np.ndarray], np.ndarray]


# ---- checks and chunked reading -------------------------------------------------------------
def _channels(train: np.ndarray, judge: np.ndarray, channels: Sequence[int]) -> list[int]:
    """The channels to use, checked against both image arrays."""
    for name, images in (("train", train), ("judge", judge)):
        if images.ndim != 4:
            raise ValueError(f"{name} images must be (n, height, width, channels), "
                             f"not shape {images.shape}")
    if train.shape[1:] != judge.shape[1:]:
        raise ValueError(f"train images are {train.shape[1:]} but judge images are "
                         f"{judge.shape[1:]}: score with images drawn the same way")
    if len(train) == 0:
        raise ValueError("no training images to fit on")
    chans = [int(c) for c in channels]
    c = train.shape[3]
    if not chans or len(set(chans)) != len(chans) or min(chans) < 0:
        raise ValueError(f"channels must be distinct channel indices, not {list(channels)}")
    if max(chans) >= c:
        if any(k in DIRECTION for k in chans) and c < max(DIRECTION) + 1:
            raise ValueError(
                f"channels {DIRECTION[0]}..{DIRECTION[-1]} (direction of travel) need images "
                f"with {max(DIRECTION) + 1} channels, these have {c}: they were drawn before "
                f"the direction channels existed; rasterize the flights again")
        raise ValueError(f"channel {max(chans)} asked of images with {c} channels")
    return chans


def _chunk_rows(images: np.ndarray, chans: list[int], chunk: int) -> int:
    d = images.shape[1] * images.shape[2] * len(chans)
    return max(1, min(int(chunk), CHUNK_ELEMENTS // d))


def _rows(images: np.ndarray, chans: list[int], lo: int, hi: int,
          dtype: type = np.float64) -> np.ndarray:
    """Images lo..hi, selected channels, flattened to (hi - lo, H*W*len(chans)) 0/1 values."""
    part = images[lo:hi][..., chans] if chans != list(range(images.shape[3])) else images[lo:hi]
    return (part.reshape(hi - lo, -1) != 0).astype(dtype)


def _spans(n: int, step: int):
    for lo in range(0, n, step):
        yield lo, min(lo + step, n)


# ---- PCA reconstruction error ---------------------------------------------------------------
def pca_scores(train: np.ndarray, judge: np.ndarray, channels: Sequence[int],
               components: int = PCA_COMPONENTS, *, chunk: int = CHUNK_ROWS) -> np.ndarray:
    """Squared reconstruction error (sum over pixels) of each judge image's ``channels``
    under a PCA with ``components`` components (at most n_train and the number of pixels)
    fitted on the training images' same channels."""
    chans = _channels(train, judge, channels)
    n = len(train)
    d = train.shape[1] * train.shape[2] * len(chans)
    k = max(1, min(int(components), n, d))
    step = _chunk_rows(train, chans, chunk)
    mean = np.zeros(d)
    for lo, hi in _spans(n, step):
        mean += _rows(train, chans, lo, hi).sum(axis=0)
    mean /= n
    if n * d <= EXACT_MAX_ELEMENTS and n * d * min(n, d) <= EXACT_MAX_WORK:
        _, _, vt = np.linalg.svd(_rows(train, chans, 0, n) - mean, full_matrices=False)
        basis = vt[:k]
    else:
        basis = _randomized_basis(train, chans, mean, k, step)
    out = np.empty(len(judge))
    for lo, hi in _spans(len(judge), _chunk_rows(judge, chans, chunk)):
        c = _rows(judge, chans, lo, hi) - mean
        r = c - (c @ basis.T) @ basis
        out[lo:hi] = np.einsum("ij,ij->i", r, r)
    return out


def _randomized_basis(train: np.ndarray, chans: list[int], mean: np.ndarray, k: int,
                      step: int) -> np.ndarray:
    """Top-k right singular vectors (k, d) of the centred training matrix, by subspace
    iteration with a fixed seed (the same images give the same scores)."""
    n, d = len(train), mean.size
    width = min(k + OVERSAMPLE, n, d)
    omega = np.random.default_rng(0).standard_normal((d, width))

    def times(m: np.ndarray) -> np.ndarray:            # X_c @ m, (n, width)
        out = np.empty((n, m.shape[1]))
        shift = mean @ m
        for lo, hi in _spans(n, step):
            out[lo:hi] = _rows(train, chans, lo, hi) @ m - shift
        return out

    def t_times(q: np.ndarray) -> np.ndarray:          # X_c.T @ q, (d, width)
        out = -np.outer(mean, q.sum(axis=0))
        for lo, hi in _spans(n, step):
            out += _rows(train, chans, lo, hi).T @ q[lo:hi]
        return out

    q, _ = np.linalg.qr(times(omega))
    for _ in range(POWER_ITERATIONS):
        # Re-orthonormalise at every half step: plain powers would lose the smaller
        # directions to rounding.
        z, _ = np.linalg.qr(t_times(q))
        q, _ = np.linalg.qr(times(z))
    _, _, vt = np.linalg.svd(t_times(q).T, full_matrices=False)
    return vt[:k]


# ---- nearest neighbours by Jaccard distance ---------------------------------------------------
def knn_scores(train: np.ndarray, judge: np.ndarray, channel: int = WHERE, k: int = KNN_K, *,
               chunk: int = CHUNK_ROWS) -> np.ndarray:
    """Mean Jaccard distance 1 - |A & B| / |A | B| of each judge flight's lit pixels (A) in
    ``channel`` to those of its ``k`` nearest training flights (two empty images are at
    distance 0). A judge flight that is also in ``train`` finds itself at distance 0.

    Intersections are float32 matrix products of 0/1 pixel vectors, exact for counts below
    2^24, over blocks of ``chunk`` judge x ``chunk`` training flights, keeping a running k
    smallest per judge flight: at 2048 x 2048 flights of 64x64 pixels a block needs ~200 MB,
    whatever the number of flights. Pixels no training flight lit add nothing to any
    intersection, so the products skip them (judge flights' own counts include them)."""
    chans = _channels(train, judge, (channel,))
    n = len(train)
    k = max(1, min(int(k), n))
    step = max(1, int(chunk))
    lit = np.zeros(train.shape[1] * train.shape[2], dtype=bool)
    train_sizes = np.empty(n)
    for lo, hi in _spans(n, step):
        rows = _rows(train, chans, lo, hi, np.float32)
        lit |= rows.any(axis=0)
        train_sizes[lo:hi] = rows.sum(axis=1)
    cols = np.flatnonzero(lit)
    out = np.empty(len(judge))
    for jlo, jhi in _spans(len(judge), step):
        rows = _rows(judge, chans, jlo, jhi, np.float32)
        sizes = rows.sum(axis=1, dtype=np.float64)
        rows = np.ascontiguousarray(rows[:, cols])
        best = np.full((jhi - jlo, k), np.inf)
        for tlo, thi in _spans(n, step):
            other = _rows(train, chans, tlo, thi, np.float32)[:, cols]
            inter = (rows @ other.T).astype(np.float64)
            union = sizes[:, None] + train_sizes[None, tlo:thi] - inter
            with np.errstate(invalid="ignore", divide="ignore"):
                dist = np.where(union > 0, 1.0 - inter / union, 0.0)
            both = np.concatenate([best, dist], axis=1)
            best = np.partition(both, k - 1, axis=1)[:, :k]
        # Sorted before the mean, so the sum's order and so the result do not depend on
        # which block each neighbour came from.
        out[jlo:jhi] = np.sort(best, axis=1).mean(axis=1)
    return out


# ---- pixel rarity -------------------------------------------------------------------------
def pixel_rarity(train: np.ndarray, judge: np.ndarray, channels: Sequence[int], *,
                 chunk: int = CHUNK_ROWS) -> np.ndarray:
    """How few training flights crossed the pixels the flight crossed:

        score = mean over the flight's lit pixels p (in ``channels``) of
                -log((count_p + 1) / (n_train + 1)),

    count_p = the number of training flights with pixel p lit (in that channel). A pixel
    every training flight crossed scores 0, one none crossed log(n_train + 1); the +1 keeps
    unseen pixels finite. The mean, not the sum, so a long flight is not unusual for being
    long. A flight with no lit pixel in ``channels`` scores 0.

    With ``channels=(WHERE,)`` it is rarity of place; with ``channels=DIRECTION`` rarity of
    place *and* direction of travel, since each direction channel counts the training
    flights that crossed the pixel with a heading in that sector."""
    chans = _channels(train, judge, channels)
    n = len(train)
    step = _chunk_rows(train, chans, chunk)
    counts = np.zeros(train.shape[1] * train.shape[2] * len(chans))
    for lo, hi in _spans(n, step):
        counts += _rows(train, chans, lo, hi).sum(axis=0)
    weight = -np.log((counts + 1.0) / (n + 1.0))
    out = np.empty(len(judge))
    for lo, hi in _spans(len(judge), _chunk_rows(judge, chans, chunk)):
        rows = _rows(judge, chans, lo, hi)
        lit = rows.sum(axis=1)
        out[lo:hi] = np.where(lit > 0, (rows @ weight) / np.maximum(lit, 1.0), 0.0)
    return out


# ---- the registry ---------------------------------------------------------------------------
def pca_where(train: np.ndarray, judge: np.ndarray) -> np.ndarray:
    return pca_scores(train, judge, (WHERE,))


def pca_shape(train: np.ndarray, judge: np.ndarray) -> np.ndarray:
    return pca_scores(train, judge, (SHAPE,))


def pca_all(train: np.ndarray, judge: np.ndarray) -> np.ndarray:
    """PCA of every channel the images have (where and shape, and direction when drawn)."""
    return pca_scores(train, judge, tuple(range(train.shape[-1])))


def knn_where(train: np.ndarray, judge: np.ndarray) -> np.ndarray:
    return knn_scores(train, judge, WHERE)


def rarity_where(train: np.ndarray, judge: np.ndarray) -> np.ndarray:
    return pixel_rarity(train, judge, (WHERE,))


def rarity_direction(train: np.ndarray, judge: np.ndarray) -> np.ndarray:
    return pixel_rarity(train, judge, DIRECTION)


BASELINES: dict[str, Scorer] = {
    "pca_where": pca_where, "pca_shape": pca_shape, "pca_all": pca_all,
    "knn_where": knn_where, "rarity_where": rarity_where, "rarity_direction": rarity_direction,
}
# Channels each baseline needs: the direction ones only exist in 10-channel images.
_NEEDS = {"pca_where": WHERE + 1, "pca_shape": SHAPE + 1, "pca_all": 1, "knn_where": WHERE + 1,
          "rarity_where": WHERE + 1, "rarity_direction": max(DIRECTION) + 1}


def available(c: int) -> list[str]:
    """Names of the baselines that images with ``c`` channels allow, in registry order."""
    return [name for name in BASELINES if _NEEDS[name] <= c]
