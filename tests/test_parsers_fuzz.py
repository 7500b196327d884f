"""Property-based tests: arbitrary bytes never break the parsers or grow their buffers; the
batch versions of framing and position checks agree with their one-at-a-time rules."""

from __future__ import annotations

import numpy as np
from hypothesis import HealthCheck, given, settings, strategies as st

from beast_reference import SequentialBeastParser
from conftest import PARIS_BEAST, SAMPLE_BEAST, need
from pipeline.receiver.avr import AvrParser
from pipeline.receiver.beast import MAX_FRAME_BYTES, BeastParser, encode_frame
from pipeline.receiver.decode import PositionDecoder
from pipeline.receiver.sbs import SbsParser, format_line

SEED = SAMPLE_BEAST.read_bytes() if SAMPLE_BEAST.exists() else encode_frame(b"\x8d" * 14, 1)
SBS_SEED = format_line(3, "4840d6", 1633608001.5, altitude=38000, latitude=48.9, longitude=2.4)

chunks = st.lists(st.binary(max_size=300), max_size=30)
# Real bytes with random damage: cut, spliced and sprinkled with escape bytes.
mutated = st.builds(
    lambda a, b, junk: SEED[a:b] + junk + SEED[b:],
    st.integers(0, len(SEED)), st.integers(0, len(SEED)),
    st.binary(max_size=40).map(lambda j: j.replace(b"0", b"\x1a")))

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FUZZ
@given(st.one_of(chunks, mutated.map(lambda d: [d[i:i + 97] for i in range(0, len(d), 97)])))
def test_beast_parser_total_and_bounded(parts):
    parser = BeastParser()
    for part in parts:
        for counter, msg in parser.feed(part):
            assert 0 <= counter < 2 ** 48
            assert len(msg) in (7, 14)
        assert len(parser._buf) <= MAX_FRAME_BYTES
    consumed = parser.garbage_bytes + len(parser._buf)
    assert consumed <= sum(map(len, parts))


@FUZZ
@given(chunks)
def test_avr_parser_total_and_bounded(parts):
    parser = AvrParser()
    for part in parts:
        for counter, msg in parser.feed(part):
            assert counter is None or 0 <= counter < 2 ** 48
            assert len(msg) in (7, 14)
        assert len(parser._lines._rest) <= parser._lines.max_line
    parser.finish()


@FUZZ
@given(st.lists(st.one_of(st.binary(max_size=200),
                          st.text(max_size=200).map(lambda s: s.encode("utf-8", "replace")),
                          st.builds(lambda cut, junk: (SBS_SEED[:cut] + junk).encode(),
                                    st.integers(0, len(SBS_SEED)), st.text(",0123.-:", max_size=20))),
                max_size=20))
def test_sbs_parser_total_and_bounded(parts):
    parser = SbsParser()
    for part in parts:
        for rec in parser.feed(part + b"\n"):
            assert rec.kind in ("pos", "id", "vel") and len(rec.icao) == 6
            if rec.kind == "pos":
                assert -90 <= rec.latitude <= 90 and -180 <= rec.longitude <= 180
        assert len(parser._lines._rest) <= parser._lines.max_line


# Streams as receivers and broken links produce them: frames of every type (with 0x1a in
# counters, signal and messages), status frames, garbage, doubled escapes and frames cut short.
_piece = st.one_of(
    st.builds(lambda msg, counter, signal: encode_frame(msg, counter, signal),
              st.sampled_from([b"\x8d\x1a" * 7, b"\x1a" * 14, b"\x5d" * 7, b"\x1a" * 7,
                               b"\x70\x1a", b"\x8d\x48\x40\xd6\x20\x2c\xc3\x71\xc3\x2c\xe0"
                               b"\x57\x60\x98"]),
              st.sampled_from([0, 0x1A, 0x1A1A1A1A1A1A, 2 ** 48 - 1, 123456789]),
              st.sampled_from([0, 0x1A, 0xFF])),
    st.builds(lambda f, cut: f[:cut], st.just(encode_frame(b"\x1a" * 14, 0x1A1A)),
              st.integers(0, 40)),
    st.just(b"\x1a4" + b"\x00" * 9), st.just(b"\x1a\x1a"), st.binary(max_size=30))


@FUZZ
@given(st.lists(_piece, max_size=60), st.lists(st.integers(1, 200), min_size=1, max_size=20))
def test_beast_parser_matches_the_sequential_reading(pieces, cuts):
    stream = b"".join(pieces)
    ours, reference = BeastParser(), SequentialBeastParser()
    got, want, i, k = [], [], 0, 0
    while i < len(stream):
        step = cuts[k % len(cuts)]
        k += 1
        got += ours.feed(stream[i:i + step])
        want += reference.feed(stream[i:i + step])
        i += step
    assert got == want
    for name in ("frames", "modeac", "status", "truncated", "garbage_bytes", "_buf"):
        assert getattr(ours, name) == getattr(reference, name), name


def test_beast_parser_matches_the_sequential_reading_on_the_paris_capture():
    data = need(PARIS_BEAST).read_bytes()[:3_000_000]
    ours, reference = BeastParser(), SequentialBeastParser()
    for i in range(0, len(data), 65536):
        counters, messages = ours.feed_hex(data[i:i + 65536])
        want = reference.feed(data[i:i + 65536])
        assert list(zip(counters.tolist(), messages)) == [(c, m.hex()) for c, m in want]
    assert ours.frames == reference.frames > 100_000
    assert (ours.truncated, ours.garbage_bytes) == (reference.truncated, reference.garbage_bytes)


# Positions of a few aircraft as a receiver sees them: mostly moving on, sometimes the same
# frame twice, a jump no aircraft can make, a position beyond range, or an older position
# released late.
_step = st.tuples(st.integers(0, 3),
                  st.sampled_from([1.0, 1.0, 0.5, 0.0, -5.0, 30.0]),
                  st.sampled_from([(0.01, 0.0), (0.0, 0.01), (0.0, 0.0), (1.0, 1.0),
                                   (5.0, 0.0), (0.002, -0.003)]))


def _noted(steps: list, decoder: PositionDecoder) -> None:
    where = {k: [1633608001.0, 48.88 + k * 0.1, 2.42] for k in range(4)}
    for k, dt_s, (dlat, dlon) in steps:
        w = where[k]
        w[0] += dt_s
        w[1] += dlat
        w[2] += dlon
        decoder.add_position(f"4ca7b{k}", w[0], w[1], w[2], 35000, False)


@FUZZ
@given(st.lists(st.lists(_step, max_size=40), min_size=1, max_size=4))
def test_batch_position_checks_match_the_row_by_row_rule(batches):
    batched, by_row = PositionDecoder(48.88, 2.42, 121.0), PositionDecoder(48.88, 2.42, 121.0)
    for steps in batches:
        _noted(steps, batched)
        _noted(steps, by_row)
        found, by_row._found = by_row._found, []
        if not found:
            continue
        acs, ts, lats, lons = list(zip(*found))[:4]
        want = by_row._check_in_order(list(range(len(ts))), acs, ts, lats, lons)
        found, batched._found = batched._found, []
        acs, ts, lats, lons = list(zip(*found))[:4]
        keep, _, _ = batched._check(acs, ts, lats, lons, *map(np.array, (ts, lats, lons)))
        assert np.flatnonzero(keep).tolist() == want
        for name in ("rejected_range", "rejected_speed", "duplicates", "aircraft"):
            assert getattr(batched.counters, name) == getattr(by_row.counters, name), name
        assert ({k: a.last for k, a in batched._aircraft.items()}
                == {k: a.last for k, a in by_row._aircraft.items()})
