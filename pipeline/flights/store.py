"""Flights in the database: place newly arrived positions, close and rasterize finished flights.

Flights are cut per *site* (:mod:`pipeline.db.sites`) and aircraft from the positions of all
the site's receivers: an aircraft heard by two receivers at once is one flight, and a gap in
one receiver's coverage is filled by the other. Each receiver's positions are stored as it
heard them (its own evidence, counted per receiver, exactly once per receiver); copies of one
transmission heard by several receivers are used once when the track is built
(:mod:`pipeline.flights.merge`).

One pass of a site (:func:`process_flights`) runs in ONE transaction under a transaction-level
advisory lock of the site, so two workers on one database never place the same positions twice
and a crash leaves nothing half done:

1. read every position that arrived since the last pass (``positions.inserted_at`` above the
   watermark kept in ``pipeline_state``), one query for all aircraft, ordered by time;
2. cut them with the gap rule (:mod:`pipeline.flights.segment`) and record them as open flights
   (new rows, or first_seen/last_seen/n_positions of an open flight updated);
3. close every open flight whose last position is more than the gap behind the data clock:
   read its positions (icao24 + time range, one query for a whole batch of flights), draw the
   track images and compute features for the batch at once, and store everything with
   state='finished' (one UPDATE per batch).

The positions table is only ever appended to; flights refer to positions by aircraft and
time range (the query in :data:`FLIGHT_POSITIONS_SQL`).
"""

from __future__ import annotations

import datetime as dt
import io
import logging
import struct
import time
from dataclasses import dataclass

import numpy as np
import sqlalchemy as sa
from psycopg2.extras import execute_values

from pipeline.config import Settings
from pipeline.db import partitions, sites
from pipeline.flights import features, merge, ragged, raster, segment
from pipeline.flights.clock import data_clock
from pipeline.geo import to_local_km

log = logging.getLogger(__name__)

# A writer's transaction stamps its rows with its start time (now()) but they become visible
# only at commit. Rows stamped within this margin of the present may still be invisible, so a
# pass reads (and moves the watermark) only up to now() - margin; --final reads everything.
COMMIT_MARGIN = dt.timedelta(seconds=60)

# Documented for SQL users: the positions of flight :id, from every receiver that heard it (a
# transmission heard by two receivers is two rows, one per receiver); an open flight's
# receivers are not known yet, so those of its site.
FLIGHT_POSITIONS_SQL = """\
SELECT p.*
FROM flights f
JOIN positions p ON p.icao24 = f.icao24
                AND p.receiver_id = ANY(coalesce(f.receivers, ARRAY(
                        SELECT r.id FROM receivers r WHERE r.site = f.site)))
                AND p.time BETWEEN f.first_seen AND f.last_seen
WHERE f.id = :id AND NOT p.on_ground
ORDER BY p.time"""

_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)
_REC = np.dtype([("t", ">i8"), ("g", "u1")])       # new positions: time (us), on_ground
_US = "(extract(epoch FROM {col}) * 1000000)::int8"


@dataclass
class PassResult:
    skipped: bool = False         # another worker held the lock
    new_positions: int = 0        # airborne positions placed into flights
    ground_positions: int = 0     # on-ground positions seen (they belong to no flight)
    created: int = 0
    extended: int = 0
    merged: int = 0               # open flights joined into another by a bridging run
    late: int = 0
    closed: int = 0
    empty: int = 0                # closed without any position left (retention dropped them)
    undrawn: int = 0              # closed without an image: too short (segment.drawn)
    clock: dt.datetime | None = None
    seconds: float = 0.0
    close_seconds: float = 0.0    # of which closing flights (read, draw, write)
    redrawn: int = 0              # finished flights whose older-format image was redrawn


def to_datetime(us: int) -> dt.datetime:
    return _EPOCH + dt.timedelta(microseconds=int(us))


def lock_key(site_id: str) -> str:
    return f"adsb.flights:{site_id}"


