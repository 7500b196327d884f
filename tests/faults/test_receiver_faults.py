"""Receiver faults over real sockets, one connection after another: a peer flooding random
bytes, one enormous frame and endless escape bytes, a reset (RST) in the middle of a frame, then
a good peer. The live ingest reconnects each time, its memory stays bounded, the counters say
what happened, and what the good peer sent is stored exactly as a file replay stores it."""

from __future__ import annotations

import random
import socket
import struct
import threading
import time
from typing import Callable

import pytest

from _ingest_support import ingest_bytes, stored_rows
from conftest import PARIS_BEAST, need
from pipeline.receiver.avr import AvrParser, format_frame
from pipeline.receiver.beast import MAX_FRAME_BYTES, BeastParser
from pipeline.receiver.ingest import IngestStats, run_live

T0 = 1633608001.0                        # counter 0 of the Paris capture
RSS_BOUND_MB = 40                        # growth of the whole test process while flooded


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096 / 1e6


class ScriptedReceiver:
    """Accepts connections on 127.0.0.1 and hands the n-th one to the n-th script; the last
    connection is then kept open and silent, like a receiver with no traffic."""

    def __init__(self, scripts: list[Callable[[socket.socket], None]]) -> None:
        self.scripts = scripts
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.sent = 0
        self.done = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def send(self, conn: socket.socket, data: bytes) -> None:
        for i in range(0, len(data), 65536):
            conn.sendall(data[i:i + 65536])
        self.sent += len(data)

    def _serve(self) -> None:
        conn = None
        for script in self.scripts:
            conn, _ = self.server.accept()
            script(conn)
            if script is not self.scripts[-1]:
                conn.close()
        self.done.wait(120)
        if conn is not None:
            conn.close()
        self.server.close()


def reset(conn: socket.socket) -> None:
    """Close with RST instead of FIN (SO_LINGER on, timeout 0)."""
    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    conn.close()


def frame_start(data: bytes, near: int) -> int:
    i = near
    while not (data[i] == 0x1A and data[i + 1] in b"123" and data[i - 1] != 0x1A):
        i += 1
    return i


def live(settings, receiver: ScriptedReceiver, stats: IngestStats, fmt: str = "beast"):
    """run_live against the scripted receiver in a thread, stamped with the capture's clock."""
    live_settings = settings.replace(receiver_host="127.0.0.1", receiver_port=receiver.port,
                                     receiver_format=fmt, receiver_timeout_s=5.0)
    stop = threading.Event()
    worker = threading.Thread(target=run_live, args=(live_settings, stop),
                              kwargs={"stats": stats, "start_time": T0})
    worker.start()
    return stop, worker


def watch(stats: IngestStats, until: Callable[[], bool], timeout_s: float = 60) -> tuple[int, float]:
    """Poll until ``until()``; return the largest partial-frame buffer seen and the RSS growth."""
    rss0, peak_rss, peak_buf = rss_mb(), 0.0, 0
    deadline = time.monotonic() + timeout_s
    while not until() and time.monotonic() < deadline:
        buf = getattr(stats.parser, "_buf", None)
        if buf is None:
            buf = stats.parser._lines._rest
        peak_buf = max(peak_buf, len(buf))
        peak_rss = max(peak_rss, rss_mb())
        time.sleep(0.002)
    assert until(), "the ingest did not read what the receiver sent"
    return peak_buf, max(peak_rss - rss0, 0.0)


def finish(stop: threading.Event, worker: threading.Thread, receiver: ScriptedReceiver) -> None:
    stop.set()
    worker.join(30)
    receiver.done.set()
    assert not worker.is_alive()


