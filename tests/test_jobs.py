"""The job queue with several worker processes on one database: no job run twice, none lost
when a worker is killed, periodic jobs never piling up; then real workers sharing the flights
of several sites."""

from __future__ import annotations

import dataclasses
import datetime as dt
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import sqlalchemy as sa

from conftest import PARIS_CSV, need
from helpers_positions import copy_positions, read_paris_airborne
from pipeline.db import jobs, sites
from pipeline.flights import store

PROBE = Path(__file__).with_name("job_probe.py")
UTC = dt.timezone.utc


@pytest.fixture
def probes(engine, db_url):
    """Start probe worker processes: ``start(n, lease_s, job_s)``; all killed at the end."""
    with engine.begin() as c:
        c.execute(sa.text("CREATE TABLE probe_runs (job bigint, worker text, event text, "
                          "at timestamptz DEFAULT clock_timestamp())"))
    procs: list[subprocess.Popen] = []

    def start(n: int, lease_s: float, job_s: float) -> list[subprocess.Popen]:
        new = [subprocess.Popen([sys.executable, str(PROBE), db_url, str(lease_s), str(job_s)])
               for _ in range(n)]
        procs.extend(new)
        return new

    yield start
    for p in procs:
        p.kill()
        p.wait()


def queue_probes(engine, n: int) -> list[int]:
    with engine.begin() as c:
        return [jobs.enqueue(c, "probe", args={"n": i}) for i in range(n)]


def runs(engine) -> list[tuple]:
    with engine.connect() as c:
        return c.execute(sa.text("SELECT job, worker, event FROM probe_runs ORDER BY at")).all()


def wait_done(engine, ids: list[int], timeout: float) -> dict[int, tuple]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with engine.connect() as c:
            rows = {r.id: r for r in c.execute(sa.text(
                "SELECT id, state, attempts, worker, result FROM jobs WHERE id = ANY(:ids)"),
                {"ids": ids})}
        if all(r.state == "done" for r in rows.values()):
            return rows
        time.sleep(0.2)
    raise AssertionError(f"jobs not done: {[(i, r.state) for i, r in rows.items()]}")


def test_three_workers_run_every_job_exactly_once(engine, probes):
    ids = queue_probes(engine, 90)
    probes(3, lease_s=5.0, job_s=0.05)
    done = wait_done(engine, ids, 90)
    events = runs(engine)
    starts = [j for j, _, e in events if e == "start"]
    ends = [j for j, _, e in events if e == "end"]
    assert sorted(starts) == sorted(ends) == sorted(ids)           # once each, none lost
    assert all(r.attempts == 1 for r in done.values())
    assert len({w for _, w, _ in events}) >= 2                     # shared out
    assert sorted(r.result["n"] for r in done.values()) == list(range(90))


def test_a_killed_worker_leaves_its_job_to_another(engine, probes):
    """SIGKILL a worker while it runs a job: after the lease (2 s without its heartbeat) the job
    is queued again and done by the other worker; no other job runs twice."""
    ids = queue_probes(engine, 8)
    first, second = probes(2, lease_s=2.0, job_s=1.0)
    victim = f"{os.uname().nodename}:{first.pid}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        open_jobs = {j for j, w, e in runs(engine) if w == victim and e == "start"} - \
            {j for j, w, e in runs(engine) if w == victim and e == "end"}
        if open_jobs:
            break
        time.sleep(0.05)
    [lost] = open_jobs
    first.send_signal(signal.SIGKILL)
    first.wait()
    done = wait_done(engine, ids, 60)
    events = runs(engine)
    assert sorted(j for j, _, e in events if e == "end") == sorted(ids)   # each ended once
    assert [w for j, w, e in events if j == lost and e == "end"] != [victim]
    assert done[lost].attempts == 2 and done[lost].worker != victim
    assert all(r.attempts == 1 for i, r in done.items() if i != lost)


