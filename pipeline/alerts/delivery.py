"""The delivery job: send due ``alert_outbox`` rows, at least once, never blocking scoring.

Each row is claimed in its own short transaction with ``FOR UPDATE SKIP LOCKED`` and marked in
that same transaction after the send, so two workers never send one row at once and a worker
killed mid-send leaves the row due (it is sent again: at least once, never lost). The lock is
held only while one message is on its way (a few seconds at most, see ``sinks``).

A failed send counts one attempt and sets ``next_attempt_at`` by exponential backoff with
jitter, at most ADSB_ALERT_BACKOFF_MAX_S; the sink's other due rows wait behind it (attempts
unchanged), so an endpoint that is down sees one try per backoff step, not one per alert.
A row not delivered ADSB_ALERT_GIVE_UP_HOURS after it was written is given up: ``delivered_at``
stays NULL, ``next_attempt_at`` becomes ``infinity`` and ``last_error`` starts with "given up".
An endpoint going down, staying down and coming back is logged once each (then at most every
LOG_EVERY_S), not once per retry.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from dataclasses import dataclass
from typing import Callable

import sqlalchemy as sa

from pipeline.alerts import message
from pipeline.alerts.sinks import Sink, SinkError, open_sink
from pipeline.config import Settings

log = logging.getLogger(__name__)

BACKOFF_BASE_S = 5.0           # first retry after 2.5-5 s: the job runs every few seconds
MAX_PER_PASS = 200             # rows tried per pass; the rest wait for the next tick
LOG_EVERY_S = 300.0            # a failing endpoint or database is logged at most this often

_GIVE_UP = sa.text("""
    UPDATE alert_outbox
       SET next_attempt_at = 'infinity',
           last_error = 'given up: ' || coalesce(last_error, 'never attempted')
     WHERE id IN (SELECT id FROM alert_outbox
                   WHERE delivered_at IS NULL AND next_attempt_at <= now()
                     AND created_at <= now() - make_interval(secs => :age)
                     FOR UPDATE SKIP LOCKED)
    RETURNING id, flight_id, sink, attempts, last_error""")

_CLAIM = sa.text("""
    SELECT id, flight_id, sink, payload, attempts FROM alert_outbox
     WHERE delivered_at IS NULL AND next_attempt_at <= now()
       AND created_at > now() - make_interval(secs => :age)
       AND sink <> ALL(CAST(:down AS text[]))
     ORDER BY next_attempt_at, id
     LIMIT 1
       FOR UPDATE SKIP LOCKED""")

_DELIVERED = sa.text("UPDATE alert_outbox SET delivered_at = clock_timestamp() WHERE id = :id")

# clock_timestamp(): the send may have taken seconds since the transaction began. Never later
# than the give-up time, so a row is given up on time and with a log line.
_FAILED = sa.text("""
    UPDATE alert_outbox
       SET attempts = attempts + 1, last_error = :error,
           next_attempt_at = least(clock_timestamp() + make_interval(secs => :delay),
                                   created_at + make_interval(secs => :age))
     WHERE id = :id
    RETURNING next_attempt_at""")

_WAIT_BEHIND = sa.text("""
    UPDATE alert_outbox
       SET next_attempt_at = least(:until, created_at + make_interval(secs => :age))
     WHERE id IN (SELECT id FROM alert_outbox
                   WHERE sink = :sink AND delivered_at IS NULL AND next_attempt_at < :until
                     AND id <> :id
                     FOR UPDATE SKIP LOCKED)""")


def backoff_s(failures: int, base_s: float, cap_s: float, rng: random.Random) -> float:
    """Seconds to wait after the ``failures``-th failed attempt: ``base * 2**(failures-1)``,
    at most ``cap``, with "equal jitter" (half fixed, half random) so that alerts that failed
    together do not all come back in the same second."""
    d = min(cap_s, base_s * 2.0 ** min(max(failures - 1, 0), 40))
    return d / 2 + rng.uniform(0, d / 2)


class Throttle:
    """True at most once per ``every_s``; counts what it held back."""

    def __init__(self, every_s: float = LOG_EVERY_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.every_s = every_s
        self.clock = clock
        self.last: float | None = None
        self.held = 0

    def allow(self) -> bool:
        now = self.clock()
        if self.last is None or now - self.last >= self.every_s:
            self.last = now
            return True
        self.held += 1
        return False

    def reset(self) -> None:
        self.last, self.held = None, 0


class EndpointHealth:
    """What one sink's endpoint has been doing, for log lines that say so once."""

    def __init__(self, sink: str, every_s: float = LOG_EVERY_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.sink = sink
        self.clock = clock
        self.throttle = Throttle(every_s, clock)
        self.down_since: float | None = None
        self.failures = 0

    def failed(self, endpoint: str, error: str, retry_in_s: float) -> None:
        self.failures += 1
        first = self.down_since is None
        if first:
            self.down_since = self.clock()
        if not self.throttle.allow():
            return
        if first:
            log.warning("alerts: %s endpoint %s is not taking alerts (%s); they are kept and "
                        "retried with backoff, next in %.0f s", self.sink, endpoint, error,
                        retry_in_s)
        else:
            log.warning("alerts: %s endpoint %s still not taking alerts: %d failed attempts "
                        "in %.0f min (last: %s); next try in %.0f s", self.sink, endpoint,
                        self.failures, (self.clock() - (self.down_since or 0)) / 60, error,
                        retry_in_s)

    def delivered(self, endpoint: str) -> None:
        if self.down_since is not None:
            log.info("alerts: %s endpoint %s takes alerts again, after %d failed attempts in "
                     "%.0f min", self.sink, endpoint, self.failures,
                     (self.clock() - self.down_since) / 60)
        self.down_since, self.failures = None, 0
        self.throttle.reset()


@dataclass
class PassResult:
    sent: int = 0
    failed: int = 0
    given_up: int = 0


class Deliverer:
    """Sends due alerts; one per worker process (it remembers each endpoint's health)."""

    def __init__(self, settings: Settings, *, backoff_base_s: float = BACKOFF_BASE_S,
                 max_per_pass: int = MAX_PER_PASS, stopping: threading.Event | None = None,
                 rng: random.Random | None = None) -> None:
        self.settings = settings
        self.backoff_base_s = backoff_base_s
        self.max_per_pass = max_per_pass
        self.stopping = stopping or threading.Event()
        self.rng = rng or random.Random()
        self.health: dict[str, EndpointHealth] = {}
        self._pass_failed = Throttle()

    @property
    def give_up_s(self) -> float:
        return self.settings.alert_give_up_hours * 3600.0

    def run(self, engine: sa.Engine) -> PassResult | None:
        """One pass for the scheduler: never raises; a failing pass (database away) is logged
        at most every LOG_EVERY_S, since the job runs every few seconds."""
        try:
            result = self.deliver_due(engine)
        except Exception as e:  # noqa: BLE001 - the next tick retries; the rows are safe
            if self._pass_failed.allow():
                log.error("alerts: delivery pass failed (%s: %s); retrying every tick, this "
                          "is logged at most every %.0f s", type(e).__name__,
                          str(e).splitlines()[0][:200] if str(e) else "", LOG_EVERY_S)
            return None
        self._pass_failed.reset()
        return result

    def deliver_due(self, engine: sa.Engine) -> PassResult:
        """Give up on expired rows, then send due rows one at a time until none is due, every
        sink with due rows has failed once in this pass, or MAX_PER_PASS were tried."""
        result = PassResult()
        self._give_up(engine, result)
        down: list[str] = []
        opened: dict[str, Sink] = {}
        try:
            while result.sent + result.failed < self.max_per_pass and \
                    not self.stopping.is_set():
                with engine.begin() as conn:
                    row = conn.execute(_CLAIM, {"age": self.give_up_s, "down": down}).first()
                    if row is None:
                        break
                    self._send(conn, row, opened, down, result)
        finally:
            for sink in opened.values():
                sink.close()
        return result

    def _send(self, conn: sa.Connection, row, opened: dict[str, Sink], down: list[str],
              result: PassResult) -> None:
        health = self.health.setdefault(row.sink, EndpointHealth(row.sink))
        endpoint = row.sink
        try:
            sink = opened.get(row.sink)
            if sink is None:
                sink = opened[row.sink] = open_sink(row.sink, self.settings)
            endpoint = sink.endpoint
            sink.send(row.payload)
        except Exception as e:  # noqa: BLE001 - anything unexpected is a failed attempt too
            # (backoff, then give-up) rather than a row retried every tick.
            error = str(e) if isinstance(e, SinkError) else f"{type(e).__name__}: {e}"
            delay = backoff_s(row.attempts + 1, self.backoff_base_s,
                              self.settings.alert_backoff_max_s, self.rng)
            until = conn.execute(_FAILED, {"id": row.id, "error": error, "delay": delay,
                                           "age": self.give_up_s}).scalar_one()
            conn.execute(_WAIT_BEHIND, {"sink": row.sink, "until": until, "id": row.id,
                                        "age": self.give_up_s})
            down.append(row.sink)
            result.failed += 1
            health.failed(endpoint, error, delay)
            return
        conn.execute(_DELIVERED, {"id": row.id})
        result.sent += 1
        health.delivered(endpoint)
        p = row.payload
        if p.get("event") == message.CHANGE_EVENT:
            log.info("alert sent: traffic change %s (%s) to %s %s", p.get("traffic_change_id"),
                     p.get("region"), row.sink, endpoint)
        elif p.get("event") == message.WITHDRAWN_EVENT:
            log.info("alert sent: flag of flight %s %s withdrawn (model %s) to %s %s",
                     row.flight_id, p.get("callsign") or p.get("icao24"),
                     p.get("model_version"), row.sink, endpoint)
        else:
            log.info("alert sent: flight %s %s (score x%s, %s) to %s %s", row.flight_id,
                     p.get("callsign") or p.get("icao24"), p.get("score_ratio"),
                     p.get("channel"), row.sink, endpoint)

    def _give_up(self, engine: sa.Engine, result: PassResult) -> None:
        with engine.begin() as conn:
            rows = conn.execute(_GIVE_UP, {"age": self.give_up_s}).all()
        for sink in sorted({r.sink for r in rows}):
            mine = [r for r in rows if r.sink == sink]
            log.error("alerts: gave up on %d %s alert(s) not delivered within %g h "
                      "(ADSB_ALERT_GIVE_UP_HOURS): flights %s; last error: %s", len(mine), sink,
                      self.settings.alert_give_up_hours,
                      ", ".join(str(r.flight_id) for r in mine[:20])
                      + (" ..." if len(mine) > 20 else ""),
                      mine[-1].last_error.removeprefix("given up: "))
        result.given_up += len(rows)
