"""Traffic changes: a burst of flags the flag rate cannot explain becomes one event, one alert.

The threshold promises that about ``ADSB_FLAG_RATE`` of ordinary flights are flagged. When the
other runway comes into use, or a new route opens, the active model flags far more than that
until a model has learnt the new traffic: at a busy site hundreds of alerts in an afternoon,
each of them "the traffic changed". So after every scoring batch, in the batch's transaction,
the scorer asks here whether the flags of the newest hours are still chance:

* **Test.** Of the ``n`` flights the active model scored whose flight ended in the newest
  ``ADSB_CHANGE_WINDOW_H`` hours (counted back from the newest flight of the batch, so a
  replay slides through its day as a live site does), ``k`` are flags that *where* or
  *direction* alone would raise (whichever group carried them) and that fly no pattern (a
  path at least twice as long as its ends need: patterns alert one by one, a burst of them is
  patterns being flown). Under the promise all flags together are binomial(n, rate), so ``k`` is at
  most that; the same is asked of the newest half and quarter of the window, which
  see a sudden change sooner, each at a third of ``ADSB_CHANGE_ALPHA`` (so the three together
  trip by chance with at most that probability). A window trips when P(X >= k) is below that
  and ``k >= ADSB_CHANGE_MIN_FLAGS``.
* **Event.** Of *where* and *direction*, the group that alone would raise more of the
  window's flags is the change's; the window's flags it would raise (no patterns:
  :func:`carried`) are its flights. Where they are is said in words from their flagged pixels
  (the receiver frame) and the heading channel most of them light: "around 30 km E of the
  receiver, heading W, low". One alert goes out, carried by the newest of its flights.
* **Hold.** The alert of a flag a change could take in (:func:`could_join`) waits
  ``ADSB_CHANGE_HOLD_MIN`` of the data clock (as alert managers wait to group alerts): the
  first flags of a change are evidence only together, and until the test trips each would
  otherwise reach the user on its own. A change that opens takes the held alerts of its
  flights back; the others are released once the data clock has moved a hold past their
  flight (or as long has passed on the wall clock, should the traffic stop).
* **While open**, every new flag the change's group alone would raise joins it instead of
  alerting on its own, whichever group carried it: the new traffic is rare in *where*, in
  *direction* and (its own frame is not turned) often in *shape*. A pattern, or a flag the
  change's group would not raise (against the traffic on a busy corridor while the change is
  a place), still alerts: it stands out from the changed traffic. Once
  ``ADSB_CHANGE_TRAIN_FLIGHTS`` flights have ended since it began, a training is queued (flights of a change are not left out of training as
  flagged ones are: they are the new normal to learn).
* **End.** A model trained on flights up to after its start becomes active (``learnt``;
  another model: ``replaced``), or, a whole window after it was detected, the group's flags
  in the window fall back to what chance gives at the flag rate (``subsided``,
  :func:`subsided`).
"""

from __future__ import annotations

import datetime as dt
import logging
import math
from collections import Counter
from dataclasses import dataclass
from typing import Any

import numpy as np
import sqlalchemy as sa

from pipeline.alerts import outbox
from pipeline.config import Settings
from pipeline.db import jobs
from pipeline.flights.raster import DIRECTION, SIZE, decode_pngs
from pipeline.model import registry

log = logging.getLogger(__name__)

# The groups a change can be carried by. Traffic changes where and in which direction it flies;
# a burst of shape flags is patterns being flown (a calibration campaign, a survey), each of
# which is what a user wants to hear of.
GROUPS = ("where", "direction")
# Parts of the window tested, newest first: the whole, its newest half and quarter.
PARTS = (1.0, 0.5, 0.25)
LOW_FT = 3000                 # a change whose flights mostly go below this is near an airport
# A flight whose path is at least twice as long as its ends need flies a pattern (an orbit, a
# holding, a survey): it stands out from any change of the traffic and always alerts on its own.
# On the simulated site the patterns fly 2.9-11 times their ends' distance, the approaches and
# departures of either runway at most 1.34 (the total turning, summed over 1 Hz positions, does
# not tell them apart: its noise adds thousands of degrees to a straight-in approach).
PATTERN_MIN_TORTUOSITY = 2.0
HEADINGS = ("N", "NE", "E", "SE", "S", "SW", "W", "NW")
# A change has subsided when its group's flags in the window come by chance at the flag rate
# at least this often (binomial tail): see subsided().
SUBSIDED_P = 0.05


