"""Each position is stored once: a batch written again after its acknowledgement was lost, a
journal loaded twice, a capture replayed twice (real PostgreSQL, real Paris frames)."""

from __future__ import annotations

import datetime as dt
import shutil
import socket
import struct
import threading
import time
from pathlib import Path

import pytest
import sqlalchemy as sa

from _ingest_support import stored_rows
from conftest import PARIS_BEAST, PARIS_START, need
from pipeline.db import migrate, partitions
from pipeline.db.writer import PositionWriter
from pipeline.receiver.decode import PositionDecoder
from pipeline.receiver.ingest import ingest_file

SLICE_BYTES = 300_000           # the first ~5 minutes of the Paris capture: a few thousand rows
_SSL_OR_GSS_REQUEST = (80877103, 80877104)


class CommitCutter:
    """A TCP proxy in front of PostgreSQL that, once, lets the COMMIT of a transaction that
    ran a COPY reach the server and then, when the server's reply comes back (the transaction
    is committed), closes the client's connection instead of passing the reply on: the server
    stored the batch, the client never learns it."""

    def __init__(self, url: sa.URL) -> None:
        self.url = url
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.cuts = 0
        self._armed = True
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def client_url(self) -> str:
        query = {k: v for k, v in self.url.query.items() if k != "host"}
        return self.url.set(host="127.0.0.1", port=self.port, query={
            **query, "sslmode": "disable", "gssencmode": "disable"}).render_as_string(
            hide_password=False)

    def _server_socket(self) -> socket.socket:
        host = self.url.query.get("host") or self.url.host or "127.0.0.1"
        port = self.url.port or 5432
        if isinstance(host, str) and host.startswith("/"):       # the embedded server
            s = socket.socket(socket.AF_UNIX)
            s.connect(f"{host}/.s.PGSQL.{port}")
            return s
        return socket.create_connection((str(host), port))

    def _accept(self) -> None:
        while True:
            client, _ = self.listener.accept()
            server = self._server_socket()
            state = {"copy": False, "cut_next_commit_reply": False}
            threading.Thread(target=self._client_to_server, args=(client, server, state),
                             daemon=True).start()
            threading.Thread(target=self._server_to_client, args=(client, server, state),
                             daemon=True).start()

    def _client_to_server(self, client, server, state) -> None:
        try:
            while True:                     # startup: untyped messages (SSL/GSS requests first)
                head = _read(client, 8)
                length, code = struct.unpack(">ii", head)
                server.sendall(head + _read(client, length - 8))
                if code not in _SSL_OR_GSS_REQUEST:
                    break
            while True:
                kind = _read(client, 1)
                length = _read(client, 4)
                body = _read(client, struct.unpack(">i", length)[0] - 4)
                if kind == b"Q":                # psycopg2 sends BEGIN/COMMIT as simple queries
                    text = body.lstrip().upper()
                    if text.startswith(b"COPY POSITIONS"):
                        state["copy"] = True
                    elif text.startswith((b"BEGIN", b"ROLLBACK")):
                        state["copy"] = False
                    elif text.startswith(b"COMMIT"):
                        with self._lock:
                            if state["copy"] and self._armed:
                                self._armed = False
                                state["cut_next_commit_reply"] = True
                        state["copy"] = False
                server.sendall(kind + length + body)
        except OSError:
            _close(client, server)

    def _server_to_client(self, client, server, state) -> None:
        try:
            while True:
                kind = _read(server, 1)
                length = _read(server, 4)
                body = _read(server, struct.unpack(">i", length)[0] - 4)
                if kind == b"C" and body.startswith(b"COMMIT") and state["cut_next_commit_reply"]:
                    self.cuts += 1          # committed on the server; the client never hears
                    _close(client, server)
                    return
                client.sendall(kind + length + body)
        except OSError:
            _close(client, server)


