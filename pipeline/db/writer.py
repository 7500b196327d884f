"""Batched ``COPY positions FROM STDIN`` on a background thread, never losing accepted rows.

Rows arrive as blocks of binary COPY rows (``pipeline.db.rows``; one bytes object, its row
count and its days per block). A batch is written when ``batch_rows`` rows are waiting or every
second, as one ``copy_expert`` call. While the database is unreachable rows stay in memory up
to ``buffer_max_rows`` and writes are retried with exponential backoff (0.5 s doubling up to
30 s; new rows do not cut a wait short); beyond that bound they spill to journal files in
``ADSB_DATA_DIR/journal`` (complete binary COPY streams, their days in the file name), which
are loaded (and deleted) once the database answers again, also on the next start. Text COPY
journals of earlier versions (``*.copy``) are loaded too.
"""

from __future__ import annotations

import datetime as dt
import io
import logging
import os
import threading
import time
from collections import deque
from pathlib import Path
from typing import Iterable

import psycopg2
import sqlalchemy as sa

from pipeline.db import partitions
from pipeline.db.rows import COPY_SQL, HEADER, TRAILER

log = logging.getLogger(__name__)

# Journals written by earlier versions: COPY text lines in this column order.
_TEXT_COLUMNS = ("time", "icao24", "latitude", "longitude", "altitude", "groundspeed", "track",
                 "vertical_rate", "callsign", "on_ground", "receiver_id")
_TEXT_COPY_SQL = f"COPY positions ({', '.join(_TEXT_COLUMNS)}) FROM STDIN"
_RETRY_FIRST_S = 0.5
_RETRY_MAX_S = 30.0