def compass(bearing_deg: float) -> str:
    """The 8-point compass name of a bearing (degrees clockwise from north)."""
    return HEADINGS[int(((bearing_deg % 360.0) + 22.5) // 45.0) % len(HEADINGS)]


def binomial_tail(k: int, n: int, p: float) -> float:
    """P(X >= k) for X ~ binomial(n, p), summed in log space (exact for any n a site has)."""
    if k <= 0:
        return 1.0
    if k > n or p <= 0.0:
        return 0.0
    if p >= 1.0:
        return 1.0
    i = np.arange(k, n + 1, dtype=np.float64)
    logs = (math.lgamma(n + 1) - np.array([math.lgamma(x + 1) for x in i])
            - np.array([math.lgamma(n - x + 1) for x in i])
            + i * math.log(p) + (n - i) * math.log1p(-p))
    top = float(logs.max())
    return float(min(1.0, math.exp(top) * np.exp(logs - top).sum()))


def subsided(k: int, n: int, rate: float) -> bool:
    """Whether ``k`` flags of a change's group among ``n`` flights of the window are what the
    flag rate gives by chance (P(X >= k) at least SUBSIDED_P).

    Why not "at most twice the rate allows", as it was: at a small site a 3-hour window holds
    a few dozen flights, twice 1 % of them is less than one flag, so one ordinary flag of the
    usual traffic (which 1 % of flights get, by design) kept a change open for hours after the
    runways had turned back, and while open a change takes in the flags its group raises,
    route anomalies among them, instead of alerting them (tests/test_traffic_change_twice.py:
    150 flights a day, the first change held open until 17:00 by one flag at 13:12). At a busy
    site the two rules agree within a flag or two (300 flights in the window: at most 6 flags
    either way)."""
    return k == 0 or binomial_tail(k, n, rate) >= SUBSIDED_P


@dataclass(frozen=True)
class Trip:
    """The most significant part of the window: its start, flights scored, flags, P(X >= k)."""

    since: dt.datetime
    n: int
    k: int
    p_value: float


def test_window(counts: list[tuple[dt.datetime, int, int]], rate: float, alpha: float,
                min_flags: int) -> Trip | None:
    """The part of the window (since, n, k) whose flags are least likely by chance, when that is
    below ``alpha`` split over the parts; None when every part is chance."""
    best = None
    for since, n, k in counts:
        if k < min_flags:
            continue
        p = binomial_tail(k, n, rate)
        if p < alpha / len(counts) and (best is None or p < best.p_value):
            best = Trip(since, n, k, p)
    return best


# Flights scored in each part of the window, and those flagged through where or direction.
_COUNTS = sa.text("""
    SELECT count(*) FILTER (WHERE f.last_seen > :s0), count(*) FILTER (WHERE f.last_seen > :s0
                                                                        AND t.route),
           count(*) FILTER (WHERE f.last_seen > :s1), count(*) FILTER (WHERE f.last_seen > :s1
                                                                        AND t.route),
           count(*) FILTER (WHERE f.last_seen > :s2), count(*) FILTER (WHERE f.last_seen > :s2
                                                                        AND t.route)
      FROM flights f
      JOIN flight_scores s ON s.icao24 = f.icao24 AND s.flight_id = f.id
                          AND s.model_id = f.model_id
     CROSS JOIN LATERAL (SELECT f.flagged AND coalesce(f.tortuosity, 1) < :pattern
                               AND ((:where AND s.where_score > f.threshold)
                                    OR (:direction AND s.direction_score > f.threshold))
                               AS route) t
     WHERE f.site = :site AND f.model_id = :model AND f.score IS NOT NULL
       AND f.state = 'finished' AND f.last_seen > :s0 AND f.last_seen <= :end""")

# The window's flags not yet part of a change, with what places them (their images are read
# only when a change opens: describe()).
_FLAGS = sa.text("""
    SELECT f.id, f.icao24, f.first_seen, f.last_seen, s.channel, s.error_row, s.error_col,
           f.min_altitude, s.where_score, s.direction_score, f.threshold, f.tortuosity
      FROM flights f
      JOIN flight_scores s ON s.icao24 = f.icao24 AND s.flight_id = f.id
                          AND s.model_id = f.model_id
     WHERE f.site = :site AND f.model_id = :model AND f.flagged AND f.state = 'finished'
       AND f.traffic_change_id IS NULL AND f.last_seen > :since AND f.last_seen <= :end
     ORDER BY f.last_seen, f.id""")

_OPEN = sa.text("""
    SELECT * FROM traffic_changes WHERE site = :site AND ended_at IS NULL FOR UPDATE""")


def review(conn: sa.Connection, settings: Settings, model: registry.ModelRow,
           batch_ids: list[int]) -> set[int]:
    """After a batch's scores are written (same transaction): test the flags of the newest
    hours, open, grow or end the site's traffic change. Returns the batch's flags that belong
    to a change: they must not alert on their own."""
    if settings.change_alpha <= 0 or not batch_ids or model.site is None:
        return set()
    site = model.site
    # One reviewer per site at a time (two workers may score one site's batches at once).
    conn.execute(sa.text("SELECT pg_advisory_xact_lock(hashtext('traffic_changes:' || :s))"),
                 {"s": site})
    end = conn.execute(sa.text("SELECT max(last_seen) FROM flights WHERE id = ANY(:ids)"),
                       {"ids": batch_ids}).scalar_one()
    if end is None:
        return set()
    absorbed = _review(conn, settings, model, site, end, batch_ids)
    if settings.change_hold_min > 0:
        # Held alerts whose flights ended a hold ago (data clock) and no change took in go now.
        released = outbox.release_held(conn, site,
                                       end - dt.timedelta(minutes=settings.change_hold_min))
        if released:
            log.info("alerts of %d flags released after the hold: no traffic change took them in",
                     released)
    return absorbed


def _review(conn: sa.Connection, settings: Settings, model: registry.ModelRow, site: str,
            end: dt.datetime, batch_ids: list[int]) -> set[int]:
    window = dt.timedelta(hours=settings.change_window_h)
    starts = [end - window * part for part in PARTS]
    groups = route_groups(model)
    row = conn.execute(_COUNTS, {"site": site, "model": model.id, "end": end,
                                 "pattern": PATTERN_MIN_TORTUOSITY, "where": "where" in groups,
                                 "direction": "direction" in groups, "s0": starts[0],
                                 "s1": starts[1], "s2": starts[2]}).one()
    counts = [(starts[i], int(row[2 * i]), int(row[2 * i + 1])) for i in range(len(PARTS))]
    change = conn.execute(_OPEN, {"site": site}).mappings().first()
    if change is not None and change["model_id"] != model.id:
        learnt = model.data_to is not None and model.data_to >= change["started_at"]
        _end(conn, change, end, "learnt" if learnt else "replaced")
        change = None
    if change is None:
        trip = test_window(counts, settings.flag_rate, settings.change_alpha,
                           settings.change_min_flags)
        if trip is None:
            return set()
        return _open(conn, settings, model, trip, end, set(batch_ids))
    joined = _join(conn, change, model, starts[0], end, set(batch_ids))
    _maybe_train(conn, settings, change)
    if end - window > change["detected_at"]:
        n = counts[0][1]
        k_group = conn.execute(sa.text("""
            SELECT count(*) FROM flights f
              JOIN flight_scores s ON s.icao24 = f.icao24 AND s.flight_id = f.id
                                  AND s.model_id = f.model_id
             WHERE f.site = :site AND f.model_id = :model AND f.flagged
               AND coalesce(f.tortuosity, 1) < :pattern
               AND CASE :ch WHEN 'where' THEN s.where_score ELSE s.direction_score END
                   > f.threshold
               AND f.last_seen > :since AND f.last_seen <= :end"""),
            {"site": site, "model": model.id, "ch": change["channel"], "since": starts[0],
             "end": end, "pattern": PATTERN_MIN_TORTUOSITY}).scalar_one()
        if subsided(k_group, n, settings.flag_rate):
            _end(conn, change, end, "subsided")
    return joined


def route_rarity(flag: Any, channel: str) -> float:
    """The flag's score in the route group ``channel`` (-inf when unknown)."""
    score = flag.where_score if channel == "where" else flag.direction_score
    return float(score) if score is not None else float("-inf")


def is_pattern(tortuosity: float | None) -> bool:
    """Whether a flight of this tortuosity flies a pattern (unknown: no)."""
    return tortuosity is not None and tortuosity == tortuosity \
        and tortuosity >= PATTERN_MIN_TORTUOSITY


def route_groups(model: registry.ModelRow) -> tuple[str, ...]:
    """The route groups that raise the model's flags (models before *where* stopped flagging:
    both)."""
    scored = model.params.get("scored_groups")
    return tuple(g for g in GROUPS if scored is None or g in scored)


def could_join(where: float | None, direction: float | None, threshold: float,
               tortuosity: float | None, groups: tuple[str, ...] = GROUPS) -> bool:
    """Whether a flag could belong to a traffic change: one of the model's route ``groups``
    alone would raise it (its score there is above the threshold, whichever group carried it)
    and the flight is no pattern."""
    scores = {"where": where, "direction": direction}
    return not is_pattern(tortuosity) and any(
        (v := scores[g]) is not None and v > threshold for g in groups)


def carried(flag: Any, channel: str) -> bool:
    """Whether a flag (a row of _FLAGS) belongs to a change of ``channel``: that group alone
    would raise it, and it is no pattern. Why not the group that carried it: beyond what a
    window of a few hundred flights can measure (one in a few hundred) which group is the rarer
    is no evidence, and a flight of the new traffic (the other runway's approach) is rare in
    *where*, in *direction* and, its own frame not being turned, in *shape* too. Joined by its
    carrying group alone, 35 of the 150 ordinary flights of the swapped day of
    tests/test_traffic_change.py alerted one by one (3 allowed), carried by *shape*."""
    return not is_pattern(flag.tortuosity) and route_rarity(flag, channel) > flag.threshold


def _open(conn: sa.Connection, settings: Settings, model: registry.ModelRow, trip: Trip,
          end: dt.datetime, batch: set[int]) -> set[int]:
    flags = conn.execute(_FLAGS, {"site": model.site, "model": model.id, "since": trip.since,
                                  "end": end}).all()
    if not flags:
        return set()
    groups = route_groups(model)
    routed = [r for r in flags if could_join(r.where_score, r.direction_score, r.threshold,
                                             r.tortuosity, groups)]
    if not routed:
        return set()
    # The change's group: the route group that would raise more of the window's flags.
    channel = max(groups, key=lambda g: sum(carried(r, g) for r in routed))
    members = [r for r in routed if carried(r, channel)]
    withdrawn = outbox.absorb(conn, [r.id for r in members])
    # The alert is carried by a flight whose flag has not alerted on its own (the outbox holds
    # one row per flight, model and sink): the batch's newest member, else the newest without.
    alerted = set(conn.execute(sa.text(
        "SELECT flight_id FROM alert_outbox WHERE model_id = :m AND flight_id = ANY(:ids)"),
        {"m": model.id, "ids": [r.id for r in members]}).scalars())
    carrier = next((r for r in reversed(members) if r.id in batch), None) or next(
        (r for r in reversed(members) if r.id not in alerted), None)
    region = describe(conn, model.site or "", members, channel, settings.range_km)
    change_id = conn.execute(sa.text("""
        INSERT INTO traffic_changes (site, model_id, channel, region, started_at, detected_at,
                                     last_flag_at, flights_scored, flights_flagged,
                                     expected_flags, p_value, opened_by_icao24,
                                     opened_by_flight)
        VALUES (:site, :model, :channel, :region, :started, :detected, :last, :n, :k, :expected,
                :p, :icao, :fid)
        RETURNING id"""), {
        "site": model.site, "model": model.id, "channel": channel, "region": region,
        "started": min(r.first_seen for r in members), "detected": end,
        "last": max(r.last_seen for r in members), "n": trip.n, "k": len(members),
        "expected": trip.n * settings.flag_rate, "p": trip.p_value,
        "icao": carrier.icao24 if carrier else None, "fid": carrier.id if carrier else None,
    }).scalar_one()
    _attach(conn, change_id, [r.id for r in members])
    log.warning("traffic change %d at site %s: %d flags among %d flights since %s (the flag "
                "rate allows %.1f; chance %.1g), carried by %s, %s; its flags alert once (%d "
                "held alerts withdrawn)", change_id, model.site, trip.k, trip.n,
                f"{trip.since:%Y-%m-%d %H:%M}", trip.n * settings.flag_rate, trip.p_value,
                channel, region, withdrawn)
    if carrier is not None and outbox.enabled(settings):
        outbox.enqueue_change(conn, settings, model.id, change_id)
    change = conn.execute(sa.text("SELECT * FROM traffic_changes WHERE id = :id"),
                          {"id": change_id}).mappings().one()
    _maybe_train(conn, settings, change)
    return {r.id for r in members} & batch


def _join(conn: sa.Connection, change: Any, model: registry.ModelRow, since: dt.datetime,
          end: dt.datetime, batch: set[int]) -> set[int]:
    """The window's new flags of the change's group join it (those of another group alert on
    their own)."""
    flags = conn.execute(_FLAGS, {"site": model.site, "model": model.id, "since": since,
                                  "end": end}).all()
    members = [r for r in flags if carried(r, change["channel"])]
    if not members:
        return set()
    _attach(conn, change["id"], [r.id for r in members])
    outbox.absorb(conn, [r.id for r in members])
    conn.execute(sa.text("""
        UPDATE traffic_changes
           SET flights_flagged = (SELECT count(*) FROM flights WHERE traffic_change_id = :id),
               last_flag_at = greatest(last_flag_at, :last)
         WHERE id = :id"""), {"id": change["id"], "last": max(r.last_seen for r in members)})
    return {r.id for r in members} & batch


def _attach(conn: sa.Connection, change_id: int, flight_ids: list[int]) -> None:
    conn.execute(sa.text("UPDATE flights SET traffic_change_id = :c WHERE id = ANY(:ids)"),
                 {"c": change_id, "ids": flight_ids})


def _end(conn: sa.Connection, change: Any, when: dt.datetime, reason: str) -> None:
    conn.execute(sa.text("UPDATE traffic_changes SET ended_at = :t, end_reason = :r "
                         "WHERE id = :id"), {"t": max(when, change["detected_at"]), "r": reason,
                                             "id": change["id"]})
    log.info("traffic change %d at site %s ended (%s): %d flags", change["id"], change["site"],
             reason, change["flights_flagged"])


def _maybe_train(conn: sa.Connection, settings: Settings, change: Any) -> None:
    """Queue the training that learns the new traffic once enough of it has been flown."""
    if settings.change_train_flights <= 0 or change["training_job_id"] is not None:
        return
    flown = conn.execute(sa.text("""
        SELECT count(*) FROM flights WHERE site = :site AND state = 'finished'
           AND first_seen >= :since"""), {"site": change["site"],
                                          "since": change["started_at"]}).scalar_one()
    if flown < settings.change_train_flights:
        return
    key = f"train:{change['site']}"
    job = jobs.enqueue(conn, "train", change["site"], {"reason": f"traffic change {change['id']}"},
                       dedupe_key=key)
    if job is None:   # a training is already queued or running: it will learn the change too
        job = conn.execute(sa.text("SELECT id FROM jobs WHERE dedupe_key = :k "
                                   "AND state IN ('queued', 'running')"), {"k": key}).scalar()
    conn.execute(sa.text("UPDATE traffic_changes SET training_job_id = :j WHERE id = :id"),
                 {"j": job, "id": change["id"]})
    log.info("traffic change %d: %d flights since it began, training queued (job %s)",
             change["id"], flown, job)


def describe(conn: sa.Connection, site: str, members: list[Any], channel: str,
             default_range_km: float) -> str:
    """Where the change's flights are, in words, from their largest-error pixels (in the
    receiver frame for where and direction; the centre of their where channel for shape), the
    heading channel most of them light and how low they go."""
    range_km = conn.execute(sa.text("SELECT range_km FROM sites WHERE id = :s"),
                            {"s": site}).scalar() or default_range_km
    blobs: dict[int, bytes] = {int(i): bytes(b) for i, b in conn.execute(sa.text(
        "SELECT id, image FROM flights WHERE id = ANY(:ids) AND image IS NOT NULL"),
        {"ids": [r.id for r in members]})}
    drawn = [r for r in members if r.id in blobs]
    images = decode_pngs([blobs[r.id] for r in drawn])
    xs, ys = [], []
    for r, image in zip(drawn, images):
        # A member carried by shape has its pixel in its own frame: placed by its where channel.
        if channel != "shape" and r.channel in GROUPS and r.error_row is not None \
                and r.error_col is not None:
            row, col = float(r.error_row), float(r.error_col)
        else:
            lit = np.argwhere(image[:, :, 0] > 0)
            if not len(lit):
                continue
            row, col = lit.mean(axis=0)
        half = SIZE / 2.0
        xs.append((col + 0.5 - half) / half * range_km)
        ys.append((half - row - 0.5) / half * range_km)
    words = []
    if xs:
        x, y = float(np.median(xs)), float(np.median(ys))
        dist = math.hypot(x, y)
        words.append(f"around {dist:.0f} km {compass(math.degrees(math.atan2(x, y)))} of the "
                     f"receiver" if dist >= 5 else "over the receiver")
    if len(images) and images.shape[-1] > DIRECTION.start:
        per_flight = images[:, :, :, DIRECTION].sum(axis=(1, 2)).argmax(axis=1)
        words.append(f"heading {HEADINGS[Counter(per_flight.tolist()).most_common(1)[0][0]]}")
    lows = [r.min_altitude for r in members if r.min_altitude is not None]
    if lows and float(np.median(lows)) < LOW_FT:
        words.append(f"below {LOW_FT:,} ft")
    return f"{channel}: {len(members)} flights " + ", ".join(words)
