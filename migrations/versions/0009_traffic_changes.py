"""Traffic changes: one event, and one alert, for a burst of flags instead of one per flight.

When the other runway comes into use or a new route opens, the active model flags far more
than ``ADSB_FLAG_RATE`` of the flights until the next model has learnt the new traffic. The
scorer then records a *traffic change* (``pipeline/model/changes.py``): when it began, which
channel group carries the flags, where in the frame the flights are, how many it covers. Its
flags alert once, through the change, and each such flight points at it:

* ``traffic_changes``: one row per change (whole on every node: few rows, no aircraft key; it
  names the flight that opened it by value, not by a foreign key into the flight tables);
* ``flights.traffic_change_id``: the change a flag belongs to (null for a flag of its own);
* ``flagged_flights.traffic_change_id``: the same, for SQL users (the new column goes last).

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-06
"""

from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

FLAGGED_VIEW = """
CREATE OR REPLACE VIEW flagged_flights AS
SELECT f.id                                              AS flight_id,
       f.icao24,
       f.callsign,
       f.first_seen,
       f.last_seen,
       date_trunc('second', f.last_seen - f.first_seen)  AS duration,
       f.n_positions,
       round(f.path_km::numeric, 1)                      AS path_km,
       round(f.score::numeric, 6)                        AS score,
       round(f.threshold::numeric, 6)                    AS threshold,
       round((f.score / nullif(f.threshold, 0))::numeric, 2) AS score_ratio,
       m.version                                         AS model_version,
       f.scored_at,
       s.channel,
       v.verdict,
       f.site,
       f.traffic_change_id
  FROM flights f
  LEFT JOIN models m ON m.id = f.model_id
  LEFT JOIN flight_scores s ON s.icao24 = f.icao24 AND s.flight_id = f.id
                           AND s.model_id = f.model_id
  LEFT JOIN flight_verdicts v ON v.icao24 = f.icao24 AND v.flight_id = f.id
 WHERE f.flagged AND f.state = 'finished'
   AND v.verdict IS DISTINCT FROM 'normal'
"""


def upgrade() -> None:
    op.execute("""
    CREATE TABLE traffic_changes (
        id                bigserial   PRIMARY KEY,
        site              text        NOT NULL REFERENCES sites (id),
        model_id          integer     NOT NULL REFERENCES models (id),
        channel           text        NOT NULL,
        region            text,
        started_at        timestamptz NOT NULL,
        detected_at       timestamptz NOT NULL,
        last_flag_at      timestamptz NOT NULL,
        ended_at          timestamptz,
        end_reason        text,
        flights_scored    integer     NOT NULL,
        flights_flagged   integer     NOT NULL,
        expected_flags    real        NOT NULL,
        p_value           double precision NOT NULL,
        opened_by_icao24  text,
        opened_by_flight  bigint,
        training_job_id   bigint,
        created_at        timestamptz NOT NULL DEFAULT now()
    );
    CREATE UNIQUE INDEX traffic_changes_one_open ON traffic_changes (site)
        WHERE ended_at IS NULL;
    CREATE INDEX traffic_changes_started_idx ON traffic_changes (site, started_at DESC);
    COMMENT ON TABLE traffic_changes IS 'Bursts of flags the flag rate does not allow (the '
        'other runway, a new route): one row and one alert each instead of one per flight. '
        'At most one open (ended_at null) per site.';
    COMMENT ON COLUMN traffic_changes.channel IS 'The channel group carrying its flags: where, '
        'shape or direction. Flags carried by another group alert on their own.';
    COMMENT ON COLUMN traffic_changes.region IS 'Where its flights are, in words (e.g. '
        '"around 30 km E of the receiver, heading W, low").';
    COMMENT ON COLUMN traffic_changes.started_at IS 'Data-clock time the first flight it covers '
        'began.';
    COMMENT ON COLUMN traffic_changes.detected_at IS 'Data clock when the flag share became '
        'too high to be chance (p_value below ADSB_CHANGE_ALPHA).';
    COMMENT ON COLUMN traffic_changes.ended_at IS 'Data clock when it ended: a model trained on '
        'it became active (end_reason learnt) or the share of flags fell back (subsided).';
    COMMENT ON COLUMN traffic_changes.flights_scored IS 'Flights scored in the window that '
        'tripped the test.';
    COMMENT ON COLUMN traffic_changes.flights_flagged IS 'Flags it covers (grows while open).';
    COMMENT ON COLUMN traffic_changes.expected_flags IS 'Flags ADSB_FLAG_RATE allows in that '
        'window.';
    COMMENT ON COLUMN traffic_changes.opened_by_flight IS 'The flight whose flag opened it '
        '(flights.id); its alert carries the change.';
    COMMENT ON COLUMN traffic_changes.training_job_id IS 'The training queued early to learn '
        'the new traffic (jobs.id).';

    ALTER TABLE flights ADD COLUMN traffic_change_id bigint REFERENCES traffic_changes (id);
    CREATE INDEX flights_traffic_change_idx ON flights (traffic_change_id)
        WHERE traffic_change_id IS NOT NULL;
    COMMENT ON COLUMN flights.traffic_change_id IS 'The traffic change this flag is part of '
        '(its alert was the change''s); null for a flag that alerts on its own.';
    """)
    op.execute(FLAGGED_VIEW)
    op.execute("COMMENT ON COLUMN flagged_flights.traffic_change_id IS 'The traffic change "
               "(traffic_changes.id) the flag is part of; null for a flag of its own.'")


def downgrade() -> None:
    conn = op.get_bind()
    comments = conn.exec_driver_sql(
        "SELECT attname, col_description(attrelid, attnum) FROM pg_attribute "
        "WHERE attrelid = 'flagged_flights'::regclass AND attnum > 0 "
        "AND attname <> 'traffic_change_id'").all()
    view_comment = conn.exec_driver_sql(
        "SELECT obj_description('flagged_flights'::regclass, 'pg_class')").scalar()
    # A view cannot lose a column by CREATE OR REPLACE: it is created again.
    op.execute("DROP VIEW flagged_flights")
    op.execute(FLAGGED_VIEW.replace(",\n       f.traffic_change_id", "").replace("OR REPLACE ", ""))
    if view_comment:
        op.execute(f"COMMENT ON VIEW flagged_flights IS {_quote(view_comment)}")
    for column, text in comments:
        if text:
            op.execute(f"COMMENT ON COLUMN flagged_flights.{column} IS {_quote(text)}")
    op.execute("ALTER TABLE flights DROP COLUMN traffic_change_id")
    op.execute("DROP TABLE traffic_changes")


def _quote(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"