def _read(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        got = sock.recv(n - len(data))
        if not got:
            raise ConnectionResetError("peer closed")
        data += got
    return data


def _close(*socks: socket.socket) -> None:
    for s in socks:
        try:
            s.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        s.close()


@pytest.fixture
def paris_slice(tmp_path) -> Path:
    path = tmp_path / "paris-slice.beast"
    path.write_bytes(need(PARIS_BEAST).read_bytes()[:SLICE_BYTES])
    return path


def _keys(rows: list[tuple]) -> list[tuple]:
    return [(r[1], r[0]) for r in rows]                 # (icao24, time)


def _replay_reference(settings, databases, path: Path) -> list[tuple]:
    """The rows one plain replay of ``path`` stores, in a database of their own."""
    url = databases.create()
    ingest_file(settings.replace(database_url=url), path, "beast", PARIS_START, progress=False)
    return stored_rows(url)


def test_batch_committed_whose_acknowledgement_is_lost_is_not_stored_twice(
        settings, db_url, databases, paris_slice, tmp_path):
    reference = _replay_reference(settings, databases, paris_slice)
    assert len(reference) > 3000
    proxy = CommitCutter(sa.engine.make_url(db_url))
    engine = sa.create_engine(proxy.client_url())
    writer = PositionWriter(engine, tmp_path / "journal", batch_rows=1000)
    stats = ingest_file(settings, paris_slice, "beast", PARIS_START, progress=False,
                        writer=writer)
    writer.close()
    engine.dispose()

    assert proxy.cuts == 1                   # a COMMIT reached the server, its reply did not
    assert writer.write_errors >= 1          # ... so the writer saw a failure and wrote again
    assert writer.rows_already_stored > 0    # ... rows the server had stored: not twice
    rows = stored_rows(db_url)
    assert len(set(_keys(rows))) == len(rows), "a position was stored twice"
    assert rows == reference                 # none lost, none changed
    assert writer.rows_written == stats.positions - writer.rows_already_stored
    assert not list((tmp_path / "journal").glob("positions-*"))


def test_journal_loaded_twice_stores_each_row_once(settings, db_url, paris_slice, tmp_path):
    journal = tmp_path / "journal"
    dead = sa.create_engine(f"postgresql+psycopg2://postgres@127.0.0.1:{_free_port()}/none",
                            connect_args={"connect_timeout": 2})
    writer = PositionWriter(dead, journal, batch_rows=500, buffer_max_rows=1000)
    stats = ingest_file(settings, paris_slice, "beast", PARIS_START, progress=False,
                        writer=writer)
    writer.close(timeout_s=10)
    files = sorted(journal.glob("positions-*.pgcopy"))
    assert files and writer.rows_journaled == stats.positions > 3000
    saved = tmp_path / "saved"
    shutil.copytree(journal, saved)

    good = sa.create_engine(db_url)
    _load_journal(good, journal)
    first = stored_rows(db_url)
    assert len(first) == stats.positions
    # As if the process had died after the journal's rows were committed but before its
    # files were deleted: the next start loads the same files again.
    for f in saved.iterdir():
        shutil.copy(f, journal / f.name)
    again = _load_journal(good, journal)
    assert again.rows_written == 0 and again.rows_already_stored == stats.positions
    assert stored_rows(db_url) == first
    good.dispose()


def _load_journal(engine: sa.Engine, journal: Path) -> PositionWriter:
    writer = PositionWriter(engine, journal)
    deadline = time.monotonic() + 30
    while list(journal.glob("positions-*")) and time.monotonic() < deadline:
        time.sleep(0.05)
    writer.close()
    assert not list(journal.glob("positions-*")), "journal not loaded"
    return writer


def test_capture_replayed_twice_stores_each_position_once(settings, db_url, paris_slice):
    first = ingest_file(settings, paris_slice, "beast", PARIS_START, progress=False)
    rows = stored_rows(db_url)
    assert first.rows_written == first.positions == len(rows) > 3000
    second = ingest_file(settings, paris_slice, "beast", PARIS_START, progress=False)
    assert second.positions == first.positions       # decoded again, all of them
    assert second.rows_written == 0                  # ... and none stored again
    assert stored_rows(db_url) == rows
    with sa.create_engine(db_url).connect() as conn:
        day = conn.execute(sa.text("SELECT positions FROM position_days")).scalar_one()
    assert day == len(rows)                          # the daily count saw each row once


def test_second_position_at_the_same_time_is_counted_not_stored(db_url, tmp_path):
    """Two frames of one aircraft read together get the same wall-clock time: the first
    position is stored, the second counted as conflicting (never silently dropped), and the
    rest of the batch is stored."""
    decoder = PositionDecoder(48.88, 2.42, 121.0)
    t0 = 1633608001.0
    decoder.add_position("4ca7b5", t0, 48.88, 2.42, 35000, False)
    decoder.add_position("4ca7b5", t0 + 1, 48.88, 2.421, 35000, False)
    decoder.add_position("4ca7b5", t0 + 1, 48.88, 2.422, 35000, False)    # same time
    decoder.add_position("3c6444", t0 + 1, 48.9, 2.5, 20000, False)
    data, count, days = decoder.take()
    assert count == 4
    engine = sa.create_engine(db_url)
    writer = PositionWriter(engine, tmp_path / "journal")
    writer.put(data, count, days)
    writer.close()
    assert (writer.rows_written, writer.rows_conflicting, writer.rows_already_stored) == (3, 1, 0)
    rows = stored_rows(db_url)
    assert [(r[1], r[0] - t0, r[3]) for r in rows] == [
        ("4ca7b5", 0.0, 2.42), ("3c6444", 1.0, 2.5), ("4ca7b5", 1.0, 2.421)]
    engine.dispose()


def test_upgrade_removes_positions_stored_twice_and_fills_the_daily_counts(databases):
    """A database of an earlier version may hold the same position twice (a lost
    acknowledgement before the key existed): the migration keeps the copy stored first."""
    url = databases.create(migrate_schema=False)
    engine = sa.create_engine(url)
    migrate.upgrade(engine, "0004")
    rows = [("2021-10-07 12:00:01+00", "4ca7b5", 48.88, 2.42, "default"),
            ("2021-10-07 12:00:02+00", "4ca7b5", 48.88, 2.43, "default"),
            ("2021-10-07 12:00:01+00", "4ca7b5", 48.88, 2.42, "other"),       # another receiver
            ("2021-10-08 00:00:01+00", "3c6444", 50.0, 8.5, "default")]
    with engine.begin() as conn:
        partitions.ensure(conn, [dt.date(2021, 10, 7), dt.date(2021, 10, 8)])
        for copy in ("first", "second"):                # every row stored twice
            conn.execute(sa.text(
                "INSERT INTO positions (time, icao24, latitude, longitude, receiver_id, "
                "callsign) VALUES (:t, :i, :lat, :lon, :r, :c)"),
                [{"t": t, "i": i, "lat": lat, "lon": lon, "r": r, "c": copy}
                 for t, i, lat, lon, r in rows])
    migrate.upgrade(engine)
    with engine.connect() as conn:
        kept = conn.execute(sa.text(
            "SELECT icao24, time, receiver_id, callsign FROM positions ORDER BY 2, 1, 3")).all()
        days = conn.execute(sa.text(
            "SELECT receiver_id, day, positions, newest_time FROM position_days "
            "ORDER BY 1, 2")).all()
    assert len(kept) == len(rows) and {r.callsign for r in kept} == {"first"}
    assert [(r, d.isoformat(), n, t.isoformat()) for r, d, n, t in days] == [
        ("default", "2021-10-07", 2, "2021-10-07T12:00:02+00:00"),
        ("default", "2021-10-08", 1, "2021-10-08T00:00:01+00:00"),
        ("other", "2021-10-07", 1, "2021-10-07T12:00:01+00:00")]
    engine.dispose()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_batch_the_database_refuses_is_kept_aside_and_the_writer_goes_on(db_url, tmp_path):
    """A refusal that is not a lost connection (here a CHECK constraint) cannot be cured by
    retrying: the batch goes to journal/rejected/ (never loaded automatically), is counted,
    and the next batches are stored - the writer does not stop with rows in memory."""
    engine = sa.create_engine(db_url)
    t0 = 1633608001.0
    with engine.begin() as c:
        partitions.ensure(c, {dt.date(2021, 10, 7)})
        c.execute(sa.text("ALTER TABLE positions ADD CONSTRAINT refuse_test "
                          "CHECK (icao24 <> 'bad000') NOT VALID"))
    try:
        writer = PositionWriter(engine, tmp_path / "journal", batch_rows=2)
        for icao, k in (("4ca7b5", 0), ("bad000", 1), ("3c6444", 2)):
            decoder = PositionDecoder(48.88, 2.42, 121.0)
            decoder.add_position(icao, t0 + 10 * k, 48.88, 2.42, 35000, False)
            decoder.add_position(icao, t0 + 10 * k + 1, 48.88, 2.421, 35000, False)
            data, count, days = decoder.take()
            writer.put(data, count, days)
            deadline = time.monotonic() + 10
            while writer.pending and time.monotonic() < deadline:
                time.sleep(0.05)
        writer.close()
        assert (writer.rows_written, writer.rows_rejected) == (4, 2)
        assert sorted({r[1] for r in stored_rows(db_url)}) == ["3c6444", "4ca7b5"]
        kept = list((tmp_path / "journal" / "rejected").glob("positions-*"))
        assert len(kept) == 1
        # The kept file loads as it is once the cause is gone, and nothing else is pending.
        assert not list((tmp_path / "journal").glob("positions-*"))
        with engine.begin() as c:
            c.execute(sa.text("ALTER TABLE positions DROP CONSTRAINT refuse_test"))
        shutil.copytree(tmp_path / "journal" / "rejected", tmp_path / "rejected-load")
        again = PositionWriter(engine, tmp_path / "rejected-load")
        again.close()
        assert {r[1] for r in stored_rows(db_url)} == {"3c6444", "4ca7b5", "bad000"}
    finally:
        with engine.begin() as c:
            c.execute(sa.text("ALTER TABLE positions DROP CONSTRAINT IF EXISTS refuse_test"))
        engine.dispose()
