"""What the worker reads does not grow with the days kept: the plans of the data clock, a
flight pass, the scoring query and the report on a database with many daily partitions of
positions visit only the partitions of the days they need. Retention drops old positions and
keeps the flights, images, scores and verdicts of those days.

Plans are those of the statements the code really runs: PostgreSQL's auto_explain sends the
plan of every statement of our connections back to the client as a notice."""

from __future__ import annotations

import datetime as dt
import json
import re

import pytest
import sqlalchemy as sa

from pipeline.db import partitions
from pipeline.flights import raster, store
from pipeline.flights.clock import data_clock
from pipeline.model import score
from pipeline.service import scheduler
from pipeline.web import report

UTC = dt.timezone.utc
DAYS = 60
FIRST_DAY = dt.date(2021, 8, 9)
LAST_DAY = FIRST_DAY + dt.timedelta(days=DAYS - 1)
EXTRA_FLIGHTS = 20_000              # scored flights of the past, as a site has after months
_PARTITION = re.compile(r"^positions_p\d{8}$")


class Plans:
    """Collects the plans auto_explain sends as notices. It stands in for psycopg2's list of
    notices; it looks empty to SQLAlchemy, which would otherwise log and clear them."""

    def __init__(self) -> None:
        self.plans: list[tuple[str, dict]] = []       # (query text, plan)

    def append(self, notice: str) -> None:
        _, sep, body = notice.partition("plan:\n")
        if sep:
            doc = json.loads(body)
            self.plans.append((doc["Query Text"], doc["Plan"]))

    def __len__(self) -> int:
        return 0

    def __iter__(self):
        return iter(())

    def take(self) -> list[tuple[str, dict]]:
        out, self.plans = self.plans, []
        return out


def _relations(plan: dict) -> set[str]:
    out = {plan["Relation Name"]} if "Relation Name" in plan else set()
    for child in plan.get("Plans", []):
        out |= _relations(child)
    return out


def _partitions(plan: dict) -> set[str]:
    return {r for r in _relations(plan) if _PARTITION.match(r)}


def _seq_scans(plan: dict) -> set[str]:
    out = {plan["Relation Name"]} if plan.get("Node Type") == "Seq Scan" else set()
    for child in plan.get("Plans", []):
        out |= _seq_scans(child)
    return out


@pytest.fixture
def explained(db_url, admin_url):
    """An engine whose every statement's plan lands in ``engine.plans``."""
    eng = sa.create_engine(db_url)
    plans = Plans()

    @sa.event.listens_for(eng, "connect")
    def _explain_everything(dbapi_conn, _record):
        with dbapi_conn.cursor() as cur:
            try:
                cur.execute("LOAD 'auto_explain'")
            except Exception as e:     # noqa: BLE001 - a server without it, or no superuser
                dbapi_conn.rollback()
                pytest.skip(f"auto_explain cannot be loaded on this server: {e}")
            cur.execute("SET auto_explain.log_min_duration = 0; "
                        "SET auto_explain.log_level = 'notice'; "
                        "SET auto_explain.log_format = 'json'; "
                        "SET auto_explain.log_nested_statements = on")
        dbapi_conn.commit()
        dbapi_conn.notices = plans

    eng.plans = plans                  # type: ignore[attr-defined]
    yield eng
    eng.dispose()


def _history(engine: sa.Engine, settings) -> None:
    """DAYS days of positions (4 aircraft a day), their flights closed and scored, plus
    EXTRA_FLIGHTS scored flights; then fresh positions on the last day, not yet placed."""
    with engine.begin() as conn:
        partitions.ensure(conn, [FIRST_DAY + dt.timedelta(days=i) for i in range(DAYS)])
        conn.execute(sa.text("""
            INSERT INTO positions (time, icao24, latitude, longitude, altitude, callsign)
            SELECT :first + d * interval '1 day' + interval '8 hours' + a * interval '1 hour'
                       + k * interval '10 s',
                   'a0000' || a, 48.88 + k * 0.002, 2.42 + k * 0.003, 30000, 'TEST' || a
              FROM generate_series(0, :days - 1) d, generate_series(0, 3) a,
                   generate_series(0, 39) k"""),
            {"first": dt.datetime.combine(FIRST_DAY, dt.time(), UTC), "days": DAYS})
    assert store.process_flights(engine, settings, final=True).closed == DAYS * 4
    with engine.begin() as conn:
        model = conn.execute(sa.text(
            "INSERT INTO models (version, status, threshold, site) "
            "VALUES ('m1', 'active', 1.0, 'default') "
            "RETURNING id")).scalar_one()
        conn.execute(sa.text(
            "UPDATE flights SET model_id = :m, score = 0.5, threshold = 1.0, flagged = false, "
            "scored_at = now()"), {"m": model})
        conn.execute(sa.text("""
            INSERT INTO flights (icao24, receiver_id, site, first_seen, last_seen, n_positions,
                                 state, image, image_format, model_id, score, threshold,
                                 flagged, scored_at)
            SELECT 'b' || lpad(to_hex(i % 4096), 5, '0'), 'default', 'default',
                   :first + i * (:span / :n), :first + i * (:span / :n) + interval '20 min',
                   100, 'finished', '\\x89504e47'::bytea, :format, :m, (i % 97) / 50.0, 1.0,
                   i % 97 > 50, now()
              FROM generate_series(1, :n) i"""),
            {"first": dt.datetime.combine(FIRST_DAY, dt.time(), UTC),
             "span": dt.timedelta(days=DAYS - 1), "n": EXTRA_FLIGHTS, "format": raster.FORMAT,
             "m": model})
        # Today: one aircraft whose flight ended long enough ago to be closed by the next
        # pass, one still flying at the newest position.
        last = dt.datetime.combine(LAST_DAY, dt.time(20), UTC)
        conn.execute(sa.text("""
            INSERT INTO positions (time, icao24, latitude, longitude, altitude)
            SELECT :t + k * interval '10 s', 'c00001', 48.9 + k * 0.002, 2.3, 20000
              FROM generate_series(0, 29) k
            UNION ALL
            SELECT :t + interval '1 hour' + k * interval '10 s', 'c00002', 48.8, 2.3 + k * 0.003,
                   25000
              FROM generate_series(0, 29) k"""), {"t": last})
        conn.execute(sa.text("ANALYZE"))


