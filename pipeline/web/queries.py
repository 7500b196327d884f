"""Every query of the web pages, in SQLAlchemy Core.

Each one is bounded by an index so that a page stays fast with a year of flights (measured by
``bench/web_queries.py`` on a million): time windows read ``flights`` through
``flights_last_seen_idx`` / ``flights_flagged_last_seen_idx``, the flights list pages by keyset
on (last_seen, id) instead of OFFSET, per-model figures read ``flight_scores`` through its
model index for the models on the page only, and a flight's newest verdict is one probe of
``flight_labels_flight_idx`` per listed flight.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass
from typing import Any, Sequence

import sqlalchemy as sa
from sqlalchemy.engine import RowMapping

from pipeline.db.schema import (
    flagged_flights,
    flight_labels,
    flight_scores,
    flight_verdicts,
    flights,
    models,
    pipeline_state,
    position_days,
    positions,
)
from pipeline.db.state import INGEST_STATE_KEY
from pipeline.flights.store import FLIGHT_POSITIONS_SQL

F, S, M, L = flights, flight_scores, models, flight_labels
VERDICTS = ("normal", "anomalous")
AIRCRAFT_NOW_S = 60          # "aircraft now": seen in the last minute, as tar1090 counts them


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def day_start(clock: dt.datetime) -> dt.datetime:
    return clock.astimezone(dt.timezone.utc).replace(hour=0, minute=0, second=0, microsecond=0)


def _newest_verdict(flight_id: sa.ColumnElement) -> sa.ScalarSelect:
    """The flight's newest verdict (the one that counts), as flight_verdicts defines it."""
    return (sa.select(L.c.verdict).where(L.c.flight_id == flight_id)
            .order_by(L.c.created_at.desc(), L.c.id.desc()).limit(1).scalar_subquery())


# ---- home ------------------------------------------------------------------------------------
@dataclass
class Heartbeat:
    values: dict[str, Any]
    updated_at: dt.datetime


def heartbeat(conn: sa.Connection, receiver_id: str) -> Heartbeat | None:
    """The row the live ingest writes every 15 s (pipeline.service.serve)."""
    row = conn.execute(sa.select(pipeline_state.c.value, pipeline_state.c.updated_at).where(
        pipeline_state.c.key == INGEST_STATE_KEY.format(receiver_id=receiver_id))).first()
    if row is None:
        return None
    value = row.value if isinstance(row.value, dict) else json.loads(row.value)
    return Heartbeat(value, row.updated_at)


def aircraft_now(conn: sa.Connection, clock: dt.datetime) -> int:
    """Aircraft with a position in the last minute of the data clock (today's partition, BRIN)."""
    return int(conn.execute(
        sa.select(sa.func.count(sa.distinct(positions.c.icao24))).where(
            positions.c.time > clock - dt.timedelta(seconds=AIRCRAFT_NOW_S),
            positions.c.time <= clock)).scalar() or 0)


def flights_since(conn: sa.Connection, since: dt.datetime) -> int:
    """Flights seen since ``since`` (open ones included)."""
    return int(conn.execute(sa.select(sa.func.count()).where(F.c.last_seen >= since)).scalar()
               or 0)


def positions_on(conn: sa.Connection, receiver_id: str, day: dt.date) -> int:
    """Positions the receiver stored for that UTC day, as the trigger on positions counts them
    (position_days): counting the day's partition on every page view would read all of it."""
    return int(conn.execute(sa.select(position_days.c.positions).where(
        position_days.c.receiver_id == receiver_id, position_days.c.day == day)).scalar() or 0)


def active_model(conn: sa.Connection, site: str) -> RowMapping | None:
    return conn.execute(sa.select(
        M.c.id, M.c.version, M.c.created_at, M.c.activated_at, M.c.data_from, M.c.data_to,
        M.c.n_train, M.c.n_excluded, M.c.threshold, M.c.threshold_method, M.c.val_loss)
        .where(M.c.status == "active", M.c.site == site)).mappings().first()


def site_frame(conn: sa.Connection, site: str) -> tuple[float, float, float] | None:
    """(latitude, longitude, range km) of the site's fixed frame."""
    row = conn.execute(sa.text("SELECT latitude, longitude, range_km FROM sites WHERE id = :s "
                               "AND latitude IS NOT NULL"), {"s": site}).first()
    return None if row is None else (row[0], row[1], row[2])


