"""Track images of format 2 (direction channels) and explained flags.

* ``flights.image_format``: 1 = two channels (where, shape), 2 = ten channels (where, shape and
  the fixed frame split into 8 headings of travel). Stored images keep format 1 until the
  worker's flight pass redraws them from their positions (``store.redraw_old_images``, a batch
  per pass, oldest first); a model is only ever fed images of the format it was trained on.
* ``flight_scores``: the score of the direction channels, which channel carried the flag
  (``channel``: where | direction | shape) and the pixel of the largest error in it.
* ``flagged_flights`` gains ``channel``.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-02
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

VIEW = """
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
       s.channel
  FROM flights f
  LEFT JOIN models m ON m.id = f.model_id
  LEFT JOIN flight_scores s ON s.flight_id = f.id AND s.model_id = f.model_id
 WHERE f.flagged AND f.state = 'finished'
"""

CHANNEL_COMMENT = ("Which part of the track image carried the flag: 'where' (the flight used "
                   "airspace the site's traffic does not use), 'direction' (it crossed it in a "
                   "direction the traffic does not fly), 'shape' (its own track: circling, "
                   "patterns).")


def upgrade() -> None:
    op.add_column("flights", sa.Column("image_format", sa.SmallInteger, nullable=False,
                                       server_default="1"))
    # Rows inserted from now on are drawn in format 2 unless they say otherwise.
    op.alter_column("flights", "image_format", server_default="2")
    op.execute("COMMENT ON COLUMN flights.image_format IS 'Track image format: 1 = where | "
               "shape (64x128 PNG), 2 = where | shape | 8 directions of travel (64x640 PNG).'")
    op.create_index("flights_old_images", "flights", ["id"],
                    postgresql_where=sa.text("image_format < 2 AND image IS NOT NULL"))
    op.add_column("flight_scores", sa.Column("direction_score", sa.Float))
    op.add_column("flight_scores", sa.Column("channel", sa.Text))
    op.add_column("flight_scores", sa.Column("error_row", sa.SmallInteger))
    op.add_column("flight_scores", sa.Column("error_col", sa.SmallInteger))
    op.execute("COMMENT ON COLUMN flight_scores.channel IS " + _quote(CHANNEL_COMMENT))
    op.execute("COMMENT ON COLUMN flight_scores.error_row IS 'Row (0 = top/north) of the pixel "
               "with the largest reconstruction error in that channel, 64x64 image.'")
    op.execute("COMMENT ON COLUMN flight_scores.error_col IS 'Column (0 = left/west) of that "
               "pixel.'")
    op.execute(VIEW)
    op.execute("COMMENT ON COLUMN flagged_flights.channel IS " + _quote(CHANNEL_COMMENT))


def _quote(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def downgrade() -> None:
    # A view cannot lose a column by CREATE OR REPLACE: drop it and create 0002's again.
    op.execute("DROP VIEW flagged_flights")
    op.execute(_VIEW_0002)
    for column in ("error_col", "error_row", "channel", "direction_score"):
        op.drop_column("flight_scores", column)
    op.drop_index("flights_old_images", "flights")
    op.drop_column("flights", "image_format")


_VIEW_0002 = VIEW.replace(",\n       s.channel", "").replace(
    "  LEFT JOIN flight_scores s ON s.flight_id = f.id AND s.model_id = f.model_id\n", "").replace(
    "CREATE OR REPLACE VIEW", "CREATE VIEW")
