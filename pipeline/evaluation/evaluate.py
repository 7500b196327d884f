"""How well do the model's flags work on flights it never saw? And is the network earning its keep?

``adsb-pipeline evaluate --labels FILE.csv --train-until T`` judges the model as it is deployed:
a candidate is trained exactly as ``train`` does on the flights that ended before T (the last
``ADSB_TRAIN_DAYS`` of them), nothing is registered, and only flights that began at or after T
are judged (a flight spanning T is in neither set, so no judged flight was ever trained on). It
prints, for the combined score and each channel group alone (where, direction, shape): ROC AUC,
average precision, precision@k (k = number of anomalous judged flights), the ordinary flag rate
(share of label-0 flights above the threshold), flag precision and recall; the ratio of the
median reconstruction errors of unseen and seen ordinary flights (the model's gap); and the
baselines of :mod:`pipeline.evaluation.baselines` fitted on the same training flights, plus
tortuosity and turning.
With a ``kind`` column in the labels, every kind of anomaly is also ranked on its own against
the ordinary flights (a rotated transit is not a circling flight).

Without ``--train-until`` the active (or given) model is judged on every finished flight, as
before: figures on flights a model trained on flatter it (see docs/model.md).

Labels: CSV with columns icao24,label[,kind]; 1 = anomalous; a flight's label is its
aircraft's; aircraft not in the file count as normal. Or ``--labels db``: the user's verdicts
(``flight_verdicts``, the newest per flight): 1 = judged anomalous, 0 = judged normal, and
flights without a verdict are left out of the judged set (the baselines and the model are still
fitted as without labels).
"""

from __future__ import annotations

import csv
import datetime as dt
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import sqlalchemy as sa

from pipeline.config import Settings

log = logging.getLogger(__name__)

LABELS_FROM_DB = "db"


@dataclass
class Flights:
    ids: np.ndarray
    icao24: list[str]
    images: np.ndarray
    tortuosity: np.ndarray
    turning_deg: np.ndarray

    def subset(self, mask: np.ndarray) -> "Flights":
        return Flights(self.ids[mask], [a for a, m in zip(self.icao24, mask) if m],
                       self.images[mask], self.tortuosity[mask], self.turning_deg[mask])


def load_flights(engine: sa.Engine, since: dt.datetime | None = None,
                 until: dt.datetime | None = None, site: str | None = None) -> Flights:
    """Every finished flight with an image of the current format (that began at or after
    ``since``; that ended before ``until``; of ``site``)."""
    from pipeline.flights import raster
    from pipeline.model.data import decode_images

    with engine.connect() as conn:
        rows = conn.execute(sa.text("""
            SELECT id, icao24, image, coalesce(tortuosity, 'NaN'), coalesce(turning_deg, 'NaN')
              FROM flights WHERE state = 'finished' AND image IS NOT NULL
               AND image_format = :format
               AND (CAST(:since AS timestamptz) IS NULL OR first_seen >= :since)
               AND (CAST(:until AS timestamptz) IS NULL OR last_seen < :until)
               AND (CAST(:site AS text) IS NULL OR site = :site)
             ORDER BY id"""), {"format": raster.FORMAT, "since": since, "until": until,
                               "site": site}).all()
    return Flights(np.array([r[0] for r in rows], np.int64), [r[1] for r in rows],
                   decode_images([bytes(r[2]) for r in rows], raster.NCH),
                   np.array([r[3] for r in rows], float), np.array([r[4] for r in rows], float))


@dataclass
class Labels:
    """Per aircraft (``label``, ``kind``: a CSV), or per flight (``flight``: the verdicts;
    flights without one are not judged)."""

    label: dict[str, int]
    kind: dict[str, str]
    flight: dict[int, int] | None = None

    def of(self, icao24: list[str]) -> np.ndarray:
        return np.array([self.label.get(a.lower(), 0) for a in icao24], dtype=int)

    def kinds_of(self, icao24: list[str]) -> list[str]:
        return [self.kind.get(a.lower(), "") for a in icao24]

    def judged(self, f: Flights) -> tuple[Flights, np.ndarray]:
        """The flights that are judged, and their labels."""
        if self.flight is None:
            return f, self.of(f.icao24)
        mask = np.array([int(i) in self.flight for i in f.ids], dtype=bool)
        sub = f.subset(mask)
        return sub, np.array([self.flight[int(i)] for i in sub.ids], dtype=int)


def read_labels_db(engine: sa.Engine) -> Labels:
    """The user's newest verdict per flight: 1 = anomalous, 0 = normal."""
    with engine.connect() as conn:
        rows = conn.execute(sa.text("SELECT flight_id, verdict FROM flight_verdicts")).all()
    return Labels({}, {}, {int(fid): int(v == "anomalous") for fid, v in rows})


