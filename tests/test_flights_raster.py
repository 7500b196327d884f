"""The batch rasterizer on real-looking tracks: 1-pixel 8-connected lines through every
position, clipping at the frame edge, absurd coordinates, and the same images, features and
PNGs whether flights are drawn together or one at a time."""

from __future__ import annotations

import hashlib
import time
import tracemalloc

import numpy as np
import pytest
from scipy import ndimage

from conftest import PARIS_CSV, PARIS_LAT, PARIS_LON, PARIS_RANGE_KM, need
from helpers_flights import paris_tracks
from pipeline.evaluation import simulate
from pipeline.flights import features, ragged, raster
from pipeline.geo import to_local_km

RANGE_KM = PARIS_RANGE_KM
EIGHT = np.ones((3, 3), dtype=int)           # 8-connectivity for ndimage.label


def batch(tracks: list[tuple[np.ndarray, np.ndarray]]):
    """Tracks (x, y in km) laid out for rasterize_many: concatenated, with offsets."""
    offsets = ragged.offsets_of([t[0].size for t in tracks])
    return (np.concatenate([t[0] for t in tracks]), np.concatenate([t[1] for t in tracks]),
            offsets)


@pytest.fixture(scope="module")
def tracks() -> list[tuple[np.ndarray, np.ndarray]]:
    """Paris flights and simulated ones (transits, approaches, holdings, orbits, surveys,
    calibration passes, off-corridor transits), in local km."""
    paris = [to_local_km(t.lat, t.lon, PARIS_LAT, PARIS_LON)
             for t in paris_tracks(need(PARIS_CSV))[:120]]
    sim = [to_local_km(f.lat, f.lon, PARIS_LAT, PARIS_LON)
           for f in simulate.generate(30, 20, seed=3, range_km=RANGE_KM)]
    return paris + sim


@pytest.fixture(scope="module")
def drawn(tracks):
    images, sides = raster.rasterize_many(*batch(tracks), RANGE_KM)
    return images, sides


def containing_pixels(x, y, west, north, width):
    """(row, col) of the pixel containing each point of a frame, and whether it is inside."""
    col = np.floor((x - west) / width * raster.SIZE).astype(np.int64)
    row = np.floor((north - y) / width * raster.SIZE).astype(np.int64)
    return row, col, (col >= 0) & (col < raster.SIZE) & (row >= 0) & (row < raster.SIZE)


def test_every_position_is_on_a_lit_pixel_of_both_channels(tracks, drawn):
    images, sides = drawn
    for (x, y), img, side in zip(tracks, images, sides):
        assert set(np.unique(img)) <= {0, 1}
        frames = [(-RANGE_KM, RANGE_KM, 2 * RANGE_KM),
                  ((x.min() + x.max()) / 2 - side / 2, (y.min() + y.max()) / 2 + side / 2, side)]
        for ch, frame in enumerate(frames):
            row, col, inside = containing_pixels(x, y, *frame)
            if ch == 1:
                assert inside.all()                 # the flight's own frame holds all of it
            assert img[row[inside], col[inside], ch].all()


def test_lines_are_8_connected_and_one_pixel_wide(tracks, drawn):
    images, _ = drawn
    for (x, y), img in zip(tracks, images):
        _, n_shape = ndimage.label(img[:, :, 1], structure=EIGHT)
        assert n_shape == 1                         # the whole track, in one piece
        if np.abs(np.concatenate([x, y])).max() < RANGE_KM:
            assert ndimage.label(img[:, :, 0], structure=EIGHT)[1] == 1
    # A single segment lights one pixel per step along its longer axis, nothing more.
    rng = np.random.default_rng(1)
    km = 2 * RANGE_KM / raster.SIZE
    ends = rng.integers(0, raster.SIZE, size=(300, 2, 2))
    segs = [((e[:, 0] - 31.5 + 0.1) * km, (31.5 - e[:, 1] - 0.1) * km) for e in ends]
    images, _ = raster.rasterize_many(*batch(segs), RANGE_KM)
    for e, img in zip(ends, images):
        where = img[:, :, 0]
        (c0, r0), (c1, r1) = e
        assert where[r0, c0] and where[r1, c1]
        assert where.sum() == max(abs(c1 - c0), abs(r1 - r0)) + 1
        along = where.sum(axis=0) if abs(c1 - c0) >= abs(r1 - r0) else where.sum(axis=1)
        assert set(along[along > 0]) == {1}         # one pixel per column (or row)
        assert ndimage.label(where, structure=EIGHT)[1] == 1