def take_lock(conn: sa.Connection, key: str, wait: bool) -> bool:
    """Transaction-level advisory lock named ``key``; released at commit or rollback."""
    if wait:
        conn.execute(sa.text("SELECT pg_advisory_xact_lock(hashtext(:k))"), {"k": key})
        return True
    return bool(conn.execute(sa.text("SELECT pg_try_advisory_xact_lock(hashtext(:k))"),
                             {"k": key}).scalar())


def _watermark_key(site_id: str) -> str:
    # Named as it was when flights were cut per receiver: a receiver's own site carries on.
    return f"flights.watermark:{site_id}"


def process_all(engine: sa.Engine, settings: Settings, *, final: bool = False,
                wait: bool = True) -> PassResult:
    """One pass of every site with a frame (this process's own receiver registered first);
    the figures added up."""
    sites.register_engine(engine, settings)
    with engine.connect() as conn:
        todo = sites.framed(conn)
    total = PassResult(skipped=bool(todo))
    for site in todo:
        res = process_flights(engine, settings, site=site, final=final, wait=wait)
        for name, value in vars(res).items():
            if isinstance(value, bool):
                setattr(total, name, getattr(total, name) and value)
            elif isinstance(value, (int, float)):
                setattr(total, name, getattr(total, name) + value)
        total.clock = res.clock or total.clock
    return total


def process_flights(engine: sa.Engine, settings: Settings, *, site: sites.Site | None = None,
                    final: bool = False, wait: bool = True) -> PassResult:
    """One pass of one site (default: the site of this process's receiver, registered here):
    place new positions, close finished flights. ``final`` closes every open flight and reads
    positions up to the present (end of a replay). With ``wait=False`` a pass that finds
    another worker holding the site's lock returns at once with ``skipped=True``."""
    started = time.perf_counter()
    res = PassResult()
    site = site or sites.register_engine(engine, settings)
    sid, rids = site.id, list(site.receivers)
    gap_us = int(round(settings.flight_gap_s * segment.US))
    with engine.begin() as conn:
        if not take_lock(conn, lock_key(sid), wait):
            return PassResult(skipped=True)
        # Read after taking the lock, each statement with a fresh snapshot (READ COMMITTED):
        # a pass that waited for another one sees what that one wrote.
        cutoff = None if final else conn.execute(
            sa.text("SELECT clock_timestamp() - :m"), {"m": COMMIT_MARGIN}).scalar()
        old_wm = _get_watermark(conn, sid)
        batch, newest = _read_new(conn, rids, old_wm, cutoff)
        late_ids = _place(conn, site, batch, old_wm, gap_us, res)
        new_wm = cutoff if cutoff is not None else newest
        if new_wm is not None and (old_wm is None or new_wm > old_wm):
            _set_watermark(conn, sid, new_wm)
        res.clock = data_clock(conn)
        # Late flights are finished at birth: their time is already behind the data clock.
        # Only their own rows count: the finished flight's rows share their time range.
        late = set(late_ids)
        ids = [i for i in _due(conn, site, res.clock, gap_us, cutoff, final) if i not in late]
        _close(conn, settings, site, [(i, None) for i in ids] + [(i, old_wm) for i in late_ids],
               cutoff, res)
        res.redrawn = redraw_old_images(conn, settings, site, final)
    res.seconds = time.perf_counter() - started
    log.info("flights of site %s: %d new positions, %d flights created (%d late), %d extended, %d closed "
             "in %.2f s (data clock %s)", sid, res.new_positions, res.created, res.late, res.extended,
             res.closed, res.seconds, res.clock)
    return res


# Finished flights with an image of an older format redrawn per pass: a year of flights is
# redrawn over a few hours of passes without making one pass long.
REDRAW_BATCH = 2_000


