"""Batched ``COPY positions FROM STDIN`` on a background thread, never losing accepted rows.

Rows arrive as blocks of binary COPY rows (``pipeline.db.rows``; one bytes object, its row
count and its days per block). A batch is written when ``batch_rows`` rows are waiting or every
second, as one ``copy_expert`` call. While the database is unreachable (or up but slower than
the receiver) rows stay in memory up to ``buffer_max_rows``; failed writes are retried with
exponential backoff (0.5 s doubling up to 30 s; new rows do not cut a wait short). Beyond
that bound the oldest rows spill to journal files in
``ADSB_DATA_DIR/journal`` (complete binary COPY streams, their days in the file name), which
are loaded (and deleted) once the database answers again, also on the next start. Text COPY
journals of earlier versions (``*.copy``) are loaded too.

Exactly once: positions are unique on (icao24, time, receiver_id) (migration 0005). A batch is
first COPied straight into ``positions``, the fast path nearly every batch takes. If any of its
rows is stored already (the server committed a batch whose acknowledgement the connection
lost, so the writer sent it again; a journal loaded before its file could be deleted; a
capture replayed twice) that COPY fails as a whole on the unique index and the batch is loaded
again through a temporary table and ``INSERT ... ON CONFLICT DO NOTHING``: only the rows not
stored yet are added, in one transaction.
"""

from __future__ import annotations

import contextlib
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
from psycopg2 import errors as pg_errors

from pipeline.db import partitions
from pipeline.db.rows import COPY_SQL, HEADER, TRAILER

log = logging.getLogger(__name__)

# Journals written by earlier versions: COPY text lines in this column order.
_TEXT_COLUMNS = ("time", "icao24", "latitude", "longitude", "altitude", "groundspeed", "track",
                 "vertical_rate", "callsign", "on_ground", "receiver_id")
