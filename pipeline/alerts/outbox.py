"""Alerts written with the flag: called by the scorer inside the transaction that stores the
scores, so a flag and its alerts are committed together or not at all (a crash between the two
cannot lose an alert or send one for a flag that was rolled back).

A flag alerts once per flight: when a flight is flagged that was not flagged as it stood (a
re-score by the same model, or by the next model after the nightly training, of a flight
already flagged says nothing new), unless the user's newest verdict on it is "normal".

When a newer model re-scores a flight whose flag alerted and does not flag it, the flag is
withdrawn (:func:`withdraw`): an alert never tried is deleted, and every sink that was sent
it (or will be, after a failed send) gets a ``withdrawn`` message after it. A later flag of
that flight alerts again.
"""

from __future__ import annotations

import logging
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert

from pipeline.alerts import message
from pipeline.config import Settings
from pipeline.db.schema import alert_outbox

log = logging.getLogger(__name__)

WEBHOOK = "webhook"
MQTT = "mqtt"

# Must run before the batch's scores are written: "flagged" is the flight's flag as it stood,
# by the model that scored it last (a flag a newer model withdrew alerts again if it returns).
_NEW_FLAGS = sa.text("""
    SELECT u.fid FROM unnest(CAST(:ids AS bigint[])) AS u(fid)
     WHERE NOT EXISTS (SELECT 1 FROM flights f WHERE f.id = u.fid AND f.flagged)
       AND NOT EXISTS (SELECT 1 FROM flight_verdicts v
                        WHERE v.flight_id = u.fid AND v.verdict = 'normal')
     ORDER BY u.fid""")

_NOTIFY = sa.text("SELECT pg_notify(:channel, p) FROM unnest(CAST(:payloads AS text[])) AS p")


def sinks(settings: Settings) -> list[str]:
    """The outbox sinks configured in these settings."""
    out = []
    if settings.alert_webhook_url:
        out.append(WEBHOOK)
    if settings.alert_mqtt_url:
        out.append(MQTT)
    return out


def enabled(settings: Settings) -> bool:
    return bool(sinks(settings) or settings.alert_notify_channel)


def new_flags(conn: sa.Connection, flagged_ids: list[int]) -> list[int]:
    """Of the flights flagged in this batch, those that alert (see the module's docstring)."""
    if not flagged_ids:
        return []
    return list(conn.execute(_NEW_FLAGS, {"ids": flagged_ids}).scalars())


def enqueue(conn: sa.Connection, settings: Settings, model_id: int,
            flight_ids: list[int], held: set[int] | frozenset[int] = frozenset()
            ) -> list[dict[str, Any]]:
    """One outbox row per flight and configured sink, and one NOTIFY per flight, in the
    caller's transaction (PostgreSQL delivers the NOTIFY on commit). Returns the messages.

    The rows of the flights in ``held`` wait ``ADSB_CHANGE_HOLD_MIN`` minutes of the wall clock
    before the delivery job may send them; the scorer releases them sooner once as much of
    the data clock has passed (:func:`release_held`), and a traffic change that takes one of
    their flags in deletes its row (:func:`absorb`): the change's one alert replaces it. The
    NOTIFY goes at once: it is the programs' feed of every flag, not the people's alert."""
    if not flight_ids:
        return []
    bodies = message.bodies(conn, settings, model_id, flight_ids)
    _write(conn, settings, model_id, bodies)
    wait = [i for i in flight_ids if i in held]
    if wait:
        conn.execute(sa.text("""
            UPDATE alert_outbox SET next_attempt_at = now() + make_interval(secs => :s)
             WHERE flight_id = ANY(:ids) AND model_id = :m AND attempts = 0
               AND delivered_at IS NULL"""),
                     {"s": settings.change_hold_min * 60.0, "ids": wait, "m": model_id})
    log.info("new flags: %s", ", ".join(
        f"flight {b['flight_id']} {b['callsign'] or b['icao24']} ({b['channel']}, "
        f"x{b['score_ratio']})" for b in bodies))
    return bodies


def enqueue_change(conn: sa.Connection, settings: Settings, model_id: int,
                   change_id: int) -> dict[str, Any]:
    """The one alert of a traffic change, carried by the flight that opened it (one of its
    flights whose flag has not alerted on its own), in the caller's transaction. Returns the
    message."""
    b = message.change_body(conn, settings, change_id)
    _write(conn, settings, model_id, [b])
    log.info("traffic change %d: one alert (%s)", change_id, b["region"])
    return b


# Flag alerts of an earlier model for the batch's flights, not withdrawn since (no withdrawal
# of that flight to that sink after it), the user not having judged the flight normal.
_STANDING = """
      FROM alert_outbox o JOIN flights f ON f.icao24 = o.icao24 AND f.id = o.flight_id
     WHERE f.id = ANY(:ids) AND o.model_id <> :m AND o.payload->>'event' = 'flag'
       AND NOT EXISTS (SELECT 1 FROM alert_outbox w
                        WHERE w.icao24 = o.icao24 AND w.flight_id = o.flight_id
                          AND w.sink = o.sink AND w.id > o.id
                          AND w.payload->>'event' = 'withdrawn')
       AND NOT EXISTS (SELECT 1 FROM flight_verdicts v
                        WHERE v.flight_id = f.id AND v.verdict = 'normal')"""


