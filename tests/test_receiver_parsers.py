"""Framing of Beast, AVR and SBS streams: incremental, resynchronising, bounded."""

from __future__ import annotations

import random

import numpy as np
import pytest

from conftest import SAMPLE_BEAST, need
from pipeline.receiver.avr import AvrParser, format_frame
from pipeline.receiver.beast import (
    COUNTER_HZ,
    COUNTER_MOD,
    MAX_FRAME_BYTES,
    BeastParser,
    CounterClock,
    encode_frame,
)
from pipeline.receiver.sbs import SbsParser, format_line
from pipeline.receiver.sources import detect_format

LONG = bytes.fromhex("8D406B902015A678D4D220AA4BDA")
SHORT = bytes.fromhex("5D484FDEA248F5")
# Counter and message bytes full of 0x1a, to exercise the escape doubling.
ESCAPY = bytes.fromhex("8D1A1A1A2015A678D4D2201A4BDA")


def _frames(n: int, seed: int = 1) -> list[tuple[int, bytes]]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        msg = rng.choice([LONG, SHORT, ESCAPY, bytes(rng.randrange(256) for _ in range(14))])
        out.append((rng.choice([i, 0x1A1A1A1A1A1A, 0x1A00 + i]), msg))
    return out


def test_encode_doubles_escape_bytes_and_picks_type():
    frame = encode_frame(ESCAPY, 0x1A, signal=0x1A)
    assert frame[:2] == b"\x1a3"
    assert frame.count(b"\x1a\x1a") == 1 + 1 + 4          # counter, signal, 4 in the message
    assert encode_frame(SHORT, 5)[1:2] == b"2"
    assert encode_frame(b"\x70\x00", 5)[1:2] == b"1"
    with pytest.raises(ValueError):
        encode_frame(b"\x00" * 5, 0)


@pytest.mark.parametrize("chunk", [1, 2, 3, 7, 44, 4096])
def test_beast_round_trip_in_any_chunking(chunk):
    frames = _frames(300)
    stream = b"".join(encode_frame(m, c, 7) for c, m in frames)
    parser = BeastParser()
    out = []
    for i in range(0, len(stream), chunk):
        out += parser.feed(stream[i:i + chunk])
    assert out == frames
    assert parser.garbage_bytes == 0 and parser.truncated == 0


def test_beast_resynchronises_after_garbage_and_truncated_frames():
    good = [(10, LONG), (20, SHORT), (30, ESCAPY)]
    stream = (b"hello, garbage without markers"
              + encode_frame(LONG, 10)
              + b"\x1a3\x00\x00\x01"                      # truncated: a new frame cuts it
              + encode_frame(SHORT, 20)
              + b"\x1a4" + b"\x00" * 9                    # a status frame, skipped
              + b"\x1a\x1a"                               # stray escaped byte
              + encode_frame(b"\x70\x00", 25)             # Mode A/C, skipped
              + encode_frame(ESCAPY, 30))
    parser = BeastParser()
    assert parser.feed(stream) == good
    assert parser.truncated == 1
    assert parser.status == 1
    assert parser.modeac == 1
    assert parser.garbage_bytes >= len(b"hello, garbage without markers")


def test_beast_buffer_stays_bounded_whatever_the_peer_sends():
    parser = BeastParser()
    rng = random.Random(3)
    for _ in range(200):
        parser.feed(bytes(rng.randrange(256) for _ in range(997)))
        assert len(parser._buf) <= MAX_FRAME_BYTES
    # An endless run of escape bytes is never a frame.
    for _ in range(100):
        assert parser.feed(b"\x1a" * 10_001) == []
        assert len(parser._buf) <= MAX_FRAME_BYTES


def test_beast_real_dump1090_capture():
    frames = BeastParser().feed(need(SAMPLE_BEAST).read_bytes())
    # The data README: 239 Mode-S frames, 185 short and 54 long, spanning 23.9 s of counter.
    assert len(frames) == 239
    assert sum(len(m) == 7 for _, m in frames) == 185
    assert sum(len(m) == 14 for _, m in frames) == 54
    span = (frames[-1][0] - frames[0][0]) / COUNTER_HZ
    assert 23.8 < span < 24.0
    assert {m[0] >> 3 for _, m in frames} >= {0, 4, 5, 11, 17, 20, 21}


def test_counter_clock_anchors_and_wraps():
    clock = CounterClock(1000.0)
    assert clock.seconds(0) == 1000.0
    assert clock.seconds(12_000_000) == pytest.approx(1001.0)
    near_end = COUNTER_MOD - COUNTER_HZ             # one second before the wrap
    clock = CounterClock(0.0)
    before = clock.seconds(near_end)
    after = clock.seconds(COUNTER_HZ)               # one second after it
    assert after - before == pytest.approx(2.0)
    # A small step back (frames a little out of order) is not a wrap.
    assert clock.seconds(COUNTER_HZ - 1200) == pytest.approx(after - 1e-4)