def read_labels(path: Path) -> Labels:
    """icao24 -> label (and -> kind when the file has a kind column)."""
    label: dict[str, int] = {}
    kind: dict[str, str] = {}
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            a = row["icao24"].strip().lower()
            label[a] = max(label.get(a, 0), int(row["label"]))
            if row.get("kind") and int(row["label"]):
                kind[a] = row["kind"].strip()
    return Labels(label, kind)


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


# ---- flag metrics ---------------------------------------------------------------------------
def flag_figures(scores: np.ndarray, y: np.ndarray, threshold: float) -> tuple[float, float, float]:
    """(ordinary flag rate, flag precision, flag recall) of ``scores > threshold``."""
    flag = np.nan_to_num(scores, nan=-np.inf) > threshold
    rate = float(flag[y == 0].mean()) if (y == 0).any() else float("nan")
    precision = float((y[flag] == 1).mean()) if flag.any() else float("nan")
    recall = float(flag[y == 1].mean()) if (y == 1).any() else float("nan")
    return rate, precision, recall


@dataclass
class Row:
    name: str
    auc: float
    ap: float
    pk: float
    flag_rate: float = float("nan")
    precision: float = float("nan")
    recall: float = float("nan")


@dataclass
class Report:
    rows: list[Row]
    columns: dict[str, np.ndarray]          # per judged flight
    y: np.ndarray
    flights: Flights
    version: str
    threshold: float
    n_train: int = 0
    median_ratio: float = float("nan")      # unseen / seen ordinary flights' median error
    medians: tuple[float, float] = (float("nan"), float("nan"))
    by_kind: dict[str, list[Row]] | None = None
    train_until: dt.datetime | None = None
    flag_rate: float | None = None          # the setting the threshold was set for


def _rows(columns: dict[str, np.ndarray], y: np.ndarray, threshold: float | None,
          flagged: tuple[str, ...]) -> list[Row]:
    out = []
    for name, s in columns.items():
        row = Row(name, roc_auc(s, y), average_precision(s, y), precision_at_k(s, y))
        if threshold is not None and name in flagged:
            row.flag_rate, row.precision, row.recall = flag_figures(s, y, threshold)
        out.append(row)
    return out


def _model_columns(group_scores: np.ndarray, names: tuple[str, ...], normaliser
                   ) -> dict[str, np.ndarray]:
    cols = {"model": normaliser.combine(group_scores)}
    cols.update({f"model_{g}": group_scores[:, i] for i, g in enumerate(names)})
    return cols


def _baseline_columns(train_images: np.ndarray, f: Flights) -> dict[str, np.ndarray]:
    from pipeline.evaluation import baselines

    cols = {name: baselines.BASELINES[name](train_images, f.images)
            for name in baselines.available(f.images.shape[-1])}
    cols["tortuosity"] = f.tortuosity
    cols["turning_deg"] = f.turning_deg
    return cols


def _by_kind(columns: dict[str, np.ndarray], y: np.ndarray, kinds: list[str]
             ) -> dict[str, list[Row]]:
    """Each kind of anomaly ranked alone against the ordinary flights."""
    out = {}
    for kind in sorted({k for k, label in zip(kinds, y) if label == 1 and k}):
        mask = (y == 0) | np.array([k == kind for k in kinds])
        out[kind] = _rows({n: s[mask] for n, s in columns.items()}, y[mask], None, ())
    return out