@pytest.mark.slow
def test_beast_flood_huge_frame_reset_then_good_peer(settings, databases, tmp_path):
    raw = need(PARIS_BEAST).read_bytes()[:400_000]
    good = raw[:frame_start(raw, len(raw) - 100)]
    cut = frame_start(good, len(good) // 2)
    flood = random.Random(5).randbytes(8_000_000)
    huge = b"\x1a3" + b"\x00" * 1_000_000 + b"\x1a3" + b"\x1a" * 1_000_001
    stats = IngestStats("beast")

    def half_then_rst(conn):
        receiver.send(conn, good[:cut + 9])              # 9 bytes into a frame
        while stats.bytes < receiver.sent:               # read by the ingest, then reset
            time.sleep(0.01)
        reset(conn)

    receiver = ScriptedReceiver([lambda c: receiver.send(c, flood),
                                 lambda c: receiver.send(c, huge),
                                 half_then_rst,
                                 lambda c: receiver.send(c, good[cut:])])
    stop, worker = live(settings, receiver, stats)
    total = len(flood) + len(huge) + len(good) + 9     # the 9 bytes of the cut frame: twice
    peak_buf, rss_growth = watch(stats, lambda: stats.bytes == total)
    finish(stop, worker, receiver)

    reference = databases.create()
    ingest_bytes(settings.replace(database_url=reference), tmp_path, good, name="good.beast")
    expected, got = stored_rows(reference), stored_rows(settings.database_url)
    garbage = stats.garbage_bytes
    print(f"\nBeast receiver faults: {len(flood):,} random bytes, a {len(huge):,}-byte frame of "
          f"zeros and escapes, RST 9 bytes into a frame: {stats.reconnects} reconnects, "
          f"{garbage:,} garbage bytes, {stats.truncated_frames} truncated frames, partial-frame "
          f"buffer at most {peak_buf} bytes (bound {MAX_FRAME_BYTES}), RSS +{rss_growth:.1f} MB "
          f"(bound {RSS_BOUND_MB}); {len(got)} positions stored, {len(expected)} by a replay of "
          f"the good bytes")
    assert stats.reconnects == 3
    assert garbage >= 0.99 * (len(flood) + len(huge)) and stats.truncated_frames > 0
    assert peak_buf <= MAX_FRAME_BYTES and rss_growth < RSS_BOUND_MB
    assert len(expected) > 5000 and got == expected


def test_beast_parser_buffer_stays_one_frame_under_endless_escapes():
    parser = BeastParser()
    parser.feed(b"\x1a3")
    for _ in range(64):
        parser.feed(b"\x1a" * 65_537)
        assert len(parser._buf) <= MAX_FRAME_BYTES
    assert parser.garbage_bytes >= 64 * 65_537 - 2 * MAX_FRAME_BYTES


@pytest.mark.slow
def test_avr_line_without_end_then_good_peer(settings, databases, tmp_path):
    frames = BeastParser().feed(need(PARIS_BEAST).read_bytes()[:200_000])
    good = "".join(format_frame(m, c) + "\n" for c, m in frames).encode()
    endless = b"*" + b"8D" * 2_000_000                     # 4 MB, never a ';' nor a newline
    stats = IngestStats("avr")
    receiver = ScriptedReceiver([lambda c: receiver.send(c, endless),
                                 lambda c: receiver.send(c, good)])
    stop, worker = live(settings, receiver, stats, fmt="avr")
    peak_buf, rss_growth = watch(stats, lambda: stats.bytes == len(endless) + len(good))
    finish(stop, worker, receiver)

    reference = databases.create()
    ingest_bytes(settings.replace(database_url=reference), tmp_path, good, fmt="avr",
                 name="good.avr")
    expected, got = stored_rows(reference), stored_rows(settings.database_url)
    print(f"\nAVR line of {len(endless):,} bytes without end: {stats.truncated_frames} overlong "
          f"pieces dropped, {stats.garbage_bytes:,} bytes dropped, line buffer at most {peak_buf} "
          f"bytes, RSS +{rss_growth:.1f} MB; {len(got)} positions stored, {len(expected)} by a "
          f"replay")
    assert stats.reconnects == 1 and stats.truncated_frames > 0
    assert stats.garbage_bytes >= len(endless) - AvrParser.max_line
    assert peak_buf <= AvrParser.max_line and rss_growth < RSS_BOUND_MB
    assert len(expected) > 2000 and got == expected
