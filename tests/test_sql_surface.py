"""The SQL users rely on: the view flagged_flights, the role adsb_reader, docs/sql.md."""

from __future__ import annotations

import base64
import datetime as dt
import io
import os
import re
import shutil
import subprocess
import uuid
from decimal import Decimal
from pathlib import Path

import psycopg2
import pytest
import sqlalchemy as sa
from alembic import command
from PIL import Image

import flagged_data
from pipeline.db import migrate, partitions
from pipeline.db.engine import plain_url
from pipeline.flights import raster

DOC = Path(__file__).resolve().parents[1] / "docs" / "sql.md"
VIEW_COLUMNS = ["flight_id", "icao24", "callsign", "first_seen", "last_seen", "duration",
                "n_positions", "path_km", "score", "threshold", "score_ratio", "model_version",
                "scored_at", "channel", "verdict", "site", "traffic_change_id"]


def fenced_blocks(text: str, info: str) -> list[str]:
    """Bodies of the ``` blocks whose info string is exactly ``info``."""
    return [m.group(2) for m in re.finditer(r"^```([^\n]*)\n(.*?)^```", text, re.S | re.M)
            if m.group(1).strip() == info]


def safe_now() -> dt.datetime:
    # "today" queries need the fixture's flights (up to 20 minutes old) on today's date.
    now = dt.datetime.now(dt.timezone.utc)
    midnight = now.replace(hour=0, minute=0, second=0, microsecond=0)
    return max(now, midnight + dt.timedelta(minutes=30))


@pytest.fixture
def traffic(engine):
    flights = flagged_data.insert(engine, now=safe_now())
    # One of today's flags is part of a traffic change (pipeline/model/changes.py).
    part = next(f for f in flights if f.callsign == "FGZNX")
    with engine.begin() as c:
        change = c.execute(sa.text("""
            INSERT INTO traffic_changes (site, model_id, channel, region, started_at, detected_at,
                                         last_flag_at, flights_scored, flights_flagged,
                                         expected_flags, p_value, opened_by_flight)
            SELECT 'default', id, 'where', 'where: 1 flights around 30 km E of the receiver',
                   now() - interval '2 hours', now() - interval '1 hour', now(), 40, 1, 0.4,
                   1e-9, :f FROM models RETURNING id"""), {"f": part.id}).scalar_one()
        c.execute(sa.text("UPDATE flights SET traffic_change_id = :c WHERE id = :f"),
                  {"c": change, "f": part.id})
    return flights


def as_reader(conn: sa.Connection) -> None:
    conn.execute(sa.text("SET TIME ZONE 'UTC'"))
    conn.execute(sa.text("SET ROLE adsb_reader"))


def test_view_lists_exactly_the_flagged_flights_with_readable_columns(engine, traffic):
    with engine.connect() as c:
        result = c.execute(sa.text("SELECT * FROM flagged_flights ORDER BY score DESC"))
        assert list(result.keys()) == VIEW_COLUMNS
        rows = result.mappings().all()
    flagged = sorted((f for f in traffic if f.flagged), key=lambda f: -f.score)
    assert [r["flight_id"] for r in rows] == [f.id for f in flagged]
    assert len(rows) == 4 and len(traffic) == 6          # the two transits are not flagged
    top = rows[0]
    assert top["callsign"] == "AFR77" and top["model_version"] == "20261123T0300"
    assert top["score"] == Decimal("0.500000") and top["score_ratio"] == Decimal("10.00")
    n = len(flagged[0].lat)
    assert top["n_positions"] == n
    assert top["duration"] == dt.timedelta(seconds=flagged_data.STEP_S * (n - 1))
    assert top["path_km"] == Decimal("123.5")


def test_view_and_every_column_are_commented(engine):
    with engine.connect() as c:
        view = c.execute(sa.text("SELECT obj_description('flagged_flights'::regclass, 'pg_class')")).scalar()
        cols = dict(c.execute(sa.text(
            "SELECT attname, col_description(attrelid, attnum) FROM pg_attribute "
            "WHERE attrelid = 'flagged_flights'::regclass AND attnum > 0")).all())
    assert "flagged" in view and "positions p JOIN flights f" in view
    assert set(cols) == set(VIEW_COLUMNS)
    assert all(cols.values()), [k for k, v in cols.items() if not v]


