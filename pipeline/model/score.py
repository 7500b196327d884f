"""The scorer job: every finished flight not yet scored by the active model gets its score.

score = the per-flight reconstruction error of :mod:`pipeline.model.errors` (max of the channel
groups' errors -- where, shape, direction -- normalised against flights the model never trained
on) -- the same measure the model's threshold was derived from; ``flagged`` is exactly
``score > threshold`` of that model. Each score says which group carried it (``channel``) and,
for a flagged flight, the pixel of the largest error in that group. A model only scores images
of the format it was trained on (``flights.image_format``).

Which flights: never scored ones, plus, after a new model became active, those of the last
``ADSB_RESCORE_DAYS`` of the data clock scored by an older model (so today's flags all come from
one model); older flights keep the score of the model that was active then.

Two workers may run this at once: each batch is claimed with ``FOR UPDATE SKIP LOCKED`` and
marked with the model in the same transaction, so no flight is scored twice by one model.

A flight newly flagged (not flagged as it stood, by the model that scored it last) and not
judged normal by the user gets its alerts in that same transaction: outbox rows for the webhook
and MQTT sinks and a NOTIFY (:mod:`pipeline.alerts.outbox`); sending them is the delivery job's
work, never this one's.
Flags of a traffic change (far more flags than the flag rate allows, e.g. the other runway in
use) alert once, through the change: :mod:`pipeline.model.changes`. A flag that alerted and
that a newer model's re-score does not confirm is withdrawn in the same way
(:func:`pipeline.alerts.outbox.withdraw`).
"""

from __future__ import annotations

import datetime as dt
import io
import logging
import time
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import sqlalchemy as sa
from PIL import Image

from pipeline.alerts import outbox
from pipeline.config import Settings
from pipeline.flights.clock import data_clock
from pipeline.flights.raster import FORMAT_CHANNELS, decode_png, decode_pngs
from pipeline.model import changes, registry

log = logging.getLogger(__name__)

# Flights claimed, scored and written per transaction. Each batch costs a dozen statements
# (claim, history, flights, alerts, the traffic-change review) whatever its size, so a larger
# batch spends less time in the database per flight; memory does not grow with it, because the
# network sees it PASS flights at a time (the images themselves are 40 KB a flight).
BATCH = 512
# Flights per forward pass. The pass holds ~1.6 MB a flight at its peak (activations and
# per-pixel errors of 10-channel images, float32): measured with the 3-member ensemble
# (bench/memory.py), the worker peaked at ~1.5 GB with passes of 512, ~0.9 GB with 128, at the
# same flights/s within the noise -- 128 keeps a 4 GB Pi comfortable.
PASS = 128
# Flagged flights per pass of pictures (every channel's probabilities, 160 KB a flight per
# member as float32, and their per-pixel errors): ~2 % of a claim flags, but a traffic change
# can flag most of it, and a pass of 128 pictures then raised the worker's peak by ~0.2 GB.
PICTURES = 32
PROGRESS_EVERY_S = 10.0


@dataclass
class Scorer:
    model: registry.ModelRow
    normaliser: Any
    forward: Callable              # images -> (errors, None): every flight
    image_format: int
    channels: int
    pictures: Callable             # images -> (errors, probabilities): flagged flights only


_cache: dict[tuple[int, str | None], Scorer] = {}
# Models kept loaded: a worker scores the sites in turn, and reloading a model each pass costs
# more than it holds (a few MB of weights each).
CACHED_MODELS = 4


def scorer_for(row: registry.ModelRow) -> Scorer:
    """Load (once per process) the model of ``row`` and its compiled forward pass."""
    key = (row.id, row.sha256)
    if key not in _cache:
        from pipeline.model import errors

        model = registry.load_model(row)
        # Older models of the row's site are replaced; beyond that the oldest goes.
        for old in [k for k, v in _cache.items() if v.model.site == row.site]:
            del _cache[old]
        while len(_cache) >= CACHED_MODELS:
            del _cache[next(iter(_cache))]
        fmt = int(row.params.get("image_format", 1))
        channels = FORMAT_CHANNELS[fmt]
        loss = row.params.get("loss", errors.DEFAULT_LOSS)
        pos_weight = row.params.get("pos_weight", errors.POS_WEIGHT)
        norm = errors.Normaliser.from_json(row.params["normaliser"])
        # Every flight's pass computes the channels the score reads; pictures all of them.
        _cache[key] = Scorer(row, norm,
                             errors.forward(model, loss, pos_weight, channels, probabilities=False,
                                            outputs=errors.network_channels(norm.measure)),
                             fmt, channels,
                             errors.forward(model, loss, pos_weight, channels))
    return _cache[key]


