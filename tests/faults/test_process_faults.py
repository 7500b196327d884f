"""Process faults: SIGKILL of a live ingest mid-batch loses at most the unflushed batch."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import pytest

from conftest import PARIS_BEAST, need
from pipeline.beast_server import BeastServer
from test_service import chunks, positions, replayed_positions, service_env

BATCH_ROWS = 2000


@pytest.mark.slow
def test_sigkill_of_ingest_loses_at_most_the_unflushed_batch(databases, tmp_path):
    data = need(PARIS_BEAST).read_bytes()
    live_url, replay_url = databases.create(), databases.create()
    server = BeastServer(chunks(data, per_second=25), speed=1.0, chunk_frames=5).start()
    env = service_env(live_url, tmp_path, server.port, 0)
    env["ADSB_BATCH_ROWS"] = str(BATCH_ROWS)
    proc = subprocess.Popen([sys.executable, "-m", "pipeline.cli", "ingest", "--live"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while server.bytes_sent < 1_000_000 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert server.bytes_sent >= 1_000_000
        server.stop()
        sent = data[:server.bytes_sent]
        time.sleep(0.3)                       # mid-batch: rows decoded, not all flushed
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
        server.stop()
    expected, stored = replayed_positions(sent, replay_url, tmp_path), positions(live_url)
    lost = sum((expected - stored).values())
    print(f"\nSIGKILL mid-batch: {sum(expected.values())} positions sent, {lost} lost "
          f"(bound: one batch of {BATCH_ROWS} rows or one second of traffic)")
    assert sum((stored - expected).values()) == 0          # nothing invented or duplicated
    # Rows are flushed every second or every BATCH_ROWS rows: what a kill can take is the
    # batch being filled plus the one being written.
    assert lost <= 2 * BATCH_ROWS
