"""ADSB_RECEIVER_CLOCK=counter live: the receiver's 12 MHz counter, anchored at the wall clock.

Nothing protects a Beast or AVR counter. Joining a stream mid-frame can make garbage the first
"frame", and a receiver restart starts its counter again from 0. The clock is anchored only on a
frame that passes CRC, re-anchored (logged, counted) when a verified frame's counter goes
backwards, lags the wall clock or leaps ahead, and a nonsense counter on a frame that cannot be
verified never reaches the decoder.
"""

from __future__ import annotations

import logging
import socket
import threading
import time

import numpy as np
import pytest
import sqlalchemy as sa

from pipeline.evaluation import simulate
from pipeline.receiver.avr import format_frame
from pipeline.receiver.beast import (
    COUNTER_HZ,
    COUNTER_MOD,
    MAX_CLOCK_SLIP_S,
    CounterClock,
    LiveCounterClock,
    adsb_crc_ok,
    encode_frame,
)
from pipeline.receiver.ingest import IngestStats, run_live, status_line
from test_spoofing import prometheus_text

HZ = COUNTER_HZ
GOOD = simulate.position_message("3c6444", 48.9, 2.4, 30000, odd=False).hex()
GOOD2 = simulate.position_message("3c6444", 48.9, 2.41, 30000, odd=True).hex()
BAD_CRC = GOOD[:-2] + f"{int(GOOD[-2:], 16) ^ 0x5A:02x}"     # a DF17 with a corrupt parity
DF11 = "5d3c6444a1b2c3"                                         # all-call: parity not checkable
R0 = 1_700_000_000.0                                            # wall clock of the first chunk
C0 = 3600 * HZ                                                  # receiver up for an hour


def stamp(clock: LiveCounterClock, counters: list[int], messages: list[str], received: float
          ) -> list[float]:
    return clock.stamp(np.array(counters, np.int64), messages, received)


def test_crc_check_of_the_anchor_frame():
    assert adsb_crc_ok(GOOD) and adsb_crc_ok(GOOD2)
    assert not adsb_crc_ok(BAD_CRC) and not adsb_crc_ok(DF11) and not adsb_crc_ok(GOOD[:14])


