"""The job queue: closing flights, scoring and training as jobs any worker may claim.

``jobs`` holds one row per job. Workers claim the oldest queued job with
``FOR UPDATE SKIP LOCKED`` (no two workers get one job, none waits for another), mark it
``running`` with their name and keep ``heartbeat_at`` fresh while it runs; a job whose worker
stopped beating (killed, frozen, host gone) is put back in the queue by any other worker. A
periodic job carries a ``dedupe_key`` (e.g. ``flights:paris``): at most one such job is queued
or running at a time, so ticks of many workers never pile up work nor run one site's pass
twice at once. See ``pipeline/db/jobs.py``.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-03
"""

from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("""
    CREATE TABLE jobs (
        id            bigserial PRIMARY KEY,
        kind          text        NOT NULL,
        site          text        REFERENCES sites (id),
        args          jsonb       NOT NULL DEFAULT '{}',
        dedupe_key    text,
        state         text        NOT NULL DEFAULT 'queued'
                      CHECK (state IN ('queued', 'running', 'done', 'failed')),
        queued_at     timestamptz NOT NULL DEFAULT now(),
        attempts      integer     NOT NULL DEFAULT 0,
        worker        text,
        started_at    timestamptz,
        heartbeat_at  timestamptz,
        finished_at   timestamptz,
        error         text,
        result        jsonb
    );
    CREATE UNIQUE INDEX jobs_one_pending ON jobs (dedupe_key)
        WHERE state IN ('queued', 'running');
    CREATE INDEX jobs_queued_idx ON jobs (queued_at, id) WHERE state = 'queued';
    CREATE INDEX jobs_running_idx ON jobs (heartbeat_at) WHERE state = 'running';
    CREATE INDEX jobs_finished_idx ON jobs (finished_at) WHERE state IN ('done', 'failed');
    COMMENT ON TABLE jobs IS 'Work for the workers (kind: flights, score, train; site: whose). '
        'state: queued, running (worker, heartbeat_at), done or failed (error). A running job '
        'whose worker stops beating is queued again by another worker.';
    """)


def downgrade() -> None:
    op.execute("DROP TABLE jobs")