_TEXT_COPY_SQL = f"COPY positions ({', '.join(_TEXT_COLUMNS)}) FROM STDIN"
_RETRY_FIRST_S = 0.5
_RETRY_MAX_S = 30.0
# After the journal could not be written (disk full), wait this long before trying again: every
# read of the receiver would otherwise try (and log) once more.
_SPILL_RETRY_S = 10.0
# Batches the database refused (not a lost connection), beside the journal; never loaded
# automatically.
REJECTED_DIR = "rejected"


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
        # Rows of a batch written again that were stored already (not stored twice), and rows
        # not stored because another position of the same aircraft has the same time.
        self.rows_already_stored = 0
        self.rows_conflicting = 0
        self.rows_rejected = 0          # in batches the database refused (kept in REJECTED_DIR)
        self.write_errors = 0
        self.journal_errors = 0          # spills the journal's disk refused (rows kept in memory)
        self._spill_retry_at = 0.0
        self.oldest_pending: float | None = None    # monotonic time the oldest waiting row came
        self._chunks: deque[tuple[bytes, int, frozenset[dt.date]]] = deque()  # rows, count, days
        self._pending = 0
        self._known_days: set[dt.date] = set()
        self._cond = threading.Condition()
        self._stop = False
        self._conn: sa.PoolProxiedConnection | None = None
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
            # Also while the database is up but slower than the receiver (a long lock, a disk
            # that stalls): memory stays bounded either way. The writer thread loads the
            # journal after each batch it writes, before the rows still in memory, so rows
            # reach the table in time order.
            overflow = (self._pending > self.buffer_max_rows
                        and time.monotonic() >= self._spill_retry_at)
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
            if self._pending:
                log.error("%d rows lost: the database is unreachable and the journal in %s "
                          "cannot be written", self._pending, self.journal_dir)
        if self.rows_already_stored or self.rows_conflicting:
            log.warning("%d rows were stored already (a batch written again after a lost "
                        "acknowledgement, or a journal or capture loaded twice) and were not "
                        "stored twice; %d rows not stored because another position of the same "
                        "aircraft and time is", self.rows_already_stored, self.rows_conflicting)
        if self._conn is not None:
            try:
                self._conn.close()
            except (psycopg2.Error, sa.exc.DBAPIError):
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
                if not self._db_ok:
                    # Journaled rows are older than those in memory: after an outage they go
                    # first, so rows reach the table in time order (the flight pass closes a
                    # flight by the newest stored position; newer rows stored before older
                    # ones would close flights those older rows continue).
                    self._replay_journal()
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
        # The pool's handle is kept, not only the driver connection in it: once the handle is
        # gone the pool takes the connection back and may lend it out while it is in use here.
        raw = None if self._conn is None else self._conn.driver_connection
        if raw is None or raw.closed:
            self._drop_connection()
            self._conn = self.engine.raw_connection()
            raw = self._conn.driver_connection
        return raw

    def _drop_connection(self) -> None:
        """Forget a connection that failed: closed, and never lent out by the pool again."""
        if self._conn is not None:
            self._conn.invalidate()
            self._conn = None

    def _ensure_partitions(self, days: set[dt.date]) -> None:
        new = days - self._known_days
        if new:
            with self.engine.begin() as conn:
                partitions.ensure(conn, new)
            self._known_days |= new

    def _copy(self, source, days: set[dt.date], sql: str = COPY_SQL) -> int:
        """COPY from a file object, or from bytes sent in one piece, in one transaction; rows
        stored already are skipped (see the module's docstring). ``days``: the days of the
        rows. Returns the rows added."""
        conn = self._connection()
        try:
            with conn.cursor() as cur:
                _copy_expert(cur, sql, source)
                added = cur.rowcount
            conn.commit()
            return added
        except pg_errors.UniqueViolation:
            conn.rollback()
        except BaseException:
            _abandon(conn)
            raise
        try:
            added = self._copy_new_rows(conn, source, days, sql)
            conn.commit()
            return added
        except BaseException:
            _abandon(conn)
            raise

    def _copy_new_rows(self, conn, source, days: set[dt.date], sql: str) -> int:
        """The rows of a COPY that are not stored yet: loaded into a temporary table, then
        inserted with ON CONFLICT DO NOTHING (the caller commits). Returns the rows added."""
        columns = sql[sql.index("(") + 1:sql.index(")")]
        with conn.cursor() as cur:
            cur.execute("CREATE TEMPORARY TABLE positions_load (LIKE positions INCLUDING DEFAULTS) "
                        "ON COMMIT DROP")
            _copy_expert(cur, sql.replace("COPY positions ", "COPY positions_load ", 1), source)
            loaded = cur.rowcount
            # Statistics for the join below: without them the planner guesses the size of a
            # temporary table and may hash the whole positions table instead of probing it.
            cur.execute("ANALYZE positions_load")
            cur.execute(f"INSERT INTO positions ({columns}) SELECT {columns} FROM positions_load "
                        "ON CONFLICT (icao24, time, receiver_id) DO NOTHING")
            added = cur.rowcount
            conflicting = 0
            if added < loaded:
                # Rows whose key is stored with another position: the same aircraft heard
                # twice within one time stamp (frames read together share a wall-clock time).
                in_days, params = partitions.time_filter(sorted(days), "p.time", "%({})s")
                cur.execute(
                    "SELECT count(*) FROM positions_load l JOIN positions p "
                    "USING (icao24, time, receiver_id) "
                    "WHERE (p.latitude, p.longitude) IS DISTINCT FROM (l.latitude, l.longitude) "
                    f"AND {in_days}", params)
                conflicting = cur.fetchone()[0]
        skipped = loaded - added - conflicting
        self.rows_already_stored += skipped
        self.rows_conflicting += conflicting
        # Once per batch at INFO (a capture replayed twice meets this in every batch); close()
        # sums them up.
        log.info("%d of %d rows of a batch stored already, not stored twice (%d in all); %d "
                 "with another position of the same aircraft and time (%d in all)", skipped,
                 loaded, self.rows_already_stored, conflicting, self.rows_conflicting)
        return added

    def _write(self, chunks: list[tuple[bytes, int, frozenset[dt.date]]], count: int) -> bool:
        try:
            days = _days_of(chunks)
            self._ensure_partitions(days)
            added = self._copy(b"".join([HEADER, *[data for data, _, _ in chunks], TRAILER]),
                               days)
        except (psycopg2.OperationalError, psycopg2.InterfaceError, sa.exc.OperationalError,
                sa.exc.InterfaceError) as exc:
            self.write_errors += 1
            if self._db_ok:
                log.warning("database unreachable, keeping %d rows buffered (limit %d, then the "
                            "journal in %s): %s", self._pending + count, self.buffer_max_rows,
                            self.journal_dir, str(exc).strip().splitlines()[0] if str(exc) else exc)
            self._db_ok = False
            self._drop_connection()
            return False
        except (psycopg2.Error, sa.exc.DBAPIError) as exc:
            # The server answered but refused the batch (a constraint, a value it cannot take):
            # retrying cannot help and must not stop the writer, so the batch goes to a file
            # beside the journal, never loaded automatically, for the operator to inspect and
            # load once the cause is fixed. Nothing accepted is dropped.
            self.write_errors += 1
            self._drop_connection()
            return self._keep_rejected(chunks, count, exc)
        if not self._db_ok:
            log.warning("database reachable again; writing %d buffered rows", self._pending + count)
        self._db_ok = True
        self.rows_written += added
        return True

    def _keep_rejected(self, chunks: list[tuple[bytes, int, frozenset[dt.date]]], count: int,
                       exc: BaseException) -> bool:
        """Write a refused batch to ``journal/rejected/``; False (keep it buffered, retry) if
        even that fails."""
        folder = self.journal_dir / REJECTED_DIR
        path = folder / _journal_file_name(time.time_ns(), count, _days_of(chunks))
        try:
            folder.mkdir(parents=True, exist_ok=True)
            with open(path, "wb") as fh:
                fh.write(b"".join([HEADER, *[data for data, _, _ in chunks], TRAILER]))
                fh.flush()
                os.fsync(fh.fileno())
        except OSError as disk:
            log.error("the database refused a batch of %d rows (%s) and it cannot be kept in %s "
                      "(%s): it stays in memory and is retried", count, _first_line(exc), folder,
                      disk)
            return False
        self.rows_rejected += count
        log.error("the database refused a batch of %d rows (%s): kept in %s; load it with "
                  "\\copy positions FROM ... (FORMAT binary) once the cause is fixed", count,
                  _first_line(exc), path)
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
        count = sum(rows for _, rows, _ in chunks)
        path = self.journal_dir / _journal_file_name(time.time_ns(), count, _days_of(chunks))
        tmp = path.with_suffix(".tmp")
        try:
            self.journal_dir.mkdir(parents=True, exist_ok=True)
            with open(tmp, "wb") as fh:
                fh.write(HEADER)
                for data, _, _ in chunks:
                    fh.write(data)
                fh.write(TRAILER)
                fh.flush()
                os.fsync(fh.fileno())
            tmp.rename(path)
        except OSError as exc:
            # A full (or broken) journal disk must not lose the rows taken out of the buffer,
            # nor end the ingest: they go back in front, in order, and stay in memory beyond
            # the bound until the database or the disk takes them.
            with contextlib.suppress(OSError):
                tmp.unlink(missing_ok=True)
            with self._cond:
                self._chunks.extendleft(reversed(chunks))
                self._pending += count
                if self.oldest_pending is None:
                    self.oldest_pending = time.monotonic()
            self.journal_errors += 1
            self._spill_retry_at = time.monotonic() + _SPILL_RETRY_S
            log.error("cannot write the journal in %s (%s): keeping %d rows in memory beyond "
                      "the limit of %d until the database or the disk takes them", self.journal_dir,
                      exc, self._pending, self.buffer_max_rows)
            return
        self.rows_journaled += count
        why = ("while the database is unreachable" if not self._db_ok
               else "while the database is slower than the receiver")
        log.error("in-memory buffer limit of %d rows reached %s: %d rows written to the journal "
                  "%s (loaded when the database takes them)", self.buffer_max_rows, why, count,
                  path)

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
                    added = self._copy(fh, days, sql)
            except (psycopg2.OperationalError, psycopg2.InterfaceError, sa.exc.OperationalError,
                    sa.exc.InterfaceError):
                self._drop_connection()
                return
            path.unlink()
            self.rows_written += added
            log.warning("loaded %d journaled rows from %s (%d added)", count, path, added)


def _copy_expert(cur, sql: str, source) -> None:
    """``source``: bytes, sent in one piece, or a file object, read from its start (a COPY
    that met a stored row is sent again)."""
    if isinstance(source, bytes):
        cur.copy_expert(sql, io.BytesIO(source), size=max(len(source), 8192))
    else:
        source.seek(0)
        cur.copy_expert(sql, source)


def _abandon(conn) -> None:
    """Roll back after a failure; a connection that cannot even do that is closed."""
    try:
        conn.rollback()
    except psycopg2.Error:
        conn.close()


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


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