def redraw_old_images(conn: sa.Connection, settings: Settings, site: sites.Site,
                      everything: bool = False) -> int:
    """Redraw, from their positions, finished flights whose image is of an older format
    (``flights.image_format`` < ``raster.FORMAT``): a batch per pass, or all with
    ``everything``. Flights whose positions retention dropped keep their old image (a model of
    the new format never scores them). Returns the number redrawn."""
    total = 0
    while True:
        ids = conn.execute(sa.text(
            "SELECT id FROM flights WHERE image_format < :f AND image IS NOT NULL "
            "AND state = 'finished' AND site = :site AND n_positions > 0 "
            "ORDER BY id LIMIT :n"),
            {"f": raster.FORMAT, "site": site.id, "n": REDRAW_BATCH}
        ).scalars().all()
        if not ids:
            break
        scratch = PassResult()
        # _close sets n_positions = 0 on a flight without positions left, so it is not
        # picked again.
        _close(conn, settings, site, [(i, None) for i in ids], None, scratch)
        total += len(ids) - scratch.empty
        if not everything:
            break
    if total:
        log.info("flights: redrew %d older track images in format %d", total, raster.FORMAT)
    return total


# ---- watermark ----------------------------------------------------------------------------
def _get_watermark(conn: sa.Connection, sid: str) -> dt.datetime | None:
    value = conn.execute(sa.text("SELECT value->>'inserted_at' FROM pipeline_state WHERE key = :k"),
                         {"k": _watermark_key(sid)}).scalar()
    return dt.datetime.fromisoformat(value) if value else None


def _set_watermark(conn: sa.Connection, sid: str, wm: dt.datetime) -> None:
    conn.execute(sa.text(
        "INSERT INTO pipeline_state (key, value, updated_at) "
        "VALUES (:k, jsonb_build_object('inserted_at', :v), now()) "
        "ON CONFLICT (key) DO UPDATE SET value = excluded.value, updated_at = now()"),
        {"k": _watermark_key(sid), "v": wm.isoformat()})


def _inserted_filter(wm: dt.datetime | None, cutoff: dt.datetime | None, alias: str = ""
                     ) -> tuple[str, dict]:
    conds, params = [], {}
    if wm is not None:
        conds.append(f"{alias}inserted_at > :wm")
        params["wm"] = wm
    if cutoff is not None:
        conds.append(f"{alias}inserted_at <= :cutoff")
        params["cutoff"] = cutoff
    return (" AND ".join(conds) or "true"), params


# ---- placing new positions ----------------------------------------------------------------
def _read_new(conn: sa.Connection, rids: list[str], wm: dt.datetime | None,
              cutoff: dt.datetime | None) -> tuple[dict[str, np.ndarray], dt.datetime | None]:
    """Positions of the site's receivers that arrived since the watermark: {icao24: records
    (t us, on_ground)} sorted by time, and the newest inserted_at read. One query; each
    aircraft's rows come back as one binary string so that 200 k rows cost one round trip and
    no per-row Python objects. A transmission heard by two receivers is two records here; the
    gap rule does not mind, and the finished flight counts it once (_close_batch)."""
    # Only the days that received rows since the watermark: inserted_at alone does not tell
    # the planner which partitions can hold them, so it would visit every day kept.
    days = partitions.days_written_since(conn, rids, wm)
    if not days:
        return {}, None
    where, params = _inserted_filter(wm, cutoff)
    in_days, day_params = partitions.time_filter(days)
    rows = conn.execute(sa.text(
        f"SELECT icao24, string_agg(int8send({_US.format(col='time')}) || "
        "CASE WHEN on_ground THEN '\\x01'::bytea ELSE '\\x00'::bytea END, ''::bytea "
        "ORDER BY time), max(inserted_at) "
        f"FROM positions WHERE receiver_id = ANY(:rids) AND {where} AND {in_days} "
        "GROUP BY icao24"),
        {"rids": rids, **params, **day_params}).all()
    batch = {icao: np.frombuffer(recs, dtype=_REC) for icao, recs, _ in rows}
    newest = max((r[2] for r in rows), default=None)
    return batch, newest


