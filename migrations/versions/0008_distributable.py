"""Keys that a distributed PostgreSQL can keep: ``icao24`` in every key of the flight tables.

Past one machine, the tables that grow with traffic can be sharded by aircraft (Citus,
distribution column ``icao24``; see docs/scale.md) with the SQL surface unchanged, provided
every unique key and every foreign key between them includes that column: a shard can only
enforce a key on the rows it holds. So:

* ``flights``: primary key (icao24, id) instead of (id); ids stay unique (one sequence) and
  lookups by id keep an index of their own;
* ``flight_scores``, ``flight_labels``, ``alert_outbox`` gain ``icao24`` (filled from their
  flight), their keys include it, and their foreign keys to ``flights`` are (icao24,
  flight_id);
* the views join on (icao24, flight id), which lets a sharded database join each shard with
  itself.

``positions`` already is unique on (icao24, time, receiver_id). The small tables (sites,
receivers, models, jobs, pipeline_state, job_runs, position_days) stay whole on every node or
on the coordinator. ``tests/test_schema_distributable.py`` reads the live schema and fails on a
key that breaks the rule.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-03
"""

from alembic import op

revision = "0008"
down_revision = "0007"
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
       f.site
  FROM flights f
  LEFT JOIN models m ON m.id = f.model_id
  LEFT JOIN flight_scores s ON s.icao24 = f.icao24 AND s.flight_id = f.id
                           AND s.model_id = f.model_id
  LEFT JOIN flight_verdicts v ON v.icao24 = f.icao24 AND v.flight_id = f.id
 WHERE f.flagged AND f.state = 'finished'
   AND v.verdict IS DISTINCT FROM 'normal'
"""

VERDICTS_VIEW = """
CREATE OR REPLACE VIEW flight_verdicts AS
SELECT DISTINCT ON (flight_id)
       flight_id, verdict, note, author, created_at, icao24
  FROM flight_labels
 ORDER BY flight_id, created_at DESC, id DESC
"""

_CHILDREN = ("flight_scores", "flight_labels", "alert_outbox")


def upgrade() -> None:
    for table in _CHILDREN:
        op.execute(f"""
        ALTER TABLE {table} ADD COLUMN icao24 text;
        UPDATE {table} c SET icao24 = f.icao24 FROM flights f WHERE f.id = c.flight_id;
        ALTER TABLE {table} ALTER COLUMN icao24 SET NOT NULL;
        ALTER TABLE {table} DROP CONSTRAINT {table}_flight_id_fkey;
        COMMENT ON COLUMN {table}.icao24 IS 'The flight''s aircraft (part of every key: the '
            'flight tables can be sharded by aircraft).';
        """)
    op.execute("""
    ALTER TABLE flights DROP CONSTRAINT flights_pkey;
    ALTER TABLE flights ADD PRIMARY KEY (icao24, id);
    CREATE INDEX flights_id_idx ON flights (id);

    ALTER TABLE flight_scores DROP CONSTRAINT flight_scores_pkey;
    ALTER TABLE flight_scores ADD PRIMARY KEY (icao24, flight_id, model_id);
    CREATE INDEX flight_scores_flight_idx ON flight_scores (flight_id, model_id);

    ALTER TABLE flight_labels DROP CONSTRAINT flight_labels_pkey;
    ALTER TABLE flight_labels ADD PRIMARY KEY (icao24, id);

    ALTER TABLE alert_outbox DROP CONSTRAINT alert_outbox_pkey;
    ALTER TABLE alert_outbox ADD PRIMARY KEY (icao24, id);
    ALTER TABLE alert_outbox DROP CONSTRAINT alert_outbox_flight_id_model_id_sink_key;
    ALTER TABLE alert_outbox ADD CONSTRAINT alert_outbox_flight_model_sink_key
        UNIQUE (icao24, flight_id, model_id, sink);
    """)
    for table in _CHILDREN:
        op.execute(f"ALTER TABLE {table} ADD CONSTRAINT {table}_flight_fkey FOREIGN KEY "
                   f"(icao24, flight_id) REFERENCES flights (icao24, id) ON DELETE CASCADE")
    op.execute(VERDICTS_VIEW)
    op.execute(FLAGGED_VIEW)


def downgrade() -> None:
    conn = op.get_bind()
    comments = conn.exec_driver_sql(
        "SELECT attname, col_description(attrelid, attnum) FROM pg_attribute "
        "WHERE attrelid = 'flagged_flights'::regclass AND attnum > 0").all()
    view_comment = conn.exec_driver_sql(
        "SELECT obj_description('flagged_flights'::regclass, 'pg_class')").scalar()
    # A view cannot lose a column by CREATE OR REPLACE: both views are created again.
    op.execute("DROP VIEW flagged_flights")
    op.execute("DROP VIEW flight_verdicts")
    op.execute(VERDICTS_VIEW.replace(", icao24\n", "\n").replace("OR REPLACE ", ""))
    op.execute(FLAGGED_VIEW.replace("s.icao24 = f.icao24 AND ", "").replace(
        "v.icao24 = f.icao24 AND ", "").replace("OR REPLACE ", ""))
    if view_comment:
        op.execute(f"COMMENT ON VIEW flagged_flights IS {_quote(view_comment)}")
    for column, text in comments:
        if text:
            op.execute(f"COMMENT ON COLUMN flagged_flights.{column} IS {_quote(text)}")
    for table in _CHILDREN:
        op.execute(f"ALTER TABLE {table} DROP CONSTRAINT {table}_flight_fkey")
    op.execute("""
    ALTER TABLE alert_outbox DROP CONSTRAINT alert_outbox_flight_model_sink_key;
    ALTER TABLE alert_outbox ADD CONSTRAINT alert_outbox_flight_id_model_id_sink_key
        UNIQUE (flight_id, model_id, sink);
    ALTER TABLE alert_outbox DROP CONSTRAINT alert_outbox_pkey;
    ALTER TABLE alert_outbox ADD PRIMARY KEY (id);
    ALTER TABLE flight_labels DROP CONSTRAINT flight_labels_pkey;
    ALTER TABLE flight_labels ADD PRIMARY KEY (id);
    DROP INDEX flight_scores_flight_idx;
    ALTER TABLE flight_scores DROP CONSTRAINT flight_scores_pkey;
    ALTER TABLE flight_scores ADD PRIMARY KEY (flight_id, model_id);
    DROP INDEX flights_id_idx;
    ALTER TABLE flights DROP CONSTRAINT flights_pkey;
    ALTER TABLE flights ADD PRIMARY KEY (id);
    """)
    for table in _CHILDREN:
        op.execute(f"ALTER TABLE {table} DROP COLUMN icao24")
        op.execute(f"ALTER TABLE {table} ADD CONSTRAINT {table}_flight_id_fkey FOREIGN KEY "
                   f"(flight_id) REFERENCES flights (id) ON DELETE CASCADE")


def _quote(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"
