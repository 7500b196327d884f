"""Data faults through the real framing, decoding and COPY path: the first ~10 minutes of the
Paris capture, altered, replayed into PostgreSQL. Each fault is counted, nothing wrong is stored.

Every test compares with the unaltered replay (``baseline``) and with the CSV the capture was
encoded from (``claim_errors``: a stored row more than 10 m from its real position).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import pytest
from pyModeS.util import crc

from _ingest_support import airborne_csv, claim_errors, ingest_bytes, paris_frames, stored_rows
from conftest import PARIS_BEAST, PARIS_CSV, need
from pipeline import config
from pipeline.evaluation import simulate
from pipeline.receiver.beast import COUNTER_HZ, encode_frame

pytestmark = pytest.mark.slow

SUBSET_BYTES = 600_000
T0 = 1633608001.0                   # counter 0 of the capture


@dataclass
class Replay:
    stats: object
    rows: list[tuple]

    def keys(self, icao: str | None = None) -> Counter:
        return Counter((r[1], round(r[0], 3)) for r in self.rows if icao in (None, r[1]))


def _t(counter: int) -> float:
    return T0 + counter / COUNTER_HZ


def _is_position(msg: bytes) -> bool:
    return len(msg) == 14 and msg[0] >> 3 == 17 and 9 <= msg[4] >> 3 <= 18


def _odd(msg: bytes) -> bool:
    return bool(msg[6] & 0x04)          # ME bit 22: CPR format


@pytest.fixture(scope="module")
def paris(databases, tmp_path_factory):
    """Frames, CSV truth, each aircraft's good position frames, and the unaltered replay."""
    frames = paris_frames(need(PARIS_BEAST), SUBSET_BYTES)
    truth = airborne_csv(need(PARIS_CSV))
    by_aircraft: dict[str, list[int]] = {}
    for i, (c, m) in enumerate(frames):
        if _is_position(m) and crc(m.hex()) == 0 and (m[1:4].hex(), round(_t(c) * 1000)) in truth:
            by_aircraft.setdefault(m[1:4].hex(), []).append(i)
    tmp = tmp_path_factory.mktemp("data-faults")

    def replay(altered: list[tuple[int, bytes]], name: str) -> Replay:
        url = databases.create()
        settings = config.load({}, {"database_url": url, "data_dir": str(tmp / name),
                                    "receiver_lat": 48.88, "receiver_lon": 2.42, "range_km": 121.0})
        data = b"".join(encode_frame(m, c) for c, m in altered)
        stats = ingest_bytes(settings, tmp, data, name=f"{name}.beast")
        rows = stored_rows(url)
        assert stats.rows_written == stats.positions == len(rows)
        return Replay(stats, rows)

    base = replay(frames, "baseline")
    assert len(base.rows) > 10_000 and claim_errors(base.rows, truth) == []
    busy = sorted(by_aircraft, key=lambda k: -len(by_aircraft[k]))
    return frames, truth, by_aircraft, busy, replay, base


def test_every_frame_twice_stores_each_position_once(paris):
    frames, truth, _, _, replay, base = paris
    got = replay([x for f in frames for x in (f, f)], "twice")
    keys = got.keys()
    print(f"\nevery frame twice: {len(frames)} frames sent twice, {got.stats.duplicates} duplicate "
          f"positions dropped, {len(got.rows)} rows stored (unaltered: {len(base.rows)}), "
          f"{sum(keys.values()) - len(keys)} stored twice")
    assert max(keys.values()) == 1, "a position was stored twice"
    assert claim_errors(got.rows, truth) == []
    assert got.stats.duplicates >= 0.99 * len(base.rows)
    assert not base.keys() - keys                      # every position of the clean replay


