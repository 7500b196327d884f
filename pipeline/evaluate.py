"""How well do the model's scores rank known anomalies? And is the network earning its keep?

``adsb-pipeline evaluate --labels FILE.csv`` (columns icao24,label; 1 = anomalous; a flight's
label is its aircraft's, aircraft not in the file count as normal) prints ROC AUC, average
precision and precision@k (k = number of anomalous flights) for the model's score, each of its
channels alone, and honest baselines on the same flights: PCA reconstruction error of the same
images (each channel, both, and both fitted on the flights the model's screen keeps) and the
geometric features tortuosity and total turning.
"""

from __future__ import annotations

import csv
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import sqlalchemy as sa

from pipeline.config import Settings

log = logging.getLogger(__name__)

PCA_COMPONENTS = 16


@dataclass
class Flights:
    ids: np.ndarray
    icao24: list[str]
    images: np.ndarray
    tortuosity: np.ndarray
    turning_deg: np.ndarray


def load_flights(engine: sa.Engine) -> Flights:
    """Every finished flight with an image."""
    from pipeline.model.data import decode_images

    with engine.connect() as conn:
        rows = conn.execute(sa.text("""
            SELECT id, icao24, image, coalesce(tortuosity, 'NaN'), coalesce(turning_deg, 'NaN')
              FROM flights WHERE state = 'finished' AND image IS NOT NULL ORDER BY id""")).all()
    return Flights(np.array([r[0] for r in rows], np.int64), [r[1] for r in rows],
                   decode_images([bytes(r[2]) for r in rows]),
                   np.array([r[3] for r in rows], float), np.array([r[4] for r in rows], float))


def read_labels(path: Path) -> dict[str, int]:
    with open(path, newline="") as f:
        return {row["icao24"].strip().lower(): int(row["label"]) for row in csv.DictReader(f)}


# ---- ranking metrics (numpy; equal to scikit-learn's, see tests) ------------------------------
def roc_auc(scores: np.ndarray, y: np.ndarray) -> float:
    from pipeline.model.errors import _ranks

    pos, n1 = y == 1, int((y == 1).sum())
    n0 = len(y) - n1
    if n1 == 0 or n0 == 0:
        return float("nan")
    r = _ranks(np.nan_to_num(scores, nan=-np.inf)) + 1
    return float((r[pos].sum() - n1 * (n1 + 1) / 2) / (n1 * n0))


def average_precision(scores: np.ndarray, y: np.ndarray) -> float:
    order = np.argsort(-np.nan_to_num(scores, nan=-np.inf), kind="mergesort")
    hits = (y[order] == 1).astype(float)
    if hits.sum() == 0:
        return float("nan")
    precision = np.cumsum(hits) / np.arange(1, len(hits) + 1)
    return float((precision * hits).sum() / hits.sum())


def precision_at_k(scores: np.ndarray, y: np.ndarray, k: int | None = None) -> float:
    k = int((y == 1).sum()) if k is None else k
    if k == 0:
        return float("nan")
    top = np.argsort(-np.nan_to_num(scores, nan=-np.inf), kind="mergesort")[:k]
    return float((y[top] == 1).mean())


# ---- baselines ----------------------------------------------------------------------------
def pca_errors(x: np.ndarray, fit_mask: np.ndarray | None = None,
               components: int = PCA_COMPONENTS) -> np.ndarray:
    """Squared reconstruction error of every row of ``x`` under a PCA fitted on ``fit_mask``."""
    x = x.reshape(len(x), -1).astype(np.float64)
    fit = x if fit_mask is None else x[fit_mask]
    mean = fit.mean(axis=0)
    _, _, vt = np.linalg.svd(fit - mean, full_matrices=False)
    basis = vt[:components]
    centred = x - mean
    recon = centred @ basis.T @ basis
    return ((centred - recon) ** 2).mean(axis=1)


def pca_robust(x: np.ndarray, keep: np.ndarray, trim: float) -> np.ndarray:
    """PCA fitted like the model: on the flights its screen keeps, and, when the model trims,
    refitted without the highest-error fraction of them."""
    first = pca_errors(x, keep)
    if trim > 0:
        keep = keep & (first <= np.quantile(first[keep], 1 - trim))
        return pca_errors(x, keep)
    return first