def flag_rates(conn: sa.Connection, model_ids: Sequence[int]) -> dict[int, tuple[int, int]]:
    """model id -> (flights scored, flagged) since the model became active; models never
    activated get nothing."""
    if not model_ids:
        return {}
    s = (sa.select(sa.func.count().label("scored"),
                   sa.func.count().filter(S.c.flagged).label("flagged"))
         .where(S.c.model_id == M.c.id, S.c.scored_at >= M.c.activated_at)
         .lateral("rate"))
    rows = conn.execute(sa.select(M.c.id, s.c.scored, s.c.flagged).select_from(M.join(s, sa.true()))
                        .where(M.c.id.in_(list(model_ids)), M.c.activated_at.is_not(None)))
    return {r.id: (int(r.scored), int(r.flagged)) for r in rows}


def traffic_changes(conn: sa.Connection, site: str, limit: int) -> list[RowMapping]:
    """The site's traffic changes, the open one first, then the newest."""
    return list(conn.execute(sa.text("""
        SELECT c.id, c.channel, c.region, c.started_at, c.detected_at, c.last_flag_at,
               c.ended_at, c.end_reason, c.flights_flagged, c.flights_scored, c.expected_flags,
               c.training_job_id, m.version AS model_version
          FROM traffic_changes c JOIN models m ON m.id = c.model_id
         WHERE c.site = :site
         ORDER BY c.ended_at IS NULL DESC, c.started_at DESC
         LIMIT :limit"""), {"site": site, "limit": limit}).mappings())


def _window(since: dt.datetime, until: dt.datetime | None) -> list[sa.ColumnElement[bool]]:
    """last_seen in [since, until); no upper bound when until is None."""
    conds = [F.c.last_seen >= since]
    if until is not None:
        conds.append(F.c.last_seen < until)
    return conds


def flags(conn: sa.Connection, since: dt.datetime, until: dt.datetime | None, limit: int
          ) -> list[RowMapping]:
    """Flagged flights (the view flagged_flights: flights judged normal are left out) whose last
    position lies in [since, until), highest score ratio first."""
    v = flagged_flights
    q = (sa.select(v.c.flight_id, v.c.icao24, v.c.callsign, v.c.first_seen, v.c.last_seen,
                   v.c.duration, v.c.path_km, v.c.score, v.c.threshold, v.c.score_ratio,
                   v.c.channel, v.c.verdict, v.c.model_version, v.c.traffic_change_id)
         .where(v.c.last_seen >= since)
         .order_by(v.c.score_ratio.desc().nulls_last(), v.c.flight_id.desc())
         .limit(limit))
    if until is not None:
        q = q.where(v.c.last_seen < until)
    return list(conn.execute(q).mappings())


def known_count(conn: sa.Connection, since: dt.datetime, until: dt.datetime | None) -> int:
    """Flagged flights in the window that the user judged normal (shown as known)."""
    verdict = _newest_verdict(F.c.id)
    return int(conn.execute(sa.select(sa.func.count()).where(
        F.c.flagged, F.c.state == "finished", *_window(since, until),
        verdict == "normal")).scalar() or 0)


def flags_per_day(conn: sa.Connection, since: dt.datetime
                  ) -> list[tuple[dt.datetime, int, int]]:
    """(UTC day, flights scored, flagged) of the finished flights that ended since ``since``."""
    day = sa.func.date_trunc("day", F.c.last_seen, "UTC")
    rows = conn.execute(
        sa.select(day.label("day"), sa.func.count(F.c.score), sa.func.count().filter(F.c.flagged))
        .where(F.c.last_seen >= since, F.c.state == "finished")
        .group_by(day).order_by(day))
    return [(r[0], int(r[1]), int(r[2])) for r in rows]


def score_histogram(conn: sa.Connection, model_id: int, threshold: float, since: dt.datetime,
                    bins: int = 40) -> tuple[list[float], list[int]]:
    """Histogram of the scores that model gave the flights seen since ``since`` (their current
    score, so flights a newer model scored again count for that one):
    ``bins`` equal bins from -threshold/2 to 3 x threshold; the first and last bins also count
    the scores below and above."""
    lo, hi = -0.5 * threshold, 3.0 * threshold
    bucket = sa.func.least(sa.func.greatest(sa.func.width_bucket(F.c.score, lo, hi, bins), 1), bins)
    rows = conn.execute(
        sa.select(bucket.label("b"), sa.func.count())
        .where(F.c.last_seen >= since, F.c.model_id == model_id,
               F.c.score.is_not(None))
        .group_by(bucket))
    counts = [0] * bins
    for b, n in rows:
        counts[int(b) - 1] = int(n)
    edges = [lo + (hi - lo) * k / bins for k in range(bins + 1)]
    return edges, counts