def test_periodic_jobs_never_pile_up_and_a_job_that_keeps_dying_fails(engine):
    with engine.begin() as c:
        c.execute(sa.text("INSERT INTO sites (id, latitude, longitude, range_km) "
                          "VALUES ('s1', 48.9, 2.4, 121)"))
    assert jobs.enqueue_periodic(engine, "flights", ["s1"]) == 1
    assert jobs.enqueue_periodic(engine, "flights", ["s1"]) == 0       # one is queued
    job = jobs.claim(engine, "w1", ["flights"])
    assert job is not None and jobs.claim(engine, "w2", ["flights"]) is None
    assert jobs.enqueue_periodic(engine, "flights", ["s1"]) == 0       # one is running
    assert jobs.finish(engine, job, "w1", ok=True, result={"closed": 3})
    assert jobs.enqueue_periodic(engine, "flights", ["s1"]) == 1       # the next tick's
    # A job whose worker dies every time: queued again twice, then failed.
    for attempt in range(1, jobs.MAX_ATTEMPTS + 1):
        taken = jobs.claim(engine, f"w{attempt}", ["flights"])
        assert taken is not None and taken.attempts == attempt
        [(_, worker, state)] = jobs.recover(engine, lease_s=0.0)
        assert worker == f"w{attempt}"
        assert state == ("failed" if attempt == jobs.MAX_ATTEMPTS else "queued")
    assert jobs.claim(engine, "w9", ["flights"]) is None
    # A worker that lost its job to the recovery cannot record an end for it.
    assert not jobs.finish(engine, taken, f"w{jobs.MAX_ATTEMPTS}", ok=True)


class _Server:
    """An engine whose every connection goes through ``up``: the server 'restarts' when the
    test clears it (new connections refused, as while PostgreSQL shuts down and recovers)."""

    def __init__(self, db_url: str) -> None:
        import psycopg2

        self.up = threading.Event()
        self.up.set()
        url = sa.make_url(db_url)

        def connect():
            if not self.up.is_set():
                raise psycopg2.OperationalError("the database system is shutting down")
            return psycopg2.connect(host=url.host, port=url.port or 5432, user=url.username,
                                    dbname=url.database)

        self.engine = sa.create_engine("postgresql+psycopg2://", creator=connect,
                                       poolclass=sa.pool.NullPool)


def _job_row(engine, job_id: int):
    with engine.connect() as c:
        return c.execute(sa.text("SELECT state, worker, attempts FROM jobs WHERE id = :i"),
                         {"i": job_id}).one()


def _site_and_worker(engine, settings, server: _Server, *, fail_at_end: bool):
    from pipeline.service import scheduler

    with engine.begin() as c:
        c.execute(sa.text("INSERT INTO sites (id, latitude, longitude, range_km) "
                          "VALUES ('s1', 48.9, 2.4, 121)"))

    class Worker(scheduler.Worker):
        def execute(self, job):
            result = super().execute(job)
            if fail_at_end:
                server.up.clear()       # the pass is done; the server goes before its end
            return result

    return Worker(settings, server.engine)


def test_a_job_whose_end_was_lost_in_a_restart_is_recorded_once_the_server_is_back(
        engine, db_url, settings):
    """A flights pass ends as the server restarts, so its end cannot be recorded. It must not
    stay `running`: its dedupe key would block every later flights job of the site (seen in
    the soak: no flight pass for 8 minutes, until the worker was restarted)."""
    server = _Server(db_url)
    worker = _site_and_worker(engine, settings, server, fail_at_end=True)
    stop = threading.Event()
    consumer = threading.Thread(target=worker.consume, args=(["flights"], stop, 0.05))
    try:
        assert jobs.enqueue_periodic(engine, "flights", ["s1"]) == 1
        consumer.start()
        deadline = time.monotonic() + 30
        while server.up.is_set() and time.monotonic() < deadline:
            time.sleep(0.02)
        time.sleep(0.5)                                    # the consumer tries and fails
        with engine.connect() as c:
            job_id = c.execute(sa.text("SELECT id FROM jobs WHERE kind = 'flights'")).scalar()
        assert _job_row(engine, job_id).state == "running"  # end not recorded yet
        server.up.set()                                    # the server is back
        deadline = time.monotonic() + 10
        while _job_row(engine, job_id).state == "running" and time.monotonic() < deadline:
            time.sleep(0.05)
        assert tuple(_job_row(engine, job_id)) == ("done", worker.name, 1)
        assert jobs.enqueue_periodic(engine, "flights", ["s1"]) == 1   # the next tick queues
    finally:
        stop.set()
        server.up.set()
        consumer.join(10)


def test_a_worker_stopped_during_a_job_records_its_end(engine, db_url, settings):
    """SIGTERM arrives while a pass runs: the consumer lets it finish and records its end
    before it returns, so no finished job is left `running` (holding its site's key)."""
    from pipeline.service import scheduler

    with engine.begin() as c:
        c.execute(sa.text("INSERT INTO sites (id, latitude, longitude, range_km) "
                          "VALUES ('s1', 48.9, 2.4, 121)"))
    stop = threading.Event()

    class Worker(scheduler.Worker):
        def execute(self, job):
            result = super().execute(job)
            stop.set()                  # the stop comes as the pass ends
            return result

    worker = Worker(settings, engine)
    assert jobs.enqueue_periodic(engine, "flights", ["s1"]) == 1
    worker.consume(["flights"], stop, 0.05)          # returns once stopped
    with engine.connect() as c:
        assert c.execute(sa.text("SELECT state FROM jobs WHERE kind = 'flights'")).all() == \
            [("done",)]


