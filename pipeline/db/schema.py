"""Table definitions for queries (SQLAlchemy Core). The schema itself is created only by the
Alembic migrations in ``migrations/``; keep the two in step."""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import JSONB

metadata = sa.MetaData()

POSITION_COLUMNS = ("time", "icao24", "latitude", "longitude", "altitude", "groundspeed",
                    "track", "vertical_rate", "callsign", "on_ground", "receiver_id")

positions = sa.Table(
    "positions", metadata,
    sa.Column("time", sa.DateTime(timezone=True), nullable=False),
    sa.Column("icao24", sa.Text, nullable=False),
    sa.Column("latitude", sa.Float, nullable=False),
    sa.Column("longitude", sa.Float, nullable=False),
    sa.Column("altitude", sa.Integer),
    sa.Column("groundspeed", sa.REAL),
    sa.Column("track", sa.REAL),
    sa.Column("vertical_rate", sa.Integer),
    sa.Column("callsign", sa.Text),
    sa.Column("on_ground", sa.Boolean, nullable=False),
    sa.Column("receiver_id", sa.Text, nullable=False),
    sa.Column("inserted_at", sa.DateTime(timezone=True), nullable=False),
)

# Kept by a trigger on positions (migration 0005): per receiver and UTC day, the rows inserted,
# the newest position time (the data clock) and when rows last arrived (the flight pass).
position_days = sa.Table(
    "position_days", metadata,
    sa.Column("receiver_id", sa.Text, primary_key=True),
    sa.Column("day", sa.Date, primary_key=True),
    sa.Column("positions", sa.BigInteger, nullable=False),
    sa.Column("newest_time", sa.DateTime(timezone=True), nullable=False),
    sa.Column("last_inserted_at", sa.DateTime(timezone=True), nullable=False),
)

sites = sa.Table(
    "sites", metadata,
    sa.Column("id", sa.Text, primary_key=True),
    sa.Column("latitude", sa.Float),
    sa.Column("longitude", sa.Float),
    sa.Column("range_km", sa.Float),
    sa.Column("created_at", sa.DateTime(timezone=True)),
)

receivers = sa.Table(
    "receivers", metadata,
    sa.Column("id", sa.Text, primary_key=True),
    sa.Column("site", sa.Text, sa.ForeignKey("sites.id"), nullable=False),
    sa.Column("latitude", sa.Float),
    sa.Column("longitude", sa.Float),
    sa.Column("updated_at", sa.DateTime(timezone=True)),
)

models = sa.Table(
    "models", metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("version", sa.Text, nullable=False, unique=True),
    sa.Column("created_at", sa.DateTime(timezone=True)),
    sa.Column("data_from", sa.DateTime(timezone=True)),
    sa.Column("data_to", sa.DateTime(timezone=True)),
    sa.Column("n_train", sa.Integer),
    sa.Column("n_val", sa.Integer),
    sa.Column("n_excluded", sa.Integer),
    sa.Column("excluded", JSONB),
    sa.Column("epochs", sa.Integer),
    sa.Column("seconds", sa.REAL),
    sa.Column("val_loss", sa.Float),
    sa.Column("recall_where", sa.REAL),
    sa.Column("precision_where", sa.REAL),
    sa.Column("recall_shape", sa.REAL),
    sa.Column("precision_shape", sa.REAL),
    sa.Column("threshold", sa.Float),
    sa.Column("threshold_method", sa.Text),
    sa.Column("params", JSONB),
    sa.Column("path", sa.Text),
    sa.Column("sha256", sa.Text),
    sa.Column("status", sa.Text, nullable=False),
    sa.Column("reason", sa.Text),
    sa.Column("activated_at", sa.DateTime(timezone=True)),
    sa.Column("site", sa.Text, sa.ForeignKey("sites.id")),
)

flights = sa.Table(
    "flights", metadata,
    sa.Column("id", sa.BigInteger, primary_key=True, autoincrement=True),
    sa.Column("icao24", sa.Text, primary_key=True),
    sa.Column("callsign", sa.Text),
    sa.Column("receiver_id", sa.Text, nullable=False),
    sa.Column("first_seen", sa.DateTime(timezone=True), nullable=False),
    sa.Column("last_seen", sa.DateTime(timezone=True), nullable=False),
    sa.Column("n_positions", sa.Integer, nullable=False),
    sa.Column("state", sa.Text, nullable=False),
    sa.Column("late", sa.Boolean, nullable=False),
    sa.Column("closed_at", sa.DateTime(timezone=True)),
    sa.Column("path_km", sa.REAL),
    sa.Column("straight_km", sa.REAL),
    sa.Column("tortuosity", sa.REAL),
    sa.Column("turning_deg", sa.REAL),
    sa.Column("max_distance_km", sa.REAL),
    sa.Column("min_altitude", sa.Integer),
    sa.Column("max_altitude", sa.Integer),
    sa.Column("image", sa.LargeBinary),
    sa.Column("where_lit", sa.REAL),
    sa.Column("shape_lit", sa.REAL),
    sa.Column("shape_side_km", sa.REAL),
    sa.Column("image_format", sa.SmallInteger, nullable=False, server_default="2"),
    sa.Column("score", sa.Float),
    sa.Column("threshold", sa.Float),
    sa.Column("flagged", sa.Boolean),
    sa.Column("model_id", sa.Integer, sa.ForeignKey("models.id")),
    sa.Column("scored_at", sa.DateTime(timezone=True)),
    sa.Column("site", sa.Text, sa.ForeignKey("sites.id"), nullable=False),
    sa.Column("receivers", sa.ARRAY(sa.Text)),
    sa.Column("traffic_change_id", sa.BigInteger, sa.ForeignKey("traffic_changes.id")),
)

