"""Route groups scored by the training window's traffic counts: what the pixel of a flag means.

Models trained from this version on score *where* and *direction* by how few flights of their
training window crossed the flight's pixels nearby (the same way), not by the network's
reconstruction (``pipeline/model/counts.py``). For a flag those groups carried, ``error_row``
and ``error_col`` are the flight's pixel that the fewest window flights crossed; for a flag
carried by *shape*, still the pixel of the largest reconstruction error. No data changes.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-07
"""

from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

ERROR_ROW = ("Row (0 = top/north) of the pixel that explains the flag in its channel, 64x64 "
             "image: for where and direction (models trained since migration 0010), the "
             "flight's pixel that the fewest flights of the model's training window crossed "
             "nearby (the same way); for shape, the pixel of the largest reconstruction error.")
ERROR_ROW_0003 = ("Row (0 = top/north) of the pixel with the largest reconstruction error in "
                  "that channel, 64x64 image.")
SCORE = ("How rare the flight is in the {group} group among flights the model never trained "
         "on: -log10 of the share of them scoring higher (3 = one in a thousand).{more}")
ROUTES = (" Measured by how few flights of the model's training window crossed the flight's "
          "pixels nearby{way} (models trained since migration 0010).")


def _quote(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def upgrade() -> None:
    op.execute("COMMENT ON COLUMN flight_scores.error_row IS " + _quote(ERROR_ROW))
    op.execute("COMMENT ON COLUMN flight_scores.where_score IS "
               + _quote(SCORE.format(group="where", more=ROUTES.format(way=""))))
    op.execute("COMMENT ON COLUMN flight_scores.direction_score IS "
               + _quote(SCORE.format(group="direction",
                                     more=ROUTES.format(way=", the same way"))))
    op.execute("COMMENT ON COLUMN flight_scores.shape_score IS "
               + _quote(SCORE.format(group="shape", more=" Measured by the reconstruction error "
                                     "of the flight's own frame.")))


def downgrade() -> None:
    op.execute("COMMENT ON COLUMN flight_scores.error_row IS " + _quote(ERROR_ROW_0003))
    for column in ("where_score", "shape_score", "direction_score"):
        op.execute(f"COMMENT ON COLUMN flight_scores.{column} IS NULL")
