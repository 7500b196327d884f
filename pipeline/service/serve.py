"""The long-running service: ``run`` (ingest + worker), ``ingest --live``, ``worker``, ``web``.

Signals: SIGTERM/SIGINT set one stop event; ingest stops reading, flushes buffered rows (or
journals them if the database is away) and the worker abandons its job cleanly (a training
child gets SIGTERM). Every process serves ``/metrics`` and ``/healthz`` and the ingest side
writes a heartbeat row that ``adsb-pipeline status`` reads. ``run`` and ``worker`` also serve the
web pages (:mod:`pipeline.web`), stopped with the rest; ``web`` serves them alone.
"""

from __future__ import annotations

import json
import logging
import signal
import threading
import time
from typing import TYPE_CHECKING, Callable

import sqlalchemy as sa
from prometheus_client import CollectorRegistry

from pipeline.config import Settings
from pipeline.db import migrate, sites
from pipeline.db.engine import make_engine, wait_for_database
from pipeline.db.state import INGEST_STATE_KEY
from pipeline.service.metrics import DatabaseCollector, IngestCollector, MetricsServer

if TYPE_CHECKING:
    from pipeline.receiver.ingest import IngestStats

log = logging.getLogger(__name__)

HEARTBEAT_S = 15.0
SHUTDOWN_S = 8.0                  # leaves margin inside the 10 s a container gets after SIGTERM
UNHEALTHY_AFTER_S = 300.0


def install_signal_handlers(stop: threading.Event) -> None:
    def _stop(signum, _frame):
        if not stop.is_set():
            log.info("signal %s: stopping (flushing buffered rows first)", signal.Signals(signum).name)
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, _stop)


class IngestHolder:
    """The running ingest's stats, for metrics, health and the heartbeat row."""

    def __init__(self) -> None:
        self.stats: IngestStats | None = None
        self.source_name = ""
        self._last_ok = time.monotonic()
        self._previous: tuple[float, dict] | None = None

    def set(self, stats: IngestStats) -> None:
        self.stats = stats

    def connected(self) -> bool:
        src = getattr(self.stats, "source", None)
        return bool(getattr(src, "connected", False))

    def health(self) -> tuple[bool, str]:
        if self.stats is None:
            return True, "ok: starting"
        now = time.monotonic()
        writer = getattr(self.stats, "writer", None)
        db_ok = writer.database_ok if writer is not None else True
        if self.connected() and db_ok:
            self._last_ok = now
            return True, "ok"
        if now - self._last_ok < UNHEALTHY_AFTER_S:
            return True, "ok: degraded (" + ("database unreachable" if not db_ok else
                                             "receiver disconnected") + ")"
        return False, ("database unreachable" if not db_ok else "receiver disconnected") + \
            f" for more than {UNHEALTHY_AFTER_S:.0f} s"

    def heartbeat(self) -> dict:
        if self.stats is None:
            raise RuntimeError("no ingest has started")
        values = self.stats.as_dict()
        now = time.monotonic()
        rates = {"messages_per_s": 0.0, "positions_per_s": 0.0}
        if self._previous is not None:
            t, prev = self._previous
            dt_s = max(now - t, 1e-6)
            rates = {"messages_per_s": (values["messages"] - prev["messages"]) / dt_s,
                     "positions_per_s": (values["positions"] - prev["positions"]) / dt_s}
        self._previous = (now, values)
        return {**values, **rates, "connected": self.connected(), "source": self.source_name}


def _heartbeat_loop(engine: sa.Engine, settings: Settings, holder: IngestHolder,
                    stop: threading.Event) -> None:
    key = INGEST_STATE_KEY.format(receiver_id=settings.receiver_id)
    while not stop.wait(HEARTBEAT_S):
        if holder.stats is None:
            continue
        try:
            with engine.begin() as c:
                c.execute(sa.text(
                    "INSERT INTO pipeline_state (key, value, updated_at) VALUES (:k, :v, now()) "
                    "ON CONFLICT (key) DO UPDATE SET value = excluded.value, updated_at = now()"),
                    {"k": key, "v": json.dumps(holder.heartbeat())})
        except Exception as e:   # the writer already reports the outage loudly
            log.debug("heartbeat not written: %s", e)


def _metrics(settings: Settings, engine: sa.Engine, holder: IngestHolder | None,
             health: Callable[[], tuple[bool, str]]) -> MetricsServer | None:
    if settings.metrics_port == 0:
        return None
    registry = CollectorRegistry()
    registry.register(DatabaseCollector(engine))
    if holder is not None:
        registry.register(IngestCollector(lambda: holder.stats))
    try:
        server = MetricsServer(settings.metrics_host, settings.metrics_port, registry, health).start()
    except OSError as e:
        log.error("metrics endpoint %s:%d not started: %s", settings.metrics_host,
                  settings.metrics_port, e)
        return None
    log.info("metrics on http://%s:%d/metrics, health on /healthz", settings.metrics_host, server.port)
    return server