def _place(conn: sa.Connection, site: sites.Site, batch: dict[str, np.ndarray],
           wm: dt.datetime | None, gap_us: int, res: PassResult) -> list[int]:
    """Record the new positions as flights; returns the ids of late flights created."""
    if not batch:
        return []
    # Until the flight is finished (and its receivers counted), the site's first receiver.
    rid = site.receivers[0] if site.receivers else site.id
    lo = min(int(r["t"][0]) for r in batch.values()) - gap_us
    hi = max(int(r["t"][-1]) for r in batch.values()) + gap_us
    known = _known_flights(conn, site.id, list(batch), lo, hi)
    old_ground = _old_ground(conn, list(site.receivers), wm, lo, hi) if wm is not None else {}

    inserts: list[tuple] = []       # (icao24, first, last, n, late)
    updates: dict[int, segment.Known] = {}
    deletes: list[int] = []
    for icao, recs in batch.items():
        airborne = recs["t"][recs["g"] == 0]
        ground = np.sort(np.concatenate([recs["t"][recs["g"] == 1],
                                         old_ground.get(icao, np.empty(0, np.int64))]))
        res.ground_positions += int((recs["g"] == 1).sum())
        res.new_positions += int(airborne.size)
        flights = known.get(icao, [])
        for p in segment.place(airborne, ground, flights, gap_us):
            n = p.last - p.first + 1
            if p.action is segment.Action.EXTEND:
                head = next(k for k in flights if k.id == p.into[0])
                updates[head.id] = head
                deletes.extend(p.into[1:])
                res.extended += 1
                res.merged += len(p.into) - 1
            else:
                late = p.action is segment.Action.LATE
                inserts.append((icao, site.id, rid, to_datetime(airborne[p.first]),
                                to_datetime(airborne[p.last]), n, late))
                res.created += 1
                res.late += late
    for i in deletes:
        updates.pop(i, None)
    cur = _cursor(conn)
    late_ids = []
    if inserts:
        ids = execute_values(
            cur, "INSERT INTO flights (icao24, site, receiver_id, first_seen, last_seen, "
                 "n_positions, late) VALUES %s RETURNING id, late", inserts, fetch=True,
            page_size=1000)
        late_ids = [i for i, late in ids if late]
    if updates:
        execute_values(
            cur, "UPDATE flights f SET first_seen = v.first, last_seen = v.last, "
                 "n_positions = v.n FROM (VALUES %s) AS v(id, first, last, n) "
                 "WHERE f.id = v.id AND f.state = 'open'",
            [(k.id, to_datetime(k.first_us), to_datetime(k.last_us), k.n_positions)
             for k in updates.values()], page_size=1000)
    if deletes:
        # Open flights joined into another by a run that bridged them: no image or score yet.
        cur.execute("DELETE FROM flights WHERE id = ANY(%s) AND state = 'open'", (deletes,))
    return late_ids


def _known_flights(conn: sa.Connection, sid: str, icaos: list[str], lo: int, hi: int
                   ) -> dict[str, list[segment.Known]]:
    rows = conn.execute(sa.text(
        f"SELECT id, icao24, {_US.format(col='first_seen')}, {_US.format(col='last_seen')}, "
        "n_positions, state = 'open' FROM flights WHERE site = :site "
        "AND icao24 = ANY(:icaos) AND last_seen >= :lo AND first_seen <= :hi"),
        {"site": sid, "icaos": icaos, "lo": to_datetime(lo), "hi": to_datetime(hi)}).all()
    out: dict[str, list[segment.Known]] = {}
    for fid, icao, first, last, n, is_open in rows:
        out.setdefault(icao, []).append(segment.Known(fid, first, last, n, is_open))
    return out


def _old_ground(conn: sa.Connection, rids: list[str], wm: dt.datetime, lo: int, hi: int
                ) -> dict[str, np.ndarray]:
    """On-ground times already processed in earlier passes (a landing seen then still splits
    a flight from a take-off seen now)."""
    rows = conn.execute(sa.text(
        f"SELECT icao24, string_agg(int8send({_US.format(col='time')}), ''::bytea ORDER BY time) "
        "FROM positions WHERE receiver_id = ANY(:rids) AND on_ground AND inserted_at <= :wm "
        "AND time BETWEEN :lo AND :hi GROUP BY icao24"),
        {"rids": rids, "wm": wm, "lo": to_datetime(lo), "hi": to_datetime(hi)}).all()
    return {icao: np.frombuffer(b, dtype=">i8").astype(np.int64) for icao, b in rows}


