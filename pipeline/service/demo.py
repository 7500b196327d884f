"""``adsb-pipeline demo``: the whole product on a machine with no receiver and no database.

An embedded PostgreSQL, a simulated receiver serving Beast on a local port (ordinary corridor
traffic plus a few anomalies, time-accelerated), and the real service connected to it over TCP:
live ingest, flights closed by the data clock, a model trained in a child process, scores,
flags and the HTML report.

Time: the simulated day lies two days in the past and live ingest stamps positions with the
receiver's 12 MHz counter anchored at its start, so the data clock follows the simulated traffic
(replay semantics) however fast it is served.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import sqlalchemy as sa

from pipeline.config import Settings
from pipeline.db import migrate
from pipeline.db.engine import make_engine, plain_url
from pipeline.evaluation import simulate
from pipeline.service.beast_server import BeastServer
from pipeline.service.serve import install_signal_handlers, serve

log = logging.getLogger(__name__)

PROGRESS_S = 10.0


def _start_of_day(days_ago: int) -> float:
    day = dt.datetime.now(dt.timezone.utc).date() - dt.timedelta(days=days_ago)
    return dt.datetime.combine(day, dt.time(6), dt.timezone.utc).timestamp()


class SimulatedDays:
    """Simulated traffic, one window after another (the first only, unless ``forever``)."""

    def __init__(self, settings: Settings, n_normal: int, n_anomalies: int, hours: float,
                 seed: int, forever: bool) -> None:
        self.settings, self.n_normal, self.n_anomalies = settings, n_normal, n_anomalies
        self.window_s, self.seed, self.forever = hours * 3600.0, seed, forever
        self.first = simulate.generate_for(settings, n_normal, n_anomalies, seed=seed,
                                           duration_s=self.window_s)
        self.first_done = threading.Event()

    def frames(self):
        k = 0
        flights = self.first
        while True:
            # Counter tick 0 is the start of the first window; later windows follow on.
            for f in flights:
                f.t = f.t + k * self.window_s
            yield from simulate.stream(flights)
            if k == 0:
                self.first_done.set()
            if not self.forever:
                return
            k += 1
            flights = simulate.generate_for(self.settings, self.n_normal, self.n_anomalies,
                                            seed=self.seed + k, duration_s=self.window_s)


def _wait_for_ingest(engine: sa.Engine, until: float, stop: threading.Event) -> int:
    """Wait until the stored positions stop growing (the last batches are written)."""
    last, stable = -1, 0
    while not stop.is_set() and time.monotonic() < until:
        with engine.connect() as c:
            n = c.execute(sa.text("SELECT count(*) FROM positions")).scalar_one()
        stable = stable + 1 if n == last else 0
        if stable >= 3:
            return n
        last = n
        stop.wait(1.0)
    return last


def _minutes(duration) -> float:
    seconds = duration.total_seconds() if isinstance(duration, dt.timedelta) else float(duration)
    return seconds / 60


def _print_flags(engine: sa.Engine) -> int:
    with engine.connect() as c:
        rows = c.execute(sa.text(
            "SELECT flight_id, icao24, callsign, first_seen, duration, score, threshold "
            "FROM flagged_flights ORDER BY score DESC")).all()
        total = c.execute(sa.text("SELECT count(*) FROM flights WHERE score IS NOT NULL")).scalar()
    print(f"\n{len(rows)} of {total} scored flights flagged (highest score first):")
    print(f"{'flight':>7}  {'icao24':6}  {'callsign':8}  {'first seen (UTC)':19}  "
          f"{'minutes':>7}  {'score':>8}  {'threshold':>9}")
    for r in rows:
        print(f"{r.flight_id:>7}  {r.icao24:6}  {(r.callsign or ''):8}  "
              f"{r.first_seen:%Y-%m-%d %H:%M:%S}  {_minutes(r.duration):7.1f}  {r.score:8.4f}  "
              f"{r.threshold:9.4f}")
    return len(rows)


def command(settings: Settings, args) -> int:
    from pipeline.service.scheduler import Worker
    from pipeline.web.report import command as report_command

    stop = threading.Event()
    install_signal_handlers(stop)
    sim = SimulatedDays(settings, args.flights, args.anomalies, args.hours, args.seed, args.forever)
    start_unix = _start_of_day(days_ago=2)
    server = BeastServer(sim.frames(), speed=args.speed or None).start()
    settings = settings.replace(receiver_host="127.0.0.1", receiver_port=server.port,
                                receiver_format="beast",
                                train_min_flights=min(settings.train_min_flights,
                                                      max(10, int(0.8 * args.flights))))
    data_dir = Path(settings.data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    labels = data_dir / "demo-labels.csv"
    simulate.write_labels(labels, sim.first)
    log.info("demo: simulated receiver on 127.0.0.1:%d: %d flights (%d anomalies) over %.1f h "
             "of traffic, served at %s; labels in %s", server.port, len(sim.first),
             args.anomalies, args.hours, f"{args.speed:g}x" if args.speed else "full speed", labels)

    engine = make_engine(settings)
    migrate.upgrade(engine)
    log.info("demo: database %s", plain_url(engine.url))
    worker = Worker(settings, engine)
    ingest_stop = threading.Event()
    service = threading.Thread(target=serve, args=(settings, ingest_stop),
                               kwargs={"worker": False, "start_time": start_unix},
                               name="demo-ingest", daemon=True)
    service.start()
    started = time.monotonic()
    try:
        # Phase 1: the simulated window streams in; flights close as the data clock moves.
        while not stop.is_set() and not sim.first_done.is_set():
            stop.wait(PROGRESS_S)
            ok, res = worker.run("flights", worker.close_flights)
            log.info("demo: %s frames sent, %s flights finished so far (%.0f s)",
                     f"{server.frames_sent:,}", getattr(res, "closed", "?"),
                     time.monotonic() - started)
        if stop.is_set():
            return 0
        _wait_for_ingest(engine, time.monotonic() + 60, stop)
        # Phase 2: end of the window: close every flight, train, score, show.
        worker.run("flights", lambda: worker.close_flights(final=True, wait=True))
        log.info("demo: training a model on the simulated day (child process)")
        ok, _ = worker.run("train", worker.train)
        if not ok:
            log.error("demo: training failed; see the log above")
            return 1
        worker.run("score", worker.score)
        n = _print_flags(engine)
        report_dir = data_dir / "report"
        report_command(settings, SimpleNamespace(since="7d", top=max(n, 1), out=str(report_dir)))
        print(f"\nReport: {report_dir / 'index.html'}")
        print(f"Labels of the simulated aircraft: {labels}")
        print(f"Query it yourself: psql \"{plain_url(engine.url)}\" -c "
              "'SELECT * FROM flagged_flights ORDER BY score DESC'")
        print(f"Done in {time.monotonic() - started:.0f} s.")
        if args.forever:
            log.info("demo: --forever: the service keeps running on simulated traffic; "
                     "stop it with Ctrl-C")
            ingest_stop.set()
            service.join(10)
            return serve(settings, stop, start_time=start_unix)
        return 0
    finally:
        ingest_stop.set()
        service.join(10)
        worker.stop()
        server.stop()
        engine.dispose()
