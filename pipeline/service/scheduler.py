"""The worker: APScheduler 3 ticks that queue work, and consumers that run queued jobs.

The work of every site (:mod:`pipeline.db.sites`) is a job in the PostgreSQL queue
(:mod:`pipeline.db.jobs`), so any number of worker processes, on any number of machines sharing
the database, share it without double work, and a worker killed mid-job leaves its job to
another:

* ``flights`` (per site): place new positions, close finished flights, draw their images;
* ``score``   (per site): score finished flights with the site's active model;
* ``train``   (per site): in a child process (a crash or an out-of-memory kill of TensorFlow
  cannot take the worker down).

Each worker runs two consumers: one for ``flights`` and ``score`` and one for ``train``, so a
training of an hour never holds up a site's flights. APScheduler jobs (``coalesce=True``,
``max_instances=1``) are the clock of each worker:

* ``queue``     every ADSB_WORKER_TICK_S (a minute): a ``flights`` and a ``score`` job per site,
  unless one is pending (every worker ticks; the queue keeps one);
* ``train``     on ADSB_TRAIN_CRON: a ``train`` job per site;
* ``train-when-ready`` every few minutes: a ``train`` job for each site with no active model
  but enough finished flights (a fresh install need not wait for the nightly run);
* ``jobs``      every ADSB_JOB_LEASE_S / 6 (10 s): this worker's heartbeat on the jobs it runs; jobs of
  workers that stopped beating go back to the queue; old finished jobs are pruned;
* ``retention`` every ADSB_RETENTION_INTERVAL_S (daily): partitions ahead, and dropping
  positions older than ADSB_RETENTION_DAYS;
* ``alerts``    every ALERT_TICK_S: send due alerts (flags, their withdrawals, traffic
  changes) by webhook and MQTT from ``alert_outbox`` (pipeline.alerts.delivery). Not recorded
  in ``job_runs`` (it would rewrite it 17,000 times a day; the outbox rows are its record) and
  never raises: a failing pass is logged at most every few minutes.

Each run is recorded in ``job_runs`` (by kind) and in ``jobs`` (each job). A failing job
(database gone, training crashed) is logged and counted; the next tick simply queues it again.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
import logging
import os
import re
import signal
import subprocess
import sys
import threading
import time
from dataclasses import fields
from typing import Any, Callable, Iterator

import sqlalchemy as sa
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.schedulers.base import BaseScheduler
from apscheduler.triggers.cron import CronTrigger

from pipeline import config, parent
from pipeline.config import Settings
from pipeline.db import jobs, partitions, sites
from pipeline.db.engine import make_engine
from pipeline.flights import store
from pipeline.flights.clock import data_clock

log = logging.getLogger(__name__)

TRAIN_CHECK_S = 300
ALERT_TICK_S = 5            # a new flag's alerts leave within seconds of its scoring pass
# After an automatic training attempt (failed or rejected), wait this long before the next.
TRAIN_RETRY = dt.timedelta(hours=1)
CHILD_GRACE_S = 30          # SIGTERM, then this long, then SIGKILL
SHORT_KINDS = ["flights", "score"]
LONG_KINDS = ["train"]
POLL_S = 1.0                # an idle consumer looks for work this often
JOB_DEFAULTS = {"coalesce": True, "max_instances": 1, "misfire_grace_time": 30}


class JobFailed(RuntimeError):
    """A job that ran but did not succeed (e.g. the training child exited non-zero)."""


class Worker:
    """The jobs themselves, with what they share: engine, settings, the training child."""

    def __init__(self, settings: Settings, engine: sa.Engine,
                 train_command: list[str] | None = None) -> None:
        self.settings = settings
        self.engine = engine
        self.train_command = train_command or [sys.executable, "-m", "pipeline.cli", "train",
                                               "--quiet"]
        self.stopping = threading.Event()
        self.runs: dict[str, int] = {}
        self.failures: dict[str, int] = {}
        self.errors: dict[str, str | None] = {}
        self.name = jobs.worker_name()
        self._child: subprocess.Popen | None = None
        self._child_lock = threading.Lock()
        # Jobs this worker's consumers are running now (the only ones its heartbeat refreshes)
        # and ends it could not record yet (retried before each claim).
        self._jobs_lock = threading.Lock()
        self._running_jobs: set[int] = set()
        self._unrecorded: list[tuple[jobs.Job, bool, str | None, Any]] = []
        self._record_lock = threading.Lock()
        self._end_retrying = False
        self._scorer_missing = False
        self._deliverer: Any = None
        self._log_quiet: dict[str, tuple[float, int]] = {}     # key: (next line at, held back)

    # ---- bookkeeping -------------------------------------------------------------------------
    def run(self, job: str, fn: Callable[[], Any]) -> tuple[bool, Any]:
        """Run ``fn`` as job ``job``: record it in job_runs, never raise."""
        started = time.perf_counter()
        self.runs[job] = self.runs.get(job, 0) + 1
        self._record(job, "INSERT INTO job_runs (job, last_started, runs) VALUES (:j, now(), 1) "
                          "ON CONFLICT (job) DO UPDATE SET last_started = now(), "
                          "runs = job_runs.runs + 1", {"j": job})
        try:
            result, ok, error = fn(), True, None
        except Exception as e:     # the scheduler must outlive any job failure
            result, ok, error = None, False, f"{type(e).__name__}: {e}"
            self.failures[job] = self.failures.get(job, 0) + 1
            self._log_limited(f"failed:{job}", logging.ERROR, "job %s failed: %s", job,
                              error.splitlines()[0][:500])
        if ok and self._log_quiet.pop(f"failed:{job}", None) is not None:
            log.info("job %s: ran again after failing", job)
        self.errors[job] = error
        secs = time.perf_counter() - started
        self._record(job, "UPDATE job_runs SET last_finished = now(), last_ok = :ok, "
                          "last_error = :err, last_seconds = :s, "
                          "failures = failures + CASE WHEN :ok THEN 0 ELSE 1 END WHERE job = :j",
                     {"j": job, "ok": ok, "err": error, "s": secs})
        return ok, result

    def _record(self, job: str, sql: str, params: dict) -> None:
        try:
            with self.engine.begin() as conn:
                conn.execute(sa.text(sql), params)
        except Exception as e:
            self._log_limited(f"record:{job}", logging.WARNING,
                              "job %s: cannot record the run in job_runs: %s", job,
                              str(e).splitlines()[0][:200])

    def _log_limited(self, key: str, level: int, msg: str, *args: Any) -> None:
        """One line a minute per ``key``, saying how many were held back: while the database
        is away, each 5 s tick would otherwise log the same failure three times (17,000
        lines in an overnight outage)."""
        now = time.monotonic()
        next_at, held = self._log_quiet.get(key, (0.0, 0))
        if now < next_at:
            self._log_quiet[key] = (next_at, held + 1)
            return
        if held:
            msg += f" ({held} more like it in the last minute)"
        log.log(level, msg, *args)
        self._log_quiet[key] = (now + 60.0, 0)

    # ---- the queue ---------------------------------------------------------------------------
    def execute(self, job: jobs.Job) -> Any:
        """Run one queued job (recorded in job_runs under its kind)."""
        if job.kind == "flights":
            return self._site_pass(job.site)
        if job.kind == "score":
            return self.score(job.site)
        if job.kind == "train":
            return self.train(job.site)
        raise JobFailed(f"job {job.id}: unknown kind {job.kind!r}")

    def consume(self, kinds: list[str], stop: threading.Event, poll_s: float = POLL_S) -> None:
        """Claim and run queued jobs of ``kinds`` until ``stop`` is set."""
        quiet_until = 0.0
        while not stop.is_set() and not self.stopping.is_set():
            try:
                self.record_ends()
                job = jobs.claim(self.engine, self.name, kinds)
            except sa.exc.SQLAlchemyError as e:
                if time.monotonic() > quiet_until:      # one line a minute while it lasts
                    log.warning("jobs: cannot claim work (%s); retrying",
                                str(e).splitlines()[0][:200])
                    quiet_until = time.monotonic() + 60
                stop.wait(5 * poll_s)
                continue
            if job is None:
                stop.wait(poll_s)
                continue
            with self._jobs_lock:
                self._running_jobs.add(job.id)
            try:
                ok, result = self.run(job.kind, functools.partial(self.execute, job))
            finally:
                with self._jobs_lock:
                    self._running_jobs.discard(job.id)
            with self._jobs_lock:
                self._unrecorded.append((job, ok, self.errors.get(job.kind), _summary(result)))
            with contextlib.suppress(sa.exc.SQLAlchemyError):   # else retried before the next claim
                self.record_ends()
        # Stopping: the last job's end too (a stop never leaves a finished job `running`).
        with contextlib.suppress(sa.exc.SQLAlchemyError):
            self.record_ends()

    def record_ends(self) -> None:
        """Record the ends of finished jobs, those a lost connection kept from being recorded
        first. Raises if the database cannot be reached (they are retried next time).

        Until its end is recorded a job holds its dedupe key, so no other job of its kind and
        site can be queued: a flights job that failed as the server restarted once stopped
        every flight pass of its site until the worker restarted. It is no longer beaten, so
        if this worker never records its end, the recovery queues it again after the lease."""
        with self._record_lock:         # both consumers call this: each end once
            while True:
                with self._jobs_lock:
                    if not self._unrecorded:
                        return
                    job, ok, error, result = self._unrecorded[0]
                try:
                    jobs.finish(self.engine, job, self.name, ok=ok, error=error, result=result)
                except sa.exc.SQLAlchemyError as e:
                    if not self._end_retrying:
                        log.warning("job %d: cannot record its end yet (%s); retrying", job.id,
                                    str(e).splitlines()[0][:200])
                        self._end_retrying = True
                    raise
                if self._end_retrying:
                    log.info("job %d: end recorded", job.id)
                    self._end_retrying = False
                with self._jobs_lock:
                    self._unrecorded.pop(0)

    def queue_work(self) -> int:
        """A flights and a score job for every site (none where one is pending)."""
        names = self._site_names()
        return (jobs.enqueue_periodic(self.engine, "flights", names)
                + jobs.enqueue_periodic(self.engine, "score", names))

    def queue_training(self) -> int:
        return jobs.enqueue_periodic(self.engine, "train", self._site_names())

    def tend_jobs(self) -> None:
        """This worker's heartbeat; jobs of workers that stopped beating back to the queue;
        old finished jobs pruned."""
        with self._jobs_lock:
            running = set(self._running_jobs)
        jobs.heartbeat(self.engine, self.name, running)
        jobs.recover(self.engine, self.settings.job_lease_s)
        if time.monotonic() > getattr(self, "_next_prune", 0.0):
            jobs.prune(self.engine)
            self._next_prune = time.monotonic() + 3600

    def _site_names(self) -> list[str]:
        # This worker's own receiver was registered once when it started (run_worker).
        with self.engine.connect() as conn:
            return [s.id for s in sites.framed(conn)]

    def _site_pass(self, site_id: str | None) -> store.PassResult:
        if site_id is None:
            return self.close_flights()
        with self.engine.connect() as conn:
            site = sites.get(conn, site_id)
        if site is None:
            raise JobFailed(f"site {site_id!r} has no frame")
        return store.process_flights(self.engine, self.settings, site=site, wait=True)

    # ---- jobs --------------------------------------------------------------------------------
    def close_flights(self, final: bool = False, wait: bool = False) -> store.PassResult:
        """A pass of every site at once (``process``; the queue runs one job per site)."""
        return store.process_all(self.engine, self.settings, final=final, wait=wait)

    def score(self, site: str | None = None) -> int | None:
        try:
            from pipeline.model.score import score_pending
        except ImportError as e:
            if not self._scorer_missing:
                log.warning("scoring is not available (%s); skipping it", e)
                self._scorer_missing = True
            return None
        return score_pending(self.engine, self.settings, site=site)

    def deliver_alerts(self) -> Any:
        """Send due flag alerts (its own job: a slow endpoint never holds up scoring)."""
        if self._deliverer is None:
            from pipeline.alerts.delivery import Deliverer

            self._deliverer = Deliverer(self.settings, stopping=self.stopping)
        return self._deliverer.run(self.engine)

    def train(self, site: str | None = None) -> int | str | None:
        """Train the model of ``site`` (default: this worker's own) in a child process; returns
        its exit status (0), a string when it was refused for too few flights, None when
        another training of the site runs (here or in another worker); raises if it failed."""
        site = site or self.settings.site_id
        with training_lock(self.engine, site) as held:
            if not held:
                log.info("training of site %s: another training run is in progress; skipping",
                         site)
                return None
            return self._train_child(site)

    def _train_child(self, site: str) -> int | str:
        env = parent.child_env(dict(os.environ))     # it ends if this worker is killed
        env.update(settings_env(self.settings, self.engine))
        env[config.env_name("site")] = site
        with self._child_lock:
            if self.stopping.is_set():
                return 0
            log.info("training of site %s: starting %s", site, " ".join(self.train_command[1:]))
            self._child = subprocess.Popen(self.train_command, env=env)
        child = self._child
        deadline = time.monotonic() + 2 * self.settings.train_budget_s + 600
        try:
            while child.poll() is None:
                if self.stopping.wait(1.0) or time.monotonic() > deadline:
                    why = "stopping" if self.stopping.is_set() else "over its time budget"
                    log.warning("training: %s, terminating the child process", why)
                    self.terminate_child()
                    break
        finally:
            with self._child_lock:
                self._child = None
        rc = child.wait()
        from pipeline.model.train import EXIT_REFUSED

        if rc == EXIT_REFUSED:
            log.info("training of site %s: refused, not enough flights yet (the line above says "
                     "how many); the next run tries again", site)
            return "refused: not enough flights"
        if rc != 0:
            self._remove_partial_model(child.pid)
            raise JobFailed(f"training process exited with status {rc}" if rc > 0
                            else f"training process killed by signal {-rc}")
        return rc

    def _remove_partial_model(self, pid: int) -> None:
        """A child killed while saving leaves its temporary file behind (the registry writes
        ``.tmp-<version>-<pid>.keras``, then renames it); no model row points at it."""
        for path in self.settings.models_path.glob(f".tmp-*-{pid}.keras"):
            path.unlink(missing_ok=True)
            log.warning("training: removed %s, left by the killed training process", path)

    def sites_ready_to_train(self) -> list[str]:
        """Sites with no active model, enough finished flights with an image, and no training
        started within TRAIN_RETRY."""
        with self.engine.connect() as conn:
            rows = conn.execute(sa.text("""
                SELECT s.id, (SELECT count(*) FROM flights f WHERE f.site = s.id
                               AND f.state = 'finished' AND f.image IS NOT NULL)
                  FROM sites s
                 WHERE s.latitude IS NOT NULL
                   AND NOT EXISTS (SELECT 1 FROM models m WHERE m.site = s.id
                                    AND m.status = 'active')
                   AND NOT EXISTS (SELECT 1 FROM jobs j WHERE j.kind = 'train' AND j.site = s.id
                                    AND (j.state IN ('queued', 'running')
                                         OR j.started_at > now() - :r))
                 ORDER BY s.id"""), {"r": TRAIN_RETRY}).all()
        return [site for site, n in rows if n >= self.settings.train_min_flights]

    def train_when_ready(self) -> list[str]:
        """Queue a training of each site that is ready (sites_ready_to_train); returns them."""
        ready = self.sites_ready_to_train()
        for site in ready:
            log.info("training of site %s: no active model and enough finished flights; "
                     "queued", site)
            with self.engine.begin() as conn:
                jobs.enqueue(conn, "train", site, dedupe_key=f"train:{site}")
        return ready

    def retention(self) -> list[str]:
        with self.engine.begin() as conn:
            partitions.ensure_ahead(conn, dt.datetime.now(dt.timezone.utc).date())
            if self.settings.retention_days is None:
                return []
            cutoff = data_clock(conn) - dt.timedelta(days=self.settings.retention_days)
            return partitions.drop_before(conn, cutoff.date())

    # ---- stopping ----------------------------------------------------------------------------
    def terminate_child(self) -> None:
        with self._child_lock:
            child = self._child
        if child is None or child.poll() is not None:
            return
        child.send_signal(signal.SIGTERM)
        try:
            child.wait(CHILD_GRACE_S)
        except subprocess.TimeoutExpired:
            log.warning("training: child did not stop after SIGTERM; killing it")
            child.kill()

    def stop(self) -> None:
        self.stopping.set()
        self.terminate_child()


TRAIN_LOCK = "adsb.train"


def train_lock_key(site: str) -> str:
    return f"{TRAIN_LOCK}:{site}"


@contextlib.contextmanager
def training_lock(engine: sa.Engine, site: str) -> Iterator[bool]:
    """Yields whether this worker may train the site's model (no other worker trains it); the
    lock is held until the block ends. The queue already runs one training job per site at a
    time; the lock also covers ``adsb-pipeline train`` started by hand and a job recovered from
    a worker that froze but still trains.

    A session-level advisory lock on a connection of its own in autocommit mode: the fit takes
    minutes to hours, and a transaction carrying the lock would sit "idle in transaction" all
    that time (holding back vacuum on every table). The lock belongs to the session, not to a
    transaction: it is released here at the end, or by the server when the session ends, so a
    worker killed while training leaves no lock behind."""
    conn = engine.connect().execution_options(isolation_level="AUTOCOMMIT")
    held = False
    try:
        held = bool(conn.execute(sa.text("SELECT pg_try_advisory_lock(hashtext(:k))"),
                                 {"k": train_lock_key(site)}).scalar())
        yield held
    finally:
        try:
            if held:
                conn.execute(sa.text("SELECT pg_advisory_unlock(hashtext(:k))"),
                             {"k": train_lock_key(site)})
        except sa.exc.DBAPIError:
            # The session is gone (and its lock with it); never pool a connection that may
            # still hold the lock.
            conn.invalidate()
        finally:
            conn.close()


def settings_env(settings: Settings, engine: sa.Engine | None = None) -> dict[str, str]:
    """ADSB_* variables that give a child process exactly these settings (and this database,
    even an embedded one started by this process)."""
    env = {}
    for f in fields(Settings):
        value = getattr(settings, f.name)
        if value is not None:
            env[config.env_name(f.name)] = str(value)
    if engine is not None:
        env[config.env_name("database_url")] = engine.url.render_as_string(hide_password=False)
        env.pop(config.env_name("database_password_file"), None)
    return env


def _quietly(fn: Callable[[], Any]) -> None:
    """Run a bookkeeping job; a database error is logged, never raised into the scheduler."""
    try:
        fn()
    except sa.exc.SQLAlchemyError as e:
        log.warning("jobs: %s", str(e).splitlines()[0][:200])


def _summary(result: Any) -> Any:
    """What a job's result says, for ``jobs.result`` (a pass's figures, a count)."""
    if isinstance(result, store.PassResult):
        return {k: v for k, v in vars(result).items() if isinstance(v, (int, float, bool))}
    return result if isinstance(result, (int, float, str, type(None))) else str(result)


_DAYS = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")


def cron_trigger(expr: str) -> CronTrigger:
    """A trigger for a crontab line (UTC). APScheduler 3 numbers weekdays from Monday = 0 while
    crontab uses Sunday = 0 (and 7), so numeric weekdays are turned into names first."""
    parts = expr.split()
    if len(parts) != 5:
        raise ValueError(f"ADSB_TRAIN_CRON={expr!r}: expected 5 crontab fields")
    parts[4] = re.sub(r"(?<![/\d])\d+", lambda m: _DAYS[int(m.group()) % 7], parts[4])
    return CronTrigger.from_crontab(" ".join(parts), timezone=dt.timezone.utc)


def build_scheduler(settings: Settings, engine: sa.Engine, *, worker: Worker | None = None,
                    scheduler: BaseScheduler | None = None) -> BaseScheduler:
    """A scheduler (not started) with every job of the worker. Pass ``worker`` to keep a
    handle on it (to stop the training child), ``scheduler`` for a BlockingScheduler."""
    worker = worker or Worker(settings, engine)
    sched = scheduler or BackgroundScheduler(timezone=dt.timezone.utc)
    sched.configure(job_defaults=JOB_DEFAULTS, timezone=dt.timezone.utc)
    now = dt.datetime.now(dt.timezone.utc)

    def job(name: str, fn: Callable[[], Any]) -> Callable[[], tuple[bool, Any] | None]:
        return lambda: None if worker.stopping.is_set() else worker.run(name, fn)

    sched.add_job(job("queue", worker.queue_work), "interval", seconds=settings.worker_tick_s,
                  id="queue", name="queue flights and score jobs of every site",
                  next_run_time=now)
    sched.add_job(job("queue-train", worker.queue_training), cron_trigger(settings.train_cron),
                  id="train", name="queue a training of every site", misfire_grace_time=3600)
    sched.add_job(job("train-when-ready", worker.train_when_ready), "interval",
                  seconds=TRAIN_CHECK_S, id="train-when-ready",
                  name="queue a training of sites without a model",
                  next_run_time=now + dt.timedelta(seconds=40))
    sched.add_job(lambda: None if worker.stopping.is_set() else _quietly(worker.tend_jobs),
                  "interval", seconds=settings.job_lease_s / 6, id="jobs",
                  name="heartbeat, recover jobs of stopped workers", next_run_time=now)
    sched.add_job(lambda: None if worker.stopping.is_set() else worker.deliver_alerts(),
                  "interval", seconds=ALERT_TICK_S, id="alerts", name="deliver alerts",
                  next_run_time=now + dt.timedelta(seconds=ALERT_TICK_S))
    sched.add_job(job("retention", worker.retention), "interval",
                  seconds=settings.retention_interval_s, id="retention",
                  name="partitions ahead and retention", next_run_time=now,
                  misfire_grace_time=3600)
    return sched


def run_worker(settings: Settings, stop: threading.Event, engine: sa.Engine | None = None,
               worker: Worker | None = None) -> None:
    """Run the scheduler until ``stop`` is set; then terminate a training child, let a running
    flight or score pass finish (they are single transactions) and return."""
    own_engine = engine is None
    engine = engine or make_engine(settings)
    worker = worker or Worker(settings, engine)
    try:
        # Once, so that the worker's own receiver has a site before its first tick (an ingest
        # registers its own; every tick then queues work for every site in the table).
        sites.register_engine(engine, settings)
    except sa.exc.SQLAlchemyError as e:
        log.warning("worker: cannot register receiver %s yet (%s); its ingest will",
                    settings.receiver_id, str(e).splitlines()[0][:200])
    sched = build_scheduler(settings, engine, worker=worker)
    sched.start()
    consumers = [threading.Thread(target=worker.consume, args=(kinds, stop), daemon=True,
                                  name=f"jobs-{lane}")
                 for lane, kinds in (("short", SHORT_KINDS), ("long", LONG_KINDS))]
    for th in consumers:
        th.start()
    log.info("worker %s started: schedule %s; consumers of %s and %s", worker.name,
             ", ".join(j.id for j in sched.get_jobs()), "/".join(SHORT_KINDS),
             "/".join(LONG_KINDS))
    try:
        stop.wait()
    finally:
        log.info("worker stopping")
        worker.stop()
        sched.shutdown(wait=True)
        for th in consumers:      # a running flight or score pass is one transaction: let it end
            th.join(60)
        if own_engine:
            engine.dispose()
        log.info("worker stopped")


# ---- commands --------------------------------------------------------------------------------
def worker_command(settings: Settings, args) -> int:
    stop = threading.Event()

    def on_signal(signum, frame):
        log.info("received signal %d", signum)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    run_worker(settings, stop)
    return 0


def process_command(settings: Settings, args) -> int:
    """One pass of the jobs (no training): close and rasterize, then score."""
    engine = make_engine(settings)
    try:
        worker = Worker(settings, engine)
        final = bool(getattr(args, "final", False))
        ok, res = worker.run("flights", lambda: worker.close_flights(final=final, wait=True))
        if not ok:
            print("adsb-pipeline: processing flights failed (see the log)", file=sys.stderr)
            return 1
        print(f"flights: {res.new_positions} new positions, {res.created} flights created "
              f"({res.late} late), {res.closed} closed in {res.seconds:.1f} s")
        if not getattr(args, "no_score", False):
            ok, n = worker.run("score", worker.score)
            if not ok:
                print("adsb-pipeline: scoring failed (see the log)", file=sys.stderr)
                return 1
            if n is not None:
                print(f"scored: {n} flights")
        return 0
    finally:
        engine.dispose()
