"""The schema stays distributable by aircraft (docs/scale.md): read from the live database
after every migration, so a change that breaks the rule fails here.

Rule (what Citus needs of tables distributed by ``icao24``): every unique key (primary key,
unique constraint, unique index) of a distributed table includes ``icao24``; a foreign key
between two distributed tables includes ``icao24`` on both sides, paired; no table that is whole
on every node (reference) refers to a distributed one. Every table is one or the other: a new
table must be placed in a list below before it can land."""

from __future__ import annotations

import sqlalchemy as sa

DISTRIBUTED = {"positions", "flights", "flight_scores", "flight_labels", "alert_outbox"}
REFERENCE = {"sites", "receivers", "models", "jobs", "pipeline_state", "job_runs",
             "position_days", "alembic_version", "traffic_changes"}
COLUMN = "icao24"

_TABLES = """
SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
 WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p') AND NOT c.relispartition"""

# Unique indexes (those of primary keys and unique constraints included) with their columns.
_UNIQUE = """
SELECT t.relname, i.relname, array_agg(a.attname ORDER BY k.n)
  FROM pg_index x
  JOIN pg_class i ON i.oid = x.indexrelid
  JOIN pg_class t ON t.oid = x.indrelid
  JOIN pg_namespace ns ON ns.oid = t.relnamespace
  CROSS JOIN LATERAL unnest(x.indkey) WITH ORDINALITY AS k(attnum, n)
  LEFT JOIN pg_attribute a ON a.attrelid = t.oid AND a.attnum = k.attnum
 WHERE x.indisunique AND ns.nspname = 'public' AND NOT t.relispartition
 GROUP BY t.relname, i.relname"""

_FOREIGN = """
SELECT c.conname, t.relname, r.relname,
       array(SELECT a.attname FROM unnest(c.conkey) WITH ORDINALITY u(k, n)
               JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = u.k ORDER BY u.n),
       array(SELECT a.attname FROM unnest(c.confkey) WITH ORDINALITY u(k, n)
               JOIN pg_attribute a ON a.attrelid = c.confrelid AND a.attnum = u.k ORDER BY u.n)
  FROM pg_constraint c
  JOIN pg_class t ON t.oid = c.conrelid
  JOIN pg_class r ON r.oid = c.confrelid
  JOIN pg_namespace ns ON ns.oid = t.relnamespace
 WHERE c.contype = 'f' AND ns.nspname = 'public' AND NOT t.relispartition"""


def problems(conn: sa.Connection) -> list[str]:
    """Every way the live schema breaks the rule, one line each."""
    out = []
    tables = set(conn.execute(sa.text(_TABLES)).scalars())
    for table in sorted(tables - DISTRIBUTED - REFERENCE):
        out.append(f"table {table} is neither distributed nor reference: place it")
    for table, index, columns in conn.execute(sa.text(_UNIQUE)):
        if table in DISTRIBUTED and COLUMN not in columns:
            out.append(f"unique index {index} on {table} {columns} lacks {COLUMN}")
    for name, table, target, cols, target_cols in conn.execute(sa.text(_FOREIGN)):
        if table in REFERENCE and target in DISTRIBUTED:
            out.append(f"foreign key {name}: reference table {table} refers to {target}")
        if table in DISTRIBUTED and target in DISTRIBUTED and not any(
                a == COLUMN and b == COLUMN for a, b in zip(cols, target_cols)):
            out.append(f"foreign key {name} {table}{cols} -> {target}{target_cols} does not "
                       f"pair {COLUMN}")
    return out


def test_every_key_of_a_distributed_table_includes_the_aircraft(engine):
    with engine.connect() as conn:
        assert problems(conn) == []
        tables = set(conn.execute(sa.text(_TABLES)).scalars())
    assert DISTRIBUTED <= tables and tables - {"alembic_version"} >= REFERENCE - {"alembic_version"}


def test_the_check_catches_each_kind_of_break(engine):
    """Changes that would break the rule, made in a transaction that is rolled back."""
    with engine.connect() as conn, conn.begin() as tx:
        conn.execute(sa.text("CREATE TABLE flight_notes (id bigserial PRIMARY KEY, "
                             "flight_id bigint, icao24 text)"))
        conn.execute(sa.text("CREATE UNIQUE INDEX flights_callsign_uq ON flights (callsign, id)"))
        conn.execute(sa.text("ALTER TABLE flight_labels ADD CONSTRAINT bad_fk FOREIGN KEY "
                             "(icao24, flight_id) REFERENCES flights (callsign, id)"))
        # Fine: icao24 in the key, wherever it stands.
        conn.execute(sa.text("CREATE UNIQUE INDEX flights_id_icao_uq ON flights (id, icao24)"))
        conn.execute(sa.text("ALTER TABLE sites ADD COLUMN flight bigint, ADD COLUMN aircraft "
                             "text, ADD CONSTRAINT site_fk FOREIGN KEY (aircraft, flight) "
                             "REFERENCES flights (icao24, id)"))
        found = problems(conn)
        tx.rollback()
    assert any("flight_notes is neither" in p for p in found)
    assert any("flights_callsign_uq" in p for p in found)
    assert any("bad_fk" in p and "does not pair" in p for p in found)
    assert any("site_fk" in p and "reference table sites" in p for p in found)
    assert len(found) == 4