def precision(conn: sa.Connection) -> list[tuple[str | None, str, int]]:
    """(channel that carried the flag, newest verdict, flights) over every flagged flight the
    user judged."""
    v = flight_verdicts
    rows = conn.execute(
        sa.select(S.c.channel, v.c.verdict, sa.func.count())
        .select_from(v.join(F, F.c.id == v.c.flight_id)
                     .outerjoin(S, sa.and_(S.c.flight_id == F.c.id, S.c.model_id == F.c.model_id)))
        .where(F.c.flagged)
        .group_by(S.c.channel, v.c.verdict))
    return [(r[0], r[1], int(r[2])) for r in rows]


# ---- flights list ----------------------------------------------------------------------------
@dataclass(frozen=True)
class FlightFilter:
    since: dt.datetime | None = None      # last_seen >= since
    until: dt.datetime | None = None      # last_seen < until
    icao24: str | None = None
    callsign: str | None = None
    flagged: bool = False


@dataclass(frozen=True)
class Cursor:
    last_seen: dt.datetime
    id: int


LIST_COLUMNS = (F.c.id, F.c.icao24, F.c.callsign, F.c.first_seen, F.c.last_seen, F.c.n_positions,
                F.c.path_km, F.c.state, F.c.score, F.c.threshold, F.c.flagged, F.c.model_id)


def flights_page(conn: sa.Connection, flt: FlightFilter, *, older_than: Cursor | None = None,
                 newer_than: Cursor | None = None, limit: int = 50) -> list[RowMapping]:
    """One page of flights, newest first: ``limit`` + 1 rows are read so the caller knows
    whether another page follows. ``newer_than`` pages backwards (read ascending, returned
    newest first)."""
    conds: list[sa.ColumnElement[bool]] = []
    if flt.since is not None:
        conds.append(F.c.last_seen >= flt.since)
    if flt.until is not None:
        conds.append(F.c.last_seen < flt.until)
    who = []
    if flt.icao24:
        who.append(F.c.icao24 == flt.icao24)
    if flt.callsign:
        who.append(F.c.callsign == flt.callsign)
    if who:
        conds.append(sa.or_(*who))
    if flt.flagged:
        # Spelled as the partial index flights_flagged_last_seen_idx is, so it is used.
        conds += [F.c.flagged, F.c.state == "finished"]
    if older_than is not None:
        c = older_than
        conds += [F.c.last_seen <= c.last_seen,
                  sa.or_(F.c.last_seen < c.last_seen, F.c.id < c.id)]
        order = (F.c.last_seen.desc(), F.c.id.desc())
    elif newer_than is not None:
        c = newer_than
        conds += [F.c.last_seen >= c.last_seen,
                  sa.or_(F.c.last_seen > c.last_seen, F.c.id > c.id)]
        order = (F.c.last_seen.asc(), F.c.id.asc())
    else:
        order = (F.c.last_seen.desc(), F.c.id.desc())
    page = (sa.select(*LIST_COLUMNS).where(*conds).order_by(*order).limit(limit + 1)
            .subquery("page"))
    rows = list(conn.execute(
        sa.select(page, S.c.channel, _newest_verdict(page.c.id).label("verdict"))
        .outerjoin(S, sa.and_(S.c.flight_id == page.c.id, S.c.model_id == page.c.model_id))
        .order_by(page.c.last_seen.desc(), page.c.id.desc())).mappings())
    return rows


# ---- one flight ------------------------------------------------------------------------------
def flight(conn: sa.Connection, flight_id: int) -> RowMapping | None:
    cols = [c for c in F.c if c.name != "image"]
    return conn.execute(
        sa.select(*cols, M.c.version.label("model_version"), M.c.status.label("model_status"),
                  S.c.where_score, S.c.shape_score, S.c.direction_score, S.c.channel,
                  S.c.error_row, S.c.error_col)
        .select_from(F.outerjoin(M, M.c.id == F.c.model_id)
                     .outerjoin(S, sa.and_(S.c.flight_id == F.c.id, S.c.model_id == F.c.model_id)))
        .where(F.c.id == flight_id)).mappings().first()