# ---- closing finished flights -------------------------------------------------------------
def _due(conn: sa.Connection, site: sites.Site, clock: dt.datetime, gap_us: int,
         cutoff: dt.datetime | None, final: bool) -> list[int]:
    """Open flights to close now. A flight is held back while positions not yet placed (newer
    than the cutoff) could still extend it."""
    if final:
        return list(conn.execute(sa.text(
            "SELECT id FROM flights WHERE site = :site AND state = 'open' ORDER BY id"),
            {"site": site.id}).scalars())
    gap = dt.timedelta(microseconds=gap_us)
    rids = list(site.receivers)
    in_days, day_params = partitions.time_filter(
        partitions.days_written_since(conn, rids, cutoff))
    rows = conn.execute(sa.text(
        "SELECT f.id FROM flights f LEFT JOIN ("
        "  SELECT icao24, min(time) AS t FROM positions "
        f"  WHERE receiver_id = ANY(:rids) AND inserted_at > :cutoff AND {in_days} "
        "  GROUP BY icao24) u "
        "ON u.icao24 = f.icao24 "
        "WHERE f.site = :site AND f.state = 'open' AND f.last_seen < :before "
        "AND (u.t IS NULL OR u.t > f.last_seen + :gap) ORDER BY f.id"),
        {"rids": rids, "site": site.id, "cutoff": cutoff, "before": clock - gap, "gap": gap, **day_params}).scalars()
    return list(rows)


def _close(conn: sa.Connection, settings: Settings, site: sites.Site,
           todo: list[tuple[int, dt.datetime | None]], cutoff: dt.datetime | None,
           res: PassResult) -> None:
    """Close every flight in ``todo`` (id, only rows inserted after this time or None): read
    their positions, draw, compute features and store everything with state='finished', a
    batch of flights at a time (one query, one UPDATE per batch)."""
    if not todo:
        return
    started = time.perf_counter()
    cur = _cursor(conn)
    empty: list[int] = []
    for part in _batches(cur, todo):
        part_empty, undrawn = _close_batch(cur, settings, site, part, cutoff)
        empty += part_empty
        res.undrawn += undrawn
    if empty:
        # Only when retention dropped the positions of a flight that was still open.
        log.warning("flights: %d flights had no positions left when closed (ids %s...)",
                    len(empty), empty[:5])
        cur.execute("UPDATE flights SET state = 'finished', closed_at = now(), n_positions = 0 "
                    "WHERE id = ANY(%s)", (empty,))
    res.closed += len(todo)
    res.empty += len(empty)
    if res.undrawn:
        log.info("flights: %d closed flights too short to draw (under %d positions or %.0f s): "
                 "kept without an image, so never scored or trained on", res.undrawn,
                 segment.MIN_DRAWN_POSITIONS, segment.MIN_DRAWN_S)
    secs = time.perf_counter() - started
    res.close_seconds += secs
    log.debug("flights: closed %d in %.2f s (%.0f flights/s)", len(todo), secs,
              len(todo) / max(secs, 1e-9))


# Positions of the flights to close, one row per flight: its summary and its track as an array
# of points (longitude, latitude) in time order. The aggregate reads the rows straight from the
# subquery ordered by time (the index on (icao24, time) delivers them so), which is how
# PostgreSQL feeds an aggregate in order without sorting each flight's rows again, as an
# ORDER BY inside array_agg would. Binary COPY: floats arrive as bytes, no text to parse.
_CLOSE_SQL = """\
COPY (
SELECT f.id, a.first, a.last, a.amin, a.amax, a.callsign, a.track, a.times, a.receiver,
       a.receivers, a.sources
FROM unnest(%(ids)s::bigint[], %(after)s::timestamptz[]) AS v(id, after)
JOIN flights f ON f.id = v.id
CROSS JOIN LATERAL (
  SELECT min(p.time) AS first, max(p.time) AS last,
         min(p.altitude) AS amin, max(p.altitude) AS amax,
         mode() WITHIN GROUP (ORDER BY p.callsign) AS callsign,
         array_agg(point(p.longitude, p.latitude)) AS track,
         array_agg(p.time) AS times,
         mode() WITHIN GROUP (ORDER BY p.receiver_id) AS receiver,
         string_agg(DISTINCT p.receiver_id, E'\n') AS receivers,
         array_agg(array_position(%(receivers)s::text[], p.receiver_id)) AS sources
  FROM (SELECT p.time, p.latitude, p.longitude, p.altitude, p.callsign, p.receiver_id
        FROM positions p
        WHERE p.icao24 = f.icao24 AND p.receiver_id = ANY(%(receivers)s)
          AND p.time BETWEEN f.first_seen AND f.last_seen AND NOT p.on_ground
          AND (v.after IS NULL OR p.inserted_at > v.after) AND {days} {cut}
        ORDER BY p.time) p
) a
) TO STDOUT WITH (FORMAT binary)"""

