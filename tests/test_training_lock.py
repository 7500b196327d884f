"""Two workers never train at once, no transaction stays open while a model is fitted, and a
trainer killed in the middle leaves no lock behind (real PostgreSQL, real child processes)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import sqlalchemy as sa

from pipeline.service import scheduler

# A training child that runs until the file named by its argument exists (30 s at most).
WAIT_FOR_FILE = ("import os, sys, time\n"
                 "deadline = time.monotonic() + 30\n"
                 "while not os.path.exists(sys.argv[1]) and time.monotonic() < deadline:\n"
                 "    time.sleep(0.05)\n")
# A training child that leaves a mark: it must never run while another worker trains.
MARK = "import sys, pathlib; pathlib.Path(sys.argv[1]).touch()"

# A worker process of its own that trains with a child that never ends on its own.
WORKER = """
import sys
import sqlalchemy as sa
from pipeline import config
from pipeline.service import scheduler
settings = config.load({}, {"database_url": sys.argv[1], "data_dir": sys.argv[2]})
worker = scheduler.Worker(settings, sa.create_engine(sys.argv[1]),
                          train_command=[sys.executable, "-c", "import time; time.sleep(60)"])
worker.train()
"""


def _lock_holders(engine: sa.Engine) -> list[tuple]:
    """(pid, state, transaction open) of the backends holding the training lock."""
    with engine.connect() as conn:
        return [tuple(r) for r in conn.execute(sa.text(
            "SELECT a.pid, a.state, a.xact_start IS NOT NULL FROM pg_locks l "
            "JOIN pg_stat_activity a ON a.pid = l.pid "
            "WHERE l.locktype = 'advisory' AND l.granted AND l.database = "
            "(SELECT oid FROM pg_database WHERE datname = current_database()) "
            "AND l.objsubid = 1 AND l.objid::bigint = (hashtext(:k)::bigint & 4294967295)"),
            {"k": scheduler.train_lock_key("default")})]


def _idle_in_transaction(engine: sa.Engine) -> list[int]:
    with engine.connect() as conn:
        return list(conn.execute(sa.text(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
            "AND state LIKE 'idle in transaction%' AND pid <> pg_backend_pid()")).scalars())


def _wait(predicate, timeout_s: float = 20.0):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError("timed out waiting")


def _worker(settings, db_url: str, code: str, *args: str) -> scheduler.Worker:
    return scheduler.Worker(settings, sa.create_engine(db_url),
                            train_command=[sys.executable, "-c", code, *args])


def test_training_holds_the_lock_without_a_transaction_and_a_second_worker_skips(
        settings, db_url, engine, tmp_path):
    release, mark = tmp_path / "release", tmp_path / "second-trained"
    first = _worker(settings, db_url, WAIT_FOR_FILE, str(release))
    result: dict = {}
    training = threading.Thread(target=lambda: result.update(rc=first.train()))
    training.start()
    try:
        (pid, state, in_transaction), = _wait(lambda: _lock_holders(engine))
        # The lock is held by a session with no transaction open, and no backend of this
        # database sits idle in a transaction while the model is being fitted.
        assert state == "idle" and not in_transaction
        time.sleep(0.5)                  # well into the fit
        assert _idle_in_transaction(engine) == []
        assert _lock_holders(engine) == [(pid, "idle", False)]

        second = _worker(settings, db_url, MARK, str(mark))
        started = time.monotonic()
        assert second.train() is None    # skipped at once, its child never started
        assert time.monotonic() - started < 5 and not mark.exists()
        assert training.is_alive()
    finally:
        release.touch()
        training.join(30)
    assert result == {"rc": 0}
    assert _lock_holders(engine) == []   # released at the end of the run ...
    assert second.train() == 0 and mark.exists()      # ... so the next one trains


def test_a_killed_training_child_releases_the_lock(settings, db_url, engine, tmp_path):
    first = _worker(settings, db_url, "import time; time.sleep(60)")
    errors: list[Exception] = []

    def train() -> None:
        try:
            first.train()
        except scheduler.JobFailed as e:
            errors.append(e)

    training = threading.Thread(target=train)
    training.start()
    _wait(lambda: _lock_holders(engine))
    child = _wait(lambda: first._child)
    child.kill()
    training.join(30)
    assert [str(e) for e in errors] == ["training process killed by signal 9"]
    assert _lock_holders(engine) == []
    assert _worker(settings, db_url, "pass").train() == 0


def test_a_killed_worker_releases_the_lock(settings, db_url, engine, tmp_path):
    """SIGKILL of the worker process while its child trains: its database session ends with
    it, and the lock with the session."""
    proc = subprocess.Popen([sys.executable, "-c", WORKER, db_url, str(tmp_path / "data")],
                            start_new_session=True, cwd=Path(__file__).resolve().parents[1])
    try:
        _wait(lambda: _lock_holders(engine) or proc.poll() is not None, timeout_s=60)
        assert proc.poll() is None, "the worker process ended before taking the lock"
        assert _worker(settings, db_url, "pass").train() is None      # held by the other
        os.killpg(proc.pid, signal.SIGKILL)     # the worker and its training child
        proc.wait(10)
        _wait(lambda: not _lock_holders(engine), timeout_s=10)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert _worker(settings, db_url, "pass").train() == 0



# A worker process of its own whose training child asks to end with it, notes its pid and
# then runs far longer than the test.
WORKER_WITH_CHILD = """
import sys
import sqlalchemy as sa
from pipeline import config
from pipeline.service import scheduler
child = ("import os, sys, time, pathlib\\n"
         "from pipeline import parent\\n"
         "parent.die_with_parent()\\n"
         "pathlib.Path(sys.argv[1]).write_text(str(os.getpid()))\\n"
         "time.sleep(120)\\n")
