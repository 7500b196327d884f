"""The journal's disk refuses a spill while the database is unreachable: no row is lost."""

from __future__ import annotations

import shutil
import time

import sqlalchemy as sa

from _ingest_support import stored_rows
from faults.test_ingest_faults import _free_port, _rows
from pipeline.db import writer as writer_module
from pipeline.db.writer import PositionWriter


def test_refused_spill_keeps_rows_in_memory_and_journals_them_later(db_url, tmp_path,
                                                                    monkeypatch, caplog):
    monkeypatch.setattr(writer_module, "_SPILL_RETRY_S", 0.2)
    dead = sa.create_engine(f"postgresql+psycopg2://postgres@127.0.0.1:{_free_port()}/none",
                            connect_args={"connect_timeout": 2})
    journal = tmp_path / "journal"
    writer = PositionWriter(dead, journal, batch_rows=100, buffer_max_rows=1000)
    put = 0

    def feed(chunks: int) -> None:
        nonlocal put
        for _ in range(chunks):
            rows, days = _rows(200, t0=1633608001.0 + put)
            writer.put(rows, 200, days)
            put += 200

    feed(1)
    deadline = time.monotonic() + 10            # the first write fails: the database is away
    while not writer.write_errors and time.monotonic() < deadline:
        time.sleep(0.05)
    feed(7)                                     # over the bound: the first spill succeeds
    journaled = writer.rows_journaled
    assert journaled > 0 and writer.journal_errors == 0
    # The journal's disk goes away (a file where its directory was: every write fails).
    shutil.move(journal, tmp_path / "kept")
    journal.write_text("")
    feed(10)                                    # no exception reaches the ingest
    assert writer.journal_errors > 0
    assert writer.rows_journaled == journaled   # what was journaled stays journaled
    assert writer.pending == put - journaled    # the rest is held in memory, beyond the bound
    assert "cannot write the journal" in caplog.text
    # Disk space comes back: the next spill after the retry pause takes the held rows.
    journal.unlink()
    shutil.move(tmp_path / "kept", journal)
    time.sleep(0.3)
    feed(1)
    writer.close(timeout_s=10)
    assert writer.rows_journaled == put and writer.pending == 0

    good = PositionWriter(sa.create_engine(db_url), journal)
    deadline = time.monotonic() + 30
    while list(journal.glob("positions-*")) and time.monotonic() < deadline:
        time.sleep(0.05)
    good.close()
    rows = stored_rows(db_url)
    assert len(rows) == put == len({(r[1], r[0]) for r in rows})