def test_worker_queries_read_only_the_days_they_need(explained, settings, monkeypatch):
    monkeypatch.setattr(store, "COMMIT_MARGIN", dt.timedelta(0))
    _history(explained, settings)
    explained.plans.take()

    with explained.connect() as conn:
        clock = data_clock(conn)
    assert clock == dt.datetime.combine(LAST_DAY, dt.time(21, 4, 50), UTC)
    res = store.process_flights(explained, settings)
    assert (res.new_positions, res.created, res.closed) == (60, 2, 1)
    with explained.connect() as conn:
        active = conn.execute(sa.text("SELECT id FROM models WHERE status = 'active'")).scalar()
        pending = conn.execute(score._PENDING, {
            "model": active, "since": data_clock(conn) - dt.timedelta(days=1), "limit": 500,
            "rescore": False, "started": dt.datetime.now(UTC), "format": raster.FORMAT,
            "site": "default"}).all()
        assert len(pending) == 1                        # the flight the pass just closed
        _, flagged = report.fetch(conn, dt.timedelta(days=1), 20)
        assert flagged and all(f.last_seen > clock - dt.timedelta(days=1) for f in flagged)
    plans = explained.plans.take()

    reading_positions = [(q, p) for q, p in plans if _partitions(p)]
    too_wide = [(q, sorted(_partitions(p))) for q, p in reading_positions
                if len(_partitions(p)) > 1]
    assert not too_wide, f"plans visiting several days' partitions: {too_wide}"
    # The pass read the new rows, looked for rows newer than its cutoff and read the positions
    # of the flight it closed: each in the last day's partition alone.
    assert len(reading_positions) >= 3
    clock_plans = [p for q, p in plans if "position_days" in _relations(p) and "max" in q]
    assert clock_plans and not any(_partitions(p) for p in clock_plans)
    # Scoring and the report find their flights by index among EXTRA_FLIGHTS.
    for text in ("FOR UPDATE SKIP LOCKED", "flight_scores"):
        found = [p for q, p in plans if text in q and "flights" in _relations(p)]
        assert found, text
        assert all("flights" not in _seq_scans(p) for p in found), text

    # The harness sees a query that does visit every day.
    with explained.connect() as conn:
        conn.execute(sa.text("SELECT max(time) FROM positions"))
    (_, whole), = explained.plans.take()
    assert len(_partitions(whole)) == DAYS


def test_retention_drops_old_positions_and_keeps_flights_images_scores_and_verdicts(
        engine, settings, monkeypatch):
    monkeypatch.setattr(store, "COMMIT_MARGIN", dt.timedelta(0))
    _history(engine, settings)
    store.process_flights(engine, settings, final=True)
    with engine.begin() as conn:
        clock = data_clock(conn)
        conn.execute(sa.text(
            "INSERT INTO flight_scores (icao24, flight_id, model_id, score, threshold, flagged) "
            "SELECT icao24, id, model_id, score, threshold, flagged FROM flights "
            "WHERE icao24 LIKE 'a0000%'"))
        conn.execute(sa.text(
            "INSERT INTO flight_labels (icao24, flight_id, verdict, author) "
            "SELECT icao24, id, 'normal', 'tester' FROM flights WHERE icao24 = 'a00001'"))
        before = conn.execute(sa.text(
            "SELECT f.id, f.first_seen, f.last_seen, f.n_positions, f.image, f.score, "
            "f.flagged, s.score, l.verdict FROM flights f "
            "JOIN flight_scores s ON s.flight_id = f.id "
            "LEFT JOIN flight_labels l ON l.flight_id = f.id "
            "WHERE f.icao24 LIKE 'a0000%' ORDER BY f.id")).all()
    assert len(before) == DAYS * 4 and all(r.image for r in before)

    keep = 10
    worker = scheduler.Worker(settings.replace(retention_days=keep), engine)
    dropped = worker.retention()
    cutoff = (clock - dt.timedelta(days=keep)).date()
    assert len(dropped) == (cutoff - FIRST_DAY).days
    store.process_flights(engine, settings)              # the next pass leaves them alone
    with engine.connect() as conn:
        kept_days = sorted(partitions.existing(conn))
        assert kept_days[0] == cutoff
        assert conn.execute(sa.text("SELECT min(time) FROM positions")).scalar() >= \
            dt.datetime.combine(cutoff, dt.time(), UTC)
        assert conn.execute(sa.text("SELECT min(day) FROM position_days")).scalar() == cutoff
        assert data_clock(conn) == clock
        after = conn.execute(sa.text(
            "SELECT f.id, f.first_seen, f.last_seen, f.n_positions, f.image, f.score, "
            "f.flagged, s.score, l.verdict FROM flights f "
            "JOIN flight_scores s ON s.flight_id = f.id "
            "LEFT JOIN flight_labels l ON l.flight_id = f.id "
            "WHERE f.icao24 LIKE 'a0000%' ORDER BY f.id")).all()
    assert after == before
    old = [r for r in after if r.last_seen.date() < cutoff]
    assert len(old) == (cutoff - FIRST_DAY).days * 4
    assert sum(r.verdict == "normal" for r in old) == (cutoff - FIRST_DAY).days
