"""Trainer: refusal, determinism, shared encoder/decoder, registry and promotion rules."""

from __future__ import annotations

import math

import numpy as np
import pytest
import sqlalchemy as sa

import helpers_flights as hf
from pipeline.flights import raster
from pipeline.model import autoencoder, errors, registry, train

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def sim_url(sim_trained):
    return sim_trained.template


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


@pytest.fixture(scope="module")
def trained(sim_trained):
    return sim_trained.url, sim_trained.result


def test_saved_autoencoder_is_decoder_of_encoder_and_row_is_complete(trained):
    url, result = trained
    engine = sa.create_engine(url)
    with engine.connect() as conn:
        row = conn.execute(sa.text("SELECT * FROM models WHERE id = :i"), {"i": result.model_id}).one()
        images = hf.flight_images(conn)
    engine.dispose()
    assert row.status == "active" and row.sha256 and row.path.endswith(".keras")
    assert row.n_train + row.n_excluded == 105
    screened = row.excluded["screened"]["flights"]
    assert screened and row.n_excluded == len(screened) + len(row.excluded["flagged_by_active"]["flights"])
    assert row.recall_where > 0 and row.precision_shape > 0
    assert "0.99 quantile of the out-of-fold scores" in row.threshold_method
    assert row.params["image_format"] == 2 and row.params["groups"] == ["where", "shape", "direction"]
    model = registry.load_model(registry.ModelRow(row.id, row.version, row.path, row.sha256,
                                                  row.threshold, row.params, row.status))
    members = errors.members(model)
    assert len(members) == row.params["folds"] >= 2
    x = images[:16].astype("float32")
    for member in members:
        encoder, decoder = autoencoder.parts(member)
        np.testing.assert_allclose(decoder(encoder(x, training=False), training=False).numpy(),
                                   member(x, training=False).numpy(), rtol=1e-5, atol=1e-5)
    # The ensemble's error is the mean of its members' errors, computed as the scorer does.
    each = [errors.errors_of(m, images[:16]) for m in members]
    np.testing.assert_allclose(errors.errors_of(model, images[:16]), np.mean(each, axis=0),
                               rtol=1e-5, atol=1e-6)
    # The scorer's pass of a model scoring routes by counts computes the shape channel alone:
    # the same logits and terms as the whole model's, every other channel's terms 0.
    assert row.params["normaliser"]["measure"] == "counts"
    only = errors.network_channels("counts")
    assert only == (raster.SHAPE,)
    for member in members:
        np.testing.assert_allclose(autoencoder.narrowed(member, only)(x, training=False).numpy(),
                                   member(x, training=False).numpy()[..., list(only)],
                                   rtol=1e-5, atol=1e-5)
    full, _ = errors.forward(model)(x)
    narrow, none = errors.forward(model, probabilities=False, outputs=only)(x)
    assert none is None
    np.testing.assert_allclose(narrow.numpy()[:, raster.SHAPE], full.numpy()[:, raster.SHAPE],
                               rtol=1e-5, atol=1e-6)
    assert not narrow.numpy()[:, np.arange(images.shape[-1]) != raster.SHAPE].any()
    with pytest.raises(ValueError, match="probabilities"):
        errors.forward(model, outputs=only)
    # No accuracy metric: the loss is the reconstruction measure itself.
    assert "accuracy" not in str(model.get_config()).lower()


def test_rejected_candidate_leaves_the_previous_model_active(databases, trained, tmp_path,
                                                              monkeypatch):
    url = hf.copy_database(databases, trained[0])         # the first model active, as trained
    first = trained[1]
    monkeypatch.setattr(train, "RECALL_FLOOR", 1.01)      # no model can pass this floor
    second = _train(url, tmp_path / "2", seed=8, arch=hf.tiny_arch(), max_epochs=3)
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


def test_threshold_is_the_flag_rate_quantile_of_unseen_scores():
    rng = np.random.default_rng(0)
    unseen = np.expm1(rng.normal(0.6, 0.5, 20000).clip(0))
    t = errors.flag_threshold(unseen, 0.01)
    assert (unseen > t).mean() == pytest.approx(0.01, abs=0.001)
    # New flights drawn like the unseen ones are flagged at the rate the setting says.
    tomorrow = np.expm1(rng.normal(0.6, 0.5, 20000).clip(0))
    assert (tomorrow > t).mean() == pytest.approx(0.01, abs=0.003)