def test_the_heartbeat_keeps_only_jobs_in_progress_alive(engine, db_url, settings):
    """A job whose end this worker never records (it stopped consuming) is not kept alive by
    the worker's heartbeat: after the lease the recovery queues it again."""
    server = _Server(db_url)
    worker = _site_and_worker(engine, settings, server, fail_at_end=False)
    worker.settings = dataclasses.replace(settings, job_lease_s=3.0)
    assert jobs.enqueue_periodic(engine, "flights", ["s1"]) == 1
    job = jobs.claim(engine, worker.name, ["flights"])
    assert job is not None
    worker._running_jobs.add(job.id)
    worker.tend_jobs()
    time.sleep(2.0)
    worker.tend_jobs()                  # in progress: beaten, not recovered
    assert _job_row(engine, job.id).state == "running"
    worker._running_jobs.discard(job.id)     # over, its end unrecorded
    deadline = time.monotonic() + 10
    while _job_row(engine, job.id).state == "running" and time.monotonic() < deadline:
        worker.tend_jobs()
        time.sleep(0.5)
    assert tuple(_job_row(engine, job.id)) == ("queued", None, 1)


@pytest.mark.slow
def test_two_worker_processes_share_the_flights_of_three_sites(engine, db_url, settings,
                                                               tmp_path):
    """Real ``adsb-pipeline worker`` processes: every site's flights are built, by both
    workers between them, each pass once; a pass run afterwards finds nothing left to do."""
    hour = [p for p in read_paris_airborne(need(PARIS_CSV))
            if p.time < dt.datetime(2021, 10, 7, 12, 40, tzinfo=UTC)]
    names = ("north", "south", "east")
    copy_positions(engine, [p._replace(receiver_id=r) for r in names for p in hour])
    with engine.begin() as c:       # arrived minutes ago: past the passes' commit margin
        c.execute(sa.text("UPDATE positions SET inserted_at = now() - interval '5 minutes'"))
    for r in names:
        sites.register_engine(engine, settings.replace(receiver_id=r))
    env = {**os.environ, "ADSB_DATABASE_URL": db_url, "ADSB_DATA_DIR": str(tmp_path),
           "ADSB_RECEIVER_ID": "north", "ADSB_WORKER_TICK_S": "1", "ADSB_WEB_PORT": "0",
           "ADSB_METRICS_PORT": "0", "ADSB_TRAIN_MIN_FLIGHTS": "100000",
           "ADSB_TRAIN_MAX_FLIGHTS": "100000", "ADSB_JOB_LEASE_S": "6"}
    workers = [subprocess.Popen([sys.executable, "-m", "pipeline.cli", "worker"], env=env)
               for _ in range(2)]
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            with engine.connect() as c:
                done = c.execute(sa.text(
                    "SELECT site, count(*) FROM jobs WHERE kind = 'flights' AND state = 'done' "
                    "AND (result->>'closed')::int > 0 GROUP BY site")).all()
            if len(done) == 3:
                break
            time.sleep(0.5)
        time.sleep(3)                       # a few more ticks: passes with nothing new
    finally:
        for w in workers:
            w.send_signal(signal.SIGTERM)
        for w in workers:
            assert w.wait(60) == 0
    with engine.connect() as c:
        rows = c.execute(sa.text(
            "SELECT kind, site, state, attempts, worker FROM jobs ORDER BY id")).all()
        per_site = dict(c.execute(sa.text(
            "SELECT site, count(*) FROM flights WHERE state = 'finished' GROUP BY site")).all())
    # Jobs queued by the last ticks may still wait (attempts 0); every job started ran once.
    flights_jobs = [r for r in rows if r.kind == "flights" and r.attempts > 0]
    assert all(r.state == "queued" and r.attempts == 0 for r in rows
               if r.kind == "flights" and r.attempts == 0)
    assert flights_jobs and all(r.state == "done" and r.attempts == 1 for r in flights_jobs), \
        [r for r in flights_jobs if r.state != "done" or r.attempts != 1]
    assert {r.site for r in flights_jobs} == set(names)
    assert len({r.worker for r in rows if r.state == "done"}) == 2     # both took work
    assert per_site["north"] == per_site["south"] == per_site["east"] > 20
    for r in names:                                  # nothing left that a pass would do
        res = store.process_flights(engine, settings.replace(receiver_id=r))
        assert (res.new_positions, res.created, res.closed) == (0, 0, 0)
