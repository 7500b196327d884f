"""Each position stored once; the data clock and the days written kept in a small table.

* ``positions_icao24_time_idx`` becomes UNIQUE on (icao24, time, receiver_id): a batch whose
  acknowledgement was lost and that is written again, a journal loaded twice or a capture
  replayed twice can no longer store a position twice (the writer loads such a batch through
  ``INSERT ... ON CONFLICT DO NOTHING``). It replaces the (icao24, time) index, whose reads it
  serves the same way, so rows cost no extra index. ``time`` is the partition key, which a
  unique index on a partitioned table must include. Duplicates stored by earlier versions are
  removed first (the copy stored first is kept).
* ``position_days``: one row per receiver and UTC day with the number of positions inserted,
  the newest position time and when rows last arrived, kept by a statement-level trigger on
  ``positions`` in the transaction that inserts them (every path: the writer's COPY, a journal,
  SQL). The data clock reads the newest time here instead of ``max(time)`` over every
  partition, and the flight pass reads only the days that received rows since its last pass.
* ``flights_unscored_idx``: the flights no model scored yet, which the scoring pass looks for
  every minute (it read every flight instead).

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-03
"""

from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

# Keeps the earliest stored copy of each (icao24, time, receiver_id), one partition at a time
# (duplicates share their time, hence their partition), by ctid: no full self-join.
DEDUPLICATE = """
DO $$
DECLARE
    part regclass;
    removed bigint;
    total bigint := 0;
BEGIN
    FOR part IN SELECT inhrelid::regclass FROM pg_inherits
                 WHERE inhparent = 'positions'::regclass ORDER BY 1 LOOP
        EXECUTE format(
            'DELETE FROM %s WHERE ctid = ANY(ARRAY('
            '  SELECT ctid FROM (SELECT ctid, row_number() OVER ('
            '      PARTITION BY icao24, time, receiver_id ORDER BY inserted_at, ctid) AS n'
            '    FROM %s) d WHERE n > 1))', part, part);
        GET DIAGNOSTICS removed = ROW_COUNT;
        total := total + removed;
    END LOOP;
    IF total > 0 THEN
        RAISE WARNING 'removed % positions stored twice by earlier versions', total;
    END IF;
END $$;
"""

NOTE_DAYS = """
CREATE FUNCTION positions_note_days() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    -- Days in a fixed order: two writers inserting rows of the same two days lock their
    -- rows in the same order (no deadlock).
    INSERT INTO position_days AS d (receiver_id, day, positions, newest_time, last_inserted_at)
    SELECT receiver_id, (time AT TIME ZONE 'UTC')::date, count(*), max(time), max(inserted_at)
      FROM new_rows
     GROUP BY 1, 2
     ORDER BY 1, 2
    ON CONFLICT (receiver_id, day) DO UPDATE
       SET positions = d.positions + excluded.positions,
           newest_time = greatest(d.newest_time, excluded.newest_time),
           last_inserted_at = greatest(d.last_inserted_at, excluded.last_inserted_at);
    RETURN NULL;
END $$
"""


def upgrade() -> None:
    # Writers wait until the new key and the trigger are in place (readers do not): no row
    # slips in between the clean-up and the unique index, or between the fill and the trigger.
    op.execute("LOCK TABLE positions IN SHARE ROW EXCLUSIVE MODE")
    op.execute(DEDUPLICATE)
    op.execute("DROP INDEX positions_icao24_time_idx")
    op.execute("CREATE UNIQUE INDEX positions_icao24_time_idx "
               "ON positions (icao24, time, receiver_id)")
    op.execute("COMMENT ON INDEX positions_icao24_time_idx IS 'One row per aircraft, time and "
               "receiver: a batch written twice (lost acknowledgement, journal or capture "
               "replayed) cannot store a position twice. Serves reads by aircraft and time.'")

    op.execute("""
    CREATE TABLE position_days (
        receiver_id      text        NOT NULL,
        day              date        NOT NULL,
        positions        bigint      NOT NULL,
        newest_time      timestamptz NOT NULL,
        last_inserted_at timestamptz NOT NULL,
        PRIMARY KEY (receiver_id, day)
    );
    CREATE INDEX position_days_newest_idx ON position_days (newest_time);
    COMMENT ON TABLE position_days IS 'Per receiver and UTC day: positions inserted, newest '
        'position time, when rows last arrived. Kept by a trigger on positions; retention '
        'deletes the rows of the days it drops.';
    COMMENT ON COLUMN position_days.positions IS 'Rows inserted for this day (deleted rows are '
        'not subtracted).';
    COMMENT ON COLUMN position_days.newest_time IS 'Newest position time of the day; the '
        'newest of all is the data clock of a replay.';
    COMMENT ON COLUMN position_days.last_inserted_at IS 'Newest positions.inserted_at of the '
        'day: the flight pass reads only days with rows newer than its watermark.';
    """)
    op.execute(NOTE_DAYS)
    op.execute("CREATE TRIGGER positions_note_days AFTER INSERT ON positions "
               "REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT "
               "EXECUTE FUNCTION positions_note_days()")
    op.execute("""
    INSERT INTO position_days (receiver_id, day, positions, newest_time, last_inserted_at)
    SELECT receiver_id, (time AT TIME ZONE 'UTC')::date, count(*), max(time), max(inserted_at)
      FROM positions GROUP BY 1, 2
    """)
    # Flights no model has scored yet: the scoring pass looks for them every minute; without
    # this index it read the whole flights table each time, a cost growing with history.
    op.execute("CREATE INDEX flights_unscored_idx ON flights (id) WHERE model_id IS NULL")


def downgrade() -> None:
    op.execute("DROP INDEX IF EXISTS flights_unscored_idx")
    op.execute("DROP TRIGGER IF EXISTS positions_note_days ON positions")
    op.execute("DROP FUNCTION IF EXISTS positions_note_days()")
    op.execute("DROP TABLE IF EXISTS position_days")
    op.execute("DROP INDEX IF EXISTS positions_icao24_time_idx")
    op.execute("CREATE INDEX positions_icao24_time_idx ON positions (icao24, time)")