def test_anchored_on_the_first_frame_that_passes_crc_not_on_garbage_before_it():
    clock = LiveCounterClock()
    # Joined mid-stream: a "frame" with a nonsense counter and a bad CRC, an all-call whose
    # parity cannot be checked, then a good position frame.
    times = stamp(clock, [COUNTER_MOD - 5, 17, C0], [BAD_CRC, DF11, GOOD], R0)
    assert times == [R0, R0, R0] and clock.unanchored == 2
    assert clock.anchor == pytest.approx(R0 - 3600)
    # From there on the counter gives the time, whatever the chunk's arrival time.
    times = stamp(clock, [C0 + HZ, C0 + 2 * HZ + HZ // 2], [DF11, GOOD2], R0 + 2.7)
    assert times == pytest.approx([R0 + 1.0, R0 + 2.5], abs=1e-6)
    assert (clock.reanchors, clock.bad_counters) == (0, 0)


def test_no_verified_frame_no_anchor():
    clock = LiveCounterClock()
    assert stamp(clock, [5, 6], [DF11, BAD_CRC], R0) == [R0, R0]
    assert clock.anchor is None and clock.unanchored == 2


def test_a_receiver_restart_reanchors_once_with_a_log_line(caplog):
    clock = LiveCounterClock()
    stamp(clock, [C0], [GOOD], R0)
    stamp(clock, [C0 + 10 * HZ], [GOOD], R0 + 10)
    # The receiver restarts 20 s later: its counter starts again from 0. The first frames of
    # the new counter cannot be verified (all-calls): they keep the last good time; the first
    # position frame that passes CRC re-anchors the clock at its arrival.
    with caplog.at_level(logging.WARNING, logger="pipeline.receiver.beast"):
        times = stamp(clock, [HZ // 10, HZ // 5, HZ // 2, HZ],
                      [DF11, DF11, GOOD, GOOD2], R0 + 30)
    assert times == pytest.approx([R0 + 10, R0 + 10, R0 + 30, R0 + 30.5], abs=1e-6)
    assert (clock.reanchors, clock.bad_counters) == (1, 2)
    [line] = [r.getMessage() for r in caplog.records]
    assert "counter went back" in line and "re-anchored" in line
    # Frames of the new counter follow from the new anchor.
    assert stamp(clock, [2 * HZ], [DF11], R0 + 31.6) == pytest.approx([R0 + 31.5], abs=1e-6)


def test_re_anchoring_is_logged_at_most_once_a_minute(caplog):
    clock = LiveCounterClock()
    stamp(clock, [C0], [GOOD], R0)
    with caplog.at_level(logging.WARNING, logger="pipeline.receiver.beast"):
        for k in range(5):                        # five restarts in a row
            stamp(clock, [C0 - (k + 1) * HZ], [GOOD], R0 + k)
    assert clock.reanchors == 5
    assert len([r for r in caplog.records if "re-anchored" in r.getMessage()]) == 1


def test_a_nonsense_counter_never_reaches_the_decoder():
    clock = LiveCounterClock()
    stamp(clock, [C0], [GOOD], R0)
    # One unverifiable frame with a counter 100 days ahead, one from before the anchor: both
    # take the previous frame's time; the stream goes on unchanged.
    times = stamp(clock, [C0 + HZ, C0 + 100 * 86400 * HZ, 12, C0 + 2 * HZ],
                  [GOOD, DF11, DF11, GOOD2], R0 + 2)
    assert times == pytest.approx([R0 + 1, R0 + 1, R0 + 1, R0 + 2], abs=1e-6)
    assert (clock.reanchors, clock.bad_counters) == (0, 2)
    # A frame that passes CRC with a counter leaping 100 days ahead (a corrupt counter on a
    # good message) re-anchors at its arrival; the next frame's counter goes back to the true
    # one and re-anchors again: no time leaves the neighbourhood of the wall clock.
    times = stamp(clock, [C0 + 100 * 86400 * HZ, C0 + 3 * HZ], [GOOD, GOOD2], R0 + 3)
    assert times == pytest.approx([R0 + 3, R0 + 3], abs=1e-6) and clock.reanchors == 2


def test_a_counter_lagging_the_wall_clock_reanchors():
    clock = LiveCounterClock()
    stamp(clock, [C0], [GOOD], R0)
    # The counter advanced 10 s while the wall clock advanced MAX_CLOCK_SLIP_S + 20 s (a
    # receiver that lost samples, or a host clock stepped forward).
    later = R0 + MAX_CLOCK_SLIP_S + 20
    assert stamp(clock, [C0 + 10 * HZ], [GOOD2], later) == [later]
    assert clock.reanchors == 1
    assert stamp(clock, [C0 + 11 * HZ], [DF11], later + 1) == pytest.approx([later + 1])


def test_a_capture_served_faster_than_real_time_keeps_its_counter_times():
    """A simulated receiver serving a capture 100x faster: counter times run ahead of the wall
    clock, by steps the wall clock can explain; they are the counter's, as a replay's."""
    clock, reference = LiveCounterClock(), None
    counters = C0 + np.arange(0, 600 * HZ, HZ // 4, dtype=np.int64)    # 10 minutes of frames
    messages = [GOOD, GOOD2] * (len(counters) // 2)
    got = []
    for i in range(0, len(counters), 200):                             # 50 s of data a chunk
        got += clock.stamp(counters[i:i + 200], messages[i:i + 200], R0 + i / 400)
    reference = CounterClock(R0 - 3600).stamp_array(counters)
    assert got == reference and (clock.reanchors, clock.bad_counters) == (0, 0)


def test_the_48_bit_wraparound_is_followed():
    clock = LiveCounterClock()
    last = COUNTER_MOD - HZ // 2                                        # 0.5 s before the wrap
    stamp(clock, [last], [GOOD], R0)
    times = stamp(clock, [last + HZ // 4, HZ // 4, HZ], [GOOD2, GOOD, GOOD2], R0 + 1.5)
    assert times == pytest.approx([R0 + 0.25, R0 + 0.75, R0 + 1.5], abs=1e-6)
    assert clock.reanchors == 0
    assert stamp(clock, [2 * HZ], [DF11], R0 + 2.5) == pytest.approx([R0 + 2.5], abs=1e-6)


# ---- through the live ingest -------------------------------------------------------------------
class RestartingReceiver:
    """Serves ``first`` on the first connection and drops it, as a receiver that restarts; then
    ``second`` on the next connection, which it keeps open."""

    def __init__(self, first: bytes, second: bytes) -> None:
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.parts = [first, second]
        self.done = threading.Event()
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        conn, _ = self.server.accept()
        conn.sendall(self.parts[0])
        conn.close()
        conn, _ = self.server.accept()
        conn.sendall(self.parts[1])
        self.done.wait(60)
        conn.close()


def flight_messages(icao24: str, seconds: int, lat: float) -> list[tuple[float, bytes]]:
    """A straight flight eastwards at 450 kt, one position frame a second."""
    return [(float(k), simulate.position_message(icao24, lat, 2.0 + k * 0.0032, 35000,
                                                 odd=bool(k % 2)))
            for k in range(seconds)]


def encode(fmt: str, messages: list[tuple[float, bytes]], start: int, garbage: bool) -> bytes:
    out = []
    if garbage:     # joined mid-stream: a "frame" with a nonsense counter and a bad CRC
        bad = bytes.fromhex(BAD_CRC)
        out.append(encode_frame(bad, COUNTER_MOD - 1) if fmt == "beast"
                   else (format_frame(bad, COUNTER_MOD - 1) + "\n").encode())
    for t, msg in messages:
        counter = start + int(round(t * HZ))
        out.append(encode_frame(msg, counter) if fmt == "beast"
                   else (format_frame(msg, counter) + "\n").encode())
    return b"".join(out)


@pytest.mark.parametrize("fmt", ["beast", "avr"])
def test_live_ingest_anchors_on_a_good_frame_and_reanchors_after_a_receiver_restart(
        settings, fmt, caplog):
    """Before the restart the receiver had been up for an hour; after it, its counter starts
    from 0. Anchored on the garbage first frame, every time would be months off; not
    re-anchored after the restart, the second aircraft's positions would be an hour old."""
    before = encode(fmt, flight_messages("3c6444", 30, 48.95), C0, garbage=True)
    after = encode(fmt, flight_messages("3c6445", 30, 48.80), 0, garbage=False)
    receiver = RestartingReceiver(before, after)
    live = settings.replace(receiver_host="127.0.0.1", receiver_port=receiver.port,
                            receiver_format=fmt, receiver_clock="counter")
    stop, stats = threading.Event(), IngestStats(fmt)
    worker = threading.Thread(target=run_live, args=(live, stop), kwargs={"stats": stats})
    started = time.time()
    with caplog.at_level(logging.INFO, logger="pipeline.receiver.beast"):
        worker.start()
        deadline = time.monotonic() + 60
        while stats.bytes < len(before) + len(after) and time.monotonic() < deadline:
            time.sleep(0.05)
        stop.set()
        receiver.done.set()
        worker.join(30)
    ended = time.time()
    assert not worker.is_alive() and stats.bytes == len(before) + len(after)
    assert stats.reconnects == 1
    assert (stats.clock_reanchors, stats.clock_bad_counters) == (1, 0)
    assert "clock re-anchored 1" in status_line(stats, 60.0, None)
    assert "adsb_ingest_clock_reanchors_total 1.0" in prometheus_text(stats)
    assert any("counter went back" in r.getMessage() for r in caplog.records)

    eng = sa.create_engine(live.database_url)
    with eng.connect() as conn:
        rows = conn.execute(sa.text(
            "SELECT icao24, count(*), min(extract(epoch FROM time)), max(extract(epoch FROM time)) "
            "FROM positions GROUP BY icao24 ORDER BY icao24")).all()
    eng.dispose()
    # Both aircraft stored (all but the positions PipeDecoder holds while it gains trust in a
    # new aircraft), each at the wall clock of its arrival plus its 29 s of counter.
    assert [(a, n >= 27) for a, n, _, _ in rows] == [("3c6444", True), ("3c6445", True)]
    for _, _, first, last in rows:
        assert started - 1 <= float(first) and float(last) <= ended + 30