# Every column travels as one array (text literal, or one bytea holding every image): building
# them costs a few ms per thousand flights where psycopg2's per-value adaptation cost ~30 ms.
_FINISH_SQL = """\
UPDATE flights f SET state = 'finished', closed_at = now(), n_positions = v.n,
    first_seen = %(epoch)s + v.first * interval '1 microsecond',
    last_seen = %(epoch)s + v.last * interval '1 microsecond',
    callsign = v.callsign, min_altitude = v.amin, max_altitude = v.amax,
    path_km = v.path, straight_km = v.straight, tortuosity = v.tort, turning_deg = v.turn,
    max_distance_km = v.maxd,
    image = CASE WHEN v.size > 0 THEN substring(%(images)s FROM v.at FOR v.size) END,
    where_lit = v.wl, shape_lit = v.sl, shape_side_km = v.side, image_format = %(format)s,
    receiver_id = v.receiver, receivers = string_to_array(v.receivers, E'\n')
FROM unnest(%(id)s::bigint[], %(n)s::int[], %(first)s::bigint[], %(last)s::bigint[],
            %(callsign)s::text[], %(amin)s::int[], %(amax)s::int[], %(path)s::real[],
            %(straight)s::real[], %(tort)s::real[], %(turn)s::real[], %(maxd)s::real[],
            %(at)s::int[], %(size)s::int[], %(wl)s::real[], %(sl)s::real[], %(side)s::real[],
            %(receiver)s::text[], %(receivers)s::text[])
    AS v(id, n, first, last, callsign, amin, amax, path, straight, tort, turn, maxd, at, size,
         wl, sl, side, receiver, receivers)
WHERE f.id = v.id"""


# A query closing flights reads at most this many positions (from the flights' n_positions),
# which bounds the memory of a pass (~150 bytes a position at the peak) however many flights are
# due at once (the end of a day's replay), and at most this many flights, which keeps the
# planner's estimate below jit_above_cost (JIT compiling it costs more than it saves).
CLOSE_BATCH_POSITIONS = 500_000
CLOSE_BATCH_FLIGHTS = 2_000


def _batches(cur, todo: list[tuple[int, dt.datetime | None]]
             ) -> list[list[tuple[int, dt.datetime | None]]]:
    """``todo`` cut into consecutive batches within CLOSE_BATCH_POSITIONS positions and
    CLOSE_BATCH_FLIGHTS flights (a flight with more positions is a batch of its own)."""
    cur.execute("SELECT id, n_positions FROM flights WHERE id = ANY(%s)", ([i for i, _ in todo],))
    sizes = dict(cur.fetchall())
    out: list[list[tuple[int, dt.datetime | None]]] = [[]]
    total = 0
    for item in todo:
        n = sizes.get(item[0], 0)
        if out[-1] and (total + n > CLOSE_BATCH_POSITIONS or len(out[-1]) >= CLOSE_BATCH_FLIGHTS):
            out.append([])
            total = 0
        out[-1].append(item)
        total += n
    return out


