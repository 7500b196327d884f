"""A small Beast TCP server (what dump1090/readsb offer on port 30005), fed by a frame source.

The demo serves simulated traffic through it so that the real service connects over TCP exactly
as it would to a receiver; tests use it to stream captures and to break connections.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from typing import Callable, Iterable

log = logging.getLogger(__name__)


class BeastServer:
    """Accepts one client at a time on 127.0.0.1 and sends it frames in time order, paced at
    ``speed`` times real time (``speed=None``: as fast as the socket takes them).

    ``frames`` is a factory so that a reconnecting client resumes where the previous connection
    stopped: frames are consumed once, like a receiver's live feed.
    """

    def __init__(self, frames: Iterable[tuple[float, bytes]], *, speed: float | None = None,
                 host: str = "127.0.0.1", port: int = 0, chunk_frames: int = 200) -> None:
        self._frames = iter(frames)
        self._speed = speed
        self._chunk = chunk_frames
        self._sock = socket.create_server((host, port))
        self._sock.settimeout(0.2)
        self.port = self._sock.getsockname()[1]
        self.frames_sent = 0
        self.bytes_sent = 0
        self.finished = threading.Event()      # every frame was sent
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._serve, name="beast-server", daemon=True)
        self._t0_data: float | None = None
        self._t0_wall = 0.0
        self.on_chunk: Callable[[int], None] | None = None

    def start(self) -> "BeastServer":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._sock.close()

    def _pace(self, t: float) -> None:
        if self._speed is None:
            return
        if self._t0_data is None:
            self._t0_data, self._t0_wall = t, time.monotonic()
        due = self._t0_wall + (t - self._t0_data) / self._speed
        delay = due - time.monotonic()
        if delay > 0:
            self._stop.wait(delay)

    def _serve(self) -> None:
        while not self._stop.is_set() and not self.finished.is_set():
            try:
                conn, _ = self._sock.accept()
            except (socket.timeout, OSError):
                continue
            with conn:
                self._send_all(conn)

    def _send_all(self, conn: socket.socket) -> None:
        batch: list[bytes] = []
        for t, frame in self._frames:
            self._pace(t)
            batch.append(frame)
            if len(batch) >= self._chunk:
                if not self._send(conn, batch):
                    return
                batch = []
            if self._stop.is_set():
                return
        if batch:
            self._send(conn, batch)
        self.finished.set()
        # Keep the connection open like a receiver with no traffic; the client decides.
        while not self._stop.is_set():
            self._stop.wait(0.2)

    def _send(self, conn: socket.socket, batch: list[bytes]) -> bool:
        data = b"".join(batch)
        try:
            conn.sendall(data)
        except OSError as e:
            log.info("beast server: client went away (%s)", e)
            return False
        self.frames_sent += len(batch)
        self.bytes_sent += len(data)
        if self.on_chunk is not None:
            self.on_chunk(self.frames_sent)
        return True