def evaluate_split(engine: sa.Engine, settings: Settings, labels: Labels,
                   train_until: dt.datetime, *, seed: int = 0, plain: bool = False,
                   **fit_options: Any) -> Report:
    """Train on the flights that ended before ``train_until`` as ``train`` would (nothing is
    registered), judge the flights that began at or after it. ``fit_options`` go to
    ``train.fit_candidate`` (benchmarks of one lever at a time)."""
    from pipeline.model import data, errors, train

    window = data.load_window(engine, settings, None, until=train_until, site=settings.site_id)
    if len(window.ids) < settings.train_min_flights:
        raise RuntimeError(f"only {len(window.ids)} finished flights before {_when(train_until)}; "
                           f"at least {settings.train_min_flights} are needed "
                           f"(ADSB_TRAIN_MIN_FLIGHTS)")
    f, y = labels.judged(load_flights(engine, since=train_until, site=settings.site_id))
    if not len(f.ids):
        raise RuntimeError(f"no finished flight {'with a verdict ' if labels.flight is not None else ''}"
                           f"began at or after {_when(train_until)}: nothing to judge")
    assert not set(f.ids.tolist()) & set(window.ids.tolist()), "a judged flight was trained on"
    cand = train.fit_candidate(window, settings, seed=seed, plain=plain, **fit_options)
    names = errors.groups(f.images.shape[-1])
    judged_terms = errors.errors_of(cand.model, f.images)
    judged = cand.normaliser.channels(cand.normaliser.groups(judged_terms, f.images),
                                      f.tortuosity)
    judged_errs = errors.group_losses(judged_terms)
    kept = window.images[cand.keep]
    seen_errs = errors.group_losses(errors.errors_of(cand.model, kept))
    seen_y = _seen_labels(labels, window, cand.keep)
    model_cols = _model_columns(judged, names, cand.normaliser)
    columns = {**model_cols, **_baseline_columns(kept, f)}
    rows = _rows(columns, y, cand.threshold, tuple(model_cols))
    # The gap between seen and unseen flights, on the reconstruction error itself (the mean of
    # the group errors, the loss): the normalised score is centred on unseen flights, so a ratio
    # of its medians would mean nothing.
    med_unseen = float(np.median(judged_errs[y == 0].mean(axis=1))) if (y == 0).any() \
        else float("nan")
    med_seen = float(np.median(seen_errs[seen_y == 0].mean(axis=1))) if (seen_y == 0).any() \
        else float("nan")
    return Report(rows, columns, y, f, f"candidate trained on flights before {_when(train_until)}",
                  cand.threshold, int(cand.keep.sum()),
                  med_unseen / med_seen if med_seen > 0 else float("nan"),
                  (med_unseen, med_seen), _by_kind(columns, y, labels.kinds_of(f.icao24)),
                  train_until, settings.flag_rate)


def evaluate(engine: sa.Engine, labels: Labels | dict[str, int], *,
             model_id: int | None = None, flights: Flights | None = None,
             since: dt.datetime | None = None, site: str = "default") -> Report:
    """The active model of ``site`` (or the given model, of its own site) judged on every
    finished flight of the site, the baselines fitted on them all; with ``since``, only flights
    that began at or after it are judged and the baselines are fitted on the flights that ended
    before it (a registered model judged on a later period than its training window)."""
    from pipeline.model import errors, registry

    if isinstance(labels, dict):
        labels = Labels(labels, {})
    with engine.connect() as conn:
        row = registry.get(conn, model_id) if model_id else registry.active(conn, site)
    if row is None:
        raise RuntimeError(f"site {site} has no active model: train one first "
                           "(adsb-pipeline train)")
    site = row.site or site
    every = flights or load_flights(engine, since=since, site=site)
    f, y = labels.judged(every)
    if not len(f.ids):
        raise RuntimeError("no finished flight has a verdict: nothing to judge"
                           if labels.flight is not None else "no finished flight to judge")
    model = registry.load_model(row)
    errs = errors.errors_of(model, f.images, row.params.get("loss", errors.DEFAULT_LOSS),
                            row.params.get("pos_weight", errors.POS_WEIGHT))
    norm = errors.Normaliser.from_json(row.params["normaliser"])
    ch = norm.channels(norm.groups(errs, f.images), f.tortuosity)
    model_cols = _model_columns(ch, errors.groups(f.images.shape[-1]), norm)
    fit_images = every.images if since is None else load_flights(engine, until=since, site=site).images
    columns = {**model_cols, **_baseline_columns(fit_images, f)}
    return Report(_rows(columns, y, row.threshold, tuple(model_cols)), columns, y, f, row.version,
                  row.threshold, by_kind=_by_kind(columns, y, labels.kinds_of(f.icao24)),
                  train_until=since)


def _seen_labels(labels: Labels, window, keep: np.ndarray) -> np.ndarray:
    """Labels of the fitted flights; -1 where a per-flight labelling has no verdict (neither
    ordinary nor anomalous: left out of the seen-flights median)."""
    idx = np.flatnonzero(keep)
    if labels.flight is None:
        return labels.of([window.icao24[i] for i in idx])
    return np.array([labels.flight.get(int(window.ids[i]), -1) for i in idx], dtype=int)