def flight_images(conn: sa.Connection, flight_id: int) -> RowMapping | None:
    """The stored track image and, when kept (flagged flights), the reconstruction of the model
    that scored the flight, with the group that carried the score and its largest error."""
    return conn.execute(
        sa.select(F.c.image, F.c.image_format, S.c.reconstruction, S.c.channel, S.c.error_row,
                  S.c.error_col)
        .select_from(F.outerjoin(S, sa.and_(S.c.flight_id == F.c.id, S.c.model_id == F.c.model_id)))
        .where(F.c.id == flight_id)).mappings().first()


def positions_sql(flight_id: int) -> str:
    """The documented SQL of a flight's positions, as the page shows it and runs it."""
    return FLIGHT_POSITIONS_SQL.replace(":id", str(int(flight_id)))


def flight_positions(conn: sa.Connection, flight_id: int) -> list[sa.Row]:
    # The very text the page shows, so what a user copies into psql is what drew the map.
    q = sa.text(f"SELECT time, latitude, longitude, altitude, groundspeed FROM "
                f"({FLIGHT_POSITIONS_SQL}) p")
    return list(conn.execute(q, {"id": flight_id}))


def score_history(conn: sa.Connection, flight_id: int) -> list[RowMapping]:
    return list(conn.execute(
        sa.select(S.c.model_id, M.c.version, M.c.status, S.c.score, S.c.threshold, S.c.flagged,
                  S.c.channel, S.c.scored_at)
        .select_from(S.join(M, M.c.id == S.c.model_id))
        .where(S.c.flight_id == flight_id)
        .order_by(S.c.scored_at.desc().nulls_last(), S.c.model_id.desc())).mappings())


def verdicts(conn: sa.Connection, flight_id: int) -> list[RowMapping]:
    """Every verdict on the flight, newest (the one that counts) first."""
    return list(conn.execute(
        sa.select(L.c.id, L.c.verdict, L.c.note, L.c.author, L.c.created_at)
        .where(L.c.flight_id == flight_id)
        .order_by(L.c.created_at.desc(), L.c.id.desc())).mappings())


def same_aircraft(conn: sa.Connection, icao24: str, first_seen: dt.datetime,
                  last_seen: dt.datetime, limit: int = 10
                  ) -> tuple[list[RowMapping], RowMapping | None]:
    """The aircraft's previous flights (newest first) and its next one."""
    cols = (F.c.id, F.c.callsign, F.c.first_seen, F.c.last_seen, F.c.flagged, F.c.score,
            F.c.threshold, F.c.state)
    before = list(conn.execute(
        sa.select(*cols).where(F.c.icao24 == icao24, F.c.last_seen < first_seen)
        .order_by(F.c.last_seen.desc()).limit(limit)).mappings())
    after = conn.execute(
        sa.select(*cols).where(F.c.icao24 == icao24, F.c.last_seen > last_seen)
        .order_by(F.c.last_seen.asc()).limit(1)).mappings().first()
    return before, after


# ---- models ----------------------------------------------------------------------------------
MODEL_COLUMNS = (M.c.id, M.c.version, M.c.status, M.c.reason, M.c.created_at, M.c.activated_at,
                 M.c.data_from, M.c.data_to, M.c.n_train, M.c.n_excluded, M.c.excluded,
                 M.c.epochs, M.c.seconds, M.c.val_loss, M.c.recall_where, M.c.precision_where,
                 M.c.recall_shape, M.c.precision_shape, M.c.threshold, M.c.threshold_method,
                 M.c.params)


def models_page(conn: sa.Connection, before_id: int | None, limit: int = 20) -> list[RowMapping]:
    """Models newest first (``limit`` + 1 rows, to know whether older ones follow)."""
    q = sa.select(*MODEL_COLUMNS).order_by(M.c.id.desc()).limit(limit + 1)
    if before_id is not None:
        q = q.where(M.c.id < before_id)
    return list(conn.execute(q).mappings())


# ---- writes ----------------------------------------------------------------------------------
def flight_exists(conn: sa.Connection, flight_id: int) -> bool:
    return conn.execute(sa.select(F.c.id).where(F.c.id == flight_id)).first() is not None


def add_verdict(conn: sa.Connection, flight_id: int, verdict: str, note: str | None,
                author: str) -> int:
    if verdict not in VERDICTS:
        raise ValueError(f"verdict must be one of {', '.join(VERDICTS)}")
    icao24 = sa.select(F.c.icao24).where(F.c.id == flight_id).scalar_subquery()
    return int(conn.execute(
        L.insert().values(flight_id=flight_id, icao24=icao24, verdict=verdict, note=note,
                          author=author)
        .returning(L.c.id)).scalar_one())
