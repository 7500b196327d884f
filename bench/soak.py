"""A week of a busy site in under half an hour, through the real daemon, with faults.

Seven simulated days (``simulate.generate_days``, ~1,000 flights a weekday) are served over
TCP by a simulated Beast receiver at ``--speed`` times real time to the live ingest (its own
process: bench/_soak_ingest.py, ``adsb-pipeline ingest --live`` with the counter anchored at
the simulated week's start) and ``adsb-pipeline worker`` (its own process), both against a
throw-away PostgreSQL cluster started for the run. The week lies in the past, so the data clock
follows the newest position (replay semantics) and the worker's schedule is compressed with it:
flights and scores every ``ADSB_WORKER_TICK_S``, retention every ``ADSB_RETENTION_INTERVAL_S``
(one simulated day), training on ``ADSB_TRAIN_CRON`` (about one simulated night), retention of
``--retention-days``.

Faults on a schedule (simulated days): PostgreSQL restarted; the receiver restarted and silent
for 2 minutes; the worker SIGKILLed mid-training and mid-scoring and restarted; the database
stopped while the ingest's journal lies on a tiny tmpfs, so the writer must spill and cannot;
and, in a separate short phase against its own database, a wall-clock-mode ingest under
libfaketime whose clock is stepped +1 h and back.

Prints: resident memory of each process over time, database size per simulated day, positions
sent versus stored (per aircraft and day, counted before retention drops the day), flights
imaged and scored, training runs and promotions, CPU per process and per job, extrapolated to
real time. Method and figures: docs/soak.md.

Usage (root: the cluster runs as ``postgres`` via runuser, the tmpfs needs ``mount``):
    python bench/soak.py [--days 7] [--per-day 1000] [--speed 480] [--no-faults]
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import sqlalchemy as sa

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _soak_tools import (  # noqa: E402
    DAY_S,
    Accounting,
    FaultSchedule,
    Series,
    SoakReceiver,
    children,
    cmdline,
    flag_summary,
    frames,
    parse_metrics,
    proc_pss,
    proc_sample,
)
from pipeline.evaluation import simulate  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
PG_BIN = sorted(Path("/usr/lib/postgresql").glob("*/bin"))[-1] if Path(
    "/usr/lib/postgresql").is_dir() else Path("/usr/bin")
FAKETIME_LIB = Path("/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1")
SAMPLE_S = 1.0
T0 = time.monotonic()


def say(msg: str) -> None:
    print(f"[{time.monotonic() - T0:6.0f} s] {msg}", flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---- a throw-away PostgreSQL cluster ------------------------------------------------------------
class Cluster:
    """initdb + pg_ctl as the postgres user, in a temporary directory; restarting it disturbs
    nothing else on the machine."""

    def __init__(self, root: Path) -> None:
        self.root, self.data, self.port = root, root / "data", free_port()
        self.log = root / "postgres.log"

    def _pg(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return subprocess.run(["runuser", "-u", "postgres", "--", str(PG_BIN / args[0]),
                               *args[1:]], check=check, capture_output=True, text=True)

    def init(self) -> None:
        self.root.mkdir(parents=True)
        shutil.chown(self.root, "postgres", "postgres")
        self._pg("initdb", "-D", str(self.data), "-A", "trust", "-U", "postgres", "-E", "UTF8")
        with open(self.data / "postgresql.conf", "a") as fh:
            fh.write(f"port = {self.port}\nlisten_addresses = '127.0.0.1'\n"
                     f"unix_socket_directories = '{self.root}'\n")
        self.start()
        for db in ("soak", "soak_clock"):
            self._pg("createdb", "-h", "127.0.0.1", "-p", str(self.port), db)

    def url(self, db: str = "soak") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{db}"

    def start(self) -> None:
        self._pg("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-w", "start")

    def stop(self) -> None:
        self._pg("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop", check=False)

    def restart(self) -> None:
        self._pg("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-m", "fast", "-w",
                 "restart")

    def pids(self) -> list[int]:
        try:
            main = int((self.data / "postmaster.pid").read_text().split()[0])
        except (FileNotFoundError, ValueError, IndexError):
            return []
        return [main, *children(main)]


# ---- the daemon's processes ---------------------------------------------------------------------
class Daemon:
    """One process of the service, restarted on demand as a supervisor would."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], log: Path) -> None:
        self.name, self.argv, self.env, self.log = name, argv, env, log
        self.proc: subprocess.Popen | None = None
        self.starts = 0
        self.exited_at: float | None = None

    def start(self) -> None:
        fh = open(self.log, "a")
        fh.write(f"==== start {self.starts + 1} at {dt.datetime.now(dt.timezone.utc)}\n")
        fh.flush()
        # Its own session: a kill of the process group is what systemd does to the unit.
        self.proc = subprocess.Popen(self.argv, env=self.env, stdout=fh, stderr=subprocess.STDOUT,
                                     cwd=ROOT, start_new_session=True)
        self.starts += 1

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc and self.proc.poll() is None else None

    def stop(self, timeout: float = 60) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        return self.proc.returncode


