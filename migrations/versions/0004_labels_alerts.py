"""The user's verdicts on flights, the outbox of flag alerts, and indexes for the web pages.

* ``flight_labels``: every verdict a user gave ("normal" / "anomalous", optional note, author,
  time). A flight can be judged again; the newest verdict counts (view ``flight_verdicts``).
  A flight judged normal goes into the next training and is shown as *known*, not flagged; one
  judged anomalous never enters training.
* ``alert_outbox``: one row per flag and configured sink (webhook, MQTT), written in the same
  transaction as the flag, so an alert is never lost to a crash; the worker delivers due rows
  with retries and backoff (at least once).
* ``flagged_flights`` gains ``verdict`` (NULL = not judged yet, 'anomalous' = confirmed) and
  leaves out flights the user judged normal.
* Indexes for the pages' filters (flags by date, callsign), so a page stays fast with a year of
  flights.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02
"""

from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

VERDICTS_VIEW = """
CREATE VIEW flight_verdicts AS
SELECT DISTINCT ON (flight_id)
       flight_id, verdict, note, author, created_at
  FROM flight_labels
 ORDER BY flight_id, created_at DESC, id DESC
"""

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
       v.verdict
  FROM flights f
  LEFT JOIN models m ON m.id = f.model_id
  LEFT JOIN flight_scores s ON s.flight_id = f.id AND s.model_id = f.model_id
  LEFT JOIN flight_verdicts v ON v.flight_id = f.id
 WHERE f.flagged AND f.state = 'finished'
   AND v.verdict IS DISTINCT FROM 'normal'
"""


def upgrade() -> None:
    op.execute("""
    CREATE TABLE flight_labels (
        id          bigserial PRIMARY KEY,
        flight_id   bigint NOT NULL REFERENCES flights (id) ON DELETE CASCADE,
        verdict     text NOT NULL CHECK (verdict IN ('normal', 'anomalous')),
        note        text,
        author      text NOT NULL,
        created_at  timestamptz NOT NULL DEFAULT now()
    );
    CREATE INDEX flight_labels_flight_idx ON flight_labels (flight_id, created_at DESC);
    COMMENT ON TABLE flight_labels IS 'Verdicts users gave on flights (newest counts: view '
        'flight_verdicts). normal = goes into training, shown as known; anomalous = never '
        'trained on.';
    """)
    op.execute(VERDICTS_VIEW)
    op.execute("""
    CREATE TABLE alert_outbox (
        id               bigserial PRIMARY KEY,
        flight_id        bigint NOT NULL REFERENCES flights (id) ON DELETE CASCADE,
        model_id         integer NOT NULL REFERENCES models (id),
        sink             text NOT NULL,
        payload          jsonb NOT NULL,
        created_at       timestamptz NOT NULL DEFAULT now(),
        attempts         integer NOT NULL DEFAULT 0,
        next_attempt_at  timestamptz NOT NULL DEFAULT now(),
        delivered_at     timestamptz,
        last_error       text,
        UNIQUE (flight_id, model_id, sink)
    );
    CREATE INDEX alert_outbox_due_idx ON alert_outbox (next_attempt_at)
        WHERE delivered_at IS NULL;
    COMMENT ON TABLE alert_outbox IS 'Flag alerts to deliver (webhook, mqtt), written with the '
        'flag; delivered at least once, retried with backoff.';
    """)
    op.execute("""
    CREATE INDEX flights_flagged_last_seen_idx ON flights (last_seen DESC)
        WHERE flagged AND state = 'finished';
    CREATE INDEX flights_callsign_last_seen_idx ON flights (callsign, last_seen);
    """)
    # OR REPLACE keeps the view's and its columns' comments; the new column goes last.
    op.execute(FLAGGED_VIEW)
    op.execute("COMMENT ON COLUMN flagged_flights.verdict IS 'The user''s newest verdict: NULL "
               "= not judged, anomalous = confirmed. Flights judged normal are not listed.'")
    # adsb_reader reads every table (default privileges of 0002 cover new tables and views).


def downgrade() -> None:
    # A view cannot lose a column by CREATE OR REPLACE: drop it, create 0003's again and put
    # back the comments it had.
    conn = op.get_bind()
    comments = conn.exec_driver_sql(
        "SELECT attname, col_description(attrelid, attnum) FROM pg_attribute "
        "WHERE attrelid = 'flagged_flights'::regclass AND attnum > 0 AND attname <> 'verdict'"
    ).all()
    view_comment = conn.exec_driver_sql(
        "SELECT obj_description('flagged_flights'::regclass, 'pg_class')").scalar()
    op.execute("DROP VIEW flagged_flights")
    op.execute(_VIEW_0003.replace("CREATE OR REPLACE VIEW", "CREATE VIEW"))
    if view_comment:
        op.execute(f"COMMENT ON VIEW flagged_flights IS {_quote(view_comment)}")
    for column, text in comments:
        if text:
            op.execute(f"COMMENT ON COLUMN flagged_flights.{column} IS {_quote(text)}")
    op.execute("DROP INDEX flights_callsign_last_seen_idx")
    op.execute("DROP INDEX flights_flagged_last_seen_idx")
    op.execute("DROP TABLE alert_outbox")
    op.execute("DROP VIEW flight_verdicts")
    op.execute("DROP TABLE flight_labels")


_VIEW_0003 = FLAGGED_VIEW.replace(",\n       v.verdict", "").replace(
    "  LEFT JOIN flight_verdicts v ON v.flight_id = f.id\n", "").replace(
    "\n   AND v.verdict IS DISTINCT FROM 'normal'", "")


def _quote(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"
