"""The worker's scheduler and jobs against a real PostgreSQL: job_runs bookkeeping, surviving
failures, the training child, stopping cleanly."""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys
import threading
import time

import pytest
import sqlalchemy as sa

from helpers_positions import UTC, copy_positions, track
from pipeline import cli
from pipeline.flights import store
from pipeline.service import scheduler

T0 = dt.datetime(2021, 10, 7, 12, 0, tzinfo=UTC)


def job_run(engine, job):
    with engine.connect() as conn:
        row = conn.execute(sa.text("SELECT * FROM job_runs WHERE job = :j"), {"j": job}).first()
    return row._asdict() if row else None


def child(code: str) -> list[str]:
    return [sys.executable, "-c", code]


def test_every_job_is_coalesced_single_instance_with_the_configured_cron(engine, settings):
    sched = scheduler.build_scheduler(settings.replace(train_cron="15 4 * * 1"), engine)
    jobs = {j.id: j for j in sched.get_jobs()}
    assert set(jobs) == {"queue", "train", "train-when-ready", "jobs", "retention", "alerts"}
    sched.start(paused=True)
    try:
        jobs = {j.id: j for j in sched.get_jobs()}
        assert all(j.coalesce and j.max_instances == 1 and j.misfire_grace_time >= 30
                   for j in jobs.values())
        nxt = jobs["train"].next_run_time
        assert (nxt.weekday(), nxt.hour, nxt.minute) == (0, 4, 15)
    finally:
        sched.shutdown(wait=False)


def test_failed_job_is_recorded_and_the_next_run_succeeds(engine, settings):
    worker = scheduler.Worker(settings, engine)
    calls = []

    def flaky():
        calls.append(1)
        if len(calls) == 1:
            raise ConnectionError("database gone")
        return 42

    assert worker.run("flaky", flaky) == (False, None)
    r = job_run(engine, "flaky")
    assert (r["runs"], r["failures"], r["last_ok"]) == (1, 1, False)
    assert "database gone" in r["last_error"]
    assert worker.run("flaky", flaky) == (True, 42)
    r = job_run(engine, "flaky")
    assert (r["runs"], r["failures"], r["last_ok"], r["last_error"]) == (2, 1, True, None)


def test_jobs_survive_an_unreachable_database(settings):
    dead = sa.create_engine("postgresql+psycopg2://postgres@127.0.0.1:1/none",
                            connect_args={"connect_timeout": 2})
    worker = scheduler.Worker(settings, dead)
    ok, _ = worker.run("flights", worker.close_flights)
    assert not ok and worker.failures == {"flights": 1}
    ok, _ = worker.run("retention", worker.retention)
    assert not ok and worker.failures["retention"] == 1


def test_a_database_that_stays_away_is_logged_once_a_minute_per_job(settings, caplog):
    """Every tick of a long outage fails the same way: one line a minute per job, not three
    a tick, and each failure is still counted."""
    dead = sa.create_engine("postgresql+psycopg2://postgres@127.0.0.1:1/none",
                            connect_args={"connect_timeout": 2})
    worker = scheduler.Worker(settings, dead)
    for _ in range(5):
        assert not worker.run("queue", worker.queue_work)[0]
    assert worker.failures == {"queue": 5}
    lines = [r.getMessage() for r in caplog.records]
    assert sum(m.startswith("job queue failed") for m in lines) == 1
    assert sum(m.startswith("job queue: cannot record the run") for m in lines) == 1
    # The next minute's line says how many were held back.
    worker._log_quiet = {k: (0.0, held) for k, (_, held) in worker._log_quiet.items()}
    worker.run("queue", worker.queue_work)
    failed = [m for m in (r.getMessage() for r in caplog.records) if m.startswith("job queue failed")]
    assert len(failed) == 2 and failed[-1].endswith("(4 more like it in the last minute)")


def test_training_child_gets_the_settings_and_its_failures_are_recorded(engine, settings):
    url = engine.url.render_as_string(hide_password=False)
    check = child("import os, sys; sys.exit(0 if os.environ['ADSB_DATABASE_URL'] == "
                  f"{url!r} and os.environ['ADSB_RANGE_KM'] == '121.0' else 5)")
    assert scheduler.Worker(settings, engine, check).run("train", lambda: None)[0]
    worker = scheduler.Worker(settings, engine, check)
    assert worker.run("train", worker.train) == (True, 0)
    refused = scheduler.Worker(settings, engine, child("import sys; sys.exit(75)"))
    assert refused.run("train", refused.train) == (True, "refused: not enough flights")
    assert job_run(engine, "train")["last_ok"]        # too few flights yet: not a failure
    crash = scheduler.Worker(settings, engine, child("import sys; sys.exit(3)"))
    assert crash.run("train", crash.train) == (False, None)
    assert "exited with status 3" in job_run(engine, "train")["last_error"]
    oom = scheduler.Worker(settings, engine, child("import os; os.kill(os.getpid(), 9)"))
    assert oom.run("train", oom.train) == (False, None)
    assert "killed by signal 9" in job_run(engine, "train")["last_error"]


