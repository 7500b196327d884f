"""Scorer: flags = score > threshold, history, reconstructions, rescoring, failures, exclusions."""

from __future__ import annotations

import dataclasses
import io
import threading

import numpy as np
import pytest
import sqlalchemy as sa
from PIL import Image

import helpers_flights as hf
from pipeline.flights.raster import decode_pngs
from pipeline.model import errors, registry, score

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def trained(sim_trained):
    """The simulated site with its active model (one training shared by the suite, conftest);
    each test works on a copy."""
    assert sim_trained.result.status == "active", sim_trained.result.reason
    return sim_trained.url, sim_trained.settings.data_dir, sim_trained.result


@pytest.fixture
def copy(databases, trained):
    url = hf.copy_database(databases, trained[0])
    engine = sa.create_engine(url)
    yield engine, hf.model_settings(url, trained[1]), trained[2]
    engine.dispose()


def _q(engine, sql, **kw):
    with engine.connect() as conn:
        return conn.execute(sa.text(sql), kw).all()


def test_scores_every_flight_once_and_flags_are_score_above_threshold(copy):
    engine, settings, result = copy
    assert score.score_pending(engine, settings) == 105
    assert score.score_pending(engine, settings) == 0
    rows = _q(engine, "SELECT score, threshold, flagged, model_id FROM flights")
    assert all(r.flagged == (r.score > r.threshold) and r.model_id == result.model_id for r in rows)
    assert _q(engine, "SELECT count(*) FROM flights WHERE flagged <> (score > threshold)")[0][0] == 0
    hist = _q(engine, "SELECT flagged, score, where_score, shape_score, direction_score, channel, "
                      "error_row, error_col, reconstruction FROM flight_scores")
    assert len(hist) == 105
    scored = result.params["scored_groups"]
    assert scored == ["shape"]             # a 3-hour window: the fixed frame does not flag yet
    # The model keeps how it measures and reads its groups; its scores are rarities, and its
    # threshold is at least the score of the median unseen flight.
    norm = errors.Normaliser.from_json(result.params["normaliser"])
    assert norm.measure == "counts" and norm.tails is not None and len(norm.tails) == 3
    assert result.threshold >= norm.median_score() > 0
    # Where and direction are the rarities of the window's traffic counts the model carries:
    # recomputed from each flight's stored image, they are the stored scores.
    assert norm.counts is not None and norm.counts.lit.shape == (64, 64, 9)
    assert norm.counts.flights == result.n_train             # the flights it was fitted on
    imgs = _q(engine, "SELECT s.where_score, s.direction_score, f.image FROM flight_scores s "
                      "JOIN flights f ON f.id = s.flight_id ORDER BY f.id")
    routes = norm.counts.errors(decode_pngs([bytes(r.image) for r in imgs]))
    spreads = (routes - np.array(norm.median)[[0, 2]]) / np.array(norm.scale)[[0, 2]]
    assert norm.tails[0].rarity(spreads[:, 0]) == pytest.approx([r.where_score for r in imgs])
    assert norm.tails[2].rarity(spreads[:, 1]) == pytest.approx([r.direction_score for r in imgs])
    for h in hist:
        groups = {"where": h.where_score, "shape": h.shape_score, "direction": h.direction_score}
        assert h.score == pytest.approx(max(groups[g] for g in scored))
        # The channel named is the one that carried the score.
        assert h.channel in scored and groups[h.channel] == pytest.approx(h.score)
        assert (h.reconstruction is not None) == h.flagged
        assert (h.error_row is not None and 0 <= h.error_row < 64 and 0 <= h.error_col < 64) \
            == h.flagged
    png = next(h.reconstruction for h in hist if h.flagged)
    img = Image.open(io.BytesIO(bytes(png)))
    assert img.mode == "L" and img.size == (64 * 10, 64)


def test_a_model_scores_only_images_of_its_own_format(copy):
    engine, settings, _ = copy
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE flights SET image_format = 1 WHERE id IN "
                             "(SELECT id FROM flights ORDER BY id LIMIT 5)"))
    assert score.score_pending(engine, settings) == 100
    assert _q(engine, "SELECT count(*) FROM flights WHERE image_format = 1 AND score IS NOT NULL"
              )[0][0] == 0


