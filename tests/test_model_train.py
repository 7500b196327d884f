"""Trainer: refusal, determinism, shared encoder/decoder, registry and promotion rules."""

from __future__ import annotations

import math

import numpy as np
import pytest
import sqlalchemy as sa

import helpers_flights as hf
from pipeline.model import autoencoder, errors, registry, train

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def sim_url(databases):
    url, _ = hf.sim_database(databases, n_normal=100, n_anomalies=5)
    return url


def _train(url, tmp_path, **kw):
    settings = hf.model_settings(url, tmp_path / "data")
    engine = sa.create_engine(url)
    try:
        return train.run_training(settings, seed=kw.pop("seed", 9), verbose=False, engine=engine,
                                  arch=kw.pop("arch", None), max_epochs=kw.pop("max_epochs", 60), **kw)
    finally:
        engine.dispose()


def test_refuses_below_the_minimum_with_a_clear_message(databases, tmp_path):
    url, _ = hf.sim_database(databases, n_normal=8, n_anomalies=0)
    settings = hf.model_settings(url, tmp_path, train_min_flights=20)
    with pytest.raises(train.TrainingRefused, match=r"only 8 finished flights.*at least 20"):
        train.run_training(settings, seed=1, verbose=False)


def test_same_seed_same_validation_loss(databases, sim_url, tmp_path):
    a = _train(hf.copy_database(databases, sim_url), tmp_path / "a", plain=True,
               arch=hf.tiny_arch(), max_epochs=3)
    b = _train(hf.copy_database(databases, sim_url), tmp_path / "b", plain=True,
               arch=hf.tiny_arch(), max_epochs=3)
    assert math.isfinite(a.val_loss)
    assert abs(a.val_loss - b.val_loss) < 1e-6
    assert a.threshold == pytest.approx(b.threshold, abs=1e-6)


def test_saved_autoencoder_is_decoder_of_encoder_and_row_is_complete(databases, sim_url, tmp_path):
    url = hf.copy_database(databases, sim_url)
    result = _train(url, tmp_path)
    engine = sa.create_engine(url)
    with engine.connect() as conn:
        row = conn.execute(sa.text("SELECT * FROM models WHERE id = :i"), {"i": result.model_id}).one()
        images = hf.flight_images(conn)
    engine.dispose()
    assert row.status == "active" and row.sha256 and row.path.endswith(".keras")
    assert row.n_train + row.n_val + row.n_excluded == 105
    screened = row.excluded["screened"]["flights"]
    assert screened and row.n_excluded == len(screened) + len(row.excluded["flagged_by_active"]["flights"])
    assert row.recall_where > 0 and row.precision_shape > 0 and "MAD" in row.threshold_method and "0.99 quantile" in row.threshold_method
    model = registry.load_model(registry.ModelRow(row.id, row.version, row.path, row.sha256,
                                                  row.threshold, row.params, row.status))
    encoder, decoder = autoencoder.parts(model)
    x = images[:16].astype("float32")
    np.testing.assert_allclose(decoder(encoder(x, training=False), training=False).numpy(),
                               model(x, training=False).numpy(), rtol=1e-5, atol=1e-5)
    # No accuracy metric: the loss is the reconstruction measure itself.
    assert "accuracy" not in str(model.get_config()).lower()


def test_rejected_candidate_leaves_the_previous_model_active(databases, sim_url, tmp_path,
                                                              monkeypatch):
    url = hf.copy_database(databases, sim_url)
    first = _train(url, tmp_path / "1")
    monkeypatch.setattr(train, "RECALL_FLOOR", 1.01)      # no model can pass this floor
    second = _train(url, tmp_path / "2", seed=8)
    assert first.status == "active" and second.status == "rejected"
    engine = sa.create_engine(url)
    with engine.connect() as conn:
        rows = dict(conn.execute(sa.text("SELECT id, status FROM models")).all())
        reason = conn.execute(sa.text("SELECT reason FROM models WHERE id = :i"),
                              {"i": second.model_id}).scalar_one()
    engine.dispose()
    assert rows == {first.model_id: "active", second.model_id: "rejected"}
    assert "recall" in reason


def test_promotion_rules():
    ok = train.promotion_problem(0.1, (0.9, 0.9), 0.2, None)
    assert ok is None
    assert "not finite" in train.promotion_problem(float("nan"), (0.9, 0.9), 0.2, None)
    assert "shape channel" in train.promotion_problem(0.1, (0.9, 0.3), 0.2, None)
    assert "counter" in train.promotion_problem(0.1, (0.9, 0.9), 0.97, None)
    assert "worse than the active" in train.promotion_problem(0.2, (0.9, 0.9), 0.2, 0.1)
    assert train.promotion_problem(0.105, (0.9, 0.9), 0.2, 0.1) is None


def test_normaliser_threshold_and_spearman():
    rng = np.random.default_rng(0)
    errs = np.stack([rng.normal(1, 0.1, 500), rng.normal(5, 2, 500)], axis=1)
    norm = errors.Normaliser.fit(errs)
    ch = norm.channels(errs)
    assert np.median(ch, axis=0) == pytest.approx([0, 0], abs=1e-9)
    # Each channel is on the same scale after normalisation, so neither dominates the max.
    assert np.median(np.abs(ch), axis=0) * 1.4826 == pytest.approx([1, 1], rel=1e-6)
    assert errors.threshold(norm.score(errs), 0.99) == pytest.approx(
        np.quantile(ch.max(axis=1), 0.99))
    assert errors.spearman(np.arange(10), np.arange(10) ** 3) == pytest.approx(1.0)


def test_outlier_threshold_separates_a_heavy_tail_and_ignores_the_outliers():
    from pipeline.model import errors

    rng = np.random.default_rng(0)
    ordinary = np.expm1(rng.normal(0.6, 0.5, 500).clip(0))          # compact on the log scale
    few = np.concatenate([ordinary, [300.0, 800.0, 2000.0]])
    many = np.concatenate([ordinary, np.full(40, 500.0)])
    t_few, t_many = errors.outlier_threshold(few, 5), errors.outlier_threshold(many, 5)
    assert ordinary.max() < t_few < 300
    # Eight percent outliers move median and MAD only a little: they stay flagged.
    assert t_many < 500 and abs(np.log1p(t_many) - np.log1p(t_few)) < 0.5