def test_screen_floor_keeps_ordinary_turns_and_still_screens_patterns():
    rng = np.random.default_rng(1)
    # Straight en-route traffic: tiny MAD, so median + 3 MAD alone cuts at ~1.03.
    enroute = 1 + np.abs(rng.normal(0, 0.01, 500))
    gentle = np.array([1.05, 1.1, 1.3, 1.6])            # ordinary turns, vectored approaches
    patterns = np.array([2.2, 3.5, 8.0, 40.0])           # holding, survey, orbit
    t = np.concatenate([enroute, gentle, patterns])
    relative, cut = train.tortuous(t, 3.0)
    assert cut < 1.06 and relative[500:504].all()         # what the floor is for
    screened, cut = train.tortuous(t, 3.0, 1.8)
    assert cut == pytest.approx(1.8)
    assert not screened[:504].any() and screened[504:].all()


def test_every_flight_is_scored_out_of_fold_by_the_one_model_that_never_saw_it(sim_url):
    engine = sa.create_engine(sim_url)
    with engine.connect() as conn:
        images = hf.flight_images(conn)
    engine.dispose()
    import time
    cross = train.cross_fit(images, 3, seed=4, start=time.monotonic(), budget=60,
                            arch=hf.tiny_arch(), max_epochs=2)
    assert sorted(np.bincount(cross.fold)) == [35, 35, 35]
    for k, member in enumerate(cross.members):
        held = cross.fold == k
        np.testing.assert_allclose(errors.errors_of(member, images[held]), cross.oof_errors[held],
                                   rtol=1e-5, atol=1e-6)
        # ... and the fold model k is not the one that scores the other folds.
        other = errors.errors_of(member, images[~held])
        assert not np.allclose(other, cross.oof_errors[~held], rtol=1e-3)
    assert all(0 <= r <= 1 and 0 <= p <= 1 for r, p in cross.recall_precision())