# ---- the bench --------------------------------------------------------------------------------
class Soak:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.tmp = Path(tempfile.mkdtemp(prefix="adsb-soak-"))
        os.chmod(self.tmp, 0o755)
        self.cluster = Cluster(self.tmp / "pg")
        self.data_dir = self.tmp / "data"
        self.journal = self.data_dir / "journal"
        self.mounted = False
        self.series: dict[str, Series] = {k: Series() for k in ("ingest", "worker", "trainer",
                                                                "postgres", "bench")}
        self.events: list[str] = []
        self.jobs: list[tuple[str, str, float, bool]] = []     # job, finished, seconds, ok
        self._seen_runs: dict[str, str] = {}
        self.metrics: dict[str, float] = {}
        self.db_sizes: list[dict] = []
        self.trainer_pids: set[int] = set()
        self.results: dict = {"events": self.events}
        self._last_sample = 0.0
        self.acc = Accounting(sent={})
        self._killing = False
        self.counted_day = self.sized_day = -1
        self.started = time.monotonic()

    # -- setup ------------------------------------------------------------------------------------
    def week_start(self) -> dt.datetime:
        """A Monday 00:00 UTC such that the simulated week ended more than a day ago."""
        today = dt.datetime.now(dt.timezone.utc).replace(hour=0, minute=0, second=0,
                                                         microsecond=0)
        start = today - dt.timedelta(days=today.weekday())
        while start + dt.timedelta(days=self.args.days + 1) > today:
            start -= dt.timedelta(days=7)
        return start

    def env(self, **extra: str) -> dict[str, str]:
        a = self.args
        day_wall_s = DAY_S / a.speed
        env = {k: v for k, v in os.environ.items() if not k.startswith("ADSB_")}
        env.update({
            "ADSB_DATABASE_URL": self.cluster.url(), "ADSB_DATA_DIR": str(self.data_dir),
            "ADSB_RECEIVER_PORT": str(self.receiver.port), "ADSB_RECEIVER_FORMAT": "beast",
            "ADSB_WEB_PORT": "0", "ADSB_METRICS_PORT": "0",
            "ADSB_RETENTION_DAYS": str(a.retention_days),
            "ADSB_RETENTION_INTERVAL_S": f"{max(10.0, day_wall_s):.0f}",
            "ADSB_WORKER_TICK_S": f"{a.tick_s:g}",
            "ADSB_TRAIN_CRON": f"*/{max(1, round(day_wall_s / 60))} * * * *",
            "ADSB_TRAIN_BUDGET_S": f"{a.train_budget_s:g}",
            "ADSB_TRAIN_SEED": "1",
            "ADSB_BUFFER_MAX_ROWS": str(a.buffer_rows),
            "ADSB_RECEIVER_TIMEOUT_S": "20",
            "ADSB_ALERT_NOTIFY_CHANNEL": "",
            # A webhook nobody listens on: the outbox's rows are what a user would have been
            # sent (alerts of flags, of traffic changes); deliveries fail and are retried.
            "ADSB_ALERT_WEBHOOK_URL": "http://127.0.0.1:9/soak-alerts",
            "TF_CPP_MIN_LOG_LEVEL": "2",
        })
        env.update(extra)
        return env

    def setup(self) -> None:
        a = self.args
        say(f"work directory {self.tmp}")
        self.cluster.init()
        say(f"PostgreSQL {PG_BIN.parent.name} cluster on port {self.cluster.port}")
        self.data_dir.mkdir()
        self.journal.mkdir()
        if not a.no_faults:
            r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={a.journal_kib}k", "tmpfs",
                                str(self.journal)], capture_output=True, text=True)
            self.mounted = r.returncode == 0
            say(f"journal directory on a {a.journal_kib} KiB tmpfs" if self.mounted else
                f"cannot mount a tmpfs ({r.stderr.strip()}): the full-journal fault is skipped")
        start = self.week_start()
        self.start_unix = start.timestamp()
        t = time.monotonic()
        self.flights = simulate.generate_days(a.days, a.per_day, seed=a.seed)
        per_day = [sum(1 for f in self.flights if f.day == d) for d in range(a.days)]
        say(f"simulated {len(self.flights)} flights over {a.days} days from {start:%Y-%m-%d} "
            f"(per day {per_day}, {sum(f.label for f in self.flights)} anomalous, "
            f"{sum(len(f.t) for f in self.flights):,} positions) in {time.monotonic() - t:.0f} s")
        self.results["flights_per_day"] = per_day
        self.receiver = SoakReceiver(frames(self.flights, self.start_unix),
                                     start_unix=self.start_unix, speed=a.speed)
        self.ingest_metrics_port = free_port()
        py = sys.executable
        self.ingest = Daemon("ingest", [py, str(ROOT / "bench" / "_soak_ingest.py"),
                                        str(self.start_unix)],
                             self.env(ADSB_METRICS_PORT=str(self.ingest_metrics_port)),
                             self.tmp / "ingest.log")
        self.worker = Daemon("worker", [py, "-m", "pipeline.cli", "worker"], self.env(),
                             self.tmp / "worker.log")
        self.engine = sa.create_engine(
            self.cluster.url().replace("postgresql:", "postgresql+psycopg2:"),
            pool_pre_ping=True)

    # -- sampling ---------------------------------------------------------------------------------
    def sample(self) -> None:
        sim = self.receiver.sim_s
        for name, d in (("ingest", self.ingest), ("worker", self.worker)):
            if d.pid and (s := proc_sample(d.pid)):
                self.series[name].add(sim, d.pid, s)
            if name == "worker" and d.pid:
                for c in children(d.pid):
                    if "train" in cmdline(c) and (s := proc_sample(c)):
                        self.trainer_pids.add(c)
                        self.series["trainer"].add(sim, c, s)
        for pid in list(self.trainer_pids):       # an orphan trainer still counts
            if (s := proc_sample(pid)):
                self.series["trainer"].add(sim, pid, s)
        pss = [x for p in self.cluster.pids() if (x := proc_pss(p))]
        if pss:
            self.series["postgres"].rss.append((sim, sum(pss)))
            self.series["postgres"].peak_rss = max(self.series["postgres"].peak_rss, sum(pss))
        if (s := proc_sample(os.getpid())):
            self.series["bench"].add(sim, os.getpid(), s)
        for p in self.cluster.pids():
            if (s := proc_sample(p)):
                self.series["postgres"].cpu_by_pid[p] = s[1]

    def scrape(self) -> None:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.ingest_metrics_port}/metrics",
                                        timeout=2) as r:
                self.metrics = parse_metrics(r.read().decode())
        except OSError:
            pass

    def poll_jobs(self) -> None:
        with contextlib.suppress(sa.exc.SQLAlchemyError), self.engine.connect() as c:
            for job, fin, secs, ok in c.execute(sa.text(
                    "SELECT job, last_finished::text, last_seconds, last_ok FROM job_runs "
                    "WHERE last_finished IS NOT NULL")):
                if self._seen_runs.get(job) != fin:
                    self._seen_runs[job] = fin
                    self.jobs.append((job, fin, float(secs or 0), bool(ok)))

    def count_day(self, acc: Accounting, day: int) -> bool:
        a = dt.datetime.fromtimestamp(self.start_unix + day * DAY_S, dt.timezone.utc)
        try:
            with self.engine.connect() as c:
                rows = c.execute(sa.text(
                    "SELECT icao24, count(*), count(DISTINCT time) FROM positions "
                    "WHERE time >= :a AND time < :b GROUP BY icao24"),
                    {"a": a, "b": a + dt.timedelta(days=1)}).all()
        except sa.exc.SQLAlchemyError:
            return False
        if rows:
            acc.record_day(day, [tuple(r) for r in rows])
        return bool(rows)

    def db_size(self, day: int) -> None:
        try:
            with self.engine.connect() as c:
                row = {"day": day, "database": c.execute(sa.text(
                    "SELECT pg_database_size(current_database())")).scalar_one()}
                row["positions"] = int(c.execute(sa.text(
                    "SELECT coalesce(sum(pg_total_relation_size(inhrelid)), 0) FROM pg_inherits "
                    "WHERE inhparent = 'positions'::regclass")).scalar_one())
                row["partitions"] = c.execute(sa.text(
                    "SELECT count(*) FROM pg_inherits WHERE inhparent = 'positions'::regclass")
                ).scalar_one()
                for t in ("flights", "flight_scores", "models", "job_runs", "alert_outbox",
                          "position_days"):
                    with contextlib.suppress(sa.exc.SQLAlchemyError):
                        row[t] = c.execute(sa.text(
                            "SELECT pg_total_relation_size(to_regclass(:t))"), {"t": t}).scalar()
                row["flights_n"] = c.execute(sa.text("SELECT count(*) FROM flights")).scalar()
        except sa.exc.SQLAlchemyError as e:
            row = {"day": day, "error": str(e).splitlines()[0]}
        self.db_sizes.append(row)
        say("database after day %d: %s" % (day + 1, ", ".join(
            f"{k} {v / 2**20:.1f} MiB" if isinstance(v, int) and k not in (
                "day", "partitions", "flights_n") else f"{k} {v}" for k, v in row.items()
            if k != "day")))

    # -- faults -----------------------------------------------------------------------------------
    def event(self, msg: str) -> None:
        self.events.append(f"day {self.receiver.sim_s / DAY_S:.2f}: {msg}")
        say(msg)

    def fault_postgres_restart(self) -> None:
        t = time.monotonic()
        self.cluster.restart()
        self.event(f"PostgreSQL restarted (fast) in {time.monotonic() - t:.1f} s")

    def fault_receiver_restart(self) -> None:
        self.receiver.silence(120.0, 120.0)
        self.event("receiver restarting: silent for 120 s wall, the next 2 simulated minutes "
                   "of traffic never received")

    def _wait_for(self, cond, timeout: float, step: float = 0.05) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if cond():
                return True
            time.sleep(step)
            self.tick()
        return False

    def _kill_worker(self, why: str) -> None:
        pid = self.worker.pid
        assert pid is not None
        kids = children(pid)
        self._killing = True
        os.kill(pid, signal.SIGKILL)
        assert self.worker.proc is not None
        self.worker.proc.wait()
        time.sleep(1.0)
        alive = [k for k in kids if proc_sample(k)]
        self.event(f"worker (pid {pid}) SIGKILLed {why}; children left running: "
                   f"{[(k, cmdline(k)[-40:]) for k in alive] or 'none'}")
        if alive:
            # What systemd does with the rest of the unit's control group once its main
            # process died (and docker with the container's processes).
            for k in alive:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(k, signal.SIGKILL)
            self.event(f"killed the orphans {alive}, as the supervisor's cgroup cleanup would")
        time.sleep(2.0)
        self.worker.start()
        self._killing = False
        self.event(f"worker restarted (pid {self.worker.pid})")

    def fault_kill_training(self) -> None:
        def trainer() -> int | None:
            pid = self.worker.pid
            return next((c for c in children(pid) if "train" in cmdline(c)), None) if pid else None

        for _ in range(3):     # a run that ends before the kill is not "mid-training": wait again
            if not self._wait_for(lambda: trainer() is not None,
                                  timeout=DAY_S / self.args.speed * 1.5, step=0.5):
                break
            t = trainer()
            assert t is not None
            started = time.monotonic()
            # Into the fit, past TensorFlow's import; a run caught late is killed at once.
            while time.monotonic() - started < self.args.kill_train_after_s and trainer() == t:
                time.sleep(0.5)
                self.tick()
            if trainer() == t:
                self.event(f"training child {t} running for "
                           f"{time.monotonic() - started:.0f} s (at least)")
                self._kill_worker("mid-training")
                return
            self.event(f"training child {t} ended before the kill; waiting for the next run")
        self.event("no training caught running: kill mid-training skipped")

    def fault_kill_scoring(self) -> None:
        def scoring() -> bool:
            with contextlib.suppress(sa.exc.SQLAlchemyError), self.engine.connect() as c:
                # A pass in progress with flights to score (not an empty pass).
                return bool(c.execute(sa.text(
                    "SELECT last_started > coalesce(last_finished, '-infinity') AND EXISTS ("
                    "SELECT 1 FROM flights WHERE state = 'finished' AND image IS NOT NULL AND "
                    "score IS NULL) AND EXISTS (SELECT 1 FROM models WHERE status = 'active') "
                    "FROM job_runs WHERE job = 'score'")).scalar())
            return False

        if not self._wait_for(scoring, timeout=DAY_S / self.args.speed, step=0.02):
            self.event("no scoring pass caught in progress within a simulated day: skipped")
            return
        self._kill_worker("mid-scoring")

    def fault_database_away_journal_full(self) -> None:
        if not self.mounted:
            self.event("full-journal fault skipped (no tmpfs)")
            return
        before = dict(self.metrics)
        t = time.monotonic()
        self.cluster.stop()
        self.event("PostgreSQL stopped; the journal is on a "
                   f"{self.args.journal_kib} KiB tmpfs")
        def journal_refused() -> bool:
            self.scrape()
            return self.metrics.get("journal_errors", 0) > 0

        self._wait_for(journal_refused, timeout=self.args.outage_s, step=0.5)
        while time.monotonic() - t < self.args.outage_s:
            time.sleep(0.5)
            self.tick()
            self.scrape()
        du = shutil.disk_usage(self.journal)
        m = self.metrics
        self.event(f"after {time.monotonic() - t:.0f} s away: journal disk {du.used // 1024} of "
                   f"{du.total // 1024} KiB used, rows journaled "
                   f"{m.get('rows_journaled', 0) - before.get('rows_journaled', 0):.0f}, "
                   f"journal write failures {m.get('journal_errors', 0):.0f}, rows in memory "
                   f"{m.get('rows_buffered', 0):.0f}, ingest alive: {self.ingest.pid is not None}")
        self.cluster.start()
        self.event("PostgreSQL started again")

    # -- the week -----------------------------------------------------------------------------------
    def tick(self) -> None:
        """What the bench does between faults (also while a fault waits): sample, restart a
        process that exited as a supervisor would, count finished days, size the database."""
        now = time.monotonic()
        if now - self._last_sample < SAMPLE_S:
            return
        self._last_sample = now
        self.sample()
        self.scrape()
        self.poll_jobs()
        for d_ in self.ingest, self.worker:
            if d_.proc and d_.proc.poll() is not None and not self._killing:
                # As systemd with Restart=always, RestartSec=5 (docker restarts sooner).
                if d_.exited_at is None:
                    d_.exited_at = now
                    self.event(f"{d_.name} exited with status {d_.proc.returncode}; "
                               "restarting in 5 s")
                elif now - d_.exited_at >= 5.0:
                    d_.exited_at = None
                    d_.start()
        sim = self.receiver.sim_s
        day = int(sim // DAY_S)
        # Count a day 2 simulated hours after it ended (rows committed), before retention can
        # drop it; a day after that, count it again (journals replayed late).
        if day - 1 > self.counted_day and sim - day * DAY_S > 7200:
            self.counted_day = day - 1
            for dd in {self.counted_day, self.counted_day - 1} - {-1}:
                self.count_day(self.acc, dd)
        if day - 1 > self.sized_day:
            self.sized_day = day - 1
            self.db_size(self.sized_day)
            say(f"day {day + 1} begins: {self.receiver.frames_sent:,} frames sent, "
                f"{time.monotonic() - self.started:.0f} s, ingest RSS "
                f"{(self.series['ingest'].rss or [(0, 0)])[-1][1] / 2**20:.0f} MiB, worker RSS "
                f"{(self.series['worker'].rss or [(0, 0)])[-1][1] / 2**20:.0f} MiB")

    def run(self) -> None:
        a = self.args
        self.setup()
        self.receiver.start()
        self.ingest.start()
        acc = self.acc
        # The ingest migrates the schema; the worker starts once it exists.
        if not self._wait_for(lambda: self._table_exists("job_runs"), 120, 0.5):
            raise RuntimeError(f"the ingest did not create the schema; see {self.ingest.log}")
        self.worker.start()
        clock = threading.Thread(target=self.clock_phase, daemon=True) if (
            not a.no_faults and FAKETIME_LIB.exists()) else None
        if clock:
            clock.start()
        d = a.days
        schedule = FaultSchedule([] if a.no_faults else [
            ("postgres_restart", 1.4 * d / 7), ("receiver_restart", 2.5 * d / 7),
            ("kill_training", 3.0 * d / 7), ("kill_scoring", 4.2 * d / 7),
            ("database_away_journal_full", 5.45 * d / 7)])
        self.acc, self.counted_day, self.sized_day = acc, -1, -1
        self.started = started = time.monotonic()
        while not self.receiver.finished.is_set():
            time.sleep(0.2)
            self.tick()
            for f in schedule.due(self.receiver.sim_s):
                getattr(self, f"fault_{f.name}")()
        stream_s = time.monotonic() - started
        say(f"stream finished: {self.receiver.frames_sent:,} frames in {stream_s:.0f} s")
        self.finish(acc, stream_s, clock)

    def _table_exists(self, name: str) -> bool:
        with contextlib.suppress(sa.exc.SQLAlchemyError), self.engine.connect() as c:
            return bool(c.execute(sa.text("SELECT to_regclass(:t) IS NOT NULL"),
                                  {"t": name}).scalar())
        return False

    def finish(self, acc: Accounting, stream_s: float, clock: threading.Thread | None) -> None:
        a = self.args
        # The ingest has written everything once nothing is buffered and the count is stable.
        last, stable = -1.0, 0
        deadline = time.monotonic() + 180
        while stable < 3 and time.monotonic() < deadline:
            time.sleep(1)
            self.scrape()
            self.sample()
            n = self.metrics.get("rows_written", -1)
            stable = stable + 1 if n == last and not self.metrics.get("rows_buffered") else 0
            last = n
        # Let the worker place, close and score what it can, then stop it: the flights still
        # open at the end of the stream are closed by a final pass, as the demo does.
        time.sleep(max(3 * a.tick_s, 10))
        self.poll_jobs()
        self.sample()
        ingest_rc = self.ingest.stop()
        self.scrape()
        self.worker.stop()
        say(f"ingest exited with {ingest_rc}; worker stopped")
        days = range(a.days)
        for d in days:
            self.count_day(acc, d)
        self.db_size(a.days - 1)
        env = self.env()
        for cmd in (["process", "--final"], ["score"]):
            t = time.monotonic()
            r = subprocess.run([sys.executable, "-m", "pipeline.cli", *cmd], env=env, cwd=ROOT,
                               capture_output=True, text=True)
            say(f"adsb-pipeline {' '.join(cmd)}: status {r.returncode} in "
                f"{time.monotonic() - t:.0f} s: {r.stdout.strip()[-300:]}")
        if clock is not None:
            clock.join(300)
        self.report(acc, stream_s)

    # -- the wall-clock phase under libfaketime ---------------------------------------------------
    def clock_phase(self, steps_s: tuple[tuple[float, str], ...] = (
            (40, "+3600"), (80, "+0"))) -> None:
        """A separate ingest in wall-clock mode against its own database, its clock stepped
        +1 h at 40 s and back (-1 h) at 80 s through a libfaketime timestamp file."""
        out: dict = {}
        self.results["clock_step"] = out
        try:
            flights = simulate.generate(6, 0, seed=5, duration_s=30.0)
            rx = SoakReceiver(frames(flights, 0.0), start_unix=0.0, speed=1.0,
                              chunk_frames=5).start()
            stamp = self.tmp / "faketime"
            stamp.write_text("+0\n")
            env = self.env(ADSB_DATABASE_URL=self.cluster.url("soak_clock"),
                           ADSB_DATA_DIR=str(self.tmp / "clock-data"),
                           ADSB_RECEIVER_PORT=str(rx.port), ADSB_RECEIVER_CLOCK="wall",
                           ADSB_RECEIVER_ID="clock-step", ADSB_RETENTION_DAYS="",
                           LD_PRELOAD=str(FAKETIME_LIB), FAKETIME_TIMESTAMP_FILE=str(stamp),
                           FAKETIME_NO_CACHE="1", FAKETIME_DONT_FAKE_MONOTONIC="1")
            d = Daemon("clock-ingest", [sys.executable, "-m", "pipeline.cli", "ingest", "--live"],
                       env, self.tmp / "clock-ingest.log")
            d.start()
            steps = []
            deadline = time.monotonic() + 120
            while not rx.frames_sent and time.monotonic() < deadline:
                time.sleep(0.5)
            t0 = time.monotonic()
            for at, offset in steps_s:
                time.sleep(max(0.0, t0 + at - time.monotonic()))
                stamp.write_text(offset + "\n")
                steps.append((round(rx.sim_s, 1), offset))
            time.sleep(max(0.0, t0 + 120 - time.monotonic()))
            rx.stop()                    # the receiver first: what it sent reaches the ingest
            time.sleep(3)
            out["ingest_status"] = d.stop()
            # The flight pass over what was stored (its data clock is the wall clock).
            r = subprocess.run([sys.executable, "-m", "pipeline.cli", "process", "--final",
                                "--no-score"], env={k: v for k, v in env.items()
                                                    if not k.startswith("FAKETIME")
                                                    and k != "LD_PRELOAD"},
                               cwd=ROOT, capture_output=True, text=True)
            eng = sa.create_engine(self.cluster.url("soak_clock").replace(
                "postgresql:", "postgresql+psycopg2:"))
            with eng.connect() as c:
                # Arrival order (inserted_at, one stamp per batch) against stored time order.
                rows = c.execute(sa.text(
                    "SELECT icao24, extract(epoch FROM time), extract(epoch FROM inserted_at) "
                    "FROM positions ORDER BY time")).all()
                flight_rows = c.execute(sa.text(
                    "SELECT icao24, count(*) FROM flights GROUP BY icao24")).all()
            eng.dispose()
            sent = sum(rx.sent.values())
            times = sorted(float(t) for _, t, _ in rows)
            t_first = times[0] if times else 0.0
            ahead = sum(1 for t in times if t - t_first > 1800)
            back = 0
            last: dict[str, float] = {}
            for icao, t, _ in sorted(rows, key=lambda x: (float(x[2]), float(x[1]))):
                if icao in last and float(t) < last[icao] - 1800:
                    back += 1
                last[icao] = max(last.get(icao, float(t)), float(t))
            log = (self.tmp / "clock-ingest.log").read_text()
            summary = next((ln for ln in reversed(log.splitlines()) if "ingest stopped" in ln), "")
            out.update({"sent": sent, "stored": len(rows), "steps_at_stream_s": steps,
                        "stored_an_hour_ahead": ahead,
                        "stored_an_hour_behind_earlier_rows_of_their_aircraft": back,
                        "stored_span_s": round(times[-1] - t_first) if times else None,
                        "aircraft": len({i for i, _, _ in rows}),
                        "flights_per_aircraft": sorted(n for _, n in flight_rows),
                        "process": r.stdout.strip()[-200:],
                        "ingest_summary": summary.split("ingest stopped: ")[-1][:700]})
        except Exception as e:           # the phase reports, it never takes the week down
            out["error"] = f"{type(e).__name__}: {e}"

    # -- the report -------------------------------------------------------------------------------
    def report(self, acc: Accounting, stream_s: float) -> None:
        a = self.args
        r = self.results
        sim_s = a.days * DAY_S
        acc.sent = dict(self.receiver.sent)
        acct = acc.summary(range(a.days))
        skipped = sum(self.receiver.skipped.values())
        decoded = self.metrics.get("positions", 0)
        r["positions"] = {**acct, "skipped_while_silent": skipped,
                          "decoded_by_the_ingest": decoded,
                          "decoded_not_stored": decoded - acct["stored"],
                          "shortfall_per_aircraft_day": acc.shortfalls(range(a.days)),
                          "unsent_on_error": self.receiver.unsent_on_error,
                          "ingest_counters": {k: self.metrics.get(k) for k in (
                              "positions", "rows_written", "rows_journaled", "journal_errors",
                              "write_errors", "rejected_range", "rejected_speed",
                              "rejected_altitude", "out_of_order", "duplicates", "reconnects",
                              "crc_failures", "rows_buffered")},
                          "per_day": {d: acc.summary([d]) for d in range(a.days)},
                          "silences": self.receiver.silences}
        with self.engine.connect() as c:
            q = lambda sql: c.execute(sa.text(sql)).all()  # noqa: E731
            r["flights"] = dict(q("SELECT state || CASE WHEN image IS NULL THEN ' no image' "
                                  "ELSE '' END, count(*) FROM flights GROUP BY 1"))
            r["scores"] = {
                "finished_imaged_unscored": q(
                    "SELECT count(*) FROM flights f WHERE state = 'finished' AND image IS NOT "
                    "NULL AND NOT EXISTS (SELECT 1 FROM flight_scores s WHERE s.flight_id = "
                    "f.id)")[0][0],
                "scored_twice_by_a_model": q(
                    "SELECT count(*) FROM (SELECT flight_id, model_id FROM flight_scores "
                    "GROUP BY 1, 2 HAVING count(*) > 1) x")[0][0],
                "per_model": [tuple(x) for x in q(
                    "SELECT model_id, count(*), count(DISTINCT flight_id) FROM flight_scores "
                    "GROUP BY 1 ORDER BY 1")],
                "score_not_of_its_model": q(
                    "SELECT count(*) FROM flights f LEFT JOIN flight_scores s ON s.flight_id = "
                    "f.id AND s.model_id = f.model_id WHERE f.score IS NOT NULL AND "
                    "(s.score IS NULL OR s.score <> f.score)")[0][0],
                "flagged": q("SELECT count(*) FROM flagged_flights")[0][0],
            }

            def table(sql: str) -> list[dict]:
                # Rows as JSON: numbers and NULL as they are, timestamps and the rest as text.
                return [{k: v if isinstance(v, (int, float, type(None))) else str(v)
                         for k, v in row._mapping.items()} for row in c.execute(sa.text(sql))]

            r["models"] = table(
                "SELECT id, version, created_at, data_to, n_train, n_excluded, epochs, seconds, "
                "threshold, status, reason, activated_at FROM models ORDER BY id")
            r["flags_per_day"] = flag_summary(
                q("SELECT icao24, model_id, flagged, traffic_change_id FROM flights "
                  "WHERE state = 'finished' AND score IS NOT NULL"),
                self.flights, simulate.day_conditions(a.days, seed=a.seed),
                q("SELECT f.icao24, o.payload->>'event' FROM alert_outbox o "
                  "JOIN flights f ON f.id = o.flight_id WHERE o.sink = 'webhook'"))
            r["traffic_changes"] = table(
                "SELECT id, model_id, channel, region, started_at, detected_at, ended_at, "
                "end_reason, flights_flagged FROM traffic_changes ORDER BY id")
            r["job_runs"] = [tuple(str(x) for x in row) for row in q(
                "SELECT job, runs, failures, last_ok, round(last_seconds::numeric, 2) "
                "FROM job_runs ORDER BY job")]
        ingest_cpu = self.series["ingest"].cpu_s
        worker_cpu = self.series["worker"].cpu_s
        trainer_cpu = self.series["trainer"].cpu_s
        pg_cpu = self.series["postgres"].cpu_s
        per_job: dict[str, list[float]] = {}
        for job, _, secs, _ in self.jobs:
            per_job.setdefault(job, []).append(secs)
        r["cpu"] = {
            "stream_wall_s": round(stream_s), "simulated_s": sim_s,
            "ingest_cpu_s": round(ingest_cpu, 1), "worker_cpu_s": round(worker_cpu, 1),
            "trainer_cpu_s": round(trainer_cpu, 1), "postgres_cpu_s": round(pg_cpu, 1),
            "bench_cpu_s": round(self.series["bench"].cpu_s, 1),
            "share_of_a_core_at_1x": {
                "ingest": ingest_cpu / sim_s, "worker_without_training": worker_cpu / sim_s,
                "training": trainer_cpu / sim_s, "postgres": pg_cpu / sim_s},
            "job_wall_s": {j: {"runs": len(v), "total": round(sum(v), 1),
                               "max": round(max(v), 1)} for j, v in per_job.items()},
        }
        r["rss"] = {name: {
            "peak_mib": round(s.peak_rss / 2**20, 1),
            "end_of_day_mib": [None if (x := s.rss_at_end_of_day(d)) is None
                               else round(x / 2**20, 1) for d in range(a.days)],
            "growth_after_day1": s.growth_after_day1(a.days - 1)}
            for name, s in self.series.items()}
        r["rss"]["trainer"]["peak_mib"] = round(self.series["trainer"].peak_rss / 2**20, 1)
        r["rss"]["postgres"]["note"] = "sum of PSS of the cluster's processes"
        # Each worker process (restarted after the kills) on its own: resident size at the end
        # of its first full simulated day and at its last sample.
        w = self.series["worker"]
        r["rss"]["worker"]["per_process"] = []
        for pid, (first, last) in w.spans.items():
            mine = [(t, x) for t, x in w.rss if first <= t <= last]
            after_day = [x for t, x in mine if t >= first + DAY_S]
            r["rss"]["worker"]["per_process"].append({
                "pid": pid, "from_day": round(first / DAY_S, 2), "to_day": round(last / DAY_S, 2),
                "first_mib": round(mine[0][1] / 2**20, 1),
                "after_its_first_day_mib": round(after_day[0] / 2**20, 1) if after_day else None,
                "last_mib": round(mine[-1][1] / 2**20, 1)})
        frames_sent = self.receiver.frames_sent
        msg_rate_1x = frames_sent / sim_s
        r["cpu"]["messages_sent"] = frames_sent
        r["cpu"]["messages_per_s_at_1x"] = round(msg_rate_1x, 1)
        r["cpu"]["ingest_us_per_message"] = round(ingest_cpu / max(frames_sent, 1) * 1e6, 1)
        r["cpu"]["ingest_share_of_a_core_at_1000_msg_s"] = round(
            1000 * ingest_cpu / max(frames_sent, 1), 3)
        r["db_sizes"] = self.db_sizes
        r["processes"] = {"ingest_starts": self.ingest.starts, "worker_starts": self.worker.starts}
        (self.tmp / "soak.json").write_text(json.dumps(r, indent=1, default=str))
        print("\n==== soak results ====")
        print(json.dumps(r, indent=1, default=str))
        print(f"(also in {self.tmp / 'soak.json'}; logs in {self.tmp})")

    def cleanup(self) -> None:
        for d in (getattr(self, "ingest", None), getattr(self, "worker", None)):
            if d is not None:
                with contextlib.suppress(Exception):
                    d.stop(10)
        if hasattr(self, "receiver"):
            self.receiver.stop()
        if hasattr(self, "engine"):
            self.engine.dispose()
        self.cluster.stop()
        if self.mounted:
            subprocess.run(["umount", str(self.journal)], check=False)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--days", type=int, default=7)
    ap.add_argument("--per-day", type=int, default=1000, help="flights on an ordinary weekday")
    ap.add_argument("--speed", type=float, default=480.0, help="times real time")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--retention-days", type=int, default=3)
    ap.add_argument("--tick-s", type=float, default=5.0, help="ADSB_WORKER_TICK_S")
    ap.add_argument("--train-budget-s", type=float, default=150.0,
                    help="ADSB_TRAIN_BUDGET_S, wall seconds (one simulated night is 180 s)")
    ap.add_argument("--buffer-rows", type=int, default=40000, help="ADSB_BUFFER_MAX_ROWS")
    ap.add_argument("--journal-kib", type=int, default=3072, help="size of the journal's tmpfs")
    ap.add_argument("--outage-s", type=float, default=40.0,
                    help="wall seconds the database stays away with the journal full")
    ap.add_argument("--kill-train-after-s", type=float, default=25.0)
    ap.add_argument("--no-faults", action="store_true")
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench/soak.py runs its own PostgreSQL as the postgres user and mounts a tmpfs: "
                 "run it as root (e.g. in the development container)")
    soak = Soak(args)
    try:
        soak.run()
    finally:
        soak.cleanup()
        if not args.keep:
            for p in soak.tmp.glob("pg/data"):
                shutil.rmtree(p, ignore_errors=True)


if __name__ == "__main__":
    main()
