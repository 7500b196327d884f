"""Property-based tests: arbitrary bytes never break the parsers or grow their buffers."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings, strategies as st

from beast_reference import SequentialBeastParser
from conftest import PARIS_BEAST, SAMPLE_BEAST, need
from pipeline.receiver.avr import AvrParser
from pipeline.receiver.beast import MAX_FRAME_BYTES, BeastParser, encode_frame
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
