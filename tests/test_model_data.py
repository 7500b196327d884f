"""Training batches: gathered per step from the window held as bits, each flight once an epoch,
equal to its image, never a reused buffer; validation unshuffled and complete.

Images are real: the Paris day's flights through the project's rasterizer."""

from __future__ import annotations

import datetime as dt
import time

import numpy as np
import pytest

import helpers_flights as hf
from conftest import PARIS_CSV, PARIS_LAT, PARIS_LON, PARIS_RANGE_KM, need
from pipeline.flights import raster
from pipeline.model import data, train

SEED = 5


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    tracks = hf.paris_tracks(need(PARIS_CSV))
    out = np.stack([raster.rasterize(t.lat, t.lon, PARIS_LAT, PARIS_LON, PARIS_RANGE_KM)[0]
                    for t in tracks])
    assert out.shape[1:] == (64, 64, raster.NCH) and len(out) > 200
    return out


@pytest.fixture(scope="module")
def window(images) -> data.Window:
    """A window built as data.load_window builds it, from the stored PNGs (ids out of order:
    the window sorts them)."""
    end = dt.datetime(2021, 10, 8)
    pngs = raster.encode_pngs(images)
    rows = [(i + 1, f"{i:06x}", pngs[i], False, 1.0, end - dt.timedelta(minutes=i), "")
            for i in range(len(images))][::-1]
    return data.window_from_rows(end - dt.timedelta(days=1), end, rows)


def _rows(n: int) -> np.ndarray:
    """Flights of a training set as cross_fit makes them: every flight but one fold's."""
    return np.flatnonzero(np.arange(n) % 3 != 1)


def _epoch(ds) -> list[np.ndarray]:
    out = []
    for x, y in ds:
        assert x is y or np.array_equal(x.numpy(), y.numpy())        # an autoencoder's target
        assert x.dtype.name == "float32"
        out.append(x.numpy())
    return out


def test_window_holds_bits_and_reads_like_the_array(images, window):
    packed = window.images
    assert isinstance(packed, data.PackedImages)
    assert packed.shape == images.shape and len(packed) == len(images)
    assert packed.nbytes * 8 == images.size                       # 1 bit a pixel, not 8
    assert np.array_equal(packed[:], images)
    assert np.array_equal(packed[7], images[7])
    assert np.array_equal(packed[10:20], images[10:20])
    mask = np.arange(len(images)) % 4 == 0
    assert np.array_equal(packed[mask], images[mask])
    idx = np.array([5, 0, 5, len(images) - 1])
    assert np.array_equal(packed[idx], images[idx])
    assert np.array_equal(np.asarray(packed), images)
    assert np.array_equal(data.lit_pixels(packed), images.reshape(len(images), -1).sum(axis=1))
    # Views of views are views of the window, and read the same flights.
    sub = data.Subset(data.Subset(packed, mask), np.array([2, 0, 1]))
    assert sub.source is packed and sub.shape == (3, 64, 64, raster.NCH)
    assert np.array_equal(sub[:], images[mask][[2, 0, 1]])
    assert np.array_equal(data.lit_pixels(sub), data.lit_pixels(images[mask][[2, 0, 1]]))


def test_one_epoch_holds_every_training_flight_once_equal_to_its_image(images, window):
    train.configure_determinism(SEED)
    rows = _rows(len(images))
    source = data.Subset(window.images, rows)
    ds = data.dataset(source, 64, shuffle_seed=SEED, augment=False)
    batches = _epoch(ds)
    # The order the batches were gathered in: the same seeded shuffle of the indices.
    order = np.concatenate([b.numpy() for b in data.index_batches(len(rows), 64, SEED)])
    assert sorted(order.tolist()) == list(range(len(rows)))          # each flight exactly once
    assert order.tolist() != list(range(len(rows)))                  # ... shuffled
    assert [len(b) for b in batches] == [64] * (len(rows) // 64) + (
        [len(rows) % 64] if len(rows) % 64 else [])
    got = np.concatenate(batches)
    np.testing.assert_array_equal(got, images[rows][order].astype(np.float32))
    # Independently of the index bookkeeping: the epoch is the training images, as a multiset.
    assert sorted(x.tobytes() for x in got.astype(np.uint8)) == \
        sorted(x.tobytes() for x in images[rows])
    # The next epoch is shuffled anew, and again holds each flight once.
    again = np.concatenate(_epoch(ds))
    assert not np.array_equal(again, got)
    assert sorted(x.tobytes() for x in again.astype(np.uint8)) == \
        sorted(x.tobytes() for x in images[rows])