def test_segments_are_clipped_at_the_frame_edge():
    far = 500.0                                      # well beyond +-121 km
    segs = [(np.array([-far, far]), np.array([0.0, 0.0])),      # west to east
            (np.array([5.0, 5.0]), np.array([far, -far])),      # north to south
            (np.array([-far, far]), np.array([-far, far])),     # corner to corner
            (np.array([0.0, far]), np.array([0.0, 0.0]))]       # centre to beyond the east
    images, _ = raster.rasterize_many(*batch(segs), RANGE_KM)
    where = images[:, :, :, 0]
    assert where[0].sum(axis=1).max() == 64 and where[0].sum() == 64   # one full row
    assert where[1].sum(axis=0).max() == 64 and where[1].sum() == 64   # one full column
    assert where[2].sum() == 64 and all(where[2][63 - c, c] for c in range(64))
    row = np.flatnonzero(where[3].sum(axis=1))
    assert len(row) == 1 and np.array_equal(np.flatnonzero(where[3][row[0]]), np.arange(32, 64))


def test_absurd_coordinates_finish_quickly_with_bounded_memory():
    rng = np.random.default_rng(2)
    segs = []
    for i in range(200):
        x = rng.choice([-1e9, 1e9], 40) * rng.uniform(0.5, 1, 40)
        y = rng.choice([-1e9, 1e9], 40) * rng.uniform(0.5, 1, 40)
        x[::7] = rng.uniform(-50, 50, x[::7].size)   # some sane positions among them
        if i % 10 == 0:
            x[3], y[5] = np.nan, np.inf
        segs.append((x, y))
    segs.append((np.array([-1e9, 1e9]), np.array([-1e9, 1e9])))
    tracemalloc.start()
    started = time.perf_counter()
    images, sides = raster.rasterize_many(*batch(segs), RANGE_KM)
    seconds = time.perf_counter() - started
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert seconds < 2.0 and peak < 64 * 2**20, (seconds, peak)
    assert set(np.unique(images)) <= {0, 1}
    # Drawn where they cross the frame, as a line through the centre.
    assert images[-1, :, :, 0].sum() == 64 and all(images[-1, 63 - c, c, 0] for c in range(64))


def test_a_single_position_lights_exactly_one_pixel():
    segs = [(np.array([10.0]), np.array([-20.0])), (np.array([500.0]), np.array([0.0]))]
    images, sides = raster.rasterize_many(*batch(segs), RANGE_KM)
    assert images[0, :, :, 0].sum() == 1 and images[0, :, :, 1].sum() == 1
    assert images[0, 37, 34, 0] == 1                # 10 km east, 20 km south of the receiver
    assert images[1, :, :, 0].sum() == 0            # outside the receiver frame: nothing
    assert images[1, :, :, 1].sum() == 1            # its own frame: the centre
    assert list(sides) == [raster.MIN_SHAPE_SIDE_KM] * 2