def reconstruction_png(probs: np.ndarray) -> bytes:
    """8-bit PNG ((64*C)x64, the channels side by side as in the track image) of reconstruction
    probabilities, value round(p*255)."""
    side = np.concatenate([probs[:, :, c] for c in range(probs.shape[-1])], axis=1)
    buf = io.BytesIO()
    Image.fromarray(np.rint(np.clip(side, 0, 1) * 255).astype(np.uint8), "L").save(buf, "PNG")
    return buf.getvalue()


_PENDING = sa.text("""
    SELECT id, image, coalesce(tortuosity, 'NaN') FROM flights
     WHERE state = 'finished' AND image IS NOT NULL AND image_format = :format AND site = :site
       AND (model_id IS NULL
            OR (model_id <> :model AND last_seen >= :since)
            OR (:rescore AND last_seen >= :since AND scored_at < :started))
     ORDER BY id
     LIMIT :limit
       FOR UPDATE SKIP LOCKED""")

_INSERT_SCORES = sa.text("""
    INSERT INTO flight_scores (icao24, flight_id, model_id, score, threshold, flagged,
                               where_score, shape_score, direction_score, channel, error_row,
                               error_col, reconstruction, scored_at, site)
    SELECT f.icao24, u.fid, :model, u.s, :threshold, u.fl, u.ws, u.ss, u.ds, u.ch, u.er, u.ec,
           u.rec, now(), f.site
      FROM unnest(CAST(:ids AS bigint[]), CAST(:scores AS float8[]), CAST(:flags AS boolean[]),
                  CAST(:ws AS float8[]), CAST(:ss AS float8[]), CAST(:ds AS float8[]),
                  CAST(:chs AS text[]), CAST(:ers AS int2[]), CAST(:ecs AS int2[]),
                  CAST(:recs AS bytea[]))
           AS u(fid, s, fl, ws, ss, ds, ch, er, ec, rec)
      JOIN flights f ON f.id = u.fid
    ON CONFLICT (icao24, flight_id, model_id) DO UPDATE
       SET score = excluded.score, threshold = excluded.threshold, flagged = excluded.flagged,
           where_score = excluded.where_score, shape_score = excluded.shape_score,
           direction_score = excluded.direction_score, channel = excluded.channel,
           error_row = excluded.error_row, error_col = excluded.error_col,
           reconstruction = excluded.reconstruction, scored_at = excluded.scored_at""")

_UPDATE_FLIGHTS = sa.text("""
    UPDATE flights f
       SET score = u.s, threshold = :threshold, flagged = u.fl, model_id = :model,
           scored_at = now()
      FROM unnest(CAST(:ids AS bigint[]), CAST(:scores AS float8[]), CAST(:flags AS boolean[]))
           AS u(fid, s, fl)
     WHERE f.id = u.fid""")


def _decode(rows, channels: int) -> tuple[list[int], np.ndarray, list[int]]:
    """Images of the rows; ids of rows whose stored image cannot be decoded (logged)."""
    try:
        return [r[0] for r in rows], decode_pngs([r[1] for r in rows], channels), []
    except Exception:  # noqa: BLE001 - find the bad ones one by one below
        pass
    ids, images, bad = [], [], []
    for fid, blob in rows:
        try:
            image = decode_png(bytes(blob))
            if image.shape[-1] != channels:
                raise ValueError(f"{image.shape[-1]} channels, expected {channels}")
            images.append(image)
            ids.append(fid)
        except Exception as e:  # noqa: BLE001 - a bad image must not stop the others
            log.error("flight %s: stored image cannot be decoded (%s); not scored", fid, e)
            bad.append(fid)
    arr = np.stack(images) if images else np.zeros((0, 64, 64, channels), np.uint8)
    return ids, arr, bad


