"""Prometheus metrics and /healthz, served by a small HTTP server in a daemon thread.

Ingest counters are read from the live stats object at scrape time; database-backed figures
(open flights, job durations and failures, active model, flags per hour) are queried at
scrape time too, so every process exports the same truth and nothing is double counted.
"""

from __future__ import annotations

import logging
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable

import sqlalchemy as sa
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

log = logging.getLogger(__name__)


class IngestCollector:
    """Exports every numeric counter of an ingest stats object as ``adsb_ingest_<name>``."""

    def __init__(self, stats_source: Callable[[], object | None]) -> None:
        self._source = stats_source

    def collect(self):
        stats = self._source()
        if stats is None:
            return
        values = stats.as_dict() if hasattr(stats, "as_dict") else vars(stats)
        for name, value in sorted(values.items()):
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                continue
            if name.endswith(("_s", "_seconds", "lag", "connected", "rate", "_tracked",
                              "_buffered")):
                g = GaugeMetricFamily(f"adsb_ingest_{name}", f"ingest {name.replace('_', ' ')}")
                g.add_metric([], float(value))
                yield g
            else:
                c = CounterMetricFamily(f"adsb_ingest_{name}", f"ingest {name.replace('_', ' ')}")
                c.add_metric([], float(value))
                yield c


class DatabaseCollector:
    """Figures that live in the database; a failed query yields ``adsb_database_up 0``."""

    def __init__(self, engine: sa.Engine) -> None:
        self._engine = engine

    def collect(self):
        up = GaugeMetricFamily("adsb_database_up", "1 if the database answered the last scrape")
        try:
            with self._engine.connect() as c:
                rows: dict[str, int] = dict(c.execute(sa.text(
                    "SELECT state, count(*) FROM flights GROUP BY state")).all())
                jobs = c.execute(sa.text(
                    "SELECT job, coalesce(last_seconds, 0), runs, failures, "
                    "coalesce(last_ok, true) FROM job_runs")).all()
                active = c.execute(sa.text(
                    "SELECT s.id, m.id, extract(epoch FROM now() - m.created_at) FROM sites s "
                    "LEFT JOIN models m ON m.site = s.id AND m.status = 'active' "
                    "WHERE s.latitude IS NOT NULL ORDER BY s.id")).all()
                flags_hour = c.execute(sa.text(
                    "SELECT count(*) FROM flights WHERE flagged AND scored_at > now() - interval '1 hour'"
                )).scalar()
                alerts = c.execute(_ALERTS).all()
        except Exception as e:  # the endpoint must keep answering while the database is away
            log.debug("metrics: database query failed: %s", e)
            up.add_metric([], 0.0)
            yield up
            return
        up.add_metric([], 1.0)
        yield up
        g = GaugeMetricFamily("adsb_flights", "flights by state", labels=["state"])
        for state in ("open", "finished"):
            g.add_metric([state], float(rows.get(state, 0)))
        yield g
        dur = GaugeMetricFamily("adsb_job_last_duration_seconds", "duration of the job's last run",
                                labels=["job"])
        runs = CounterMetricFamily("adsb_job_runs", "runs of each scheduled job", labels=["job"])
        fails = CounterMetricFamily("adsb_job_failures", "failed runs of each job", labels=["job"])
        ok = GaugeMetricFamily("adsb_job_last_ok", "1 if the job's last run succeeded", labels=["job"])
        for job, seconds, n, nfail, last_ok in jobs:
            dur.add_metric([job], float(seconds))
            runs.add_metric([job], float(n))
            fails.add_metric([job], float(nfail))
            ok.add_metric([job], 1.0 if last_ok else 0.0)
        yield from (dur, runs, fails, ok)
        m = GaugeMetricFamily("adsb_active_model_id", "id of the site's active model (0: none)",
                              labels=["site"])
        age = GaugeMetricFamily("adsb_active_model_age_seconds",
                                "age of the site's active model", labels=["site"])
        for site, model_id, seconds in active:
            m.add_metric([site], float(model_id or 0))
            age.add_metric([site], float(seconds or 0))
        yield m
        yield age
        f = GaugeMetricFamily("adsb_flags_last_hour", "flights flagged in the last hour")
        f.add_metric([], float(flags_hour or 0))
        yield f
        yield from _alert_metrics(alerts)


# Alert delivery as counters read from the outbox (rows are never deleted but with their
# flight), so every worker exports the same totals whichever of them sent what.
_ALERTS = sa.text("""
    SELECT sink,
           count(*) FILTER (WHERE delivered_at IS NOT NULL)                            AS sent,
           coalesce(sum(attempts), 0)                                                  AS failed,
           count(*) FILTER (WHERE delivered_at IS NULL AND next_attempt_at = 'infinity') AS given_up,
           count(*) FILTER (WHERE delivered_at IS NULL AND next_attempt_at < 'infinity') AS pending
      FROM alert_outbox GROUP BY sink""")


def _alert_metrics(rows):
    sent = CounterMetricFamily("adsb_alerts_sent", "flag alerts delivered", labels=["sink"])
    failed = CounterMetricFamily("adsb_alerts_failed", "failed delivery attempts of flag alerts",
                                 labels=["sink"])
    given_up = CounterMetricFamily("adsb_alerts_given_up", "flag alerts given up after "
                                   "ADSB_ALERT_GIVE_UP_HOURS", labels=["sink"])
    pending = GaugeMetricFamily("adsb_alerts_pending", "flag alerts waiting to be delivered",
                                labels=["sink"])
    for sink, n_sent, n_failed, n_given_up, n_pending in rows:
        sent.add_metric([sink], float(n_sent))
        failed.add_metric([sink], float(n_failed))
        given_up.add_metric([sink], float(n_given_up))
        pending.add_metric([sink], float(n_pending))
    yield from (sent, failed, given_up, pending)


class MetricsServer:
    """``/metrics`` (Prometheus text format) and ``/healthz`` (200 ok / 503 with the reason)."""

    def __init__(self, host: str, port: int, registry: CollectorRegistry,
                 health: Callable[[], tuple[bool, str]]) -> None:
        registry_ = registry
        health_ = health

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 (http.server API)
                if self.path.startswith("/metrics"):
                    body, status, ctype = generate_latest(registry_), 200, CONTENT_TYPE_LATEST
                elif self.path.startswith("/healthz"):
                    healthy, why = health_()
                    body, status, ctype = (why + "\n").encode(), 200 if healthy else 503, "text/plain"
                else:
                    body, status, ctype = b"not found\n", 404, "text/plain"
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, fmt, *args):  # scrapes every 15 s would flood the log
                pass

        self._server = ThreadingHTTPServer((host, port), Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, name="metrics",
                                        daemon=True)

    def start(self) -> "MetricsServer":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


class Heartbeat:
    """Tracks when each part of the process last did its work, for /healthz."""

    def __init__(self) -> None:
        self._beats: dict[str, float] = {}

    def beat(self, part: str) -> None:
        self._beats[part] = time.monotonic()

    def age(self, part: str) -> float | None:
        t = self._beats.get(part)
        return None if t is None else time.monotonic() - t