def withdraw(conn: sa.Connection, settings: Settings, model_id: int,
             cleared_ids: list[int]) -> list[dict[str, Any]]:
    """Withdraw the flags of these flights, which ``model_id`` has just scored below its
    threshold, where an earlier model's flag of them alerted (in the scorer's transaction,
    after the scores are written). Returns the withdrawal messages.

    Why: the nightly model re-scores the recent days (ADSB_RESCORE_DAYS), and a flag it does
    not confirm disappears from ``flagged_flights`` and the web pages; a person who was sent
    the flag would otherwise be left with an alert nothing else shows any more (the soak: 24
    alerts of ordinary flights on a day that kept 15 flags).

    A flag alert never tried is deleted: nobody was told (one given up stays, as the record
    of that, and is not withdrawn either). A sink that was sent it, or whose send failed and
    will be retried, gets a ``withdrawn`` message due when the flag is, so it is sent after
    it (the delivery job sends a sink's rows in order of ``next_attempt_at, id``). The rows
    are read locked: a send in progress holds its row's lock, so the read waits for it and
    then sees the row delivered. One read when nothing is to withdraw (a first scoring)."""
    if not cleared_ids:
        return []
    standing = conn.execute(sa.text(f"""
        SELECT o.id, o.flight_id, o.sink, o.payload->>'model_version' AS version,
               o.delivered_at IS NULL AND o.attempts = 0 AND o.next_attempt_at < 'infinity'
                 AS never_tried,
               CASE WHEN o.next_attempt_at < 'infinity' THEN o.next_attempt_at END AS due
        {_STANDING} ORDER BY o.id FOR UPDATE OF o"""),
                            {"ids": cleared_ids, "m": model_id}).all()
    gone = [r.id for r in standing if r.never_tried]
    if gone:
        conn.execute(sa.text("DELETE FROM alert_outbox WHERE id = ANY(:ids)"), {"ids": gone})
    # Sent, or to be retried (a delivered row keeps a finite due); a given-up row (due NULL)
    # was never delivered and stays as it is.
    told = [r for r in standing if r.due is not None and not r.never_tried]
    if not told:
        return []
    flagged_by = {r.flight_id: r.version for r in told}
    bodies = message.withdrawal_bodies(conn, settings, model_id, flagged_by)
    by_flight = {b["flight_id"]: b for b in bodies}
    rows = [{"flight_id": r.flight_id, "icao24": by_flight[r.flight_id]["icao24"],
             "model_id": model_id, "sink": r.sink, "payload": by_flight[r.flight_id],
             "next_attempt_at": r.due} for r in told]
    # Due when its flag is: a flag waiting for a retry goes first (its id is lower).
    conn.execute(insert(alert_outbox).on_conflict_do_nothing(
        index_elements=["icao24", "flight_id", "model_id", "sink"]), rows)
    if settings.alert_notify_channel:
        conn.execute(_NOTIFY, {"channel": settings.alert_notify_channel,
                               "payloads": [message.encode(b).decode() for b in bodies]})
    log.info("flags withdrawn by the newer model: %s", ", ".join(
        f"flight {b['flight_id']} {b['callsign'] or b['icao24']} (flagged by "
        f"{b['flagged_by_model_version']})" for b in bodies))
    return bodies


# A held row: never tried, not yet due, not given up ('infinity'), a flag's.
_HELD = """o.delivered_at IS NULL AND o.attempts = 0 AND o.next_attempt_at > now()
           AND o.next_attempt_at < 'infinity' AND o.payload->>'event' = 'flag'"""


def absorb(conn: sa.Connection, flight_ids: list[int]) -> int:
    """Delete the held alerts of these flights (a traffic change took their flags in and
    alerts once for all of them). Returns how many messages were withdrawn."""
    if not flight_ids:
        return 0
    gone = conn.execute(sa.text(f"""
        DELETE FROM alert_outbox o WHERE o.flight_id = ANY(:ids) AND {_HELD}
        RETURNING o.flight_id"""), {"ids": flight_ids}).scalars().all()
    return len(set(gone))


def release_held(conn: sa.Connection, site: str, until: Any) -> int:
    """Make the held alerts of the site's flights that ended at or before ``until`` (the data
    clock minus the hold) due now. Returns how many flights' alerts were released.

    Not those of a sink whose endpoint is down (a failed send of it waits for its retry): the
    delivery job has pushed that sink's other rows back behind the failed one, which makes
    them look held (never tried, not yet due), and making them due again at every scoring
    batch tried the endpoint once a pass instead of once a backoff step (found by the soak with
    a webhook nobody listened on: "alerts of 55 flags released", then 54, 53, ..., a batch
    apart). They go when the sink takes alerts again, or when the delivery job's wait ends."""
    done = conn.execute(sa.text(f"""
        UPDATE alert_outbox o SET next_attempt_at = now()
          FROM flights f
         WHERE f.id = o.flight_id AND f.icao24 = o.icao24 AND f.site = :site
           AND f.last_seen <= :until AND {_HELD}
           AND NOT EXISTS (SELECT 1 FROM alert_outbox down
                            WHERE down.sink = o.sink AND down.attempts > 0
                              AND down.delivered_at IS NULL
                              AND down.next_attempt_at < 'infinity')
        RETURNING o.flight_id"""), {"site": site, "until": until}).scalars().all()
    return len(set(done))


def _write(conn: sa.Connection, settings: Settings, model_id: int,
           bodies: list[dict[str, Any]]) -> None:
    """One outbox row per message and configured sink (keyed by the message's flight, so a
    message is queued once), and one NOTIFY per message."""
    rows = [{"flight_id": b["flight_id"], "icao24": b["icao24"], "model_id": model_id,
             "sink": sink, "payload": b} for b in bodies for sink in sinks(settings)]
    if rows:
        conn.execute(insert(alert_outbox).on_conflict_do_nothing(
            index_elements=["icao24", "flight_id", "model_id", "sink"]), rows)
    if settings.alert_notify_channel and bodies:
        conn.execute(_NOTIFY, {"channel": settings.alert_notify_channel,
                               "payloads": [message.encode(b).decode() for b in bodies]})