def test_stopping_terminates_the_training_child(engine, settings):
    worker = scheduler.Worker(settings, engine, child("import time; time.sleep(120)"))
    out = []
    th = threading.Thread(target=lambda: out.append(worker.run("train", worker.train)))
    started = time.monotonic()
    th.start()
    while worker._child is None and time.monotonic() - started < 20:
        time.sleep(0.05)
    worker.stop()
    th.join(30)
    assert not th.is_alive() and time.monotonic() - started < 30
    assert out == [(False, None)] and "signal 15" in job_run(engine, "train")["last_error"]


def test_train_when_ready_queues_a_site_with_enough_flights_once(engine, settings, monkeypatch):
    monkeypatch.setattr(store, "COMMIT_MARGIN", dt.timedelta(0))
    settings = settings.replace(train_min_flights=10)
    worker = scheduler.Worker(settings, engine, child("pass"))
    copy_positions(engine, [p for i in range(9) for p in track(f"b{i:05x}", T0, 20)])
    worker.close_flights(final=True)
    assert worker.train_when_ready() == [] and queued(engine, "train") == []
    copy_positions(engine, [p for i in range(9, 12) for p in track(f"b{i:05x}", T0, 20)])
    worker.close_flights(final=True)
    assert worker.train_when_ready() == ["default"] and queued(engine, "train") == ["default"]
    assert worker.train_when_ready() == []              # queued already
    stop = threading.Event()
    consumer = threading.Thread(target=worker.consume, args=(scheduler.LONG_KINDS, stop))
    consumer.start()
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not (job_run(engine, "train") or {}).get("last_ok"):
            time.sleep(0.1)
    finally:
        stop.set()
        consumer.join(10)
    assert job_run(engine, "train")["last_ok"] and queued(engine, "train") == []
    assert worker.train_when_ready() == []              # tried within the last hour


def queued(engine, kind: str) -> list[str]:
    with engine.connect() as conn:
        return list(conn.execute(sa.text(
            "SELECT site FROM jobs WHERE kind = :k AND state IN ('queued', 'running') "
            "ORDER BY site"), {"k": kind}).scalars())


def test_run_worker_runs_jobs_and_stops_when_told(engine, settings, monkeypatch):
    monkeypatch.setattr(store, "COMMIT_MARGIN", dt.timedelta(0))
    copy_positions(engine, track("aaaaaa", T0, 10) + track("ffffff", T0 + dt.timedelta(hours=1), 1))
    stop = threading.Event()
    th = threading.Thread(target=scheduler.run_worker, args=(settings, stop))
    th.start()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not (job_run(engine, "flights") or {}).get("last_ok"):
        time.sleep(0.2)
    stop.set()
    th.join(30)
    assert not th.is_alive()
    assert job_run(engine, "flights")["last_ok"] and job_run(engine, "retention")["last_ok"]
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT state FROM flights WHERE icao24 = 'aaaaaa'")
                            ).scalar() == "finished"


def test_process_command_without_a_scorer_still_succeeds(db_url, engine, capsys):
    copy_positions(engine, track("aaaaaa", T0, 10))
    assert cli.main(["process", "--final", "--database-url", db_url]) == 0
    assert "1 flights created" in capsys.readouterr().out
    assert job_run(engine, "flights")["runs"] == 1


@pytest.mark.parametrize("final", [False, True])
def test_process_command_fails_cleanly_without_database(final, capsys):
    argv = ["process", "--no-score", "--database-url", "postgresql://postgres@127.0.0.1:1/none"]
    assert cli.main(argv + (["--final"] if final else [])) == 1
    assert "failed" in capsys.readouterr().err


@pytest.mark.parametrize("expr, weekday", [("0 3 * * 0", 6), ("0 3 * * 7", 6), ("0 3 * * 1", 0),
                                           ("0 3 * * 5", 4)])
def test_cron_weekdays_follow_crontab_not_apscheduler(expr, weekday):
    now = dt.datetime(2026, 1, 1, tzinfo=UTC)
    assert scheduler.cron_trigger(expr).get_next_fire_time(None, now).weekday() == weekday


def test_train_on_too_few_flights_exits_with_the_refusal_status(settings):
    """``adsb-pipeline train`` with too few flights says how many and exits with status 75
    (EX_TEMPFAIL), which the worker records as a refusal, not as a failure."""
    from pipeline.model.train import EXIT_REFUSED

    env = {k: v for k, v in os.environ.items() if not k.startswith("ADSB_")}
    env.update(scheduler.settings_env(settings, None))
    r = subprocess.run([sys.executable, "-m", "pipeline.cli", "train", "--quiet"], env=env,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == EXIT_REFUSED == 75, r.stderr[-2000:]
    assert "training refused: only 0 finished flights of site default" in r.stderr
