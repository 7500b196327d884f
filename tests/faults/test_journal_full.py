"""The journal's disk refuses a spill while the database is unreachable: no row is lost."""

from __future__ import annotations

import shutil
import threading
import time

import sqlalchemy as sa

from _ingest_support import stored_rows
from faults.test_ingest_faults import _free_port, _rows
from pipeline.db import writer as writer_module
from pipeline.db.writer import PositionWriter


class _Feeder:
    """Puts chunks of 200 rows, each later than the last, into a writer."""

    def __init__(self, writer: PositionWriter) -> None:
        self.writer, self.put = writer, 0

    def __call__(self, chunks: int) -> None:
        for _ in range(chunks):
            rows, days = _rows(200, t0=1633608001.0 + self.put)
            self.writer.put(rows, 200, days)
            self.put += 200


def _wait_for_a_failed_write(writer: PositionWriter) -> None:
    deadline = time.monotonic() + 10
    while not writer.write_errors and time.monotonic() < deadline:
        time.sleep(0.05)

def test_refused_spill_keeps_rows_in_memory_and_journals_them_later(db_url, tmp_path,
                                                                    monkeypatch, caplog):
    monkeypatch.setattr(writer_module, "_SPILL_RETRY_S", 0.2)
    dead = sa.create_engine(f"postgresql+psycopg2://postgres@127.0.0.1:{_free_port()}/none",
                            connect_args={"connect_timeout": 2})
    journal = tmp_path / "journal"
    writer = PositionWriter(dead, journal, batch_rows=100, buffer_max_rows=1000)
    feed = _Feeder(writer)
    feed(1)
    _wait_for_a_failed_write(writer)            # the database is away
    feed(7)                                     # over the bound: the first spill succeeds
    journaled = writer.rows_journaled
    assert journaled > 0 and writer.journal_errors == 0
    # The journal's disk goes away (a file where its directory was: every write fails).
    shutil.move(journal, tmp_path / "kept")
    journal.write_text("")
    feed(10)                                    # no exception reaches the ingest
    assert writer.journal_errors > 0
    assert writer.rows_journaled == journaled   # what was journaled stays journaled
    assert writer.pending == feed.put - journaled    # the rest is held in memory, beyond the bound
    assert "cannot write the journal" in caplog.text
    # Disk space comes back: the next spill after the retry pause takes the held rows.
    journal.unlink()
    shutil.move(tmp_path / "kept", journal)
    time.sleep(0.3)
    feed(1)
    writer.close(timeout_s=10)
    assert writer.rows_journaled == feed.put and writer.pending == 0

    good = PositionWriter(sa.create_engine(db_url), journal)
    deadline = time.monotonic() + 30
    while list(journal.glob("positions-*")) and time.monotonic() < deadline:
        time.sleep(0.05)
    good.close()
    rows = stored_rows(db_url)
    assert len(rows) == feed.put == len({(r[1], r[0]) for r in rows})


def test_after_an_outage_journaled_rows_are_stored_before_newer_rows_held_in_memory(
        db_url, tmp_path):
    """The journal holds the oldest rows of an outage, memory the newest: once the database is
    back the journal goes first, so that no newer position is stored (moving the data clock,
    by which flights are closed) while older ones that continue those flights still wait."""
    import psycopg2

    up = threading.Event()
    url = sa.make_url(db_url)

    def connect():
        if not up.is_set():
            raise psycopg2.OperationalError("the server is away")
        return psycopg2.connect(host=url.host, port=url.port or 5432, user=url.username,
                                dbname=url.database)

    engine = sa.create_engine("postgresql+psycopg2://", creator=connect)
    writer = PositionWriter(engine, tmp_path / "journal", batch_rows=100, buffer_max_rows=1000)
    feed = _Feeder(writer)
    feed(1)
    _wait_for_a_failed_write(writer)
    feed(9)                                     # the oldest rows spill, the newest stay
    journaled = writer.rows_journaled
    assert journaled > 0 and writer.pending > 0
    up.set()
    writer.close(timeout_s=60)
    assert writer.rows_written == feed.put and not list((tmp_path / "journal").glob("positions-*"))
    with sa.create_engine(db_url).connect() as conn:
        rows = conn.execute(sa.text(
            "SELECT extract(epoch FROM time), inserted_at FROM positions ORDER BY time")).all()
    assert len(rows) == feed.put
    split = 1633608001.0 + journaled            # the journal took the first rows put
    last_old = max(ins for t, ins in rows if float(t) < split)
    first_new = min(ins for t, ins in rows if float(t) >= split)
    assert last_old < first_new


def test_a_database_slower_than_the_receiver_keeps_memory_bounded(db_url, tmp_path, caplog):
    """The server is up but takes no rows for a while (a lock held by a long maintenance
    statement, a stalled disk): rows beyond the bound spill to the journal as in an outage,
    and once the server takes rows again everything is stored once, in time order."""
    import psycopg2

    writer = PositionWriter(sa.create_engine(db_url), tmp_path / "journal", batch_rows=100,
                            buffer_max_rows=1000)
    feed = _Feeder(writer)
    feed(1)
    deadline = time.monotonic() + 10
    while writer.rows_written < 200 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert writer.rows_written == 200
    locker = psycopg2.connect(db_url.replace("postgresql+psycopg2://", "postgresql://"))
    try:
        locker.cursor().execute("LOCK TABLE positions IN EXCLUSIVE MODE")  # blocks every COPY
        feed(1)
        time.sleep(1.5)                        # the writer is now waiting on the lock
        held = []
        for _ in range(30):                    # 6,000 rows, 6 × the bound
            feed(1)
            held.append(writer.pending)
        assert writer.database_ok and writer.write_errors == 0   # up, only slow
        assert max(held) <= 1000 + 200         # the bound, plus the chunk that crossed it
        assert writer.rows_journaled >= 4000
        assert "while the database is slower than the receiver" in caplog.text
    finally:
        locker.rollback()                      # the lock goes; the server takes rows again
        locker.close()
    writer.close(timeout_s=60)
    assert writer.rows_written == feed.put and writer.pending == 0
    assert not list((tmp_path / "journal").glob("positions-*"))
    with sa.create_engine(db_url).connect() as conn:
        rows = conn.execute(sa.text(
            "SELECT extract(epoch FROM time), inserted_at FROM positions ORDER BY time")).all()
    assert len(rows) == feed.put == len({t for t, _ in rows})
    # Stored in time order: no row was committed before an older one.
    assert all(a[1] <= b[1] for a, b in zip(rows, rows[1:]))
