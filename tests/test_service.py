"""The service as users run it: `adsb-pipeline run` against a Beast TCP server, stopped with
SIGTERM mid-stream; metrics and health; `status`."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections import Counter

import psycopg2
import pytest

from conftest import PARIS_BEAST, PARIS_LAT, PARIS_LON, PARIS_RANGE_KM, need
from pipeline.service.beast_server import BeastServer

CHUNK = 4096


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def chunks(data: bytes, per_second: float):
    """Raw capture bytes in CHUNK pieces, stamped so the server sends ``per_second`` of them."""
    for i in range(0, len(data), CHUNK):
        yield i / CHUNK / per_second, data[i:i + CHUNK]


def positions(url: str, timed: bool = False) -> Counter:
    """Stored positions (icao24, lat, lon, altitude), or with ``timed`` (icao24, time to the
    millisecond, lat, lon)."""
    columns = ("icao24, round(extract(epoch FROM time)::numeric, 3), round(latitude::numeric, 5), "
               "round(longitude::numeric, 5)" if timed else
               "icao24, round(latitude::numeric, 5), round(longitude::numeric, 5), altitude")
    conn = psycopg2.connect(url.replace("+psycopg2", ""))
    with conn.cursor() as cur:
        cur.execute(f"SELECT {columns} FROM positions")
        rows = Counter(cur.fetchall())
    conn.close()
    return rows


def replayed_positions(sent: bytes, url: str, tmp_path) -> Counter:
    """Positions a file replay of exactly ``sent`` stores (the reference for live runs)."""
    prefix = tmp_path / "sent.beast"
    prefix.write_bytes(sent)
    r = subprocess.run([sys.executable, "-m", "pipeline.cli", "ingest", str(prefix), "--no-progress",
                        "--start-time", "2021-10-07T12:00:01Z"],
                       env=service_env(url, tmp_path, 1, 0), capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    return positions(url)


def service_env(db_url: str, tmp_path, port: int, metrics_port: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ADSB_")}
    env.update({
        "ADSB_DATABASE_URL": db_url, "ADSB_DATA_DIR": str(tmp_path / "data"),
        "ADSB_RECEIVER_HOST": "127.0.0.1", "ADSB_RECEIVER_PORT": str(port),
        "ADSB_RECEIVER_LAT": str(PARIS_LAT), "ADSB_RECEIVER_LON": str(PARIS_LON),
        "ADSB_RANGE_KM": str(PARIS_RANGE_KM),
        # The capture is served ~100x faster than it was recorded: stamp messages with the
        # receiver's counter, as a replay does, so the decoder sees the real timing.
        "ADSB_RECEIVER_CLOCK": "counter",
        "ADSB_METRICS_PORT": str(metrics_port), "PYTHONUNBUFFERED": "1",
    })
    return env


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


@pytest.mark.slow
def test_run_keeps_every_position_sent_before_sigterm(databases, tmp_path):
    data = need(PARIS_BEAST).read_bytes()
    live_url, replay_url = databases.create(), databases.create()
    server = BeastServer(chunks(data, per_second=25), speed=1.0, chunk_frames=5).start()
    metrics_port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "pipeline.cli", "run"],
                            env=service_env(live_url, tmp_path, server.port, metrics_port),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 60
        while server.bytes_sent < 1_500_000 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert server.bytes_sent >= 1_500_000, "the service never read the stream"
        status, body = get(f"http://127.0.0.1:{metrics_port}/metrics")
        assert status == 200 and "adsb_ingest_frames" in body and "adsb_database_up 1.0" in body
        assert get(f"http://127.0.0.1:{metrics_port}/healthz")[0] == 200
        # Freeze the stream, note exactly what was sent, then signal.
        server.stop()
        assert not server._thread.is_alive()
        sent = data[:server.bytes_sent]
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
        assert proc.returncode == 0, out[-3000:]
        assert time.monotonic() - started < 10, "shutdown took longer than 10 s"
    finally:
        if proc.poll() is None:
            proc.kill()
        server.stop()

    # What a replay of exactly those bytes stores is what the live service must have stored.
    expected, stored = replayed_positions(sent, replay_url, tmp_path), positions(live_url)
    assert sum(expected.values()) > 20_000
    missing = expected - stored
    assert sum(missing.values()) == 0, (f"{sum(missing.values())} positions lost, e.g. "
                                        f"{list(missing)[:3]}; sent {len(sent)} bytes; {out[-1500:]}")
    assert sum((stored - expected).values()) == 0


def test_status_summarises_the_database(settings, db_url):
    env = {k: v for k, v in os.environ.items() if not k.startswith("ADSB_")}
    env["ADSB_DATABASE_URL"] = db_url
    r = subprocess.run([sys.executable, "-m", "pipeline.cli", "status"], env=env,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert "no live ingest has reported" in r.stdout
    assert "0 open, 0 finished" in r.stdout and "none active" in r.stdout


def test_live_ingest_with_a_start_time_stamps_positions_on_the_receivers_counter(
        databases, tmp_path):
    """A receiver serving a past day (here the Paris capture, ~40× faster than recorded): with
    ``--start-time`` the live ingest stamps each position with the receiver's counter anchored
    there, exactly as a replay of the same bytes with the same start time does."""
    data = need(PARIS_BEAST).read_bytes()[:400_000]
    live_url, replay_url = databases.create(), databases.create()
    server = BeastServer(chunks(data, per_second=400), speed=1.0, chunk_frames=50).start()
    metrics_port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "pipeline.cli", "ingest", "--live",
                             "--start-time", "2021-10-07T12:00:01Z"],
                            env=service_env(live_url, tmp_path, server.port, metrics_port),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 60
        while server.bytes_sent < len(data) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert server.bytes_sent == len(data), "the service did not read the whole stream"
        time.sleep(1.0)
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
        assert proc.returncode == 0, out[-3000:]
    finally:
        if proc.poll() is None:
            proc.kill()
        server.stop()
    stored = positions(live_url, timed=True)
    replayed_positions(data, replay_url, tmp_path)
    expected = positions(replay_url, timed=True)
    assert sum(expected.values()) > 5_000
    assert stored == expected
    first = min(t for _, t, _, _ in stored)
    assert 1633608001 <= first < 1633608001 + 60     # the capture's day, not today
