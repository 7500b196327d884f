"""Acceptance on real traffic, judged as deployed: the Paris day plus ~5 % injected pattern
anomalies and ~5 % real flights rotated about the receiver (approaches to nowhere) through the
real path (Beast replay -> process --final), a model trained on the first 90 minutes only, and
the flights that began in the last 90 minutes scored by it and read back the way users read
them (flagged_flights). Each kind of anomaly is reported on its own. 90 minutes are a day-one
window: only the shape channel raises flags (ADSB_ROUTES_MIN_HOURS)."""

from __future__ import annotations

import datetime as dt
import time

import pytest
import sqlalchemy as sa

import paris_replay
from conftest import need
from pipeline import config
from pipeline.evaluation import evaluate, simulate
from pipeline.model import score, train

pytestmark = pytest.mark.slow

SPLIT = dt.datetime(2021, 10, 7, 13, 30, tzinfo=dt.timezone.utc)      # 90 min in, 90 to go


@pytest.fixture(scope="module")
def paris(databases, tmp_path_factory):
    need(paris_replay.PARIS_BEAST)
    url = databases.create()
    engine = sa.create_engine(url)
    data_dir = tmp_path_factory.mktemp("paris")
    kinds: dict[str, str] = {}
    labels = paris_replay.load(engine, 0.05, data_dir, seed=1, routes_fraction=0.05, kinds=kinds)
    # 90 minutes hold ~110 finished flights: below the default minimum of a new installation.
    settings = config.load({}, {"database_url": url, "data_dir": str(data_dir),
                                "receiver_lat": 48.88, "receiver_lon": 2.42, "range_km": 121.0,
                                "train_min_flights": 50, "train_budget_s": 600})
    started = time.monotonic()
    # Bounded by epochs, not seconds: the result depends on the seed, not on the machine's load.
    result = train.run_training(settings, seed=1, verbose=False, engine=engine, until=SPLIT,
                                max_epochs=60)
    seconds = time.monotonic() - started
    scored = score.score_pending(engine, settings)
    yield engine, settings, labels, kinds, result, seconds, scored
    engine.dispose()


def test_flagged_flights_of_the_next_90_minutes(paris):
    engine, _, labels, kinds, result, _, scored = paris
    with engine.connect() as conn:
        judged = conn.execute(sa.text(
            "SELECT icao24 FROM flights WHERE state = 'finished' AND first_seen >= :t"),
            {"t": SPLIT}).scalars().all()
        flagged = conn.execute(sa.text(
            "SELECT icao24, channel FROM flagged_flights WHERE first_seen >= :t "
            "ORDER BY score DESC"), {"t": SPLIT}).all()
        disagree = conn.execute(sa.text("""
            SELECT (SELECT count(*) FROM flights
                     WHERE score IS NOT NULL AND flagged IS DISTINCT FROM (score > threshold))
                 + (SELECT count(*) FROM flight_scores
                     WHERE flagged IS DISTINCT FROM (score > threshold))""")).scalar()
    patterns = [a for a in judged if kinds.get(a) in simulate.PATTERN_KINDS]
    rotated = [a for a in judged if kinds.get(a) == "approach_nowhere"]
    ordinary = [a for a in judged if not labels.get(a, 0)]
    hit = {a for a, _ in flagged}
    false = [a for a, _ in flagged if not labels.get(a, 0)]
    print(f"judged {len(judged)} flights: {len(patterns)} patterns, {len(rotated)} rotated, "
          f"{len(ordinary)} ordinary; flagged {len(flagged)}: patterns "
          f"{len(hit & set(patterns))}, rotated {len(hit & set(rotated))}, ordinary {len(false)}; "
          f"channels {[c for _, c in flagged]}; threshold {result.threshold:.3f}, trained on "
          f"{result.n_train}")
    assert result.status == "active" and scored > 0 and disagree == 0
    assert len(patterns) >= 3
    # A 90-minute window (104 flights, half the product's minimum) is a day-one model: the
    # figures are far from those of a week (tests/test_judged_as_deployed.py) and these bars
    # are what it measurably holds on real traffic, not the targets of a trained site. With
    # ~100 out-of-fold scores the 1 % threshold is the highest of them, and the afternoon's
    # ordinary flights score above the morning's (routes drift): measured 7 of 114 flagged,
    # 4 of 6 patterns, since the threshold is read off the scores as judged (shape floor
    # included; before, 6 of 114 and 3 of 6). (Until flights of a few positions stopped being
    # drawn, one 7-position ghost in the window held the threshold up at 9.0: 2 of 114, 2 of 6.)
    # The same seed on a second machine of the same size flagged 9 of 114 (threshold 2.35, the
    # highest but one of 104 out-of-fold scores, moved by the CPU's float rounding); seeds 2-4
    # there flagged 7 each. The bar is 7 of 114 plus the 0.02 the figures may move between
    # trainings (issue: "within +-0.02 over three trainings"). Flag precision there: 4 of 13
    # (seed 1), 4 of 11, 4 of 11, 5 of 12 (seeds 2-4); 4 of 11 on the first machine.
    assert {c for _, c in flagged} <= {"shape"}
    assert len(false) / len(ordinary) <= 7 / 114 + 0.02              # ordinary flag rate
    assert len(hit & set(patterns)) >= 3                             # patterns found
    assert len(flagged) - len(false) >= 0.3 * len(flagged)           # flag precision
    assert labels.get(flagged[0][0], 0) == 1                         # the top flag is real