def test_flight_excluded_from_training_is_still_scored_and_flagged(copy):
    engine, settings, result = copy
    score.score_pending(engine, settings)
    excluded = _q(engine, "SELECT excluded FROM models WHERE id = :i", i=result.model_id)[0][0]
    screened = excluded["screened"]["flights"]
    rows = _q(engine, "SELECT id, flagged FROM flights WHERE id = ANY(:ids)", ids=screened)
    assert len(rows) == len(screened) and all(r.flagged is not None for r in rows)
    assert any(r.flagged for r in rows)


def test_no_active_model_scores_nothing(copy, caplog):
    engine, settings, _ = copy
    caplog.set_level("INFO", logger="pipeline.model.score")
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE models SET status = 'retired'"))
    assert score.score_pending(engine, settings) == 0
    assert "no active model" in caplog.text


def test_corrupt_model_file_is_recorded_and_scoring_waits(copy, caplog, tmp_path):
    engine, settings, result = copy
    bad = tmp_path / "broken.keras"
    bad.write_bytes(b"not a model")
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE models SET path = :p, sha256 = NULL"), {"p": str(bad)})
    score._cache.clear()
    assert score.score_pending(engine, settings) == 0
    status, reason = _q(engine, "SELECT status, reason FROM models WHERE id = :i",
                        i=result.model_id)[0]
    assert status == "failed" and "cannot load" in reason


def test_new_active_model_rescores_recent_flights_only(copy):
    engine, settings, result = copy
    score.score_pending(engine, settings)
    # A second model becomes active (same file: what matters is which flights are re-scored).
    with engine.begin() as conn:
        hf.activate_copy_of_model(conn)
        clock_recent = conn.execute(sa.text(
            "SELECT count(*) FROM flights WHERE last_seen >= (SELECT max(time) FROM positions) "
            "- interval '1 hour'")).scalar_one()
    n = score.score_pending(engine, settings.replace(rescore_days=1 / 24))
    assert 0 < n == clock_recent < 105


def test_two_workers_never_score_a_flight_twice(copy):
    engine, settings, _ = copy
    counts = []
    workers = [threading.Thread(target=lambda: counts.append(
        score.score_pending(engine, settings, batch=8))) for _ in range(2)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    assert sum(counts) == 105
    assert _q(engine, "SELECT count(*) FROM flight_scores")[0][0] == 105


def test_a_claim_scored_a_few_flights_a_pass_gets_what_one_pass_gives(copy, monkeypatch):
    """A claim (score.BATCH flights a transaction) goes through the network score.PASS flights
    at a time, and its flagged flights' pictures score.PICTURES at a time: the pieces must be
    put back in the flights' order, each flight with its own score, pixel and reconstruction."""
    engine, settings, _ = copy
    with engine.connect() as conn:
        row = registry.active(conn, settings.site_id)
        blobs = conn.execute(sa.text("SELECT image FROM flights WHERE image IS NOT NULL "
                                     "ORDER BY id")).scalars().all()
    s = score.scorer_for(row)
    images = decode_pngs([bytes(b) for b in blobs], s.channels)
    whole = score.compute(s, images)
    # A threshold that flags a third of the flights, so that flagged ones fall in every pass.
    s = dataclasses.replace(s, model=dataclasses.replace(
        row, threshold=float(np.quantile(whole.scores, 2 / 3))))
    whole = score.compute(s, images)
    monkeypatch.setattr(score, "PASS", 7)
    monkeypatch.setattr(score, "PICTURES", 5)
    pieces = score.compute(s, images)
    assert 30 < int(whole.flags.sum()) < 40 and len(images) > 3 * 7
    np.testing.assert_allclose(pieces.scores, whole.scores, rtol=1e-5, atol=1e-6)
    assert (pieces.flags == whole.flags).all() and pieces.top == whole.top
    assert pieces.error_row == whole.error_row and pieces.error_col == whole.error_col
    assert [r is None for r in pieces.reconstructions] == [r is None for r in whole.reconstructions]
    got = [np.asarray(Image.open(io.BytesIO(r)), int) for r in pieces.reconstructions if r]
    want = [np.asarray(Image.open(io.BytesIO(r)), int) for r in whole.reconstructions if r]
    assert all(np.abs(g - w).max() <= 1 for g, w in zip(got, want))
