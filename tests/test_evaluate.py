"""Evaluation: ranking metrics equal scikit-learn's; the command prints one table and a CSV."""

from __future__ import annotations

import argparse
import csv

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score

from pipeline.evaluation import evaluate


def test_metrics_match_scikit_learn():
    rng = np.random.default_rng(0)
    for _ in range(5):
        y = (rng.random(300) < 0.05).astype(int)
        s = rng.normal(size=300) + 1.5 * y
        s[:20] = np.round(s[:20])                       # ties
        assert evaluate.roc_auc(s, y) == pytest.approx(roc_auc_score(y, s))
        untied = s + np.arange(300) * 1e-9
        assert evaluate.average_precision(untied, y) == pytest.approx(
            average_precision_score(y, untied))
    y = np.array([0, 1, 0, 1, 0])
    assert evaluate.precision_at_k(np.array([0.1, 0.9, 0.2, 0.8, 0.95]), y) == 0.5


def test_flag_figures():
    y = np.array([0, 0, 0, 0, 1, 1])
    s = np.array([0.1, 0.2, 3.0, 0.3, 5.0, 0.5])
    rate, precision, recall = evaluate.flag_figures(s, y, 1.0)
    assert (rate, precision, recall) == (0.25, 0.5, 0.5)


@pytest.mark.slow
def test_evaluate_command_prints_table_and_writes_csv(sim_trained, tmp_path, capsys):
    tracks, settings = sim_trained.tracks, sim_trained.settings
    assert sim_trained.result.status == "active"
    labels = tmp_path / "labels.csv"
    labels.write_text("icao24,label\n" + "".join(
        f"{t.icao24},{t.label}\n" for t in tracks))
    out = tmp_path / "scores.csv"
    args = argparse.Namespace(labels=str(labels), out=str(out), train_until=None, seed=0)
    assert evaluate.command(settings, args) == 0
    text = capsys.readouterr().out
    assert "105 flights judged, 5 anomalous" in text
    for name in ("model_where", "model_shape", "model_direction", "pca_all", "knn_where",
                 "rarity_direction", "tortuosity", "turning_deg", "best baseline"):
        assert name in text
    rows = list(csv.DictReader(open(out)))
    assert len(rows) == 105 and sum(int(r["label"]) for r in rows) == 5