traffic_changes = sa.Table(
    "traffic_changes", metadata,
    sa.Column("id", sa.BigInteger, primary_key=True, autoincrement=True),
    sa.Column("site", sa.Text, sa.ForeignKey("sites.id"), nullable=False),
    sa.Column("model_id", sa.Integer, sa.ForeignKey("models.id"), nullable=False),
    sa.Column("channel", sa.Text, nullable=False),
    sa.Column("region", sa.Text),
    sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("detected_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("last_flag_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("ended_at", sa.DateTime(timezone=True)),
    sa.Column("end_reason", sa.Text),
    sa.Column("flights_scored", sa.Integer, nullable=False),
    sa.Column("flights_flagged", sa.Integer, nullable=False),
    sa.Column("expected_flags", sa.REAL, nullable=False),
    sa.Column("p_value", sa.Float, nullable=False),
    sa.Column("opened_by_icao24", sa.Text),
    sa.Column("opened_by_flight", sa.BigInteger),
    sa.Column("training_job_id", sa.BigInteger),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False,
              server_default=sa.func.now()),
)

flight_scores = sa.Table(
    "flight_scores", metadata,
    sa.Column("flight_id", sa.BigInteger, sa.ForeignKey("flights.id"), primary_key=True),
    sa.Column("model_id", sa.Integer, sa.ForeignKey("models.id"), primary_key=True),
    sa.Column("score", sa.Float, nullable=False),
    sa.Column("threshold", sa.Float, nullable=False),
    sa.Column("flagged", sa.Boolean, nullable=False),
    sa.Column("where_score", sa.Float),
    sa.Column("shape_score", sa.Float),
    sa.Column("direction_score", sa.Float),
    sa.Column("channel", sa.Text),
    sa.Column("error_row", sa.SmallInteger),
    sa.Column("error_col", sa.SmallInteger),
    sa.Column("reconstruction", sa.LargeBinary),
    sa.Column("scored_at", sa.DateTime(timezone=True)),
    sa.Column("site", sa.Text, sa.ForeignKey("sites.id")),
    sa.Column("icao24", sa.Text, primary_key=True),
)

pipeline_state = sa.Table(
    "pipeline_state", metadata,
    sa.Column("key", sa.Text, primary_key=True),
    sa.Column("value", JSONB, nullable=False),
    sa.Column("updated_at", sa.DateTime(timezone=True)),
)

job_runs = sa.Table(
    "job_runs", metadata,
    sa.Column("job", sa.Text, primary_key=True),
    sa.Column("last_started", sa.DateTime(timezone=True)),
    sa.Column("last_finished", sa.DateTime(timezone=True)),
    sa.Column("last_ok", sa.Boolean),
    sa.Column("last_error", sa.Text),
    sa.Column("last_seconds", sa.REAL),
    sa.Column("runs", sa.BigInteger),
    sa.Column("failures", sa.BigInteger),
)

flight_labels = sa.Table(
    "flight_labels", metadata,
    sa.Column("id", sa.BigInteger, primary_key=True, autoincrement=True),
    sa.Column("flight_id", sa.BigInteger, sa.ForeignKey("flights.id"), nullable=False),
    sa.Column("icao24", sa.Text, primary_key=True),
    sa.Column("verdict", sa.Text, nullable=False),
    sa.Column("note", sa.Text),
    sa.Column("author", sa.Text, nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False,
              server_default=sa.func.now()),
)

alert_outbox = sa.Table(
    "alert_outbox", metadata,
    sa.Column("id", sa.BigInteger, primary_key=True, autoincrement=True),
    sa.Column("flight_id", sa.BigInteger, sa.ForeignKey("flights.id"), nullable=False),
    sa.Column("icao24", sa.Text, primary_key=True),
    sa.Column("model_id", sa.Integer, sa.ForeignKey("models.id"), nullable=False),
    sa.Column("sink", sa.Text, nullable=False),
    sa.Column("payload", JSONB, nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False,
              server_default=sa.func.now()),
    sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
    sa.Column("next_attempt_at", sa.DateTime(timezone=True), nullable=False,
              server_default=sa.func.now()),
    sa.Column("delivered_at", sa.DateTime(timezone=True)),
    sa.Column("last_error", sa.Text),
)

# ---- views (created by the migrations too; kept apart so create_all can never make them tables)
views = sa.MetaData()

flagged_flights = sa.Table(
    "flagged_flights", views,
    sa.Column("flight_id", sa.BigInteger),
    sa.Column("icao24", sa.Text),
    sa.Column("callsign", sa.Text),
    sa.Column("first_seen", sa.DateTime(timezone=True)),
    sa.Column("last_seen", sa.DateTime(timezone=True)),
    sa.Column("duration", sa.Interval),
    sa.Column("n_positions", sa.Integer),
    sa.Column("path_km", sa.Numeric),
    sa.Column("score", sa.Numeric),
    sa.Column("threshold", sa.Numeric),
    sa.Column("score_ratio", sa.Numeric),
    sa.Column("model_version", sa.Text),
    sa.Column("scored_at", sa.DateTime(timezone=True)),
    sa.Column("channel", sa.Text),
    sa.Column("verdict", sa.Text),
    sa.Column("site", sa.Text),
    sa.Column("traffic_change_id", sa.BigInteger),
)

flight_verdicts = sa.Table(
    "flight_verdicts", views,
    sa.Column("flight_id", sa.BigInteger),
    sa.Column("verdict", sa.Text),
    sa.Column("note", sa.Text),
    sa.Column("author", sa.Text),
    sa.Column("created_at", sa.DateTime(timezone=True)),
)