@dataclass
class Scored:
    """What a batch's flights get: score, flag, group scores, the group that carried each
    score, and for flagged flights the pixel of the largest error and the reconstruction."""

    scores: np.ndarray
    flags: np.ndarray
    channels: np.ndarray           # (n, groups) normalised group scores
    top: list[str]
    error_row: list[int | None]
    error_col: list[int | None]
    reconstructions: list[bytes | None]


def compute(s: Scorer, images: np.ndarray, tortuosity: np.ndarray | None = None) -> Scored:
    """Scores of uint8 images (n, 64, 64, C); no database. The forward pass, :data:`PASS`
    flights at a time, computes errors only; the probabilities (160 KB a flight as float32, per
    ensemble member while they are summed) are computed again for the flagged flights alone,
    the only ones whose pixel and reconstruction are stored (docs/model.md, "Memory")."""
    import tensorflow as tf

    from pipeline.model import errors

    row = s.model
    n = len(images)
    # Group errors pass by pass too: the traffic counts' product holds 160 KB a flight (float32).
    groups = [s.normaliser.groups(
        s.forward(tf.convert_to_tensor(images[lo:lo + PASS], tf.float32))[0].numpy(),
        images[lo:lo + PASS]) for lo in range(0, n, PASS)] \
        or [s.normaliser.groups(np.zeros((0, s.channels, 3)), images)]
    ch = s.normaliser.channels(np.concatenate(groups), tortuosity)
    scores = s.normaliser.combine(ch)
    flags = scores > row.threshold
    names = errors.groups(s.channels)
    top_group = s.normaliser.top(ch)
    er: list[int | None] = [None] * n
    ec: list[int | None] = [None] * n
    recs: list[bytes | None] = [None] * n
    hit = np.flatnonzero(flags)
    for lo in range(0, hit.size, PICTURES):
        part = hit[lo:lo + PICTURES]
        flagged = images[part]
        _, probs = s.pictures(tf.convert_to_tensor(flagged, tf.float32))
        probs = probs.numpy()
        pix = errors.error_pixels(flagged, probs, top_group[part],
                                  row.params.get("pos_weight", errors.POS_WEIGHT),
                                  s.normaliser.measure, s.normaliser.counts)
        for j, (i, (r, c)) in enumerate(zip(part.tolist(), pix.tolist())):
            er[i], ec[i] = r, c
            recs[i] = reconstruction_png(probs[j])
    return Scored(scores, flags, ch, [names[g] for g in top_group], er, ec, recs)


def _score_batch(conn: sa.Connection, s: Scorer, ids: list[int], images: np.ndarray,
                 bad: list[int], settings: Settings | None = None,
                 tortuosity: np.ndarray | None = None) -> None:
    row = s.model
    if ids:
        out = compute(s, images, tortuosity)
        ch = out.channels
        hit = np.flatnonzero(out.flags)
        params = {"model": row.id, "threshold": row.threshold, "ids": ids,
                  "scores": out.scores.tolist(), "flags": out.flags.tolist()}
        # Read before this batch's scores are written: the flag as it stood decides what alerts.
        alert = outbox.new_flags(conn, [ids[i] for i in hit.tolist()]) \
            if settings is not None and outbox.enabled(settings) else []
        conn.execute(_INSERT_SCORES, {
            **params, "ws": ch[:, 0].tolist(), "ss": ch[:, 1].tolist(),
            "ds": ch[:, 2].tolist() if ch.shape[1] > 2 else [None] * len(ids),
            "chs": out.top, "ers": out.error_row, "ecs": out.error_col,
            "recs": out.reconstructions})
        conn.execute(_UPDATE_FLIGHTS, params)
        if settings is not None and outbox.enabled(settings):
            outbox.withdraw(conn, settings, row.id, [ids[i] for i in np.flatnonzero(~out.flags)])
        held: set[int] = set()
        if settings is not None:
            # Flags of a traffic change alert once, through the change (pipeline/model/changes.py).
            # In a savepoint: should the review fail, the scores stand and every flag alerts.
            try:
                with conn.begin_nested():
                    absorbed = changes.review(conn, settings, row, ids)
                if (settings.change_alpha > 0 and settings.change_hold_min > 0
                        and row.site is not None):
                    # Until a change could take them in, the flags it could take in alert late.
                    tort = tortuosity if tortuosity is not None else np.full(len(ids), np.nan)
                    groups = changes.route_groups(row)
                    held = {ids[i] for i in hit.tolist()
                            if changes.could_join(float(ch[i, 0]),
                                                  float(ch[i, 2]) if ch.shape[1] > 2 else None,
                                                  row.threshold, float(tort[i]), groups)}
            except sa.exc.SQLAlchemyError as e:
                log.error("traffic changes not reviewed for this batch (%s); its flags alert "
                          "one by one", str(e).splitlines()[0][:200])
                absorbed = set()
            alert = [i for i in alert if i not in absorbed]
        if alert:
            assert settings is not None
            outbox.enqueue(conn, settings, row.id, alert, held)
    if bad:
        # Marked as seen by this model (score unknown) so they are not retried every minute.
        conn.execute(sa.text("""UPDATE flights SET score = NULL, flagged = NULL, model_id = :m,
                                threshold = :t, scored_at = now() WHERE id = ANY(:ids)"""),
                     {"m": row.id, "t": row.threshold, "ids": bad})