def _when(t: dt.datetime) -> str:
    return t.astimezone(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def _fmt(v: float) -> str:
    return f"{v:8.3f}" if np.isfinite(v) else f"{'-':>8}"


def _table(rows: list[Row]) -> list[str]:
    lines = [f"{'scores':<18} {'ROC AUC':>8} {'avg prec':>8} {'prec@k':>8} {'ord flag':>8} "
             f"{'flag P':>8} {'flag R':>8}"]
    lines += [f"{r.name:<18} {_fmt(r.auc)} {_fmt(r.ap)} {_fmt(r.pk)} {_fmt(r.flag_rate)} "
              f"{_fmt(r.precision)} {_fmt(r.recall)}" for r in rows]
    return lines


def _beside_baselines(r: Report) -> list[str]:
    """Each model group beside the best baseline, and that baseline's flags at the same
    ordinary flag rate as the setting would allow (its threshold: the quantile of its scores on
    the judged ordinary flights, which favours it: it is told the rate on the very flights)."""
    base = [row for row in r.rows if not row.name.startswith("model")]
    if not base or r.flag_rate is None:
        return []
    lines = [f"ordinary flag rate set to {r.flag_rate:.3f} (ADSB_FLAG_RATE); each model group "
             "beside the best baseline by average precision, flagging as often:"]
    by_ap = max(base, key=lambda row: np.nan_to_num(row.ap))
    s = r.columns[by_ap.name]
    ordinary = s[r.y == 0]
    if ordinary.size:
        t = float(np.quantile(np.nan_to_num(ordinary, nan=-np.inf), 1 - r.flag_rate))
        rate, precision, recall = flag_figures(s, r.y, t)
        lines.append(f"  {by_ap.name}: AUC {by_ap.auc:.3f} AP {by_ap.ap:.3f} ord flag "
                     f"{rate:.3f} flag P {_fmt(precision).strip()} R {_fmt(recall).strip()}")
    for row in r.rows:
        if row.name.startswith("model"):
            lines.append(f"  {row.name}: AUC {row.auc:.3f} AP {row.ap:.3f} ord flag "
                         f"{_fmt(row.flag_rate).strip()} flag P {_fmt(row.precision).strip()} "
                         f"R {_fmt(row.recall).strip()}")
    return lines


def format_report(r: Report) -> str:
    n1 = int(r.y.sum())
    lines = [f"{len(r.y)} flights judged, {n1} anomalous; model {r.version}; threshold "
             f"{r.threshold:.3f}"]
    if r.train_until is not None and r.n_train:
        lines.append(f"trained on {r.n_train} flights that ended before {_when(r.train_until)}; "
                     "judged: flights that began at or after it (none trained on)")
        lines.append(f"median reconstruction error of ordinary flights: unseen "
                     f"{r.medians[0]:.5f}, seen {r.medians[1]:.5f}, ratio {r.median_ratio:.2f}")
    elif r.train_until is not None:
        lines.append(f"judged: flights that began at or after {_when(r.train_until)}; baselines "
                     "fitted on those that ended before it")
    lines += _table(r.rows)
    best = max((row for row in r.rows if not row.name.startswith("model")),
               key=lambda row: np.nan_to_num(row.auc), default=None)
    if best is not None:
        lines.append(f"best baseline by ROC AUC: {best.name} ({best.auc:.3f})")
        lines += _beside_baselines(r)
    for kind, rows in (r.by_kind or {}).items():
        lines.append(f"\n{kind} only (against the ordinary flights):")
        lines += _table(rows)
    return "\n".join(lines)


def write_flights_csv(path: Path, f: Flights, y: np.ndarray, columns: dict) -> None:
    with open(path, "w", newline="") as out:
        w = csv.writer(out)
        w.writerow(["flight_id", "icao24", "label", *columns])
        for i in range(len(f.ids)):
            w.writerow([int(f.ids[i]), f.icao24[i], int(y[i]),
                        *(f"{float(c[i]):.6g}" for c in columns.values())])


def command(settings: Settings, args) -> int:
    """``adsb-pipeline evaluate --labels CSV|db [--train-until ISO] [--seed N] [--out CSV]``."""
    from pipeline.db.engine import make_engine

    engine = make_engine(settings)
    try:
        labels = read_labels_db(engine) if args.labels == LABELS_FROM_DB \
            else read_labels(Path(args.labels))
        if args.train_until:
            until = dt.datetime.fromisoformat(args.train_until.replace("Z", "+00:00"))
            if until.tzinfo is None:
                until = until.replace(tzinfo=dt.timezone.utc)
            report = evaluate_split(engine, settings, labels, until, seed=args.seed)
        else:
            report = evaluate(engine, labels, site=settings.site_id)
    except RuntimeError as e:
        log.error("%s", e)
        return 1
    finally:
        # Its pooled connections would otherwise stay open until the engine is collected.
        engine.dispose()
    if report.y.sum() == 0:
        log.error("none of the %d judged flights %s", len(report.y),
                  "was judged anomalous" if labels.flight is not None
                  else f"belongs to an aircraft labelled 1 in {args.labels}")
        return 1
    print(format_report(report))
    if args.out:
        write_flights_csv(Path(args.out), report.flights, report.y, report.columns)
        print(f"flight-level scores -> {args.out}")
    return 0