settings = config.load({}, {"database_url": sys.argv[1], "data_dir": sys.argv[2]})
worker = scheduler.Worker(settings, sa.create_engine(sys.argv[1]),
                          train_command=[sys.executable, "-c", child, sys.argv[3]])
worker.train()
"""


def _running(pid: int) -> bool:
    """Alive and not a zombie (an orphan's zombie waits for whichever process reaps it)."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_a_killed_worker_takes_its_training_child_with_it(settings, db_url, engine, tmp_path):
    """SIGKILL of the worker process alone (a worker started by hand: no process group or
    control group is killed with it): its training child ends too, so it cannot register a
    model while a restarted worker trains the same site."""
    pid_file = tmp_path / "child.pid"
    proc = subprocess.Popen([sys.executable, "-c", WORKER_WITH_CHILD, db_url,
                             str(tmp_path / "data"), str(pid_file)],
                            start_new_session=True, cwd=Path(__file__).resolve().parents[1])
    try:
        _wait(lambda: (pid_file.exists() and pid_file.read_text()) or proc.poll() is not None,
              timeout_s=60)
        assert proc.poll() is None, "the worker process ended before its child started"
        child = int(pid_file.read_text())
        assert _running(child) and _lock_holders(engine)
        os.kill(proc.pid, signal.SIGKILL)       # the worker only, not its group
        proc.wait(10)
        _wait(lambda: not _running(child), timeout_s=10)
        _wait(lambda: not _lock_holders(engine), timeout_s=10)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)     # whatever is left of the group
    assert _worker(settings, db_url, "pass").train() == 0


def test_a_training_child_whose_worker_is_gone_does_not_start(settings, tmp_path):
    """Started by a worker that exited before the child asked to end with it: the signal would
    never come, so the real ``train`` command refuses before it reads any flight."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ADSB_")}
    env.update(scheduler.settings_env(settings, None), ADSB_TRAIN_PARENT_PID="1")  # not its parent
    r = subprocess.run([sys.executable, "-m", "pipeline.cli", "train", "--quiet"], env=env,
                       capture_output=True, text=True, timeout=120,
                       cwd=Path(__file__).resolve().parents[1])
    assert r.returncode == 1
    assert "training not started: the worker that started this process (pid 1) has exited" \
        in r.stderr
