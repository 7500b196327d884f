"""The training budget and ADSB_TRAIN_PROFILE: a run whose every fold is stopped by the budget
still ends in a promoted model that loads and scores; the small profile caps folds and window."""

from __future__ import annotations

import math

import numpy as np
import pytest
import sqlalchemy as sa

import helpers_flights as hf
from pipeline.model import registry, score, train

pytestmark = pytest.mark.slow


def test_a_run_cut_short_by_the_budget_ends_in_a_promoted_model_that_scores(
        databases, tmp_path, caplog, monkeypatch):
    # 86 flights, 2 folds of ~43 at batch 16: 3 batches an epoch. Early stopping is kept out of
    # the way (patience of thousands of epochs), so only the budget can stop a fold: 5 s shared
    # by both, tracing included, are spent before a fold's MIN_STEPS, so each fold runs its
    # MIN_STEPS batches and stops there. Cut after one epoch instead (MIN_STEPS 0), a run of
    # this kind learnt no line and its model was rejected (where recall 0.000).
    url, tracks = hf.sim_database(databases, n_normal=80, n_anomalies=6)
    monkeypatch.setattr(train, "PATIENCE_STEPS", 100_000)
    monkeypatch.setattr(train, "MIN_STEPS", 120)      # a fast test; the default is 300
    settings = hf.model_settings(url, tmp_path / "data", train_budget_s=5, train_seed=3,
                                 train_folds=2, train_profile="full")
    engine = sa.create_engine(url)
    caplog.set_level("WARNING", logger="pipeline.model.train")
    try:
        result = train.run_training(settings, verbose=False, engine=engine)
        cut = [r.getMessage() for r in caplog.records if "training budget reached" in r.getMessage()]
        fits = result.params["fits"]
        steps = -(-result.n_train // 2 // result.params["batch"])
        print(f"\nbudget 5 s: folds stopped after {[f['epochs'] for f in fits]} epochs of {steps} "
              f"batches (best {[f['best_epoch'] for f in fits]}), {result.seconds:.1f} s in all; "
              f"{result.status}: {result.reason}; recall where/shape "
              f"{result.recall[0]:.2f}/{result.recall[1]:.2f}")
        assert len(cut) == len(fits) == 2, (cut, fits)
        assert all(f["epochs"] * steps >= train.MIN_STEPS for f in fits), fits
        assert all(f["epochs"] < train.MAX_EPOCHS for f in fits), fits
        assert result.status == "active", result.reason
        assert math.isfinite(result.threshold)

        with engine.connect() as conn:
            active = registry.active(conn, "default")
        assert active.id == result.model_id
        assert score.score_pending(engine, settings) == len(tracks)
        with engine.connect() as conn:
            scores = np.array(conn.execute(sa.text(
                "SELECT score FROM flights ORDER BY id")).scalars().all(), float)
            flagged = conn.execute(sa.text("SELECT count(*) FROM flagged_flights")).scalar()
        assert np.isfinite(scores).all() and len(scores) == len(tracks)
        assert 0 < flagged < len(tracks) // 2
    finally:
        engine.dispose()


@pytest.mark.parametrize("setting, host, folds, max_flights", [
    ("auto", (4, 3.7), train.SMALL_FOLDS, train.SMALL_MAX_FLIGHTS),    # a 4 GB Raspberry Pi
    ("auto", (4, 7.6), 3, 20000),                                       # an 8 GB one
    ("auto", (2, 23.4), 3, 20000),                                      # this project's CI host
    ("full", (4, 3.7), 3, 20000),
    ("small", (16, 64.0), train.SMALL_FOLDS, train.SMALL_MAX_FLIGHTS),
])
def test_profile_chooses_folds_and_window_from_the_host(setting, host, folds, max_flights):
    from pipeline import config

    settings = config.load({}, {"train_profile": setting})
    chosen = train.with_profile(settings, host)
    assert (chosen.train_folds, chosen.train_max_flights) == (folds, max_flights)


def test_small_profile_never_raises_what_is_set():
    from pipeline import config

    settings = config.load({}, {"train_profile": "small", "train_folds": 2,
                                "train_max_flights": 500})
    chosen = train.with_profile(settings, (1, 1.0))
    assert (chosen.train_folds, chosen.train_max_flights) == (2, 500)


def test_small_profile_trains_two_folds_on_a_capped_window(databases, tmp_path, monkeypatch):
    url, _ = hf.sim_database(databases, n_normal=60, n_anomalies=0)
    monkeypatch.setattr(train, "SMALL_MAX_FLIGHTS", 40)
    settings = hf.model_settings(url, tmp_path / "data", train_profile="small", train_seed=1)
    engine = sa.create_engine(url)
    try:
        result = train.run_training(settings, verbose=False, engine=engine, arch=hf.tiny_arch(),
                                    max_epochs=2)
    finally:
        engine.dispose()
    assert result.params["folds"] == 2 and result.params["profile"] == "small"
    assert result.n_train + result.n_excluded == 40          # the window: the newest 40
