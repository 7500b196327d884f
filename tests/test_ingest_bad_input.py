"""Bad input never crashes the ingest: counters say what happened, nothing wrong is stored."""

from __future__ import annotations

import random

import pyModeS.util
import pytest

from _ingest_support import airborne_csv, claim_errors, ingest_bytes, stored_rows
from conftest import PARIS_BEAST, PARIS_CSV, PARIS_START, SAMPLE_BEAST, need
from pipeline.receiver.beast import BeastParser, encode_frame
from pipeline.receiver.ingest import ingest_file

SUBSET_BYTES = 400_000

_ingest = ingest_bytes


def test_random_bytes(settings, db_url, tmp_path):
    data = random.Random(7).randbytes(300_000)
    stats = _ingest(settings, tmp_path, data)
    assert stats.bytes == len(data)
    assert stats.garbage_bytes > 0
    # Random frames that happen to parse fail the CRC; none becomes a position.
    assert stats.positions == 0 and stored_rows(db_url) == []


def test_empty_file(settings, db_url, tmp_path):
    stats = _ingest(settings, tmp_path, b"", fmt="auto")
    assert (stats.bytes, stats.frames, stats.positions) == (0, 0, 0)
    assert stored_rows(db_url) == []


def test_text_file_passed_as_beast(settings, db_url, tmp_path):
    text = ("MSG,3,1,1,4840D6,1,2021/10/07,12:00:01.000,,,,38000,,,48.9,2.4,,,,,,0\n" * 500
            ).encode()
    stats = _ingest(settings, tmp_path, text, fmt="beast")
    assert stats.frames == 0 and stats.garbage_bytes == len(text)
    assert stored_rows(db_url) == []


def test_unknown_text_with_auto_format_is_a_clear_error(settings, tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("these are notes, not a capture\n")
    with pytest.raises(ValueError, match="cannot tell the format"):
        ingest_file(settings, path, "auto", PARIS_START, progress=False)


def test_truncated_and_bit_flipped_frames(settings, databases, tmp_path):
    raw = need(PARIS_BEAST).read_bytes()[:SUBSET_BYTES]
    # The capture's own corrupted frames are left out, so that every failure below is ours.
    frames = [(c, m) for c, m in BeastParser().feed(raw)
              if m[0] >> 3 not in (17, 18) or pyModeS.util.crc(m.hex()) == 0]
    clean = b"".join(encode_frame(m, c) for c, m in frames)
    stats = _ingest(settings, tmp_path, clean, name="clean.beast")
    reference = stored_rows(settings.database_url)
    assert stats.crc_failures == 0 and len(reference) > 5000

    rng = random.Random(11)
    damaged, flipped, cut = [], 0, 0
    for c, m in frames:
        frame = encode_frame(m, c)
        roll = rng.random()
        if roll < 0.05 and len(m) == 14:
            bits = bytearray(m)
            for _ in range(rng.randint(1, 3)):
                bit = rng.randrange(8, 112)             # keep the DF field, as the README does
                bits[bit // 8] ^= 0x80 >> (bit % 8)
            frame, flipped = encode_frame(bytes(bits), c), flipped + 1
        elif roll < 0.07:
            frame, cut = frame[:rng.randint(2, len(frame) - 1)], cut + 1
        damaged.append(frame)
    db = databases.create()
    stats = _ingest(settings.replace(database_url=db), tmp_path, b"".join(damaged),
                    name="damaged.beast")
    rows = stored_rows(db)
    assert stats.truncated_frames >= cut * 0.9
    assert stats.crc_failures >= flipped * 0.9         # a few flips hit non-DF17 frames
    # Nothing invented: every stored position is a real one, at its own time.
    assert claim_errors(rows, airborne_csv(need(PARIS_CSV))) == []
    assert len(rows) > 0.8 * len(reference)


def test_sbs_lines_with_missing_fields(settings, db_url, tmp_path):
    lines = [
        "MSG,1,1,1,4840D6,1,2021/10/07,12:00:00.000,2021/10/07,12:00:00.000,KLM1023,,,,,,,,,,,0",
        "MSG,3,1,1,4840D6,1,2021/10/07,12:00:01.000,2021/10/07,12:00:01.000,,38000,,,48.9,2.4,,,,,,0",
        "MSG,3,1,1,4840D6,1,2021/10/07,12:00:02.000",
        "MSG,3,1,1,4840D6,1,,,,,,38000,,,48.91,2.41,,,,,,0",
        "MSG,3,1,1,,1,2021/10/07,12:00:03.000,,,,38000,,,48.92,2.42,,,,,,0",
        "MSG,3,1,1,4840D6,1,2021/10/07,12:00:04.000,,,,38000,,,,2.43,,,,,,0",
        "MSG,3,1,1,4840D6,1,2021/10/07,12:00:05.000,,,,38000,,,58.0,2.4,,,,,,0",   # 1000 km away
        "MSG,3,1,1,4840D6,1,2021/10/07,12:00:06.000,,,,38000,,,48.95,2.4,,,,,,0",
        "MSG,3,1,1,4840D6,1,2021/10/07,12:00:07.000,,,,38000,,,48.0,2.4,,,,,,0",   # 100 km in 1 s
    ]
    stats = _ingest(settings, tmp_path, ("\n".join(lines) + "\n").encode(), fmt="auto",
                    name="feed.sbs")
    assert stats.format == "sbs"
    assert stats.bad_lines == 4
    assert stats.rejected_range == 1 and stats.rejected_speed == 1
    rows = stored_rows(db_url)
    assert [(r[2], r[3], r[8]) for r in rows] == [(48.9, 2.4, "KLM1023"), (48.95, 2.4, "KLM1023")]


def test_sample_dump1090_capture(settings, db_url, tmp_path):
    """A real receiver's bytes: every frame framed, nothing invented."""
    stats = ingest_file(settings, need(SAMPLE_BEAST), "auto", PARIS_START, progress=False)
    assert stats.format == "beast"
    assert stats.frames == stats.messages == 239
    assert stats.garbage_bytes == 0 and stats.truncated_frames == 0
    assert stats.crc_failures == 0                  # its 23 DF17 frames are all intact
    # The capture is far from Paris and 24 s long: PipeDecoder has too few pairs to trust a
    # track, so what is stored (if anything) lies within the configured range.
    assert stats.rows_written == stats.positions == len(stored_rows(db_url))