def _close_batch(cur, settings: Settings, site: sites.Site,
                 todo: list[tuple[int, dt.datetime | None]],
                 cutoff: dt.datetime | None) -> tuple[list[int], int]:
    """Close the flights of ``todo``; returns the ids of those without any position left and
    how many were too short to draw (stored without an image, their features all the same)."""
    cut = "AND p.inserted_at <= %(cutoff)s" if cutoff is not None else ""
    flight_ids = [i for i, _ in todo]
    # The days the flights cover, as constants: the planner keeps only their partitions (the
    # per-flight time range alone is known only while running, after every partition was
    # planned and locked).
    cur.execute("SELECT DISTINCT d::date FROM flights f, generate_series("
                "date_trunc('day', f.first_seen AT TIME ZONE 'UTC'), "
                "f.last_seen AT TIME ZONE 'UTC', interval '1 day') AS d WHERE f.id = ANY(%s)",
                (flight_ids,))
    days, day_params = partitions.time_filter([d for (d,) in cur.fetchall()], "p.time",
                                              "%({})s")
    rows = _copy_rows(cur, cur.mogrify(_CLOSE_SQL.format(cut=cut, days=days), {
        "ids": flight_ids, "after": [a for _, a in todo], "cutoff": cutoff,
        "receivers": list(site.receivers), **day_params}))
    empty = [_id(r[0]) for r in rows if r[6] is None]          # no rows: array_agg is NULL
    rows = [r for r in rows if r[6] is not None]
    if not rows:
        return empty, 0
    ids, first, last, amin, amax = ([_int(r[k]) for r in rows] for k in range(5))
    tracks = [_points(r[6]) for r in rows]
    times = [_int8s(r[7]) for r in rows]
    offsets = ragged.offsets_of([t.size for t in tracks])
    if len(site.receivers) > 1:
        # One point per transmission: copies heard by several receivers are dropped.
        everything = np.concatenate(tracks)
        sources = np.concatenate([_int4s(r[10]) for r in rows])
        keep = merge.first_copies(np.concatenate(times), everything["lat"], everything["lon"],
                                  sources, offsets, round(settings.merge_tolerance_s * segment.US))
        kept = np.add.reduceat(keep, offsets[:-1]) if keep.size else keep
        tracks = np.split(everything[keep], np.cumsum(kept)[:-1])
        offsets = ragged.offsets_of([t.size for t in tracks])
    n = len(rows)
    sides, lit, pngs = np.empty(n), np.empty((n, 2)), []
    feats = {name: np.empty(n) for name in features.NAMES}
    # A span of flights at a time, so that NumPy's working arrays stay in the CPU's cache.
    for i, j in ragged.spans(offsets):
        pts = np.concatenate(tracks[i:j])
        x, y = to_local_km(pts["lat"], pts["lon"], site.latitude, site.longitude)
        part = offsets[i:j + 1] - offsets[i]
        images, sides[i:j] = raster.rasterize_many(x, y, part, site.range_km)
        lit[i:j] = raster.lit_fractions_many(images)
        pngs += raster.encode_pngs(images)
        for name, values in features.compute_many(x, y, part).items():
            feats[name][i:j] = values
    # An empty image is stored as NULL (the UPDATE's CASE).
    keep = segment.drawn(np.diff(offsets), np.array(first, np.int64), np.array(last, np.int64))
    pngs = [png if k else b"" for png, k in zip(pngs, keep.tolist())]
    size = np.array([len(p) for p in pngs])
    cur.execute(_FINISH_SQL, {
        "epoch": _PG_EPOCH, "images": b"".join(pngs), "format": raster.FORMAT,
        "at": _array(np.cumsum(size) - size + 1), "size": _array(size),
        "id": _array(ids), "n": _array(np.diff(offsets)), "first": _array(first),
        "last": _array(last), "callsign": [_text(r[5]) for r in rows],
        "amin": _array(amin), "amax": _array(amax),
        "path": _array(feats["path_km"]), "straight": _array(feats["straight_km"]),
        "tort": _array(feats["tortuosity"]), "turn": _array(feats["turning_deg"]),
        "maxd": _array(feats["max_distance_km"]), "wl": _array(lit[:, 0]),
        "sl": _array(lit[:, 1]), "side": _array(sides),
        "receiver": [_text(r[8]) for r in rows], "receivers": [_text(r[9]) for r in rows]})
    return empty, n - int(np.count_nonzero(keep))


