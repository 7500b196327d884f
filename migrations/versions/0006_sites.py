"""Sites and receivers: flights of several receivers merged, one model per site.

* ``sites``: the area one model learns: the centre and range of its fixed (*where*) frame.
  ``receivers``: every receiver, its position and its site. Both are filled by the ingest and
  the worker from their settings (``ADSB_RECEIVER_ID``, ``ADSB_SITE``...), see
  ``pipeline/db/sites.py``; here each receiver already known becomes a site of its own, which
  is exactly what it was before (flights were cut per receiver), with its frame unknown until
  a process that knows it starts.
* ``flights.site``: flights are cut per site and aircraft from the positions of all the site's
  receivers; ``flights.receivers`` lists those that heard the flight and ``receiver_id`` is the
  one that heard most of it (what the column meant for a single receiver).
* ``models.site``: each site trains, thresholds and scores its own model (one active per site).
  Models trained before belong to the site with most flights (they were trained on every
  flight, whatever its receiver).
* ``flight_scores.site`` and ``flagged_flights.site``: SQL users see which site's model spoke.

The watermark and lock of a site keep the names they had per receiver, so a database of one
receiver carries on where it stopped.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-03
"""

from alembic import op

revision = "0006"
down_revision = "0005"
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
  LEFT JOIN flight_scores s ON s.flight_id = f.id AND s.model_id = f.model_id
  LEFT JOIN flight_verdicts v ON v.flight_id = f.id
 WHERE f.flagged AND f.state = 'finished'
   AND v.verdict IS DISTINCT FROM 'normal'
"""


def upgrade() -> None:
    op.execute("""
    CREATE TABLE sites (
        id          text PRIMARY KEY,
        latitude    double precision CHECK (latitude BETWEEN -90 AND 90),
        longitude   double precision CHECK (longitude BETWEEN -180 AND 180),
        range_km    double precision CHECK (range_km > 0),
        created_at  timestamptz NOT NULL DEFAULT now()
    );
    COMMENT ON TABLE sites IS 'The area one model learns: its flights are drawn in one fixed '
        'frame (latitude, longitude: centre; range_km: half its side) and scored by its own '
        'model. One receiver, or several nearby receivers merged into one picture.';
    CREATE TABLE receivers (
        id          text PRIMARY KEY,
        site        text NOT NULL REFERENCES sites (id),
        latitude    double precision CHECK (latitude BETWEEN -90 AND 90),
        longitude   double precision CHECK (longitude BETWEEN -180 AND 180),
        updated_at  timestamptz NOT NULL DEFAULT now()
    );
    CREATE INDEX receivers_site_idx ON receivers (site);
    COMMENT ON TABLE receivers IS 'Every receiver (positions.receiver_id), where it stands and '
        'the site its positions belong to.';

    -- Every receiver known so far was a site of its own.
    INSERT INTO sites (id)
    SELECT receiver_id FROM flights UNION SELECT receiver_id FROM position_days;
    INSERT INTO receivers (id, site) SELECT id, id FROM sites;

    ALTER TABLE flights ADD COLUMN site text REFERENCES sites (id),
                        ADD COLUMN receivers text[];
    UPDATE flights SET site = receiver_id, receivers = ARRAY[receiver_id];
    ALTER TABLE flights ALTER COLUMN site SET NOT NULL;
    COMMENT ON COLUMN flights.site IS 'The site whose receivers heard the flight (sites.id); '
        'one flight per aircraft and site, from the positions of all its receivers.';
    COMMENT ON COLUMN flights.receivers IS 'Receivers that heard the flight (set when it is '
        'finished).';
    COMMENT ON COLUMN flights.receiver_id IS 'The receiver that heard most of the flight''s '
        'positions.';
    DROP INDEX flights_open_idx;
    CREATE INDEX flights_open_idx ON flights (site, icao24) WHERE state = 'open';

    ALTER TABLE models ADD COLUMN site text REFERENCES sites (id);
    UPDATE models SET site = (SELECT site FROM flights GROUP BY site
                               ORDER BY count(*) DESC, site LIMIT 1);
    DROP INDEX models_one_active;
    CREATE UNIQUE INDEX models_one_active ON models (site) WHERE status = 'active';
    COMMENT ON COLUMN models.site IS 'The site the model was trained on and scores.';
    COMMENT ON COLUMN models.status IS 'candidate, active (one per site), rejected (with '
        'reason), retired, failed.';

    ALTER TABLE flight_scores ADD COLUMN site text REFERENCES sites (id);
    UPDATE flight_scores s SET site = f.site FROM flights f WHERE f.id = s.flight_id;
    COMMENT ON COLUMN flight_scores.site IS 'The site of the flight and of the model.';
    """)
    # OR REPLACE keeps the view's and its columns' comments; the new column goes last.
    op.execute(FLAGGED_VIEW)
    op.execute("COMMENT ON COLUMN flagged_flights.site IS 'The site (sites.id) whose model "
               "flagged the flight.'")


def downgrade() -> None:
    conn = op.get_bind()
    comments = conn.exec_driver_sql(
        "SELECT attname, col_description(attrelid, attnum) FROM pg_attribute "
        "WHERE attrelid = 'flagged_flights'::regclass AND attnum > 0 AND attname <> 'site'"
    ).all()
    view_comment = conn.exec_driver_sql(
        "SELECT obj_description('flagged_flights'::regclass, 'pg_class')").scalar()
    op.execute("DROP VIEW flagged_flights")
    op.execute(_VIEW_0005)
    if view_comment:
        op.execute(f"COMMENT ON VIEW flagged_flights IS {_quote(view_comment)}")
    for column, text in comments:
        if text:
            op.execute(f"COMMENT ON COLUMN flagged_flights.{column} IS {_quote(text)}")
    op.execute("""
    ALTER TABLE flight_scores DROP COLUMN site;
    DROP INDEX models_one_active;
    -- One active model in all: the newest.
    UPDATE models SET status = 'retired'
     WHERE status = 'active' AND id <> (SELECT max(id) FROM models WHERE status = 'active');
    ALTER TABLE models DROP COLUMN site;
    CREATE UNIQUE INDEX models_one_active ON models (status) WHERE status = 'active';
    DROP INDEX flights_open_idx;
    ALTER TABLE flights DROP COLUMN site, DROP COLUMN receivers;
    CREATE INDEX flights_open_idx ON flights (icao24) WHERE state = 'open';
    DROP TABLE receivers;
    DROP TABLE sites;
    """)


_VIEW_0005 = FLAGGED_VIEW.replace(",\n       f.site", "").replace(
    "CREATE OR REPLACE VIEW", "CREATE VIEW")


def _quote(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"
