"""Acceptance on real traffic: the Paris day plus ~3 % injected anomalies through the real path
(Beast replay -> process --final -> train -> score), read back the way users read it."""

from __future__ import annotations

import time

import pytest
import sqlalchemy as sa

import paris_replay
from conftest import need
from pipeline import config, evaluate
from pipeline.model import score, train

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def paris(databases, tmp_path_factory):
    need(paris_replay.PARIS_BEAST)
    url = databases.create()
    engine = sa.create_engine(url)
    data_dir = tmp_path_factory.mktemp("paris")
    labels = paris_replay.load(engine, 0.03, data_dir, seed=1)
    settings = config.load({}, {"database_url": url, "data_dir": str(data_dir),
                                "receiver_lat": 48.88, "receiver_lon": 2.42, "range_km": 121.0})
    started = time.monotonic()
    result = train.run_training(settings, seed=1, verbose=False, engine=engine)
    seconds = time.monotonic() - started
    scored = score.score_pending(engine, settings)
    yield engine, labels, result, seconds, scored
    engine.dispose()


def test_flagged_flights_puts_the_injected_anomalies_on_top(paris):
    engine, labels, _, _, scored = paris
    k = sum(labels.values())
    with engine.connect() as conn:
        ranked = conn.execute(sa.text(
            "SELECT icao24 FROM flagged_flights ORDER BY score DESC")).scalars().all()
        finished = conn.execute(sa.text(
            "SELECT count(*) FROM flights WHERE state = 'finished' AND image IS NOT NULL")).scalar()
        disagree = conn.execute(sa.text("""
            SELECT (SELECT count(*) FROM flights
                     WHERE score IS NOT NULL AND flagged IS DISTINCT FROM (score > threshold))
                 + (SELECT count(*) FROM flight_scores
                     WHERE flagged IS DISTINCT FROM (score > threshold))""")).scalar()
    hits = sum(labels.get(a, 0) for a in ranked[:k])
    print(f"{k} injected anomalies among {finished} flights; {len(ranked)} flagged; "
          f"precision@{k} of flagged_flights {hits / k:.3f}")
    assert k == 7 and scored == finished
    assert hits / k >= 0.8
    assert disagree == 0


def test_model_ranks_the_anomalies_better_than_pca_within_the_budget(paris):
    engine, labels, result, seconds, _ = paris
    rows, _, y, _, _ = evaluate.evaluate(engine, labels, model_id=result.model_id)
    auc = {name: a for name, a, _, _ in rows}
    print(f"training {seconds:.0f} s; ROC AUC " + ", ".join(f"{n} {a:.3f}" for n, a in auc.items())
          + f"; lit-pixel recall where {result.recall[0]:.3f} shape {result.recall[1]:.3f}")
    assert result.status == "active"
    assert seconds <= 300
    assert auc["model"] >= 0.95
    assert all(auc["model"] > a for name, a in auc.items() if name.startswith("pca"))
    assert min(result.recall) >= 0.8