def test_reader_reads_everything_including_later_partitions(engine, traffic):
    later = dt.date(2031, 1, 2)
    with engine.begin() as c:           # the service owner creates a partition after the migration
        partitions.ensure(c, [later])
        c.execute(sa.text("INSERT INTO positions (time, icao24, latitude, longitude) "
                          "VALUES ('2031-01-02T10:00:00Z', 'abcdef', 48.9, 2.4)"))
    with engine.connect() as c:
        as_reader(c)
        assert c.execute(sa.text("SELECT current_user")).scalar() == "adsb_reader"
        assert c.execute(sa.text("SELECT count(*) FROM flagged_flights")).scalar() == 4
        assert c.execute(sa.text("SELECT count(*) FROM flights")).scalar() == 6
        assert c.execute(sa.text("SELECT count(*) FROM positions WHERE icao24 = 'abcdef'")).scalar() == 1
        direct = partitions.partition_name(later)
        assert c.execute(sa.text(f'SELECT count(*) FROM "{direct}"')).scalar() == 1
        for table in ("models", "flight_scores", "pipeline_state", "job_runs"):
            c.execute(sa.text(f"SELECT count(*) FROM {table}")).scalar()


@pytest.mark.parametrize("statement", [
    "INSERT INTO flights (icao24, first_seen, last_seen, n_positions) VALUES ('abcdef', now(), now(), 1)",
    "INSERT INTO positions (time, icao24, latitude, longitude) VALUES (now(), 'abcdef', 48.9, 2.4)",
    "UPDATE flights SET flagged = false",
    "DELETE FROM positions",
    "DELETE FROM models",
    "CREATE TABLE reader_was_here (x int)",
    "CREATE VIEW reader_view AS SELECT 1",
    "CREATE SCHEMA reader_schema",
    "TRUNCATE flights CASCADE",
])
def test_reader_changes_nothing(engine, traffic, statement):
    with engine.connect() as c:
        as_reader(c)
        with pytest.raises(sa.exc.ProgrammingError) as e:
            c.execute(sa.text(statement))
        assert isinstance(e.value.orig, psycopg2.errors.InsufficientPrivilege)
        c.rollback()
    with engine.connect() as c:
        assert c.execute(sa.text("SELECT count(*) FILTER (WHERE flagged) FROM flights")).scalar() == 4


def test_downgrade_drops_the_view_and_revokes_then_upgrade_restores(engine, traffic):
    cfg = migrate.alembic_config()
    with engine.begin() as c:
        cfg.attributes["connection"] = c
        command.downgrade(cfg, "0001")
    with engine.connect() as c:
        assert c.execute(sa.text("SELECT to_regclass('flagged_flights')")).scalar() is None
        as_reader(c)
        with pytest.raises(sa.exc.ProgrammingError):
            c.execute(sa.text("SELECT count(*) FROM flights"))
    migrate.upgrade(engine)
    with engine.connect() as c:
        as_reader(c)
        assert c.execute(sa.text("SELECT count(*) FROM flagged_flights")).scalar() == 4


def documented(engine, marker: str) -> list[dict]:
    """Rows of the one documented query containing ``marker``, run as adsb_reader."""
    sql = next(b for b in fenced_blocks(DOC.read_text(), "sql") if marker in b)
    with engine.connect() as c:
        as_reader(c)
        return [dict(r) for r in c.execute(sa.text(sql)).mappings()]


def test_every_sql_block_of_the_docs_runs_as_reader_and_returns_rows(engine, traffic):
    blocks = fenced_blocks(DOC.read_text(), "sql")
    assert len(blocks) >= 6
    with engine.connect() as c:
        as_reader(c)
        for sql in blocks:
            assert c.execute(sa.text(sql)).all(), f"no rows from documented query:\n{sql}"


