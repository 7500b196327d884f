"""A job queue in PostgreSQL: any number of workers, on any number of machines sharing the
database, claim jobs without double work or lost work.

* **enqueue**: a row in ``jobs``. A periodic job names a ``dedupe_key``; while one job of that
  key is queued or running, enqueueing another is a no-op (a partial unique index), so every
  worker's scheduler may tick without piling work up or running one site's pass twice at once.
* **claim**: ``UPDATE ... WHERE id = (SELECT ... FOR UPDATE SKIP LOCKED LIMIT 1)``: the oldest
  queued job of the kinds asked for becomes ``running`` under this worker's name, atomically;
  concurrent claimers skip the row instead of waiting for it.
* **heartbeat**: while a job runs, its worker refreshes ``heartbeat_at`` of that job (not of
  every row under its name) every sixth of the lease (``ADSB_JOB_LEASE_S``). The claim commits at once, so no transaction stays open during the job
  (a training runs for minutes to hours).
* **recover**: any worker puts back a running job whose heartbeat is older than the lease
  (its worker was killed, froze, or lost its host); after :data:`MAX_ATTEMPTS` such losses the
  job is failed instead, so a job that kills its worker every time does not loop forever.
* **finish**: ``done`` or ``failed`` with the error, only by the worker that holds it (a worker
  that lost its job to recovery is told so and logs it).

Jobs themselves must tolerate a rare second run after a recovery (a frozen worker that wakes
up): the flight pass is one transaction under a per-site lock, scoring claims flights with
``SKIP LOCKED`` and registers each score once per model, training holds a per-site session
lock. The queue keeps work moving; those guards keep it correct.
"""

from __future__ import annotations

import json
import logging
import os
import socket
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

log = logging.getLogger(__name__)

LEASE_S = 60.0                 # six missed heartbeats: the worker is gone
MAX_ATTEMPTS = 3
KEEP_FINISHED_DAYS = 7         # finished jobs are the workers' history (web page, SQL)


@dataclass(frozen=True)
class Job:
    id: int
    kind: str
    site: str | None
    args: dict[str, Any]
    attempts: int


def worker_name() -> str:
    """host:pid, unique among live workers, readable in ``jobs.worker``."""
    return f"{socket.gethostname()}:{os.getpid()}"


def enqueue(conn: sa.Connection, kind: str, site: str | None = None,
            args: dict[str, Any] | None = None, dedupe_key: str | None = None) -> int | None:
    """Queue a job; returns its id, or None when a job of ``dedupe_key`` is already queued or
    running."""
    return conn.execute(sa.text(
        "INSERT INTO jobs (kind, site, args, dedupe_key) VALUES (:k, :s, CAST(:a AS jsonb), :d) "
        "ON CONFLICT (dedupe_key) WHERE state IN ('queued', 'running') DO NOTHING RETURNING id"),
        {"k": kind, "s": site, "a": json.dumps(args or {}), "d": dedupe_key}).scalar()


def enqueue_periodic(engine: sa.Engine, kind: str, sites: list[str]) -> int:
    """One job of ``kind`` per site unless one is pending; returns how many were queued."""
    with engine.begin() as conn:
        return sum(enqueue(conn, kind, s, dedupe_key=f"{kind}:{s}") is not None for s in sites)


_CLAIM = sa.text("""
UPDATE jobs SET state = 'running', worker = :w, started_at = now(), heartbeat_at = now(),
                attempts = attempts + 1, error = NULL
 WHERE id = (SELECT id FROM jobs WHERE state = 'queued' AND kind = ANY(:kinds)
              ORDER BY queued_at, id FOR UPDATE SKIP LOCKED LIMIT 1)
RETURNING id, kind, site, args, attempts""")


def claim(engine: sa.Engine, worker: str, kinds: list[str]) -> Job | None:
    """The oldest queued job of ``kinds``, now running under ``worker``; None if there is none."""
    with engine.begin() as conn:
        row = conn.execute(_CLAIM, {"w": worker, "kinds": kinds}).first()
    return None if row is None else Job(row.id, row.kind, row.site, dict(row.args), row.attempts)


def heartbeat(engine: sa.Engine, worker: str, job_ids: Collection[int]) -> int:
    """Refresh the jobs ``worker`` is running now (``job_ids``); returns how many.

    Only those: a job whose end could not be recorded (the database went away as it finished)
    still reads ``running`` under this worker's name. Beating it would hold its dedupe key
    forever, and no job of its kind and site could be queued again; unbeaten, the recovery
    queues it again after the lease, if the worker has not recorded its end by then."""
    if not job_ids:
        return 0
    with engine.begin() as conn:
        return conn.execute(sa.text(
            "UPDATE jobs SET heartbeat_at = now() WHERE worker = :w AND state = 'running' "
            "AND id = ANY(:ids)"), {"w": worker, "ids": sorted(job_ids)}).rowcount


def finish(engine: sa.Engine, job: Job, worker: str, *, ok: bool, error: str | None = None,
           result: Any = None) -> bool:
    """Record the end of ``job``; False (and a warning) when the job is no longer this
    worker's (recovered by another after a lost heartbeat)."""
    with engine.begin() as conn:
        n = conn.execute(sa.text(
            "UPDATE jobs SET state = :st, finished_at = now(), error = :e, "
            "result = CAST(:r AS jsonb) WHERE id = :id AND worker = :w AND state = 'running'"),
            {"st": "done" if ok else "failed", "e": error, "r": json.dumps(result, default=str),
             "id": job.id, "w": worker}).rowcount
    if not n:
        log.warning("job %d (%s %s) was recovered by another worker while this one ran it "
                    "(heartbeats lost); its result here is not recorded", job.id, job.kind,
                    job.site or "")
    return bool(n)


def recover(engine: sa.Engine, lease_s: float = LEASE_S) -> list[tuple[int, str, str]]:
    """Queue again every running job whose heartbeat is older than ``lease_s`` (failed after
    MAX_ATTEMPTS); returns (id, worker, new state) of each."""
    with engine.begin() as conn:
        rows = conn.execute(sa.text("""
            UPDATE jobs j SET state = CASE WHEN j.attempts >= :max THEN 'failed' ELSE 'queued' END,
                   error = 'worker ' || j.worker || ' stopped beating at ' || j.heartbeat_at,
                   worker = NULL,
                   finished_at = CASE WHEN j.attempts >= :max THEN now() END
             WHERE j.id IN (SELECT id FROM jobs WHERE state = 'running'
                             AND heartbeat_at < now() - make_interval(secs => :lease)
                             FOR UPDATE SKIP LOCKED)
            RETURNING j.id, substring(j.error FROM 'worker (\\S+) '), j.state"""),
            {"max": MAX_ATTEMPTS, "lease": lease_s}).all()
    for job_id, worker, state in rows:
        log.warning("job %d: worker %s stopped beating; %s", job_id, worker,
                    "queued again" if state == "queued" else
                    f"failed after {MAX_ATTEMPTS} attempts")
    return [(r[0], r[1], r[2]) for r in rows]


def prune(engine: sa.Engine, days: float = KEEP_FINISHED_DAYS, limit: int = 50_000) -> int:
    """Delete finished jobs older than ``days`` (a batch at a time)."""
    with engine.begin() as conn:
        return conn.execute(sa.text(
            "DELETE FROM jobs WHERE id IN (SELECT id FROM jobs WHERE state IN ('done', 'failed') "
            "AND finished_at < now() - make_interval(days => :d) LIMIT :n)"),
            {"d": int(days), "n": limit}).rowcount
