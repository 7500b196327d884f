"""Faults around the ingest: database unreachable, receiver refusing or going silent."""

from __future__ import annotations

import datetime as dt
import math
import socket
import threading
import time

import sqlalchemy as sa

from _ingest_support import stored_rows
from conftest import PARIS_BEAST, PARIS_START, need
from pipeline.db.writer import PositionWriter
from pipeline.receiver.decode import PositionDecoder
from pipeline.receiver.ingest import ingest_file
from pipeline.receiver.sources import TcpSource


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_database_outage_spills_to_the_journal_and_replays(settings, db_url, tmp_path):
    data = need(PARIS_BEAST).read_bytes()[:300_000]
    path = tmp_path / "part.beast"
    path.write_bytes(data)
    journal = settings.data_dir / "journal"
    dead = sa.create_engine(f"postgresql+psycopg2://postgres@127.0.0.1:{_free_port()}/none",
                            connect_args={"connect_timeout": 2})
    writer = PositionWriter(dead, journal, batch_rows=500, buffer_max_rows=1000)
    stats = ingest_file(settings, path, "beast", PARIS_START, progress=False, writer=writer)
    writer.close(timeout_s=10)
    assert stats.positions > 3000
    assert writer.rows_written == 0 and writer.write_errors > 0
    assert writer.rows_journaled == stats.positions      # nothing dropped
    assert list(journal.glob("positions-*.pgcopy"))

    # The database answers again: the next writer loads the journal first.
    good = sa.create_engine(db_url)
    writer = PositionWriter(good, journal)
    deadline = time.monotonic() + 30
    while list(journal.glob("positions-*.pgcopy")) and time.monotonic() < deadline:
        time.sleep(0.1)
    writer.close()
    rows = stored_rows(db_url)
    assert len(rows) == stats.positions
    assert len({(r[1], r[0]) for r in rows}) == len(rows)
    assert not list(journal.glob("positions-*.pgcopy"))


def test_outage_retries_follow_the_backoff(tmp_path):
    """Rows keep coming while the database is unreachable; they pile up (then spill to the
    journal) but do not bring a retry forward: write attempts follow the 0.5 s doubling
    backoff instead of one per received chunk."""
    dead = sa.create_engine(f"postgresql+psycopg2://postgres@127.0.0.1:{_free_port()}/none",
                            connect_args={"connect_timeout": 2})
    writer = PositionWriter(dead, tmp_path / "journal", batch_rows=100, buffer_max_rows=5000)
    outage_s, chunk_rows, put, peak_pending = 6.0, 200, 0, 0
    rows, days = _rows(chunk_rows)
    start = time.monotonic()
    while time.monotonic() - start < outage_s:      # a received chunk every 20 ms
        writer.put(rows, chunk_rows, days)
        put += chunk_rows
        peak_pending = max(peak_pending, writer.pending)
        time.sleep(0.02)
    attempts, journaled_while_down = writer.write_errors, writer.rows_journaled
    writer.close(timeout_s=10)
    print(f"\n{outage_s:.0f} s outage, {put // chunk_rows} chunks received: {attempts} write "
          f"attempts, at most {peak_pending} rows in memory, {journaled_while_down} journaled")
    # Attempts at 0, 0.5, 1.5, 3.5 s (then 7.5 s): at most log2(T / 0.5) + 2 in T seconds.
    assert 2 <= attempts <= math.log2(outage_s / 0.5) + 2
    assert peak_pending <= 5000 + chunk_rows and journaled_while_down > 0
    assert writer.rows_written == 0 and writer.rows_journaled == put      # nothing dropped


def _rows(n: int, t0: float = 1633608001.0) -> tuple[bytes, set[dt.date]]:
    """``n`` binary COPY rows of one aircraft flying east, one a second."""
    decoder = PositionDecoder(48.88, 2.42, 121.0)
    for i in range(n):
        decoder.add_position("4ca7b5", t0 + i, 48.88, 2.42 + i * 0.002, 35000, False)
    data, count, days = decoder.take()
    assert count == n
    return data, days


def test_text_journal_of_an_earlier_version_is_loaded(db_url, tmp_path):
    """Journals written as COPY text lines before rows went binary still reach the table."""
    journal = tmp_path / "journal"
    journal.mkdir()
    (journal / "positions-1700000000000000000.copy").write_text(
        "2021-10-07 12:00:01.250000+00\t4ca7b5\t48.8800000\t2.4200000\t35000\t420.00\t"
        "93.50\t-64\tKLM1023\tf\tdefault\n"
        "2021-10-07 12:00:02.250000+00\t4ca7b5\t48.8800000\t2.4300000\t\\N\t\\N\t\\N\t"
        "\\N\t\\N\tf\tdefault\n")
    writer = PositionWriter(sa.create_engine(db_url), journal)
    deadline = time.monotonic() + 30
    while list(journal.glob("positions-*")) and time.monotonic() < deadline:
        time.sleep(0.05)
    writer.close()
    assert writer.rows_written == 2 and not list(journal.glob("positions-*"))
    with sa.create_engine(db_url).connect() as conn:
        got = conn.execute(sa.text(
            "SELECT extract(epoch FROM time), altitude, groundspeed, callsign FROM positions "
            "ORDER BY time")).all()
    assert [(float(t), a, g, c) for t, a, g, c in got] == [
        (1633608001.25, 35000, 420.0, "KLM1023"), (1633608002.25, None, None, None)]


def test_receiver_refused_then_silent_then_serving():
    port = _free_port()
    stop = threading.Event()
    source = TcpSource("127.0.0.1", port, stop, read_timeout_s=0.5, poll_s=0.1)
    source.backoff.first_s = 0.05
    got: list = []

    def consume():
        for chunk in source.chunks():
            got.append(chunk)
            if chunk:
                stop.set()

    worker = threading.Thread(target=consume)
    worker.start()
    time.sleep(0.5)                                 # nothing listens: refused, backing off
    assert got == [] and source.backoff.attempt >= 2
    server = socket.create_server(("127.0.0.1", port))
    silent, _ = server.accept()                     # half-open: accepted, never sends
    talker, _ = server.accept()                     # after the read timeout it reconnects
    talker.sendall(b"\x1a2" + b"\x00" * 14)
    worker.join(10)
    assert not worker.is_alive()
    assert got[0] is None and got[1] is None and got[2].startswith(b"\x1a2")
    assert source.reconnects == 1
    for s in (silent, talker, server):
        s.close()
