"""Where receiver bytes come from: a TCP connection to dump1090/readsb, or a capture file."""

from __future__ import annotations

import logging
import random
import re
import socket
import threading
import time
from pathlib import Path
from typing import Iterator

log = logging.getLogger(__name__)

READ_SIZE = 65536
_AVR_LINE = re.compile(rb"^[*@<][0-9A-Fa-f]+;\s*$", re.M)
_SBS_LINE = re.compile(rb"^(MSG|AIR|ID|STA|SEL|CLK),", re.M)


def detect_format(head: bytes) -> str | None:
    """'beast', 'avr' or 'sbs' from the first kilobytes of a stream; None when unsure."""
    if not head:
        return None
    markers = sum(head.count(b"\x1a" + k) for k in (b"1", b"2", b"3"))
    if markers >= 2 or (markers and len(head) < 64):
        return "beast"
    if len(_SBS_LINE.findall(head)) >= 1:
        return "sbs"
    if len(_AVR_LINE.findall(head)) >= 1:
        return "avr"
    return None


def read_file(path: Path, stop: threading.Event | None = None) -> Iterator[bytes]:
    with open(path, "rb") as fh:
        while stop is None or not stop.is_set():
            chunk = fh.read(READ_SIZE)
            if not chunk:
                return
            yield chunk


class Backoff:
    """Exponential backoff with full jitter, reset once a connection delivers data."""

    def __init__(self, first_s: float = 0.5, max_s: float = 60.0) -> None:
        self.first_s, self.max_s = first_s, max_s
        self.attempt = 0

    def next_delay(self) -> float:
        ceiling = min(self.max_s, self.first_s * 2 ** self.attempt)
        self.attempt += 1
        return random.uniform(ceiling / 2, ceiling)

    def reset(self) -> None:
        self.attempt = 0


class TcpSource:
    """Reads the receiver's TCP stream forever: reconnects with backoff and jitter after a
    refused connection, a reset or a link silent for ``read_timeout_s``."""

    def __init__(self, host: str, port: int, stop: threading.Event, *,
                 read_timeout_s: float = 60.0, poll_s: float = 0.5) -> None:
        self.host, self.port = host, port
        self.stop = stop
        self.read_timeout_s = read_timeout_s
        self.poll_s = min(poll_s, read_timeout_s)
        self.backoff = Backoff()
        self.connections = 0
        self.reconnects = 0
        self.connected = False

    def chunks(self) -> Iterator[bytes | None]:
        """Received bytes; ``None`` marks the start of a new connection (drop partial frames)."""
        while not self.stop.is_set():
            try:
                sock = socket.create_connection((self.host, self.port), timeout=10)
            except OSError as exc:
                self._wait(f"cannot connect to {self.host}:{self.port}: {exc}")
                continue
            self.connections += 1
            if self.connections > 1:
                self.reconnects += 1
            self.connected = True
            log.info("connected to receiver %s:%d", self.host, self.port)
            yield None
            try:
                yield from self._read(sock)
            finally:
                self.connected = False
                sock.close()

    def _read(self, sock: socket.socket) -> Iterator[bytes]:
        sock.settimeout(self.poll_s)
        last_byte = time.monotonic()
        while not self.stop.is_set():
            try:
                data = sock.recv(READ_SIZE)
            except socket.timeout:
                if time.monotonic() - last_byte > self.read_timeout_s:
                    self._wait(f"no data from {self.host}:{self.port} for "
                               f"{self.read_timeout_s:g} s; reconnecting")
                    return
                continue
            except OSError as exc:
                self._wait(f"connection to {self.host}:{self.port} failed: {exc}")
                return
            if not data:
                self._wait(f"receiver {self.host}:{self.port} closed the connection")
                return
            last_byte = time.monotonic()
            self.backoff.reset()
            yield data
        # Stopping: what the receiver already sent may still sit in the kernel's socket buffer
        # (megabytes on a fast link). Read it before closing, so no frame that reached this
        # machine is dropped; bounded in time in case the peer keeps sending.
        yield from self._drain(sock)

    def _drain(self, sock: socket.socket, lull_s: float = 1.0, cap_s: float = 6.0
               ) -> Iterator[bytes]:
        # Read until the peer closes, or it has sent nothing for ``lull_s`` of waiting (time
        # spent decoding what was read does not count: a backlog is read to its end), or the
        # service's shutdown budget is nearly spent.
        sock.settimeout(0.1)
        waited, cap = 0.0, time.monotonic() + cap_s
        while waited < lull_s and time.monotonic() < cap:
            try:
                data = sock.recv(READ_SIZE)
            except socket.timeout:
                waited += 0.1
                continue
            except OSError:          # the peer went away
                return
            if not data:
                return
            yield data

    def _wait(self, why: str) -> None:
        delay = self.backoff.next_delay()
        log.warning("%s; retrying in %.1f s", why, delay)
        self.stop.wait(delay)