def test_batch_equals_one_flight_at_a_time(tracks, drawn):
    images, sides = drawn
    x, y, offsets = batch(tracks)
    for (tx, ty), img, side in zip(tracks, images, sides):
        one, one_side = raster.rasterize_xy(tx, ty, RANGE_KM)
        assert np.array_equal(one, img) and one_side == side
    many = features.compute_many(x, y, offsets)
    for i, (tx, ty) in enumerate(tracks):
        one = features.compute_xy(tx, ty)
        assert [getattr(one, name) for name in features.NAMES] == [
            many[name][i] for name in features.NAMES]
    pngs = raster.encode_pngs(images)
    assert pngs == [raster.encode_png(img) for img in images]
    assert np.array_equal(raster.decode_pngs(pngs), images)
    assert np.array_equal(raster.lit_fractions_many(images),
                          [raster.lit_fractions(img) for img in images])
    with pytest.raises(ValueError):
        raster.rasterize_many(x, y, np.array([0, 5, 5, x.size]), RANGE_KM)   # an empty track


def _line(heading_deg: float, length_km: float = 150.0, n: int = 600, offset_km: float = 0.0):
    """A straight track through the receiver (shifted sideways by offset_km), 1 point/0.25 km."""
    h = np.radians(heading_deg)
    s = np.linspace(-length_km / 2, length_km / 2, n)
    ux, uy = np.sin(h), np.cos(h)
    x = s * ux + offset_km * uy
    y = s * uy - offset_km * ux
    rng = np.random.default_rng(int(heading_deg * 10))
    return x + rng.normal(0, 0.01, n), y + rng.normal(0, 0.01, n)   # ~10 m position noise


@pytest.mark.parametrize("heading, sector", [(0, 0), (20, 0), (44, 1), (100, 2), (181, 4),
                                             (230, 5), (250, 6), (300, 7), (338, 0)])
def test_a_straight_track_lights_only_the_direction_channel_of_its_heading(heading, sector):
    img, _ = raster.rasterize_xy(*_line(heading), RANGE_KM)
    lit = img[:, :, raster.DIRECTION].sum(axis=(0, 1))
    assert lit[sector] == img[:, :, raster.WHERE].sum() > 40
    assert lit.sum() == lit[sector]                       # no pixel in any other sector


def test_direction_channels_together_are_the_where_channel_and_tell_opposite_ways_apart(drawn):
    images, _ = drawn
    moving = images[:, :, :, raster.WHERE].sum(axis=(1, 2)) > 1
    union = images[:, :, :, raster.DIRECTION].max(axis=-1)
    assert np.array_equal(union[moving], images[moving][:, :, :, raster.WHERE])
    # The same pixels flown the other way: same where channel, disjoint direction channels.
    x, y = _line(75.0)
    there, _ = raster.rasterize_xy(x, y, RANGE_KM)
    back, _ = raster.rasterize_xy(x[::-1], y[::-1], RANGE_KM)
    assert np.array_equal(there[:, :, raster.WHERE], back[:, :, raster.WHERE])
    assert not (there[:, :, raster.DIRECTION] & back[:, :, raster.DIRECTION]).any()
    # An orbit turns through every heading.
    t = np.linspace(0, 2 * np.pi, 2000)
    orbit, _ = raster.rasterize_xy(30 * np.sin(t), 30 * np.cos(t), RANGE_KM)
    assert (orbit[:, :, raster.DIRECTION].sum(axis=(0, 1)) > 0).all()


def test_stored_images_keep_every_channel_and_old_two_channel_images_still_decode(drawn):
    images, _ = drawn
    pngs = raster.encode_pngs(images[:10])
    import io

    from PIL import Image
    assert Image.open(io.BytesIO(pngs[0])).size == (raster.SIZE * raster.NCH, raster.SIZE)
    assert np.array_equal(raster.decode_pngs(pngs), images[:10])
    old = raster.encode_pngs(images[:10, :, :, :2])             # format 1: where | shape
    assert np.array_equal(raster.decode_pngs(old), images[:10, :, :, :2])
    assert raster.decode_png(old[0]).shape == (64, 64, 2)
    with pytest.raises(ValueError, match="channels"):
        raster.decode_pngs([pngs[0], old[0]])                    # formats never mixed


