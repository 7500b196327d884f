"""Replaying the Paris capture stores the real positions: checked row by row against the CSV."""

from __future__ import annotations

import pytest

from _ingest_support import airborne_csv, metres, paris_frames, same_rows, stored_rows
from conftest import PARIS_BEAST, PARIS_CSV, PARIS_START, need
from pipeline.receiver.avr import format_frame
from pipeline.receiver.ingest import ingest_file
from pipeline.receiver.sbs import format_line

START_EPOCH = 1633608001.0
SUBSET_BYTES = 1_500_000          # about 25 minutes of traffic: enough for every code path


@pytest.mark.slow
def test_paris_replay_matches_the_csv(settings, db_url, tmp_path):
    stats = ingest_file(settings, need(PARIS_BEAST), "auto", PARIS_START, progress=False)
    rows = stored_rows(db_url)
    truth = airborne_csv(need(PARIS_CSV))
    assert len(truth) == 229_134

    # Counters: what the data README says the stream holds.
    assert stats.frames == 522_284 - 4_668          # Mode A/C frames are skipped
    assert stats.crc_failures == 2_275
    assert stats.truncated_frames > 0 and stats.garbage_bytes > 0
    assert stats.aircraft_seen == 213
    assert stats.rows_written == stats.positions == len(rows)
    assert len({(r[1], r[0]) for r in rows}) == len(rows), "a position was stored twice"

    within, far, altitude_ok, callsign_ok, early = 0, [], 0, 0, 0
    for t, icao, lat, lon, alt, _gs, _trk, _vr, callsign, on_ground in rows:
        ref = truth.get((icao, round(t * 1000)))
        if ref is None:
            # The README's extra frame: the other CPR format of a row, sent 0.5 s before it
            # after a gap. It carries that row's position at its own (earlier) time.
            ref = truth.get((icao, round(t * 1000) + 500))
            assert ref is not None, f"stored row {icao} {t} has no CSV row it belongs to"
            assert metres(lat, lon, ref[1], ref[2]) <= 10
            early += 1
            continue
        assert abs(ref[0] - t) < 0.01 and on_ground is False
        d = metres(lat, lon, ref[1], ref[2])
        if d > 10:
            far.append((icao, t, d))
        else:
            within += 1
        altitude_ok += alt == ref[3]
        callsign_ok += callsign == ref[4]
    assert not far, f"{len(far)} positions farther than 10 m from their row, e.g. {far[:3]}"
    assert within / len(truth) >= 0.985, f"only {within} of {len(truth)} airborne rows stored"
    assert early <= 288                 # the number of such frames in the stream
    assert altitude_ok == len(rows) - early
    # A callsign change reaches the decoder with the next identification message (~5 s).
    assert callsign_ok / (len(rows) - early) > 0.995


def _ingest_text(settings, tmp_path, name: str, lines: list[str], fmt: str):
    path = tmp_path / name
    path.write_text("\n".join(lines) + "\n")
    return ingest_file(settings, path, fmt, PARIS_START, progress=False)


@pytest.mark.slow
def test_avr_and_sbs_give_the_same_rows_as_beast(settings, databases, tmp_path):
    need(PARIS_BEAST)
    beast = tmp_path / "subset.beast"
    beast.write_bytes(PARIS_BEAST.read_bytes()[:SUBSET_BYTES])
    ingest_file(settings, beast, "beast", PARIS_START, progress=False)
    reference = stored_rows(settings.database_url)
    assert len(reference) > 25_000

    avr_db = databases.create()
    avr_settings = settings.replace(database_url=avr_db)
    frames = paris_frames(beast, SUBSET_BYTES)
    stats = _ingest_text(avr_settings, tmp_path, "subset.avr",
                         [format_frame(m, c) for c, m in frames], "auto")
    assert stats.format == "avr" and stats.frames == len(frames)
    matched, diffs = same_rows(reference, stored_rows(avr_db))
    assert not diffs and matched == len(reference)

    # SBS carries decoded fields: the converted rows (callsign and velocity first, as
    # dump1090 sends MSG,1 and MSG,4 before the position that follows them) come back as-is.
    sbs_db = databases.create()
    sbs_settings = settings.replace(database_url=sbs_db)
    lines, last = [], {}
    for t, icao, lat, lon, alt, gs, trk, vr, callsign, on_ground in reference:
        extras = (gs, trk, vr, callsign)
        if last.get(icao) != extras:
            last[icao] = extras
            lines.append(format_line(1, icao, t, callsign=callsign) if callsign else
                         "MSG,1,1,1,XXXXXX")                       # a bad line, counted
            lines.append(format_line(4, icao, t, groundspeed=gs, track=trk, vertical_rate=vr)
                         if gs is not None else "MSG,4,1,1," + icao)
        lines.append(format_line(3, icao, t, altitude=alt, latitude=lat, longitude=lon,
                                 on_ground=on_ground))
    stats = _ingest_text(sbs_settings, tmp_path, "subset.sbs", lines, "auto")
    assert stats.format == "sbs"
    assert stats.positions == len(reference)
    matched, diffs = same_rows(reference, stored_rows(sbs_db), time_tol=1e-3, pos_tol_m=0.05)
    assert not diffs[:5] and matched == len(reference)