def test_avr_plain_timestamped_and_bad_lines():
    text = (format_frame(LONG) + "\n" + format_frame(SHORT, 0xABC) + "\r\n"
            + "<000000000ABC22" + LONG.hex() + ";\n" + "*7000;\n" + "*ZZ;\n" + "garbage\n"
            + "*" + LONG.hex()[:-2] + ";\n" + format_frame(LONG, 5))
    parser = AvrParser()
    out = parser.feed(text.encode())
    out += parser.finish()
    assert out == [(None, LONG), (0xABC, SHORT), (0xABC, LONG), (5, LONG)]
    assert parser.modeac == 1
    assert parser.bad_lines == 3


def test_avr_endless_line_is_dropped_not_buffered():
    parser = AvrParser()
    for _ in range(100):
        assert parser.feed(b"A" * 5000) == []
    assert parser.truncated > 0
    assert parser.feed(b"\n" + format_frame(LONG).encode() + b"\n") == [(None, LONG)]


def test_sbs_records_and_missing_fields():
    t = 1633608001.25
    lines = [
        format_line(1, "4840d6", t, callsign="KLM1023"),
        format_line(4, "4840d6", t, groundspeed=420.0, track=93.5, vertical_rate=-64),
        format_line(3, "4840d6", t, altitude=38000, latitude=48.9, longitude=2.4),
        format_line(2, "4840d6", t, latitude=49.0, longitude=2.5, on_ground=True),
        "MSG,3,1,1,4840D6,1,2021/10/07,12:00:01.250",                  # truncated line
        "MSG,3,1,1,4840D6,1,2021/10/07,12:00:01.250,,,,38000,,,,,,,,,,0",  # no position
        "MSG,3,1,1,XYZ,1,2021/10/07,12:00:01.250,,,,38000,,,48.9,2.4,,,,,,0",  # bad ident
        "MSG,3,1,1,4840D6,1,2021/10/07,12:00:01.250,,,,38000,,,nan,2.4,,,,,,0",
        "MSG,5,1,1,4840D6,1,2021/10/07,12:00:01.250,,,,38000,,,,,,,,,,0",   # stored nowhere
        "\x00\xff binary",
    ]
    parser = SbsParser()
    out = parser.feed("\n".join(lines).encode("latin-1") + b"\n")
    assert [r.kind for r in out] == ["id", "vel", "pos", "pos"]
    assert out[0].callsign == "KLM1023" and out[0].icao == "4840d6"
    assert (out[1].groundspeed, out[1].track, out[1].vertical_rate) == (420.0, 93.5, -64)
    assert (out[2].latitude, out[2].longitude, out[2].altitude, out[2].on_ground) == \
        (48.9, 2.4, 38000, False)
    assert out[2].time == pytest.approx(t)
    assert out[3].on_ground is True
    assert parser.bad_lines == 5
    assert parser.ignored == 1


def test_detect_format():
    assert detect_format(encode_frame(LONG, 1) * 3) == "beast"
    assert detect_format((format_frame(LONG, 1) + "\n").encode() * 3) == "avr"
    assert detect_format((format_line(3, "4840d6", 1.0, latitude=1.0, longitude=2.0)
                          + "\n").encode()) == "sbs"
    assert detect_format(b"just some text\nnothing else\n") is None
    assert detect_format(b"") is None


def test_counter_clock_stamp_array_gives_the_times_of_seconds():
    rng = random.Random(5)
    near_end = COUNTER_MOD - 2 * COUNTER_HZ
    batches = [[rng.randrange(10 ** 12) for _ in range(50)],                   # no wrap possible
               [near_end + i * COUNTER_HZ // 4 for i in range(6)]              # up to the wrap
               + [i * COUNTER_HZ // 4 for i in range(6)],                      # and after it
               [], [5 * COUNTER_HZ], [COUNTER_MOD - 1 - rng.randrange(10 ** 6) for _ in range(9)],
               sorted(rng.randrange(10 ** 9) for _ in range(50))]                  # wraps again
    one_by_one, batched = CounterClock(1633608001.0), CounterClock(1633608001.0)
    for counters in batches:
        # Exactly the same floats, not approximately: rows must not depend on chunking.
        assert batched.stamp_array(np.array(counters, np.int64)) == \
            [one_by_one.seconds(c) for c in counters]
    assert batched._wraps == one_by_one._wraps == 2