def test_documented_queries_return_the_right_things(engine, traffic):
    today = documented(engine, "date_trunc('day', now())")
    assert [r["callsign"] for r in today] == ["FHBXA", "SRV<b>&1", "FGZNX"]   # not 3 days old
    week = documented(engine, "LIMIT 20")
    assert [r["callsign"] for r in week] == ["AFR77", "FHBXA", "SRV<b>&1", "FGZNX"]
    own = documented(engine, "traffic_change_id IS NULL")
    assert [r["callsign"] for r in own] == ["FHBXA", "SRV<b>&1"]   # FGZNX is a change's
    changes = documented(engine, "FROM traffic_changes")
    assert [(r["channel"], r["flights_flagged"]) for r in changes] == [("where", 1)]
    per_day = documented(engine, "AS pct_flagged\n  FROM flights")
    assert [(r["flights"], r["flagged"]) for r in per_day] == [(5, 3), (1, 1)]

    orbit = next(f for f in traffic if f.callsign == "AFR77")     # highest score overall
    pos = documented(engine, "FROM positions p")
    assert len(pos) == len(orbit.lat)
    assert [r["time"] for r in pos] == sorted(r["time"] for r in pos)
    assert [r["latitude"] for r in pos] == pytest.approx(list(orbit.lat))

    per_model = documented(engine, "FROM flight_scores s")
    assert len(per_model) == 1
    assert (per_model[0]["scored"], per_model[0]["flagged"]) == (6, 4)
    assert per_model[0]["pct_flagged"] == Decimal("66.67")

    image = documented(engine, "encode(f.image")
    assert len(image) == 1 and image[0]["id"] == orbit.id
    png = base64.b64decode(image[0]["image_png_base64"])
    assert raster.decode_png(png).sum() > 0
    rec = Image.open(io.BytesIO(base64.b64decode(image[0]["reconstruction_png_base64"])))
    assert rec.size == (128, 64) and rec.mode == "L"


def test_documented_login_role_recipe_gives_a_read_only_login(engine, databases, traffic):
    admin_blocks = fenced_blocks(DOC.read_text(), "sql admin")
    login = next(b for b in admin_blocks if "LOGIN" in b)
    name = f"adsb_test_reader_{uuid.uuid4().hex[:8]}"
    with engine.begin() as c:
        c.execute(sa.text(login.replace("alice", name)))
    try:
        url = sa.engine.make_url(engine.url).set(username=name, password="change-me")
        reader = sa.create_engine(url)
        with reader.connect() as c:
            assert c.execute(sa.text("SELECT count(*) FROM flagged_flights")).scalar() == 4
            with pytest.raises(sa.exc.ProgrammingError):
                c.execute(sa.text("DELETE FROM flights"))
        reader.dispose()
    finally:
        with engine.begin() as c:
            c.execute(sa.text(f'DROP ROLE IF EXISTS "{name}"'))


def test_documented_manual_grants_run(engine):
    grants = next(b for b in fenced_blocks(DOC.read_text(), "sql admin") if "GRANT" in b)
    with engine.begin() as c:
        c.execute(sa.text(grants.replace("FOR ROLE adsb ", "FOR ROLE CURRENT_USER ")))


@pytest.mark.skipif(shutil.which("psql") is None, reason="psql is not installed")
def test_documented_shell_export_writes_the_flight_png(engine, traffic, tmp_path):
    sh = next(b for b in fenced_blocks(DOC.read_text(), "sh") if "base64 -d" in b)
    env = {**os.environ, "ADSB_DATABASE_URL": plain_url(engine.url)}
    subprocess.run(["bash", "-euo", "pipefail", "-c", sh], cwd=tmp_path, env=env, check=True,
                   timeout=60)
    img = raster.decode_png((tmp_path / "flight.png").read_bytes())
    with engine.connect() as c:
        stored = c.execute(sa.text("SELECT image FROM flights WHERE callsign = 'AFR77'")).scalar()
    assert (img == raster.decode_png(stored)).all()