def test_judged_on_the_later_period_the_model_beats_every_baseline(paris):
    engine, _, labels, kinds, result, seconds, _ = paris
    patterns_only = {a: y for a, y in labels.items() if kinds.get(a) != "approach_nowhere"}
    report = evaluate.evaluate(engine, evaluate.Labels(patterns_only, {}),
                               model_id=result.model_id, since=SPLIT)
    print(f"training {seconds:.0f} s\n" + evaluate.format_report(report))
    rows = {r.name: r for r in report.rows}
    assert seconds <= 300
    # Measured: AUC 0.967, 7 of 120 flights that are no pattern flagged (0.058; 0.949 and 0.05
    # before the threshold was read off the scores as judged, shape floor included); 9 of 120
    # on a second machine (see above): the bar is 7 of 120 plus the 0.02 trainings may differ.
    assert rows["model"].auc >= 0.9 and rows["model"].flag_rate <= 7 / 120 + 0.02
    # Better than every rule on the fixed frame; the shape rules (tortuosity, PCA of the shape
    # channel) rank these patterns better on 90 minutes of training data (see docs/model.md).
    for name in ("pca_where", "knn_where", "rarity_where", "rarity_direction"):
        assert rows["model"].auc > rows[name].auc, name


def test_approaches_to_nowhere_are_reported_on_their_own_and_not_flagged_on_day_one(paris):
    """Real flights rotated so that their low end lies where there is no airport: ranked
    separately from the patterns. 90 minutes of traffic are too sparse a picture of the routes
    for the where and direction channels to flag (they stay out of the score), so every flag
    comes from the shape channel; the figures of each channel and baseline are printed."""
    engine, _, labels, kinds, result, _, _ = paris
    report = evaluate.evaluate(engine, evaluate.Labels(labels, kinds), model_id=result.model_id,
                               since=SPLIT)
    rows = {r.name: r for r in report.by_kind["approach_nowhere"]}
    print("approach_nowhere only:\n" + "\n".join(
        f"{r.name:<18} AUC {r.auc:.3f} AP {r.ap:.3f}" for r in rows.values()))
    assert {"model_where", "model_direction", "knn_where", "rarity_direction"} <= set(rows)
    assert result.params["scored_groups"] == ["shape"]
    with engine.connect() as conn:
        channels = set(conn.execute(sa.text(
            "SELECT DISTINCT channel FROM flagged_flights WHERE first_seen >= :t"),
            {"t": SPLIT}).scalars())
    assert channels <= {"shape"}