class PositionWriter:
    """Thread-safe: ``put()`` from the decoding thread, COPY on the writer's own thread."""

    def __init__(self, engine: sa.Engine, journal_dir: Path, *, batch_rows: int = 5000,
                 buffer_max_rows: int = 2_000_000, flush_interval_s: float = 1.0) -> None:
        self.engine = engine
        self.journal_dir = Path(journal_dir)
        self.batch_rows = batch_rows
        self.buffer_max_rows = buffer_max_rows
        self.flush_interval_s = flush_interval_s
        self.rows_written = 0
        self.rows_journaled = 0
        self.write_errors = 0
        self.oldest_pending: float | None = None    # monotonic time the oldest waiting row came
        self._chunks: deque[tuple[bytes, int, frozenset[dt.date]]] = deque()  # rows, count, days
        self._pending = 0
        self._known_days: set[dt.date] = set()
        self._cond = threading.Condition()
        self._stop = False
        self._conn = None
        self._db_ok = True
        self._thread = threading.Thread(target=self._run, name="position-writer", daemon=True)
        self._thread.start()

    # -- producer side --------------------------------------------------------------------------
    def put(self, data: bytes, rows: int, days: Iterable[dt.date]) -> None:
        """Queue ``rows`` binary COPY rows (``data``, without header and trailer) whose times
        fall on ``days`` for writing."""
        if not rows:
            return
        with self._cond:
            self._chunks.append((data, rows, frozenset(days)))
            self._pending += rows
            if self.oldest_pending is None:
                self.oldest_pending = time.monotonic()
            # While the database fails, the writer waits out its backoff: new rows only pile
            # up (and spill to the journal beyond the bound), they do not bring a retry forward.
            if self._pending >= self.batch_rows and self._db_ok:
                self._cond.notify()
            overflow = self._pending > self.buffer_max_rows and not self._db_ok
        if overflow:
            self._spill()

    @property
    def pending(self) -> int:
        return self._pending

    @property
    def database_ok(self) -> bool:
        """False while the last write failed (rows are being buffered or journaled)."""
        return self._db_ok

    @property
    def write_lag_s(self) -> float:
        """Age of the oldest row not yet committed (0 when everything is written)."""
        oldest = self.oldest_pending
        return 0.0 if oldest is None else time.monotonic() - oldest

    def close(self, timeout_s: float = 60.0) -> None:
        """Write everything (or journal it if the database stays unreachable), then stop."""
        with self._cond:
            self._stop = True
            self._cond.notify()
        self._thread.join(timeout_s)
        if self._pending:
            log.error("database still unreachable at shutdown: %d rows go to the journal in %s",
                      self._pending, self.journal_dir)
            self._spill(everything=True)
        if self._conn is not None:
            try:
                self._conn.close()
            except psycopg2.Error:
                pass

    # -- writer thread --------------------------------------------------------------------------
    def _run(self) -> None:
        delay = _RETRY_FIRST_S
        self._replay_journal()
        while True:
            with self._cond:
                if not self._stop and self._pending < self.batch_rows:
                    self._cond.wait(self.flush_interval_s)
                stopping = self._stop
                chunks, count = self._take()
            if chunks:
                if self._write(chunks, count):
                    delay = _RETRY_FIRST_S
                    self._replay_journal()
                else:
                    with self._cond:
                        # Back in front, in order: nothing accepted is dropped.
                        self._chunks.extendleft(reversed(chunks))
                        self._pending += count
                    if stopping:
                        return          # close() journals what is left
                    # Only close() ends this wait early (put() does not notify while failing).
                    with self._cond:
                        if not self._stop:
                            self._cond.wait(delay)
                    delay = min(delay * 2, _RETRY_MAX_S)
                    continue
            if stopping and not self._pending:
                return

    def _take(self) -> tuple[list[tuple[bytes, int, frozenset[dt.date]]], int]:
        chunks, count = [], 0
        while self._chunks and count < self.batch_rows:
            chunk = self._chunks.popleft()
            chunks.append(chunk)
            count += chunk[1]
        self._pending -= count
        if not self._pending:
            self.oldest_pending = None
        return chunks, count

    def _connection(self):
        if self._conn is None or self._conn.closed:
            self._conn = self.engine.raw_connection().driver_connection
        return self._conn

    def _ensure_partitions(self, days: set[dt.date]) -> None:
        new = days - self._known_days
        if new:
            with self.engine.begin() as conn:
                partitions.ensure(conn, new)
            self._known_days |= new

    def _copy(self, source, sql: str = COPY_SQL) -> None:
        """COPY from a file object, or from bytes sent in one piece."""
        conn = self._connection()
        try:
            with conn.cursor() as cur:
                if isinstance(source, bytes):
                    cur.copy_expert(sql, io.BytesIO(source), size=max(len(source), 8192))
                else:
                    cur.copy_expert(sql, source)
            conn.commit()
        except BaseException:
            try:
                conn.rollback()
            except psycopg2.Error:
                conn.close()
            raise

    def _write(self, chunks: list[tuple[bytes, int, frozenset[dt.date]]], count: int) -> bool:
        try:
            self._ensure_partitions(_days_of(chunks))
            self._copy(b"".join([HEADER, *[data for data, _, _ in chunks], TRAILER]))
        except (psycopg2.OperationalError, psycopg2.InterfaceError, sa.exc.OperationalError,
                sa.exc.InterfaceError) as exc:
            self.write_errors += 1
            if self._db_ok:
                log.warning("database unreachable, keeping %d rows buffered (limit %d, then the "
                            "journal in %s): %s", self._pending + count, self.buffer_max_rows,
                            self.journal_dir, str(exc).strip().splitlines()[0] if str(exc) else exc)
            self._db_ok = False
            self._conn = None
            return False
        if not self._db_ok:
            log.warning("database reachable again; writing %d buffered rows", self._pending + count)
        self._db_ok = True
        self.rows_written += count
        return True

    # -- journal --------------------------------------------------------------------------------
    def _spill(self, everything: bool = False) -> None:
        with self._cond:
            keep = 0 if everything else self.buffer_max_rows // 2
            chunks = []
            while self._chunks and self._pending > keep:
                chunk = self._chunks.popleft()
                chunks.append(chunk)
                self._pending -= chunk[1]
            if not self._pending:
                self.oldest_pending = None
        if not chunks:
            return
        self.journal_dir.mkdir(parents=True, exist_ok=True)
        count = sum(rows for _, rows, _ in chunks)
        path = self.journal_dir / _journal_file_name(time.time_ns(), count, _days_of(chunks))
        tmp = path.with_suffix(".tmp")
        with open(tmp, "wb") as fh:
            fh.write(HEADER)
            for data, _, _ in chunks:
                fh.write(data)
            fh.write(TRAILER)
            fh.flush()
            os.fsync(fh.fileno())
        tmp.rename(path)
        self.rows_journaled += count
        log.error("in-memory buffer limit of %d rows reached while the database is unreachable: "
                  "%d rows written to the journal %s (loaded when the database is back)",
                  self.buffer_max_rows, count, path)

    def _replay_journal(self) -> None:
        if not self.journal_dir.is_dir():
            return
        for path in sorted(self.journal_dir.glob("positions-*")):
            if path.suffix == ".pgcopy":
                (count, days), sql = _read_journal_name(path), COPY_SQL
            elif path.suffix == ".copy":
                (count, days), sql = _read_text_journal(path), _TEXT_COPY_SQL
            else:
                continue                # a .tmp file whose write was cut short
            try:
                self._ensure_partitions(days)
                with open(path, "rb") as fh:
                    self._copy(fh, sql)
            except (psycopg2.OperationalError, psycopg2.InterfaceError, sa.exc.OperationalError,
                    sa.exc.InterfaceError):
                self._conn = None
                return
            path.unlink()
            self.rows_written += count
            log.warning("loaded %d journaled rows from %s", count, path)


def _days_of(chunks: list[tuple[bytes, int, frozenset[dt.date]]]) -> set[dt.date]:
    return set().union(*[days for _, _, days in chunks])


def _journal_file_name(stamp_ns: int, rows: int, days: set[dt.date]) -> str:
    """``positions-<ns>-<rows>-<YYYYMMDD>_<YYYYMMDD>.pgcopy``: the row count and the days (for
    the partitions) without reading the binary rows back."""
    return (f"positions-{stamp_ns}-{rows}-"
            f"{'_'.join(d.strftime('%Y%m%d') for d in sorted(days))}.pgcopy")


def _read_journal_name(path: Path) -> tuple[int, set[dt.date]]:
    """Row count and days of a binary journal file, from its name."""
    _, _, rows, days = path.stem.split("-")
    return int(rows), {dt.datetime.strptime(d, "%Y%m%d").date() for d in days.split("_") if d}


def _read_text_journal(path: Path) -> tuple[int, set[dt.date]]:
    """Row count and days of a text journal file of an earlier version (one line a row)."""
    count, days = 0, set()
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            count += 1
            days.add(dt.date.fromisoformat(line[:10]))
    return count, days