def _screened(tortuosity: np.ndarray, k: float) -> np.ndarray:
    from pipeline.model.train import tortuous

    return tortuous(tortuosity, k)[0] if k > 0 else np.zeros(len(tortuosity), bool)


# ---- the evaluation -----------------------------------------------------------------------
def model_scores(engine: sa.Engine, images: np.ndarray, model_id: int | None = None
                 ) -> tuple[np.ndarray, np.ndarray, str]:
    """(score, normalised channel scores (n, 2), version) of the active (or given) model,
    computed exactly as the scorer does."""
    from pipeline.model import errors, registry

    with engine.connect() as conn:
        row = registry.get(conn, model_id) if model_id else registry.active(conn)
    if row is None:
        raise RuntimeError("no active model: train one first (adsb-pipeline train)")
    model = registry.load_model(row)
    errs = errors.errors_of(model, images, row.params.get("loss", errors.DEFAULT_LOSS),
                            row.params.get("pos_weight", errors.POS_WEIGHT))
    ch = errors.Normaliser.from_json(row.params["normaliser"]).channels(errs)
    return ch.max(axis=1), ch, row.version


def evaluate(engine: sa.Engine, labels: dict[str, int], *, trim: float = 0.0,
             screen_k: float = 3.0, model_id: int | None = None, flights: Flights | None = None):
    """(table rows [(name, auc, ap, p@k)], per-flight columns dict, labels array, version)."""
    f = flights or load_flights(engine)
    y = np.array([labels.get(a.lower(), 0) for a in f.icao24], dtype=int)
    score, ch, version = model_scores(engine, f.images, model_id)
    columns = {
        "model": score, "model_where": ch[:, 0], "model_shape": ch[:, 1],
        "pca_where": pca_errors(f.images[..., 0]), "pca_shape": pca_errors(f.images[..., 1]),
        "pca_both": pca_errors(f.images),
        "pca_both_robust": pca_robust(f.images, ~_screened(f.tortuosity, screen_k), trim),
        "tortuosity": f.tortuosity, "turning_deg": f.turning_deg,
    }
    rows = [(name, roc_auc(s, y), average_precision(s, y), precision_at_k(s, y))
            for name, s in columns.items()]
    return rows, columns, y, f, version


def format_table(rows, n_flights: int, n_anomalous: int, version: str) -> str:
    lines = [f"{n_flights} flights, {n_anomalous} anomalous; model {version}",
             f"{'scores':<18} {'ROC AUC':>8} {'avg prec':>8} {'prec@k':>8}"]
    lines += [f"{name:<18} {auc:8.3f} {ap:8.3f} {pk:8.3f}" for name, auc, ap, pk in rows]
    return "\n".join(lines)


def write_flights_csv(path: Path, f: Flights, y: np.ndarray, columns: dict) -> None:
    with open(path, "w", newline="") as out:
        w = csv.writer(out)
        w.writerow(["flight_id", "icao24", "label", *columns])
        for i in range(len(f.ids)):
            w.writerow([int(f.ids[i]), f.icao24[i], int(y[i]),
                        *(f"{float(c[i]):.6g}" for c in columns.values())])


def command(settings: Settings, args) -> int:
    """``adsb-pipeline evaluate --labels CSV [--out CSV]``."""
    from pipeline.db.engine import make_engine

    engine = make_engine(settings)
    labels = read_labels(Path(args.labels))
    try:
        rows, columns, y, f, version = evaluate(engine, labels, trim=settings.train_trim,
                                                screen_k=settings.train_screen_k)
    except RuntimeError as e:
        log.error("%s", e)
        return 1
    if y.sum() == 0:
        log.error("none of the %d flights belongs to an aircraft labelled 1 in %s",
                  len(y), args.labels)
        return 1
    print(format_table(rows, len(y), int(y.sum()), version))
    if args.out:
        write_flights_csv(Path(args.out), f, y, columns)
        print(f"flight-level scores -> {args.out}")
    return 0