def _awkward_tracks() -> list[tuple[np.ndarray, np.ndarray]]:
    """1,200 tracks in km that probe every path of the drawing: wandering and straight flights
    in and out of the frame, jumps across it, absurd and non-finite coordinates, positions
    repeated or on half-pixel ties, hovering, one-position flights. Built from uniform draws
    (NumPy's most stable random stream) and the four operations, which round the same way on
    every CPU: no power, logarithm or trigonometry, whose last bits depend on the CPU's vector
    instructions (large magnitudes are powers of two, ``np.ldexp``)."""
    rng = np.random.default_rng(2024)
    km = 2 * RANGE_KM / raster.SIZE                          # one receiver-frame pixel
    out = []
    for i in range(1200):
        r = rng.random()
        n = 1 + int(r * r * r * 600)                         # many short flights, a few long
        u = rng.random((2, n))
        kind = i % 8
        if kind == 0:                                        # wandering, 0.05-2 km a step
            xy = (rng.random((2, 1)) - 0.5) * 3 * RANGE_KM + np.cumsum(
                (u - 0.5) * 4 * rng.random(), axis=1)
        elif kind == 1:                                      # jumps across +-3 ranges
            xy = (u - 0.5) * 6 * RANGE_KM
        elif kind == 2:                                      # absurd: up to 1e300 km
            xy = np.sign(u - 0.5) * np.ldexp(1.0 + u, (rng.random((2, n)) * 997).astype(int))
        elif kind == 3:                                      # each position 1-6 times
            xy = np.repeat((u - 0.5) * 2 * RANGE_KM, 1 + (rng.random(n) * 6).astype(int),
                           axis=1)[:, :n]
        elif kind == 4:                                      # on pixel centres and edges
            xy = (np.floor(u * 160) / 2 - 40) * km
        elif kind == 5:                                      # hovering: the 5 km minimum
            xy = (rng.random((2, 1)) - 0.5) * 200 + (u - 0.5)
        elif kind == 6:                                      # straight, up to 1e10 km long
            start, end = (rng.random((2, 2)) - 0.5) * np.ldexp(1.0, 3 + (rng.random((2, 1)) * 31).astype(int))
            xy = start[:, None] + (end - start)[:, None] * np.linspace(0, 1, n)
        else:                                                # sane, with far jumps
            xy = (rng.random((2, 1)) - 0.5) * 200 + np.cumsum(u - 0.5, axis=1)
            xy[:, ::17] *= np.ldexp(1.0, int(rng.random() * 40))
        x, y = xy.copy()
        if i % 13 == 0:                                      # NaN and infinities
            x[(u[0] * n).astype(int)[:3]] = [np.nan, np.inf, -np.inf][:min(3, n)]
        if i % 97 == 0:
            y[:] = np.nan
        out.append((x, y))
    return out


# The images of _awkward_tracks() as format 2 draws them (sha256 of images and sides). The tracks
# and the drawing use only the four operations, so the digest is the same on every CPU (the same
# with NumPy held to x86-64-v2, NPY_DISABLE_CPU_FEATURES=X86_V3); the pin made with arctan2
# sectors did not hold on a machine without AVX-512.
PINNED_LIT = 2_305_140
PINNED_DIGEST = "d0fbc90a9d572c3a4efa33b759e9b1f7070f2cca48e36f29dd198eabe5d79375"


def test_the_pixels_of_format_2_never_change():
    """The models are trained on format-2 images and score new flights against them: a faster
    drawing must light exactly the same pixels, for awkward tracks too. A deliberate change of
    the drawing needs a new FORMAT (and redrawn images), and a new digest here."""
    images, sides = raster.rasterize_many(*batch(_awkward_tracks()), RANGE_KM)
    assert images.sum() == PINNED_LIT
    assert hashlib.sha256(images.tobytes() + sides.tobytes()).hexdigest() == PINNED_DIGEST
