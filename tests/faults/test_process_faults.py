"""Process faults: SIGKILL of a live ingest while rows are in flight.

The receiver keeps sending; the ingest is killed the moment its own counters (the Prometheus
endpoint) show decoded rows that are not committed yet, so the kill lands where the loss bound
matters. What is lost is measured against a replay of exactly the bytes the receiver sent."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time

import pytest

from conftest import PARIS_BEAST, need
from pipeline.service.beast_server import BeastServer
from test_service import chunks, free_port, get, positions, replayed_positions, service_env

BATCH_ROWS = 2000
PER_SECOND = 25                 # 4 KiB pieces of the capture a second: ~2,200 positions/s
_METRIC = re.compile(r"^adsb_ingest_(\w+?)(?:_total)? (\S+)$", re.M)


def ingest_counters(port: int) -> dict[str, float] | None:
    try:
        status, body = get(f"http://127.0.0.1:{port}/metrics")
    except OSError:
        return None                                  # not serving yet
    return {k: float(v) for k, v in _METRIC.findall(body)} if status == 200 else None


@pytest.mark.slow
def test_sigkill_with_rows_in_flight_loses_at_most_two_batches(databases, tmp_path):
    data = need(PARIS_BEAST).read_bytes()
    live_url, replay_url = databases.create(), databases.create()
    server = BeastServer(chunks(data, per_second=PER_SECOND), speed=1.0, chunk_frames=5).start()
    metrics_port = free_port()
    env = service_env(live_url, tmp_path, server.port, metrics_port)
    env["ADSB_BATCH_ROWS"] = str(BATCH_ROWS)
    proc = subprocess.Popen([sys.executable, "-m", "pipeline.cli", "ingest", "--live"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    at_kill = None
    try:
        deadline = time.monotonic() + 90
        # Well into the stream, then at the first scrape that shows at least three quarters
        # of a batch decoded and not committed (waiting for COPY, or being copied).
        while time.monotonic() < deadline:
            counters = ingest_counters(metrics_port)
            if (counters and server.bytes_sent > 600_000
                    and counters["positions"] - counters["rows_written"] >= 0.75 * BATCH_ROWS):
                proc.send_signal(signal.SIGKILL)
                at_kill = counters
                break
            time.sleep(0.02)
        proc.wait(10)
        sent = data[:server.bytes_sent]          # nothing more reaches a dead process
    finally:
        if proc.poll() is None:
            proc.kill()
        server.stop()
    assert at_kill is not None, "the ingest never showed unflushed rows"
    assert proc.returncode == -signal.SIGKILL

    expected, stored = replayed_positions(sent, replay_url, tmp_path), positions(live_url)
    lost = sum((expected - stored).values())
    unflushed = at_kill["positions"] - at_kill["rows_written"]
    report = (f"SIGKILL with {unflushed:.0f} decoded rows not committed at the last scrape "
              f"({at_kill['rows_buffered']:.0f} waiting for COPY): {lost} of "
              f"{sum(expected.values())} positions lost (bound 2 x ADSB_BATCH_ROWS = "
              f"{2 * BATCH_ROWS})")
    print("\n" + report)
    assert sum((stored - expected).values()) == 0, report     # nothing invented or duplicated
    # The kill did land with rows in flight: they are gone, and nothing committed is.
    assert lost >= BATCH_ROWS // 2, report
    assert sum(stored.values()) >= at_kill["rows_written"], report
    # Rows are committed every second or as soon as ADSB_BATCH_ROWS wait: a kill loses the
    # batch being filled plus the one being written (with the database keeping up), and the
    # few positions of frames not yet read or decoded.
    assert lost <= 2 * BATCH_ROWS, report