def _thread(name: str, target: Callable[[], object], stop: threading.Event) -> threading.Thread:
    def body():
        try:
            target()
        except Exception:
            log.exception("%s failed; stopping the service", name)
            stop.set()

    t = threading.Thread(target=body, name=name, daemon=True)
    t.start()
    return t


def _join(threads: list[threading.Thread], budget_s: float) -> bool:
    deadline = time.monotonic() + budget_s
    for t in threads:
        t.join(max(0.0, deadline - time.monotonic()))
    alive = [t.name for t in threads if t.is_alive()]
    if alive:
        log.warning("still running after %.0f s, exiting anyway: %s", budget_s, ", ".join(alive))
    return not alive


def serve(settings: Settings, stop: threading.Event, *, ingest: bool = True, worker: bool = True,
          start_time: float | None = None) -> int:
    """Run ingest and/or the worker until ``stop`` is set; return the exit status."""
    from pipeline.receiver.ingest import run_live

    engine = make_engine(settings)
    if not wait_for_database(engine, stop):
        engine.dispose()
        return 0
    migrate.upgrade(engine)
    try:
        # This receiver and its site, before any of its positions needs them.
        sites.register_engine(engine, settings)
    except sites.SiteConflict as exc:
        log.error("%s", exc)
        engine.dispose()
        return 2
    holder = IngestHolder() if ingest else None
    threads: list[threading.Thread] = []
    if holder is not None:
        holder.source_name = f"{settings.receiver_format}://{settings.receiver_host}:{settings.port}"
        threads.append(_thread("ingest", lambda: run_live(
            settings, stop, start_time=start_time, on_start=holder.set), stop))
        threads.append(_thread("heartbeat", lambda: _heartbeat_loop(engine, settings, holder, stop),
                               stop))
    if worker:
        from pipeline.service.scheduler import run_worker

        threads.append(_thread("worker", lambda: run_worker(settings, stop, engine=engine), stop))
    metrics = _metrics(settings, engine, holder,
                       holder.health if holder is not None else (lambda: (True, "ok")))
    web = None
    if worker:    # the pages live beside the worker (`run`, `worker`), on its engine
        from pipeline.web.server import start_for_service

        web = start_for_service(settings, engine)
    try:
        while not stop.wait(0.5):
            pass
    finally:
        _join(threads, SHUTDOWN_S)
        if metrics is not None:
            metrics.stop()
        if web is not None:
            web.stop()
        engine.dispose()
    return 0


def run_command(settings: Settings, args) -> int:
    """``adsb-pipeline run``: live ingest plus the worker, in one process."""
    stop = threading.Event()
    install_signal_handlers(stop)
    return serve(settings, stop)


def ingest_command(settings: Settings, args) -> int:
    """``adsb-pipeline ingest``: ``--live`` runs as a service; a FILE is replayed."""
    if not args.live:
        from pipeline.receiver.ingest import command

        return command(settings, args)
    if args.file:
        log.error("ingest: give either a capture FILE or --live")
        return 2
    start_time = None
    if args.start_time:
        # A receiver (or a simulator) serving a past day faster than real time: its 12 MHz
        # counter, anchored here, stamps the positions instead of the receive time.
        from pipeline.receiver.ingest import parse_start_time

        try:
            start_time = parse_start_time(args.start_time)
        except ValueError as exc:
            log.error("ingest: --start-time %r: %s", args.start_time, exc)
            return 2
    stop = threading.Event()
    install_signal_handlers(stop)
    return serve(settings, stop, worker=False, start_time=start_time)


def worker_command(settings: Settings, args) -> int:
    """``adsb-pipeline worker``: the scheduler, with metrics and health."""
    stop = threading.Event()
    install_signal_handlers(stop)
    return serve(settings, stop, ingest=False)


def web_command(settings: Settings, args) -> int:
    """``adsb-pipeline web``: only the pages, until SIGINT/SIGTERM."""
    from pipeline.web.server import serve_until

    if settings.web_port == 0:
        log.error("web: ADSB_WEB_PORT is 0 (pages disabled); give a port, e.g. --web-port 8760")
        return 2
    stop = threading.Event()
    install_signal_handlers(stop)
    engine = make_engine(settings)
    try:
        migrate.upgrade(engine)
        return serve_until(settings, engine, stop)
    finally:
        engine.dispose()