def test_batches_are_new_arrays_never_overwritten_by_the_next(images, window):
    train.configure_determinism(SEED)
    rows = _rows(len(images))
    it = iter(data.dataset(data.Subset(window.images, rows), 32, shuffle_seed=SEED))
    first = next(it)[0]
    kept = first.numpy().copy()
    second = next(it)[0]
    assert first is not second
    assert not np.shares_memory(first.numpy(), second.numpy())
    assert not np.array_equal(first.numpy(), second.numpy())
    for _ in it:                       # the rest of the epoch, prefetch buffers included
        pass
    np.testing.assert_array_equal(first.numpy(), kept)
    # The gather itself: a new array per call, whatever the source.
    idx = np.array([3, 1, 2])
    for source in (window.images, data.Subset(window.images, rows), images):
        a, b = source[idx], source[idx]
        assert a is not b and not np.shares_memory(a, b)


def test_validation_dataset_is_unshuffled_and_complete(images, window):
    rows = np.flatnonzero(np.arange(len(images)) % 3 == 1)
    ds = data.dataset(data.Subset(window.images, rows), 16, shuffle_seed=None)
    for _ in range(2):                  # every epoch the same, in the window's order
        got = np.concatenate(_epoch(ds))
        np.testing.assert_array_equal(got, images[rows].astype(np.float32))


def test_augmented_batches_are_the_same_flights_changed_in_place(images, window):
    """Augmentation follows the gather: batch for batch the same flights as without it, each
    one changed (the shape channel only turned or mirrored: its lit pixels are the same)."""
    rows = _rows(len(images))
    source = data.Subset(window.images, rows)
    train.configure_determinism(SEED)
    plain = _epoch(data.dataset(source, 64, shuffle_seed=SEED))
    train.configure_determinism(SEED)
    augmented = _epoch(data.dataset(source, 64, shuffle_seed=SEED, augment=True))
    assert [a.shape for a in augmented] == [p.shape for p in plain]
    a, p = np.concatenate(augmented), np.concatenate(plain)
    shape = raster.SHAPE
    np.testing.assert_array_equal(a[..., shape].sum(axis=(1, 2)), p[..., shape].sum(axis=(1, 2)))
    assert not np.array_equal(a, p)


def test_each_augmented_image_is_its_flight_moved_a_pixel_and_its_shape_turned(images):
    """Per image, its own draws: the fixed frame moved by at most one pixel each way (zeros
    moved in), the shape channel one of the 8 turns and mirror images of its own; the same
    seed gives the same images, and the draws cover every move and turn."""
    x = images[:64]
    a = data.augmented(x, np.random.default_rng(5))
    np.testing.assert_array_equal(a, data.augmented(x, np.random.default_rng(5)))
    assert a.dtype == np.uint8 and a.shape == x.shape
    fixed = np.arange(x.shape[-1]) != raster.SHAPE
    moves, turns = set(), set()
    for i in range(len(x)):
        padded = np.pad(x[i][..., fixed], ((1, 1), (1, 1), (0, 0)))
        found = [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1)
                 if np.array_equal(a[i][..., fixed], padded[1 + dy:65 + dy, 1 + dx:65 + dx])]
        own = x[i][..., raster.SHAPE]
        dihedral = [np.rot90(own, k)[:, ::-1] if m else np.rot90(own, k)
                    for m in (False, True) for k in range(4)]
        turned = [j for j, d in enumerate(dihedral) if np.array_equal(a[i][..., raster.SHAPE], d)]
        assert found and turned, i
        moves.add(found[0])
        turns.add(turned[0])
    assert len(moves) == 9 and len(turns) >= 6, (moves, turns)


def test_cross_fit_on_the_bits_equals_cross_fit_on_the_array(images, window):
    """The window held as bits and folds as index views change nothing: same seed, same
    out-of-fold errors to the last bit."""
    kw = dict(seed=2, start=time.monotonic(), budget=600, arch=hf.tiny_arch(), max_epochs=2)
    on_array = train.cross_fit(images, 2, **kw)
    on_bits = train.cross_fit(data.Subset(window.images, np.arange(len(images))), 2, **kw)
    np.testing.assert_array_equal(on_bits.fold, on_array.fold)
    np.testing.assert_array_equal(on_bits.oof_errors, on_array.oof_errors)
    np.testing.assert_array_equal(on_bits.lit_counts, on_array.lit_counts)
