"""SQL surface for users: the view flagged_flights and the read-only role adsb_reader.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-23
"""

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

READER = "adsb_reader"

VIEW = """
CREATE VIEW flagged_flights AS
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
       f.scored_at
  FROM flights f
  LEFT JOIN models m ON m.id = f.model_id
 WHERE f.flagged AND f.state = 'finished'
"""

COMMENTS = {
    None: "Finished flights the active model flagged (score > threshold), one row per flight. "
          "Positions of one: SELECT p.* FROM positions p JOIN flights f ON p.icao24 = f.icao24 "
          "AND p.time BETWEEN f.first_seen AND f.last_seen WHERE f.id = <flight_id> ORDER BY p.time.",
    "flight_id": "flights.id of the flight.",
    "icao24": "24-bit ICAO aircraft address, 6 lower-case hex digits.",
    "callsign": "Latest callsign of the aircraft during the flight.",
    "first_seen": "Time of the first position of the flight (UTC).",
    "last_seen": "Time of the last position of the flight (UTC).",
    "duration": "last_seen - first_seen, whole seconds.",
    "n_positions": "Number of positions in the flight.",
    "path_km": "Length of the track, km (0.1 km).",
    "score": "Anomaly score (reconstruction error) from the model that flagged it.",
    "threshold": "That model's threshold; the flight is flagged because score > threshold.",
    "score_ratio": "score / threshold: how far above the threshold (1.00 = just flagged).",
    "model_version": "models.version of the model that scored the flight.",
    "scored_at": "When the score was computed.",
}


def _quote(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def upgrade() -> None:
    op.execute(VIEW)
    for column, text in COMMENTS.items():
        target = "VIEW flagged_flights" if column is None else f"COLUMN flagged_flights.{column}"
        op.execute(f"COMMENT ON {target} IS {_quote(text)}")

    # Roles belong to the whole cluster, not to this database: every database on the server
    # that runs this migration (test databases run it concurrently) must share one role, so
    # create it only when missing and treat losing a creation race as success. A migration
    # user without CREATEROLE still gets the view; the grants then wait for an administrator.
    op.execute(f"""
    DO $$
    BEGIN
        IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{READER}') THEN
            BEGIN
                CREATE ROLE {READER} NOLOGIN;
            EXCEPTION
                WHEN duplicate_object OR unique_violation THEN NULL;
                WHEN insufficient_privilege THEN
                    RAISE WARNING 'cannot create role {READER} (%); grants skipped', SQLERRM;
            END;
        END IF;
    END $$;
    """)
    # Grants go to the schema the tables live in. Default privileges make the daily position
    # partitions that the service owner creates later readable too (they belong to the role
    # running this migration, which is the owner that creates them).
    op.execute(f"""
    DO $$
    BEGIN
        IF EXISTS (SELECT FROM pg_roles WHERE rolname = '{READER}') THEN
            EXECUTE format('GRANT USAGE ON SCHEMA %I TO {READER}', current_schema());
            EXECUTE format('GRANT SELECT ON ALL TABLES IN SCHEMA %I TO {READER}', current_schema());
            EXECUTE format('ALTER DEFAULT PRIVILEGES IN SCHEMA %I GRANT SELECT ON TABLES TO {READER}',
                           current_schema());
        END IF;
    END $$;
    """)


def downgrade() -> None:
    # The role stays: other databases on the same server may still use it.
    op.execute(f"""
    DO $$
    BEGIN
        IF EXISTS (SELECT FROM pg_roles WHERE rolname = '{READER}') THEN
            EXECUTE format('ALTER DEFAULT PRIVILEGES IN SCHEMA %I REVOKE SELECT ON TABLES FROM {READER}',
                           current_schema());
            EXECUTE format('REVOKE SELECT ON ALL TABLES IN SCHEMA %I FROM {READER}', current_schema());
            EXECUTE format('REVOKE USAGE ON SCHEMA %I FROM {READER}', current_schema());
        END IF;
    END $$;
    """)
    op.execute("DROP VIEW IF EXISTS flagged_flights")