def _cursor(conn: sa.Connection):
    """The psycopg2 cursor under a SQLAlchemy connection (for COPY and array parameters)."""
    raw = conn.connection.driver_connection
    assert raw is not None, "connection is closed"
    return raw.cursor()


def _array(values) -> str:
    """A PostgreSQL array literal of numbers (None is NULL)."""
    if isinstance(values, np.ndarray):
        values = values.tolist()
    return "{" + ",".join("NULL" if v is None else str(v) for v in values) + "}"


# ---- binary COPY output -------------------------------------------------------------------
_COPY_SIGNATURE = b"PGCOPY\n\xff\r\n\x00"
_PG_EPOCH = dt.datetime(2000, 1, 1, tzinfo=dt.timezone.utc)
_POINTS = np.dtype([("size", ">i4"), ("lon", ">f8"), ("lat", ">f8")])


def _copy_rows(cur, sql: bytes) -> list[list[memoryview | None]]:
    """The rows of a ``COPY (...) TO STDOUT WITH (FORMAT binary)``: each field's bytes, or
    None for NULL."""
    buf = io.BytesIO()
    cur.copy_expert(sql, buf)
    data = buf.getbuffer()
    if bytes(data[:11]) != _COPY_SIGNATURE:
        raise ValueError("not PostgreSQL binary COPY output")
    pos = 19 + struct.unpack_from(">i", data, 15)[0]          # flags, header extension
    rows: list[list[memoryview | None]] = []
    while True:
        (n,) = struct.unpack_from(">h", data, pos)
        pos += 2
        if n < 0:                                              # the trailer
            return rows
        row: list[memoryview | None] = []
        for _ in range(n):
            (size,) = struct.unpack_from(">i", data, pos)
            pos += 4
            if size < 0:
                row.append(None)
            else:
                row.append(data[pos:pos + size])
                pos += size
        rows.append(row)


def _id(field: memoryview | None) -> int:
    """A NOT NULL bigint field."""
    assert field is not None, "NULL id"
    return int.from_bytes(field, "big", signed=True)


def _int(field: memoryview | None) -> int | None:
    return None if field is None else int.from_bytes(field, "big", signed=True)


def _text(field: memoryview | None) -> str | None:
    return None if field is None else str(field, "utf-8")


def _int8s(field: memoryview | None) -> np.ndarray:
    """A one-dimensional array of 8-byte values without NULLs (binary; timestamptz[]:
    microseconds since 2000-01-01)."""
    return _fixed_array(field, ">i8")


def _int4s(field: memoryview | None) -> np.ndarray:
    return _fixed_array(field, ">i4")


def _fixed_array(field: memoryview | None, kind: str) -> np.ndarray:
    assert field is not None
    ndim, has_nulls, _oid, n = struct.unpack_from(">iiii", field, 0)
    values = np.frombuffer(field, dtype=np.dtype([("size", ">i4"), ("v", kind)]), offset=20)
    if ndim != 1 or has_nulls or values.size != n or (values["size"] != values.dtype["v"].itemsize).any():
        raise ValueError(f"expected a one-dimensional array of {kind} without NULLs")
    return values["v"].astype(np.int64)


def _timestamp(field: memoryview) -> dt.datetime:
    return _PG_EPOCH + dt.timedelta(microseconds=int.from_bytes(field, "big", signed=True))


def _points(field: memoryview | None) -> np.ndarray:
    """A one-dimensional point[] without NULLs (binary): its (size, lon, lat) records."""
    assert field is not None
    ndim, has_nulls, _oid, n = struct.unpack_from(">iiii", field, 0)
    points = np.frombuffer(field, dtype=_POINTS, offset=20)
    if ndim != 1 or has_nulls or points.size != n or (points["size"] != 16).any():
        raise ValueError("expected a one-dimensional array of points without NULLs")
    return points
