"""Batched ``COPY positions FROM STDIN`` on a background thread, never losing accepted rows.

Rows arrive as blocks of COPY text lines (one string and its row count per block). A batch is
written when ``batch_rows`` rows are waiting or every second, as one ``copy_expert`` call on
the encoded text. While the database is unreachable rows stay in memory up to
``buffer_max_rows`` and writes are retried with exponential backoff (0.5 s doubling up to 30 s;
new rows do not cut a wait short); beyond that bound they spill to journal files in
``ADSB_DATA_DIR/journal``, which are loaded (and deleted) once the database answers again, also
on the next start.
"""

from __future__ import annotations

import datetime as dt
import io
import logging
import threading
import time
from collections import deque
from pathlib import Path
from typing import Iterable

import psycopg2
import psycopg2.extensions
import sqlalchemy as sa

from pipeline.db import partitions

log = logging.getLogger(__name__)

COLUMNS = ("time", "icao24", "latitude", "longitude", "altitude", "groundspeed", "track",
           "vertical_rate", "callsign", "on_ground", "receiver_id")
COPY_SQL = f"COPY positions ({', '.join(COLUMNS)}) FROM STDIN"
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
        self._chunks: deque[tuple[str, int]] = deque()     # (COPY text, rows in it)
        self._pending = 0
        self._days: set[dt.date] = set()
        self._known_days: set[dt.date] = set()
        self._cond = threading.Condition()
        self._stop = False
        self._conn = None
        self._db_ok = True
        self._thread = threading.Thread(target=self._run, name="position-writer", daemon=True)
        self._thread.start()

    # -- producer side --------------------------------------------------------------------------
    def put(self, text: str, rows: int, days: Iterable[dt.date]) -> None:
        """Queue ``rows`` COPY text lines (``text``, each ending in a newline) for writing."""
        if not rows:
            return
        with self._cond:
            self._days.update(days)
            self._chunks.append((text, rows))
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
                days = set(self._days)
            if chunks:
                if self._write(chunks, count, days):
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

    def _take(self) -> tuple[list[tuple[str, int]], int]:
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

    def _copy(self, source) -> None:
        """COPY from a text file object, or from a string sent in one piece."""
        conn = self._connection()
        try:
            with conn.cursor() as cur:
                if isinstance(source, str):
                    data = source.encode(psycopg2.extensions.encodings[conn.encoding])
                    cur.copy_expert(COPY_SQL, io.BytesIO(data), size=max(len(data), 8192))
                else:
                    cur.copy_expert(COPY_SQL, source)
            conn.commit()
        except BaseException:
            try:
                conn.rollback()
            except psycopg2.Error:
                conn.close()
            raise

    def _write(self, chunks: list[tuple[str, int]], count: int, days: set[dt.date]) -> bool:
        try:
            self._ensure_partitions(days)
            self._copy("".join([text for text, _ in chunks]))
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
        path = self.journal_dir / f"positions-{time.time_ns()}.copy"
        tmp = path.with_suffix(".tmp")
        count = sum(rows for _, rows in chunks)
        with open(tmp, "w", encoding="utf-8") as fh:
            for text, _ in chunks:
                fh.write(text)
        tmp.rename(path)
        self.rows_journaled += count
        log.error("in-memory buffer limit of %d rows reached while the database is unreachable: "
                  "%d rows written to the journal %s (loaded when the database is back)",
                  self.buffer_max_rows, count, path)

    def _replay_journal(self) -> None:
        if not self.journal_dir.is_dir():
            return
        for path in sorted(self.journal_dir.glob("positions-*.copy")):
            try:
                days = _days_in(path)
                self._ensure_partitions(days)
                with open(path, encoding="utf-8") as fh:
                    self._copy(fh)
            except (psycopg2.OperationalError, psycopg2.InterfaceError, sa.exc.OperationalError,
                    sa.exc.InterfaceError):
                self._conn = None
                return
            count = sum(1 for _ in open(path, encoding="utf-8"))
            path.unlink()
            self.rows_written += count
            log.warning("loaded %d journaled rows from %s", count, path)


def _days_in(path: Path) -> set[dt.date]:
    days = set()
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            days.add(dt.date.fromisoformat(line[:10]))
    return days