def _usable_active(engine: sa.Engine, site: str) -> Scorer | None:
    """The site's active model's scorer; a model whose file is unusable is marked failed and
    the newest retired model of the site that still loads takes over (scoring goes on)."""
    for _ in range(3):
        with engine.connect() as conn:
            row = registry.active(conn, site)
        if row is None:
            log.info("site %s has no active model yet: nothing scored (train one: "
                     "adsb-pipeline train --site %s)", site, site)
            return None
        try:
            return scorer_for(row)
        except registry.ModelFileError as e:
            registry.mark_failed(engine, row.id, str(e))
            if not registry.reactivate_previous(engine, failed=row):
                return None
    return None


def score_pending(engine: sa.Engine, settings: Settings, *, site: str | None = None,
                  rescore: bool = False, batch: int = BATCH) -> int:
    """Score every pending flight of ``site`` with its active model (every site with one when
    None); returns the number of flights scored."""
    if site is None:
        with engine.connect() as conn:
            todo = registry.active_sites(conn)
        if not todo:
            log.info("no active model yet: nothing scored (train one: adsb-pipeline train)")
        return sum(score_pending(engine, settings, site=s, rescore=rescore, batch=batch)
                   for s in todo)
    s = _usable_active(engine, site)
    if s is None:
        return 0
    with engine.connect() as conn:
        since = data_clock(conn) - dt.timedelta(days=settings.rescore_days)
        started = conn.execute(sa.text("SELECT clock_timestamp()")).scalar_one()
    total, bad_total, t0, last_log = 0, 0, time.monotonic(), time.monotonic()
    while True:
        with engine.begin() as conn:
            rows = conn.execute(_PENDING, {"model": s.model.id, "since": since, "limit": batch,
                                           "rescore": rescore, "started": started,
                                           "format": s.image_format, "site": site}).all()
            if not rows:
                break
            ids, images, bad = _decode([r[:2] for r in rows], s.channels)
            tort = {int(r[0]): float(r[2]) for r in rows}
            _score_batch(conn, s, ids, images, bad, settings,
                         np.array([tort[int(i)] for i in ids], dtype=np.float64))
        total += len(ids)
        bad_total += len(bad)
        if time.monotonic() - last_log > PROGRESS_EVERY_S:
            last_log = time.monotonic()
            log.info("scored %d flights (%.0f/s)", total, total / (last_log - t0))
    if total or bad_total:
        log.info("site %s: scored %d flights with model %s in %.1f s%s", site, total,
                 s.model.version,
                 time.monotonic() - t0, f"; {bad_total} undecodable images" if bad_total else "")
    return total


def command(settings: Settings, args) -> int:
    """``adsb-pipeline score [--rescore]``."""
    from pipeline.db.engine import make_engine

    engine = make_engine(settings)
    n = score_pending(engine, settings, rescore=args.rescore)
    print(f"{n} flights scored")
    return 0
