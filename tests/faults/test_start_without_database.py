"""A service started while its database is away waits for it, then starts; a stop while it
waits ends it with status 0. Either way no supervisor restarts it in a loop of tracebacks (a
Pi after a power cut starts PostgreSQL and the service together)."""

from __future__ import annotations

import contextlib
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import psycopg2
import pytest
import sqlalchemy as sa

from test_service import free_port, service_env


class Forwarder:
    """Listens on ``port`` once started and forwards each connection to ``target``: the
    database 'comes up' at the address the service was given."""

    def __init__(self, port: int, target: tuple[str, int]) -> None:
        self.port, self.target = port, target
        self.listener = socket.create_server(("127.0.0.1", port))
        self.socks: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            server = socket.create_connection(self.target)
            self.socks += [client, server]
            for a, b in ((client, server), (server, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := src.recv(65536):
                dst.sendall(data)
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)

    def stop(self) -> None:
        self.listener.close()
        for s in self.socks:
            with contextlib.suppress(OSError):
                s.close()


def _wait(predicate, timeout_s: float):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if value := predicate():
            return value
        time.sleep(0.1)
    raise AssertionError("timed out waiting")


def _receiver_registered(url: str, receiver: str) -> bool:
    conn = psycopg2.connect(url.replace("+psycopg2", ""))
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT to_regclass('receivers') IS NOT NULL")
            if not cur.fetchone()[0]:
                return False
            cur.execute("SELECT count(*) FROM receivers WHERE id = %s", (receiver,))
            return cur.fetchone()[0] == 1
    finally:
        conn.close()


def _start(command: list[str], url: str, tmp_path: Path) -> tuple[subprocess.Popen, Path]:
    env = service_env(url, tmp_path, free_port(), free_port())   # no receiver listens
    env["ADSB_RECEIVER_ID"] = "started-first"
    log = tmp_path / "service.log"
    with open(log, "wb") as fh:
        proc = subprocess.Popen([sys.executable, "-m", "pipeline.cli", *command], env=env,
                                stdout=fh, stderr=subprocess.STDOUT)
    return proc, log


@pytest.mark.parametrize("command", [["worker"], ["ingest", "--live"]])
def test_a_service_started_before_its_database_waits_for_it(command, databases, tmp_path):
    real = sa.make_url(databases.create(migrate_schema=False))   # the service migrates it
    if not real.host:
        pytest.skip("needs PostgreSQL over TCP (the embedded server listens on a socket)")
    port = free_port()
    away = real.set(host="127.0.0.1", port=port).render_as_string(hide_password=False)
    proc, log = _start(command, away, tmp_path)
    forwarder = None
    try:
        # It keeps trying (two failed tries, one wait between them) and does not exit.
        _wait(lambda: "try 2," in log.read_text() or proc.poll() is not None, 30)
        assert proc.poll() is None, log.read_text()
        forwarder = Forwarder(port, (real.host, real.port or 5432))
        real_url = real.render_as_string(hide_password=False)
        _wait(lambda: _receiver_registered(real_url, "started-first"), 60)
        assert proc.poll() is None, log.read_text()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        if forwarder is not None:
            forwarder.stop()
    text = log.read_text()
    assert "unreachable" in text and "database reachable after" in text
    assert "Traceback" not in text


def test_a_service_stopped_while_waiting_for_its_database_exits_cleanly(databases, tmp_path):
    url = sa.make_url(databases.url_for("none")).set(host="127.0.0.1", port=free_port())
    proc, log = _start(["worker"], url.render_as_string(hide_password=False), tmp_path)
    try:
        _wait(lambda: "unreachable" in log.read_text() or proc.poll() is not None, 30)
        assert proc.poll() is None, log.read_text()
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
        assert time.monotonic() - started < 10
    finally:
        if proc.poll() is None:
            proc.kill()
    text = log.read_text()
    assert "stopped while waiting for the database" in text and "Traceback" not in text