def test_timestamps_going_backwards_are_counted_and_nothing_misplaced(paris):
    frames, truth, _, _, replay, base = paris
    # One minute of frames in reverse order: every timestamp in it steps backwards.
    a = len(frames) // 2
    b = next(i for i in range(a, len(frames)) if frames[i][0] - frames[a][0] > 60 * COUNTER_HZ)
    got = replay(frames[:a] + frames[a:b][::-1] + frames[b:], "backwards")
    before = _t(frames[a][0])
    lost = len(base.rows) - len(got.rows)
    print(f"\n{b - a} frames (60 s) in reverse order: {got.stats.out_of_order} positions "
          f"counted out of order and not stored, {lost} fewer rows than the unaltered replay, "
          f"{len(claim_errors(got.rows, truth))} misplaced")
    # Without the check, a frame older than its CPR partner got the partner's position.
    assert claim_errors(got.rows, truth) == []
    assert got.stats.out_of_order > 100 and max(got.keys().values()) == 1
    assert [r for r in got.rows if r[0] < before] == [r for r in base.rows if r[0] < before]


def test_cpr_halves_more_than_10_s_apart_give_no_position(paris):
    frames, truth, by_aircraft, busy, replay, base = paris
    # Three aircraft send an even, 12 s later an odd, 12 s later an even... position: each
    # CPR pair is 12 s apart, beyond PipeDecoder's 10 s pair window.
    thinned, last, pairs = set(busy[3:6]), {}, 0
    altered = []
    for c, m in frames:
        icao = m[1:4].hex()
        if icao in thinned and _is_position(m):
            if crc(m.hex()) or icao in last and (_t(c) - last[icao][0] < 12
                                                 or last[icao][1] == _odd(m)):
                continue
            pairs += icao in last
            last[icao] = (_t(c), _odd(m))
        altered.append((c, m))
    got = replay(altered, "far-apart")
    print(f"\nCPR halves 12 s apart: {pairs} even/odd pairs of {len(thinned)} aircraft, "
          f"{sum(r[1] in thinned for r in got.rows)} positions stored for them")
    assert pairs > 20
    assert not any(r[1] in thinned for r in got.rows)
    assert claim_errors(got.rows, truth) == []
    assert got.rows == [r for r in base.rows if r[1] not in thinned]


def test_position_jump_is_rejected_for_speed(paris):
    frames, truth, by_aircraft, busy, replay, base = paris
    icao = busy[0]
    altered = list(frames)
    jumped = by_aircraft[icao][100:106]          # six frames in a row, 100 km north
    for i in jumped:
        c, m = frames[i]
        _, lat, lon, alt, _ = truth[(icao, round(_t(c) * 1000))]
        altered[i] = (c, simulate.position_message(icao, lat + 0.9, lon, alt, _odd(m)))
    got = replay(altered, "jump")
    rejected = got.stats.rejected_speed - base.stats.rejected_speed
    print(f"\nposition jump of 100 km: {len(jumped)} frames, {rejected} rejected for speed, "
          f"{len(claim_errors(got.rows, truth))} stored off their real position")
    assert rejected == len(jumped)
    assert claim_errors(got.rows, truth) == []
    assert not got.keys() - base.keys()
    assert len(base.keys(icao) - got.keys(icao)) == len(jumped)


def test_altitude_spike_is_rejected_and_counted(paris):
    frames, truth, by_aircraft, busy, replay, base = paris
    icao, i = next((k, i) for k in busy for i in by_aircraft[k][50:]
                   if 0 < (truth[(k, round(_t(frames[i][0]) * 1000))][3] or 0) < 20_000)
    c, m = frames[i]
    _, lat, lon, alt, _ = truth[(icao, round(_t(c) * 1000))]
    altered = list(frames)
    altered[i] = (c, simulate.position_message(icao, lat, lon, alt + 30_000, _odd(m)))
    got = replay(altered, "spike")
    counted = got.stats.rejected_altitude - base.stats.rejected_altitude
    print(f"\naltitude spike of +30,000 ft at {alt} ft: {counted} position rejected for altitude, "
          f"{len(base.rows) - len(got.rows)} row fewer than the unaltered replay")
    assert counted == 1
    assert (icao, round(_t(c), 3)) not in got.keys()
    assert got.rows == [r for r in base.rows if (r[1], round(r[0], 3)) != (icao, round(_t(c), 3))]