def test_folds_are_blocks_of_time_so_held_out_flights_have_no_twins_of_their_hours():
    from pipeline.model import data

    rng = np.random.default_rng(0)
    # A week: each day's flights all fall in one fold, and days go round the folds.
    t0 = np.datetime64("2026-03-02T00:00", "us")
    starts = t0 + (np.sort(rng.uniform(0, 7, 700)) * 86400e6).astype("timedelta64[us]")
    shuffled = rng.permutation(700)
    fold = data.folds(700, 3, rng, starts[shuffled])
    day = ((starts[shuffled] - t0) // np.timedelta64(1, "D")).astype(int)
    for d in range(7):
        assert len(set(fold[day == d].tolist())) <= 2           # a day's cut is one border
    assert sorted(np.bincount(fold)) == sorted(np.bincount(np.arange(700) * 7 // 700 % 3))
    # 90 minutes: three half-hour blocks, in time order.
    short = t0 + (np.sort(rng.uniform(0, 90, 99)) * 60e6).astype("timedelta64[us]")
    fold = data.folds(99, 3, rng, short)
    assert fold.tolist() == sorted(fold.tolist()) and np.bincount(fold).tolist() == [33, 33, 33]
    # Without times: a shuffle dealt round.
    assert sorted(np.bincount(data.folds(100, 3, rng))) == [33, 33, 34]


def test_normaliser_scores_only_the_groups_it_was_told_to_and_survives_json():
    rng = np.random.default_rng(3)
    errs = rng.normal(1, 0.2, (200, 3))
    norm = errors.Normaliser.fit(errs, (False, True, False))
    again = errors.Normaliser.from_json(norm.to_json())
    assert again == norm
    ch = norm.channels(errs)
    np.testing.assert_allclose(norm.score(errs), ch[:, 1])
    assert (norm.top(ch) == 1).all()
    everything = errors.Normaliser.fit(errs)
    np.testing.assert_allclose(everything.score(errs), everything.channels(errs).max(axis=1))
    assert errors.Normaliser.from_json({"median": [0, 0], "scale": [1, 1]}).scored is None


def _corridor_logits(channels: int = 10) -> np.ndarray:
    """Logits of a model that has learnt one east-west corridor (row 32, heading east): its
    pixels p = 0.95, everything else p = 0.002."""
    logits = np.full((64, 64, channels), np.log(0.002 / 0.998), dtype=np.float32)
    for c in (0, 1, 2 + 2):                          # where, shape, direction east
        logits[32, :, c] = np.log(0.95 / 0.05)
    return logits


def test_channel_terms_are_the_loss_the_surprise_at_lit_pixels_and_their_count():
    rng = np.random.default_rng(2)
    y = (rng.random((3, 64, 64, 10)) < 0.03).astype(np.float32)
    logits = rng.normal(-3, 2, (3, 64, 64, 10)).astype(np.float32)
    terms = errors.channel_terms(y, logits).numpy()
    np.testing.assert_allclose(terms[..., errors.LOSS], errors.channel_errors(y, logits).numpy())
    p = 1 / (1 + np.exp(-logits.astype(np.float64)))
    np.testing.assert_allclose(terms[..., errors.SURPRISE], (-np.log(p) * y).sum(axis=(1, 2)),
                               rtol=1e-4)
    np.testing.assert_array_equal(terms[..., errors.LIT], y.sum(axis=(1, 2)))


def test_route_groups_score_surprise_per_lit_pixel_so_a_long_flight_is_not_odd_for_length():
    """A long flight on the corridor whose last 20 pixels leave it, against a short flight of
    12 pixels where nobody flies: summed over the picture (the old measure) the long one is the
    odder; per lit pixel (the measure now) the short one is, by far, in where and direction.
    Shape keeps its loss in both."""
    logits = _corridor_logits()
    long_, short = np.zeros((64, 64, 10), np.float32), np.zeros((64, 64, 10), np.float32)
    for c in (0, 4):
        long_[32, :60, c] = 1                        # 60 pixels on the corridor ...
        long_[33:53, 59, c] = 1                      # ... and 20 off it at the end
        short[10, 20:32, c] = 1                      # 12 pixels nobody flies
    long_[32, :60, 1] = short[32, 26:38, 1] = 1
    terms = errors.channel_terms(np.stack([long_, short]), np.stack([logits, logits])).numpy()
    old, new = errors.group_errors(terms, "pixels"), errors.group_errors(terms, "lit")
    np.testing.assert_allclose(old, errors.group_losses(terms))
    assert old[0, 0] > old[1, 0] and old[0, 2] > old[1, 2]
    assert new[1, 0] > 3 * new[0, 0] and new[1, 2] > 3 * new[0, 2]
    assert new[0, 0] == pytest.approx((60 * -np.log(0.95) + 20 * -np.log(0.002)) / 80, rel=1e-4)
    np.testing.assert_array_equal(new[:, 1], old[:, 1])
    # A flight with no lit pixel in a group scores 0 there, not NaN.
    empty = errors.channel_terms(np.zeros((1, 64, 64, 10), np.float32), logits[None]).numpy()
    assert errors.group_errors(empty, "lit")[0, [0, 2]].tolist() == [0.0, 0.0]
    with pytest.raises(ValueError, match="unknown error measure"):
        errors.group_errors(terms, "sum")


def test_a_model_keeps_the_measure_it_was_calibrated_with():
    rng = np.random.default_rng(4)
    terms = np.abs(rng.normal(1, 0.2, (50, 10, 3))) + 1
    norm = errors.Normaliser.fit(errors.group_errors(terms, "lit"), None, 1.3, "lit")
    again = errors.Normaliser.from_json(norm.to_json())
    assert again == norm and again.measure == "lit"
    np.testing.assert_array_equal(again.groups(terms), errors.group_errors(terms, "lit"))
    # Saved before the measure was stored: calibrated on the losses, scored on them.
    old = errors.Normaliser.from_json({"median": [1, 1, 1], "scale": [0.1, 0.1, 0.1]})
    assert old.measure == "pixels"
    np.testing.assert_array_equal(old.groups(terms), errors.group_losses(terms))


def test_the_flagged_pixel_of_a_route_group_is_one_the_flight_crossed():
    logits = _corridor_logits()
    logits[32, 40:, [0, 4]] = 30.0                   # the corridor's far end: p = 1
    logits[5, 50, [0, 4]] = np.log(0.7 / 0.3)        # where the model mostly expects someone
    image = np.zeros((1, 64, 64, 10), np.uint8)
    image[0, 32, :40, [0, 4]] = 1                    # on the corridor, not to its far end ...
    image[0, 5, 50, [0, 4]] = 1                      # ... and one pixel off it
    probs = 1 / (1 + np.exp(-logits[None].astype(np.float64)))
    for group in (0, 2):                             # where, direction
        lit = errors.error_pixels(image, probs, np.array([group]), measure="lit")
        assert lit[0].tolist() == [5, 50]
        # Over the whole picture the largest error is the far end the flight did not fly.
        whole = errors.error_pixels(image, probs, np.array([group]))
        assert whole[0, 0] == 32 and whole[0, 1] >= 40


def test_a_tail_reads_a_score_as_the_share_of_unseen_flights_as_high():
    rng = np.random.default_rng(6)
    unseen = rng.exponential(2.0, 50_000)
    tail = errors.Tail.fit(unseen)
    x = np.array([0.5, 2.0, 4.0, 6.0, 9.0, 14.0, 20.0])
    # Within the sample: -log10 of the empirical share; beyond it, the fitted exponential,
    # which for an exponential sample is the truth: -log10 exp(-x / 2).
    np.testing.assert_allclose(tail.rarity(x), x / 2 / np.log(10), rtol=0.03)
    assert tail.rarity(np.array([-5.0, unseen.min()])).tolist() == [0.0, 0.0]
    grid = np.linspace(-1, 40, 2000)
    assert np.all(np.diff(tail.rarity(grid)) >= 0)
    # Tied quantiles (a group where most flights score the same) keep it a function of x.
    tied = errors.Tail.fit(np.r_[np.zeros(800), rng.exponential(1.0, 200)])
    assert tied.rarity(np.array([-1e-9]))[0] == 0.0
    assert tied.rarity(np.array([0.0, 1e-9])) == pytest.approx(-np.log10(0.2), abs=0.03)
    assert np.all(np.diff(tied.rarity(grid)) >= 0)
    flat = errors.Tail.fit(np.ones(100))
    assert flat.mean_excess == errors.MIN_MEAN_EXCESS and flat.rarity(np.array([2.0]))[0] > 100
    assert errors.Tail.from_json(tail.to_json()) == tail


def test_rarities_share_the_flag_rate_between_groups_with_different_tails():
    """Three independent groups, spread normalised alike but with a heavy, a light and a
    medium tail. Maxed as spreads the heavy one takes nearly every flag (a pattern that is
    1-in-1,000 in shape loses to a 1-in-30 route error); maxed as rarities each group takes
    about a third, and the threshold still flags the set rate of new flights."""
    rng = np.random.default_rng(7)

    def draw(n):
        return np.stack([rng.pareto(1.5, n), rng.normal(0, 1, n), rng.exponential(1, n)], 1)

    window, new = draw(20_000), draw(20_000)
    spread = errors.Normaliser.fit(window)
    rare = spread.with_tails(window)
    for norm, heavy_share in ((spread, 0.9), (rare, 0.45)):
        thr = errors.flag_threshold(norm.score(window), 0.01)
        ch = norm.channels(new)
        flagged = norm.combine(ch) > thr
        assert flagged.mean() == pytest.approx(0.01, abs=0.002)
        shares = np.bincount(norm.top(ch)[flagged], minlength=3) / flagged.sum()
        if norm is spread:
            assert shares[0] > heavy_share
        else:
            assert shares.max() < heavy_share and shares.min() > 0.2
    assert rare.median_score() == pytest.approx(-np.log10(0.5), abs=0.01)
    assert spread.median_score() == 0.0
    assert errors.Normaliser.from_json(rare.to_json()) == rare
    assert errors.Normaliser.from_json(spread.to_json()).tails is None


def test_a_nearly_straight_flight_cannot_flag_through_shape_but_can_through_where():
    """The shape floor: below it a flight's shape score is pressed under the median of unseen
    flights (0), order kept; where and direction are untouched; unknown tortuosity is not
    pressed; models saved before the floor existed score as they did."""
    rng = np.random.default_rng(5)
    errs = rng.normal(1, 0.1, (300, 3))
    norm = errors.Normaliser.fit(errs, None, 1.3)
    assert errors.Normaliser.from_json(norm.to_json()) == norm
    odd = np.array([[1.0, 9.0, 1.0],       # straight flight drawn badly in its own frame
                    [1.0, 9.0, 1.0],       # the same errors, a pattern's tortuosity
                    [9.0, 9.0, 1.0],       # straight, but off every route
                    [1.0, 9.0, 1.0]])      # tortuosity unknown
    tort = np.array([1.05, 2.5, 1.05, np.nan])
    ch = norm.channels(odd, tort)
    plain = norm.channels(odd)
    assert -1.0 < ch[0, 1] < 0.0 and plain[0, 1] > 50
    np.testing.assert_array_equal(ch[[1, 3]], plain[[1, 3]])
    np.testing.assert_array_equal(ch[2, [0, 2]], plain[2, [0, 2]])
    score = norm.score(odd, tort)
    assert score[0] < 5 < min(score[1], score[2], score[3])
    assert errors.Normaliser.top(norm, ch)[2] == 0            # carried by where
    # Below the floor the less straight flight ranks higher, whatever the network drew: a
    # glider in thermals too small for the picture above a badly drawn straight airliner.
    shapes = np.array([[1.0, v, 1.0] for v in (500.0, 9.0, 3.0, 1.2, 1.0, 0.9, 0.5)])
    bends = np.array([1.0, 1.01, 1.05, 1.1, 1.13, 1.2, 1.29])
    pressed = norm.channels(shapes, bends)[:, 1]
    assert np.all(np.diff(pressed) > 0) and -1.0 <= pressed.min() and pressed.max() < 0.0
    # Equally straight flights keep the network's order, the worse drawn one higher.
    pressed = norm.channels(shapes, np.full(len(shapes), 1.0))[:, 1]
    assert np.all(np.diff(pressed) < 0) and -1.0 <= pressed.min() and pressed.max() < 0.0
    # A model saved before the order was stored keeps the network's order.
    saved = norm.to_json()
    del saved["straight_by"]
    before = errors.Normaliser.from_json(saved).channels(shapes, bends)[:, 1]
    assert np.all(np.diff(before) < 0) and -1.0 < before.min() and before.max() < 0.0
    old = errors.Normaliser.from_json({"median": [1, 1, 1], "scale": [0.1, 0.1, 0.1]})
    assert old.shape_min_tortuosity is None
    np.testing.assert_array_equal(old.channels(odd, tort), old.channels(odd))
    assert errors.Normaliser.fit(errs, None, 0.0).shape_min_tortuosity is None


def _drive(callback, model, losses):
    """Feed ``losses`` as the epochs' validation losses, the weights set to the epoch number
    at each; (epoch that asked to stop or None, the weights left at the end)."""
    callback.set_model(model)
    model.stop_training = False
    callback.on_train_begin()
    stopped = None
    for epoch, loss in enumerate(losses):
        model.set_weights([np.full_like(w, epoch) for w in model.get_weights()])
        callback.on_epoch_end(epoch, {"loss": loss, "val_loss": loss})
        if model.stop_training:
            stopped = epoch
            break
    callback.on_train_end()
    return stopped, float(model.get_weights()[0].flat[0])


@pytest.mark.parametrize("losses", [
    [5, 4, 4.5, 4.2, 3.9, 4, 4, 4, 4],             # better late, then patience runs out
    [5, 5, 5, 5, 5, 5],                             # never better than the first epoch
    [5, 4, 3, 2, 1],                                # better every epoch: never stops
    [5, float("nan"), 4, float("nan"), float("nan"), float("nan"), 4.5],
])
def test_early_stopping_is_keras_early_stopping(losses, monkeypatch):
    """The trainer's early stopping (relative gain, public callback API) stops at the same epoch
    and restores the same weights as Keras' EarlyStopping(restore_best_weights=True) with a
    gain of 0; with a gain of 10 %, a smaller improvement does not reset the patience."""
    import keras

    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    ours = train._callbacks(math.inf, "test", patience=3)[1]
    theirs = keras.callbacks.EarlyStopping(monitor="val_loss", patience=3,
                                           restore_best_weights=True)
    assert _drive(ours, model, losses) == _drive(theirs, model, losses)

    monkeypatch.setattr(train, "MIN_GAIN", 0.1)
    stopped, weights = _drive(train._callbacks(math.inf, "test", patience=3)[1], model,
                              [10, 9.5, 9.2, 8.0, 7.9, 7.8, 7.7])
    assert (stopped, weights) == (6, 3.0)           # 8.0 is 10 % better than 10; 7.7 is not
