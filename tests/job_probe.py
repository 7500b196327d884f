"""A worker process for the job-queue tests: claims ``probe`` jobs of the queue, records each
start and end in ``probe_runs`` and sleeps in between, with the heartbeat and recovery of a real
worker on a short lease. Usage: python job_probe.py DATABASE_URL LEASE_S JOB_SECONDS"""

from __future__ import annotations

import sys
import threading
import time

import sqlalchemy as sa

from pipeline.db import jobs


def main() -> None:
    url, lease, seconds = sys.argv[1], float(sys.argv[2]), float(sys.argv[3])
    engine = sa.create_engine(url)
    name = jobs.worker_name()
    running: set[int] = set()

    def beat() -> None:
        while True:
            jobs.heartbeat(engine, name, set(running))
            jobs.recover(engine, lease)
            time.sleep(lease / 6)

    threading.Thread(target=beat, daemon=True).start()
    idle_since = time.monotonic()
    while time.monotonic() - idle_since < 3 * lease:
        job = jobs.claim(engine, name, ["probe"])
        if job is None:
            time.sleep(0.05)
            continue
        idle_since = time.monotonic()
        running.add(job.id)
        with engine.begin() as c:
            c.execute(sa.text("INSERT INTO probe_runs (job, worker, event) VALUES (:j, :w, 'start')"),
                      {"j": job.id, "w": name})
        time.sleep(seconds)
        with engine.begin() as c:
            c.execute(sa.text("INSERT INTO probe_runs (job, worker, event) VALUES (:j, :w, 'end')"),
                      {"j": job.id, "w": name})
        jobs.finish(engine, job, name, ok=True, result={"n": job.args["n"]})
        running.discard(job.id)


if __name__ == "__main__":
    main()
