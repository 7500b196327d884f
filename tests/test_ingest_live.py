"""Live ingest from a TCP receiver that drops the connection twice mid-stream."""

from __future__ import annotations

import socket
import threading
import time

import pytest

from _ingest_support import same_rows, stored_rows
from conftest import PARIS_BEAST, PARIS_START, need
from pipeline.receiver.ingest import IngestStats, ingest_file, run_live

SUBSET_BYTES = 1_200_000


class DroppingReceiver:
    """Serves ``data`` like readsb on port 30005, but closes the connection after each cut
    offset (in the middle of a frame); the next connection resumes at the start of that frame,
    as a real receiver would send its next frames."""

    def __init__(self, data: bytes, cuts: list[tuple[int, int]]) -> None:
        self.data, self.cuts = data, list(cuts)
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.connections = 0
        self.done = threading.Event()
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        offset = 0
        while offset < len(self.data):
            conn, _ = self.server.accept()
            self.connections += 1
            cut, resume = self.cuts.pop(0) if self.cuts else (len(self.data), len(self.data))
            with conn:
                for i in range(offset, cut, 32768):
                    conn.sendall(self.data[i:min(i + 32768, cut)])
            offset = resume
        self.done.set()
        conn, _ = self.server.accept()   # keep the last link open and silent
        self.done.wait(60)


def _ingest_live(settings, server: DroppingReceiver, clock: str, until_bytes: int,
                 timeout_s: float):
    """The live ingest connected to ``server`` until it has read ``until_bytes``, then stopped
    as SIGTERM stops it. Returns (its settings, its stats)."""
    live = settings.replace(receiver_host="127.0.0.1", receiver_port=server.port,
                            receiver_format="beast", receiver_clock=clock,
                            receiver_timeout_s=5.0)
    stop = threading.Event()
    stats = IngestStats("beast")
    worker = threading.Thread(target=run_live, args=(live, stop), kwargs={"stats": stats})
    worker.start()
    deadline = time.monotonic() + timeout_s
    while stats.bytes < until_bytes and time.monotonic() < deadline:
        time.sleep(0.1)
    stop.set()
    worker.join(60)
    assert not worker.is_alive()
    return live, stats


def _frame_start(data: bytes, near: int) -> int:
    """Offset of a frame marker (0x1a followed by '1'/'2'/'3') at or after ``near``."""
    i = near
    while not (data[i] == 0x1A and data[i + 1] in b"123" and data[i - 1] != 0x1A):
        i += 1
    return i


@pytest.mark.slow
def test_reconnects_and_stores_every_position(settings, databases, tmp_path):
    data = need(PARIS_BEAST).read_bytes()[:SUBSET_BYTES]
    data = data[:_frame_start(data, len(data) - 100)]
    cuts = []
    for fraction in (0.3, 0.7):
        start = _frame_start(data, int(len(data) * fraction))
        cuts.append((start + 9, start))      # 9 bytes into a frame, then resend that frame
    server = DroppingReceiver(data, cuts)
    live, stats = _ingest_live(settings, server, "counter", len(data) + 18, 120)
    assert server.connections == 3 and stats.reconnects == 2
    assert stats.bytes == len(data) + 18

    # The same frames replayed from a file, with the same decoder, are the reference.
    reference_db = databases.create()
    path = tmp_path / "delivered.beast"
    path.write_bytes(data)
    ingest_file(settings.replace(database_url=reference_db), path, "beast", PARIS_START,
                progress=False)
    expected = stored_rows(reference_db)
    got = stored_rows(live.database_url)
    assert len(expected) > 15_000
    # Live times are anchored at the first frame's receive time: compare relative times.
    shift = got[0][0] - expected[0][0]
    shifted = [(r[0] - shift,) + tuple(r[1:]) for r in got]
    matched, diffs = same_rows(expected, shifted, time_tol=1e-3)
    assert not diffs[:5] and matched == len(expected) == len(got)


@pytest.mark.slow
def test_wall_clock_keeps_every_position_of_a_burst(settings):
    """In wall-clock mode the messages of one read share no stamp: a burst holding several
    positions of one aircraft (here minutes of traffic arriving in seconds) stores them all,
    none refused as a second position at the same aircraft and time."""
    data = need(PARIS_BEAST).read_bytes()[:400_000]
    data = data[:_frame_start(data, len(data) - 100)]
    live, stats = _ingest_live(settings, DroppingReceiver(data, []), "wall", len(data), 60)
    rows = stored_rows(live.database_url)
    writer = stats.writer
    assert writer is not None and len(rows) > 3000
    assert writer.rows_conflicting == 0 and len(rows) == writer.rows_written
    by_aircraft: dict[str, list[float]] = {}
    for r in rows:
        by_aircraft.setdefault(r[1], []).append(r[0])
    assert all(len(set(ts)) == len(ts) for ts in by_aircraft.values())
