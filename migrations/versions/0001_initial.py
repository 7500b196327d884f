"""Initial schema: positions (partitioned by day), flights, models, flight_scores, state.

Revision ID: 0001
Revises:
Create Date: 2026-11-23
"""

from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Positions arrive at ~1 row/s per aircraft and are only ever appended, read by time and
    # by aircraft, and dropped by whole days: declarative range partitions by day make
    # retention a DROP TABLE instead of a DELETE, BRIN indexes on the append-ordered time
    # columns cost almost nothing, and (icao24, time) serves the per-flight reads.
    op.execute("""
    CREATE TABLE positions (
        time          timestamptz      NOT NULL,
        icao24        text             NOT NULL,
        latitude      double precision NOT NULL,
        longitude     double precision NOT NULL,
        altitude      integer,
        groundspeed   real,
        track         real,
        vertical_rate integer,
        callsign      text,
        on_ground     boolean          NOT NULL DEFAULT false,
        receiver_id   text             NOT NULL DEFAULT 'default',
        inserted_at   timestamptz      NOT NULL DEFAULT now()
    ) PARTITION BY RANGE (time);
    CREATE INDEX positions_icao24_time_idx ON positions (icao24, time);
    CREATE INDEX positions_time_brin ON positions USING brin (time);
    CREATE INDEX positions_inserted_at_brin ON positions USING brin (inserted_at);
    COMMENT ON TABLE positions IS 'One row per decoded ADS-B position; partitioned by day (positions_pYYYYMMDD).';
    COMMENT ON COLUMN positions.time IS 'Time of the position message (UTC).';
    COMMENT ON COLUMN positions.icao24 IS '24-bit ICAO aircraft address, 6 lower-case hex digits.';
    COMMENT ON COLUMN positions.latitude IS 'Latitude, degrees WGS84.';
    COMMENT ON COLUMN positions.longitude IS 'Longitude, degrees WGS84.';
    COMMENT ON COLUMN positions.altitude IS 'Barometric altitude, feet.';
    COMMENT ON COLUMN positions.groundspeed IS 'Ground speed, knots (latest velocity message).';
    COMMENT ON COLUMN positions.track IS 'Track angle, degrees clockwise from true north (latest velocity message).';
    COMMENT ON COLUMN positions.vertical_rate IS 'Vertical rate, feet per minute (latest velocity message).';
    COMMENT ON COLUMN positions.callsign IS 'Latest callsign of the aircraft.';
    COMMENT ON COLUMN positions.on_ground IS 'True for surface positions.';
    COMMENT ON COLUMN positions.receiver_id IS 'Name of the receiver that heard it (ADSB_RECEIVER_ID).';
    COMMENT ON COLUMN positions.inserted_at IS 'When the row was written (finds late rows).';
    """)

    op.execute("""
    CREATE TABLE models (
        id               serial PRIMARY KEY,
        version          text        NOT NULL UNIQUE,
        created_at       timestamptz NOT NULL DEFAULT now(),
        data_from        timestamptz,
        data_to          timestamptz,
        n_train          integer,
        n_val            integer,
        n_excluded       integer,
        excluded         jsonb,
        epochs           integer,
        seconds          real,
        val_loss         double precision,
        recall_where     real,
        precision_where  real,
        recall_shape     real,
        precision_shape  real,
        threshold        double precision,
        threshold_method text,
        params           jsonb,
        path             text,
        sha256           text,
        status           text        NOT NULL DEFAULT 'candidate'
                         CHECK (status IN ('candidate', 'active', 'rejected', 'retired', 'failed')),
        reason           text,
        activated_at     timestamptz
    );
    CREATE UNIQUE INDEX models_one_active ON models (status) WHERE status = 'active';
    COMMENT ON TABLE models IS 'Every trained model version, its data window, quality figures, threshold and status.';
    COMMENT ON COLUMN models.threshold IS 'Flights whose score exceeds this are flagged by this model.';
    COMMENT ON COLUMN models.status IS 'candidate, active (exactly one), rejected (with reason), retired, failed.';
    """)

    op.execute("""
    CREATE TABLE flights (
        id               bigserial PRIMARY KEY,
        icao24           text        NOT NULL,
        callsign         text,
        receiver_id      text        NOT NULL DEFAULT 'default',
        first_seen       timestamptz NOT NULL,
        last_seen        timestamptz NOT NULL,
        n_positions      integer     NOT NULL,
        state            text        NOT NULL DEFAULT 'open' CHECK (state IN ('open', 'finished')),
        late             boolean     NOT NULL DEFAULT false,
        closed_at        timestamptz,
        path_km          real,
        straight_km      real,
        tortuosity       real,
        turning_deg      real,
        max_distance_km  real,
        min_altitude     integer,
        max_altitude     integer,
        image            bytea,
        where_lit        real,
        shape_lit        real,
        shape_side_km    real,
        score            double precision,
        threshold        double precision,
        flagged          boolean,
        model_id         integer REFERENCES models (id),
        scored_at        timestamptz
    );
    CREATE INDEX flights_icao24_last_seen_idx ON flights (icao24, last_seen);
    CREATE INDEX flights_last_seen_idx ON flights (last_seen);
    CREATE INDEX flights_open_idx ON flights (icao24) WHERE state = 'open';
    CREATE INDEX flights_flagged_idx ON flights (score DESC) WHERE flagged;
    COMMENT ON TABLE flights IS 'Positions of one aircraft cut into flights (a silence longer than ADSB_FLIGHT_GAP ends one). Positions of a flight: SELECT * FROM positions p JOIN flights f ON p.icao24 = f.icao24 AND p.time BETWEEN f.first_seen AND f.last_seen WHERE f.id = <flight id> ORDER BY p.time.';
    COMMENT ON COLUMN flights.state IS 'open while positions may still arrive; finished once the data clock passed last_seen by the gap (then image and features are set).';
    COMMENT ON COLUMN flights.late IS 'Built from positions that arrived after a flight covering their time was already finished.';
    COMMENT ON COLUMN flights.path_km IS 'Length of the track, km.';
    COMMENT ON COLUMN flights.straight_km IS 'Distance between first and last position, km.';
    COMMENT ON COLUMN flights.tortuosity IS 'path_km / straight_km (1 = straight line).';
    COMMENT ON COLUMN flights.turning_deg IS 'Total absolute heading change along the track, degrees.';
    COMMENT ON COLUMN flights.max_distance_km IS 'Farthest distance from the receiver, km.';
    COMMENT ON COLUMN flights.min_altitude IS 'Lowest barometric altitude, feet.';
    COMMENT ON COLUMN flights.max_altitude IS 'Highest barometric altitude, feet.';
    COMMENT ON COLUMN flights.image IS '64x64 track image, PNG (1-bit), two channels side by side: where (receiver frame, left) and shape (flight frame, right).';
    COMMENT ON COLUMN flights.where_lit IS 'Fraction of lit pixels in the where channel.';
    COMMENT ON COLUMN flights.shape_lit IS 'Fraction of lit pixels in the shape channel.';
    COMMENT ON COLUMN flights.shape_side_km IS 'Side of the shape channel square, km.';
    COMMENT ON COLUMN flights.score IS 'Latest anomaly score (reconstruction error) from model_id.';
    COMMENT ON COLUMN flights.threshold IS 'Threshold of model_id; flagged = score > threshold.';
    COMMENT ON COLUMN flights.flagged IS 'True when the flight behaved unlike the others (score > threshold).';
    COMMENT ON COLUMN flights.model_id IS 'Model that produced score (models.id).';
    COMMENT ON COLUMN flights.scored_at IS 'When score was computed.';
    """)

    op.execute("""
    CREATE TABLE flight_scores (
        flight_id      bigint           NOT NULL REFERENCES flights (id) ON DELETE CASCADE,
        model_id       integer          NOT NULL REFERENCES models (id),
        score          double precision NOT NULL,
        threshold      double precision NOT NULL,
        flagged        boolean          NOT NULL,
        where_score    double precision,
        shape_score    double precision,
        reconstruction bytea,
        scored_at      timestamptz      NOT NULL DEFAULT now(),
        PRIMARY KEY (flight_id, model_id)
    );
    CREATE INDEX flight_scores_model_idx ON flight_scores (model_id);
    COMMENT ON TABLE flight_scores IS 'Score history: one row per flight and model that scored it.';
    COMMENT ON COLUMN flight_scores.reconstruction IS 'For flagged flights: PNG of the reconstruction (8-bit, two channels side by side).';
    """)

    op.execute("""
    CREATE TABLE pipeline_state (
        key        text PRIMARY KEY,
        value      jsonb       NOT NULL,
        updated_at timestamptz NOT NULL DEFAULT now()
    );
    COMMENT ON TABLE pipeline_state IS 'Watermarks and small bits of service state.';
    CREATE TABLE job_runs (
        job           text PRIMARY KEY,
        last_started  timestamptz,
        last_finished timestamptz,
        last_ok       boolean,
        last_error    text,
        last_seconds  real,
        runs          bigint NOT NULL DEFAULT 0,
        failures      bigint NOT NULL DEFAULT 0
    );
    COMMENT ON TABLE job_runs IS 'Last run of each scheduled job (for status and monitoring).';
    """)


def downgrade() -> None:
    op.execute("DROP TABLE IF EXISTS job_runs, pipeline_state, flight_scores, flights, models, positions CASCADE")
