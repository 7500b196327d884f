"""Baselines fitted on training images: corridors drawn with NumPy, references by brute force
and scikit-learn."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.decomposition import PCA

from pipeline.evaluation import baselines as bl

SIZE = 64
# One-way corridors in pixel coordinates (col, row) of the where frame, row 0 north.
CORRIDORS = (((4.0, 20.0), (60.0, 20.0)),        # west -> east
             ((44.0, 4.0), (44.0, 60.0)),        # north -> south
             ((8.0, 56.0), (56.0, 8.0)))         # south-west -> north-east


def _line(img: np.ndarray, a: np.ndarray, b: np.ndarray, channel: int) -> None:
    n = math.ceil(2 * np.abs(b - a).max()) + 1
    pts = np.rint(a + np.linspace(0, 1, n)[:, None] * (b - a)).astype(int)
    pts = pts[((pts >= 0) & (pts < SIZE)).all(axis=1)]
    img[pts[:, 1], pts[:, 0], channel] = 1


def draw(points, channels: int = 10) -> np.ndarray:
    """Image of a polyline given in where-frame pixels, laid out as the raster contract says:
    where, shape (the polyline's own frame), and direction sectors of 45 deg from north."""
    pts = np.asarray(points, dtype=float)
    img = np.zeros((SIZE, SIZE, channels), np.uint8)
    lo, hi = pts.min(axis=0), pts.max(axis=0)
    side = max(float((hi - lo).max()), 1.0) * 1.08
    own = (pts - (lo + hi) / 2) * (SIZE / side) + SIZE / 2 - 0.5
    for a, b, oa, ob in zip(pts[:-1], pts[1:], own[:-1], own[1:]):
        _line(img, a, b, bl.WHERE)
        _line(img, oa, ob, bl.SHAPE)
        if channels > 2:
            heading = math.degrees(math.atan2(b[0] - a[0], a[1] - b[1])) % 360  # north = -row
            _line(img, a, b, bl.DIRECTION[int(((heading + 22.5) % 360) // 45)])
    return img


def ordinary_path(rng: np.random.Generator, corridor: int | None = None) -> np.ndarray:
    i = int(rng.integers(len(CORRIDORS))) if corridor is None else corridor
    a, b = (np.array(p) for p in CORRIDORS[i])
    d = (b - a) / np.linalg.norm(b - a)
    offset = int(rng.integers(-1, 2)) * np.array([-d[1], d[0]])
    f0, f1 = rng.uniform(0, 0.15), rng.uniform(0.85, 1.0)
    return np.stack([a + f0 * (b - a), a + f1 * (b - a)]) + offset


def images(paths, channels: int = 10) -> np.ndarray:
    return np.stack([draw(p, channels) for p in paths])


OFF = np.array([[20.0, 58.0], [60.0, 40.0]])          # across empty sky, heading ~114 deg
ORBIT = 30 + 6 * np.stack([np.cos(np.linspace(0, 2 * np.pi, 40)),
                           np.sin(np.linspace(0, 2 * np.pi, 40))], axis=1) + [0, 10]


@pytest.fixture(scope="module")
def sky():
    rng = np.random.default_rng(4)
    train = [ordinary_path(rng) for _ in range(200)]
    judge = [ordinary_path(rng) for _ in range(40)]
    # The odd-direction flight: an ordinary flight of corridor 0 flown the other way, so its
    # where image is drawn as an ordinary one's.
    wrong_way = ordinary_path(rng, corridor=0)[::-1]
    return images(train), images(judge), images([OFF, ORBIT, wrong_way])


def _rank(scores: np.ndarray, i: int) -> int:
    """1 = highest score."""
    return int((scores > scores[i]).sum()) + 1


def test_every_baseline_ranks_the_off_corridor_flight_first(sky):
    train, judge, odd = sky
    flights = np.concatenate([judge, odd[:1]])
    print()
    for name in bl.available(10):
        s = bl.BASELINES[name](train, flights)
        print(f"  {name:17} off-corridor {s[-1]:8.3f}  ordinary max {s[:-1].max():8.3f}")
        assert np.argmax(s) == len(flights) - 1 and s[-1] > s[:-1].max(), name


def test_shape_pca_ranks_an_orbit_first(sky):
    train, judge, odd = sky
    s = bl.pca_shape(train, np.concatenate([judge, odd[1:2]]))
    assert np.argmax(s) == len(judge)


def test_only_direction_separates_a_flight_flown_the_wrong_way(sky):
    train, judge, odd = sky
    flights = np.concatenate([judge, odd[2:3]])
    i = len(judge)
    print()
    for name in bl.available(10):
        s = bl.BASELINES[name](train, flights)
        print(f"  {name:17} wrong-way flight ranks {_rank(s, i):2d} of {len(flights)}")
    direction = bl.rarity_direction(train, flights)
    assert _rank(direction, i) == 1 and direction[i] > direction[:i].max()
    where = bl.rarity_where(train, flights)
    assert _rank(where, i) > 0.2 * len(flights)          # unremarkable without direction
    assert where[:i].min() <= where[i] <= where[:i].max()


def test_pixel_rarity_formula():
    train = np.zeros((3, 4, 4, 2), np.uint8)
    train[:, 0, 0, 0] = 1                 # every training flight
    train[0, 1, 1, 0] = 1                 # one of them
    judge = np.zeros((2, 4, 4, 2), np.uint8)
    judge[0, 0, 0, 0] = judge[0, 1, 1, 0] = judge[0, 2, 2, 0] = 1
    expected = (-math.log(4 / 4) - math.log(2 / 4) - math.log(1 / 4)) / 3
    assert np.allclose(bl.pixel_rarity(train, judge, (0,)), [expected, 0.0], rtol=1e-12)


@pytest.mark.parametrize("channels,components", [((0,), 8), ((1,), 16), (tuple(range(10)), 32),
                                                 (bl.DIRECTION, 5), ((0,), 500)])
def test_pca_equals_scikit_learn(channels, components):
    rng = np.random.default_rng(2)
    train = (rng.random((60, SIZE, SIZE, 10)) < 0.03).astype(np.uint8)
    judge = (rng.random((25, SIZE, SIZE, 10)) < 0.03).astype(np.uint8)
    ours = bl.pca_scores(train, judge, channels, components)
    x = train[..., list(channels)].reshape(len(train), -1).astype(float)
    y = judge[..., list(channels)].reshape(len(judge), -1).astype(float)
    pca = PCA(n_components=min(components, len(train)), svd_solver="full").fit(x)
    ref = ((y - pca.inverse_transform(pca.transform(y))) ** 2).sum(axis=1)
    assert np.allclose(ours, ref, rtol=0, atol=1e-6)


def test_randomized_pca_matches_the_exact_one(sky, monkeypatch):
    train, judge, odd = sky
    flights = np.concatenate([judge, odd])
    exact = bl.pca_scores(train, flights, (0, 1), 12)
    monkeypatch.setattr(bl, "EXACT_MAX_ELEMENTS", 0)
    approx = bl.pca_scores(train, flights, (0, 1), 12)
    print(f"\nrandomized PCA: largest relative difference {np.abs(approx / exact - 1).max():.2e}")
    assert np.allclose(approx, exact, rtol=1e-5, atol=0)


def _jaccard_brute(train: np.ndarray, judge: np.ndarray, channel: int, k: int) -> np.ndarray:
    sets = [set(zip(*np.nonzero(t[..., channel]))) for t in train]
    out = []
    for j in judge:
        a = set(zip(*np.nonzero(j[..., channel])))
        d = sorted(1 - len(a & b) / len(a | b) if a | b else 0.0 for b in sets)
        out.append(sum(d[:k]) / k)
    return np.array(out)


def test_knn_jaccard_equals_a_brute_force_loop():
    rng = np.random.default_rng(3)
    train = (rng.random((30, SIZE, SIZE, 2)) < rng.uniform(0.005, 0.05, (30, 1, 1, 1)))
    judge = (rng.random((12, SIZE, SIZE, 2)) < 0.02)
    train, judge = train.astype(np.uint8), judge.astype(np.uint8)
    train[3] = 0                                     # an empty image on either side
    judge[5] = 0
    for channel, k in ((0, 3), (1, 1), (0, 30), (0, 99)):
        assert np.allclose(bl.knn_scores(train, judge, channel, k),
                           _jaccard_brute(train, judge, channel, min(k, 30)),
                           rtol=0, atol=1e-12)


def test_chunking_changes_nothing(sky, monkeypatch):
    train, judge, odd = sky
    flights = np.concatenate([judge, odd])
    whole = bl.knn_scores(train, flights, chunk=10_000)
    for chunk in (5, 64):
        assert np.array_equal(bl.knn_scores(train, flights, chunk=chunk), whole)
    assert np.allclose(bl.pixel_rarity(train, flights, bl.DIRECTION, chunk=3),
                       bl.pixel_rarity(train, flights, bl.DIRECTION), rtol=1e-12, atol=0)
    assert np.allclose(bl.pca_scores(train, flights, (0, 1), chunk=5),
                       bl.pca_scores(train, flights, (0, 1)), rtol=1e-9, atol=1e-12)
    monkeypatch.setattr(bl, "EXACT_MAX_ELEMENTS", 0)          # the chunked, randomized fit
    assert np.allclose(bl.pca_scores(train, flights, (0,), 8, chunk=9),
                       bl.pca_scores(train, flights, (0,), 8), rtol=1e-9, atol=1e-9)


def test_two_channel_images_have_no_direction_baselines(sky):
    train, judge, _ = sky
    old_train, old_judge = train[..., :2].copy(), judge[..., :2].copy()
    names = bl.available(2)
    assert names == ["pca_where", "pca_shape", "pca_all", "knn_where", "rarity_where"]
    assert bl.available(10) == list(bl.BASELINES)
    for name in names:
        assert bl.BASELINES[name](old_train, old_judge).shape == (len(judge),)
    with pytest.raises(ValueError, match="direction of travel"):
        bl.rarity_direction(old_train, old_judge)
    with pytest.raises(ValueError, match="direction of travel"):
        bl.pca_scores(old_train, old_judge, bl.DIRECTION)
    with pytest.raises(ValueError, match="drawn the same way"):
        bl.pixel_rarity(train, old_judge, (0,))
    with pytest.raises(ValueError, match="distinct"):
        bl.pca_scores(train, judge, (0, 0))
