"""Property-based tests: arbitrary bytes never break the parsers or grow their buffers."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings, strategies as st

from conftest import SAMPLE_BEAST
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
