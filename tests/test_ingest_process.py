"""The ingest command as a user runs it: a separate process, no TensorFlow, clean stop."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time

from _ingest_support import stored_rows
from conftest import PARIS_BEAST, SAMPLE_BEAST, need

CHECK_NO_TF = """
import sys
from pipeline import cli
rc = cli.main(sys.argv[1:])
heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'keras'))
print('HEAVY', heavy)
sys.exit(rc or (3 if heavy else 0))
"""


def _env(db_url: str, tmp_path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(ADSB_DATABASE_URL=db_url, ADSB_DATA_DIR=str(tmp_path / "data"),
               ADSB_RECEIVER_LAT="48.88", ADSB_RECEIVER_LON="2.42", ADSB_RANGE_KM="121")
    return env


def test_file_ingest_never_imports_tensorflow(db_url, tmp_path):
    proc = subprocess.run(
        [sys.executable, "-c", CHECK_NO_TF, "ingest", str(need(SAMPLE_BEAST)), "--no-progress",
         "--start-time", "2021-10-07T12:00:01Z"],
        env=_env(db_url, tmp_path), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr + proc.stdout
    assert "HEAVY []" in proc.stdout
    assert "frames 239" in proc.stderr


def test_missing_file_and_bad_arguments_exit_2(db_url, tmp_path):
    for args in (["ingest", str(tmp_path / "absent.beast")], ["ingest"]):
        proc = subprocess.run([sys.executable, "-m", "pipeline.cli", *args],
                              env=_env(db_url, tmp_path), capture_output=True, text=True,
                              timeout=120)
        assert proc.returncode == 2, proc.stderr
        assert "ingest:" in proc.stderr


def test_live_ingest_stops_on_sigterm_and_flushes(db_url, tmp_path):
    data = need(PARIS_BEAST).read_bytes()[:300_000]
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]
    sent = threading.Event()

    def serve():
        conn, _ = server.accept()
        conn.sendall(data)
        sent.set()
        time.sleep(60)                  # link stays open: only the signal ends the ingest
        conn.close()

    threading.Thread(target=serve, daemon=True).start()
    env = _env(db_url, tmp_path)
    env.update(ADSB_RECEIVER_HOST="127.0.0.1", ADSB_RECEIVER_PORT=str(port),
               ADSB_RECEIVER_CLOCK="counter")
    proc = subprocess.Popen([sys.executable, "-c", CHECK_NO_TF, "ingest", "--live"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert sent.wait(60)
    time.sleep(3)                       # let it decode what it received
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert "HEAVY []" in out
    rows = stored_rows(db_url)
    assert len(rows) > 1000
    assert f"rows_written {len(rows)}" in err      # everything accepted was flushed
