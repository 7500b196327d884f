"""The route groups' traffic counts (pipeline/model/counts.py): a flight is judged on how few
window flights crossed its pixels nearby, the same way, and a window flight never on itself."""

import json

import numpy as np
import pytest
import sqlalchemy as sa
from alembic import command

from pipeline.db import migrate
from pipeline.model import counts, errors

EAST, WEST = 2 + 2, 2 + 6                 # heading sectors 2 (east) and 6 (west)


def _flight(row: int, cols: range, sector: int = EAST) -> np.ndarray:
    img = np.zeros((64, 64, 10), np.uint8)
    for c in (0, sector):
        img[row, cols, c] = 1
    img[32, 10:40, 1] = 1                  # shape: a line, irrelevant to the counts
    return img


def _corridor(n: int = 200) -> np.ndarray:
    """n flights eastbound along row 32, wandering a pixel either side."""
    return np.stack([_flight(32 + (i % 3) - 1, range(5, 60)) for i in range(n)])


def test_nobody_nearby_scores_high_and_a_pixel_of_leeway_does_not():
    c = counts.Counts.of(_corridor())
    on, beside, off = _flight(32, range(10, 50)), _flight(34, range(10, 50)), \
        _flight(10, range(10, 50))
    wrong_way = _flight(32, range(10, 50), WEST)
    e = c.errors(np.stack([on, beside, off, wrong_way]))
    where, direction = e[:, 0], e[:, 1]
    # Two rows off the corridor's middle is one pixel beyond its edge: within the leeway, far
    # nearer the flights on the corridor than the one where nobody flies.
    assert where[0] < where[1] and where[1] - where[0] < 0.25 * (where[2] - where[0])
    assert direction[1] - direction[0] < 0.25 * (direction[2] - direction[0])
    # Nobody ever crossed row 10: the surprise of a pixel nobody crossed, log(9 N + 1).
    assert where[2] == pytest.approx(np.log(9 * 200 + 1))
    # Against the traffic: usual in where, as rare as it gets in direction.
    assert where[3] == pytest.approx(where[0])
    assert direction[3] == pytest.approx(np.log(9 * 200 + 1))
    # A flight with no lit pixel scores 0, not NaN.
    assert c.errors(np.zeros((1, 64, 64, 10), np.uint8)).tolist() == [[0.0, 0.0]]


def test_a_long_flight_is_not_odd_for_being_long():
    c = counts.Counts.of(_corridor())
    short, long_ = _flight(32, range(20, 30)), _flight(32, range(5, 60))
    e = c.errors(np.stack([short, long_]))
    np.testing.assert_allclose(e[0], e[1], rtol=0.05)


def test_out_of_fold_a_window_flight_is_judged_on_the_other_folds_traffic():
    window = np.concatenate([_corridor(60), _flight(10, range(10, 50))[None]])
    fold = (np.arange(len(window)) // 3) % 3      # every fold holds all three rows
    rows = np.arange(len(window))
    total, oof = counts.out_of_fold(window, rows, fold)
    assert total == counts.Counts.of(window) and total.flights == 61
    # The one flight on row 10 is alone on its route: out of fold nobody else flew it.
    lone = oof[-1]
    others = int((fold != fold[-1]).sum())
    assert lone[0] == pytest.approx(np.log(9 * others + 1))
    # ... and a corridor flight is as usual out of fold as a new one on the corridor.
    new = total.errors(_flight(32, range(5, 60))[None])[0]
    np.testing.assert_allclose(oof[1], new, rtol=0.05)              # flight 1 flies row 32
    # Rows of a larger array, read a chunk at a time, give the same as the array itself.
    pad = np.concatenate([np.zeros((5, 64, 64, 10), np.uint8), window])
    total2, oof2 = counts.out_of_fold(pad, rows + 5, fold)
    assert total2 == total
    np.testing.assert_array_equal(oof2, oof)


def test_counts_travel_with_the_model_and_score_routes():
    window = _corridor()
    c = counts.Counts.of(window)
    doc = json.loads(json.dumps(c.to_json()))
    assert counts.Counts.from_json(doc) == c
    assert len(json.dumps(doc)) < 20_000           # a corridor compresses to little
    rng = np.random.default_rng(0)
    terms = np.abs(rng.normal(1, 0.2, (len(window), 10, 3))) + 1
    groups = errors.group_errors(terms, "counts", c.errors(window))
    norm = errors.Normaliser.fit(groups, None, 1.3, "counts", c)
    again = errors.Normaliser.from_json(json.loads(json.dumps(norm.to_json())))
    assert again == norm and again.measure == "counts" and again.counts == c
    off = _flight(10, range(10, 50))[None]
    g = again.groups(terms[:1], off)
    np.testing.assert_array_equal(g[0, [0, 2]], c.errors(off)[0])
    assert g[0, 1] == errors.group_losses(terms[:1])[0, 1]        # shape keeps its loss
    with pytest.raises(ValueError, match="needs the images"):
        again.groups(terms[:1])
    with pytest.raises(ValueError, match="needs the window's counts"):
        errors.Normaliser.fit(groups, None, 1.3, "counts")


def test_the_flagged_pixel_of_a_route_group_is_where_nobody_flies():
    c = counts.Counts.of(_corridor())
    img = _flight(32, range(5, 40))
    img[20, 45, [0, EAST]] = 1                        # one pixel where nobody flies
    probs = np.full((1, 64, 64, 10), 0.01)
    for top in (0, 2):
        pix = errors.error_pixels(img[None], probs, np.array([top]), measure="counts", counts=c)
        assert pix[0].tolist() == [20, 45]
    # A flag carried by shape keeps the network's largest error.
    shape = errors.error_pixels(img[None], probs, np.array([1]), measure="counts", counts=c)
    np.testing.assert_array_equal(shape, errors.error_pixels(img[None], probs, np.array([1])))


def _comment(engine, column: str) -> str | None:
    with engine.connect() as conn:
        return conn.execute(sa.text(
            "SELECT col_description('flight_scores'::regclass, attnum) FROM pg_attribute "
            "WHERE attrelid = 'flight_scores'::regclass AND attname = :c"), {"c": column}
        ).scalar_one()


def test_sql_users_read_what_the_route_scores_and_the_flag_pixel_mean(engine):
    assert "training window" in _comment(engine, "where_score")
    assert "the same way" in _comment(engine, "direction_score")
    assert "reconstruction error" in _comment(engine, "shape_score")
    assert "fewest flights" in _comment(engine, "error_row")
    # The migration goes back to what the columns said before, and forward again.
    cfg = migrate.alembic_config()
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.downgrade(cfg, "0009")
    assert _comment(engine, "where_score") is None
    assert "largest reconstruction error" in _comment(engine, "error_row")
    migrate.upgrade(engine)
    assert migrate.current(engine) == "0010" and "fewest flights" in _comment(engine, "error_row")


def test_direction_and_shape_raise_flags_once_the_window_spans_routes():
    from pipeline.model.train import scored_groups

    names = errors.groups(10)
    assert scored_groups(names, routes=False) == (False, True, False)
    # Where is measured and stored, but a place nobody flies is also crossed a way nobody flies.
    assert scored_groups(names, routes=True) == (False, True, True)
    assert scored_groups(errors.groups(2), routes=True) is None       # format 1: where, shape
