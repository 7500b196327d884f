"""The gap rule on plain arrays (no database)."""

import numpy as np

from pipeline.flights import segment
from pipeline.flights.segment import Action, Known

US = segment.US
GAP = 600 * US


def t(*seconds):
    return np.array([int(s * US) for s in seconds], dtype=np.int64)


NO_GROUND = np.empty(0, np.int64)


def test_silence_longer_than_gap_splits_shorter_does_not():
    times = t(0, 10, 20, 620, 630, 1231, 1240)   # 600 s exactly stays; 601 s splits
    assert segment.segments(times, NO_GROUND, GAP) == [(0, 4), (5, 6)]


def test_landing_then_take_off_splits_even_within_gap():
    times = t(0, 10, 20, 100, 110)
    assert segment.segments(times, t(50, 60), GAP) == [(0, 2), (3, 4)]
    # A ground position before the first or after the last one splits nothing.
    assert segment.segments(times, t(-5, 200), GAP) == [(0, 4)]


def test_new_run_joins_open_flight_within_gap():
    known = [Known(7, 0, 100 * US, 11, True)]
    out = segment.place(t(200, 210), NO_GROUND, known, GAP)
    assert [(p.action, p.into) for p in out] == [(Action.EXTEND, [7])]
    assert known[0].last_us == 210 * US and known[0].n_positions == 13


def test_run_after_gap_starts_new_flight():
    known = [Known(7, 0, 100 * US, 11, True)]
    out = segment.place(t(800, 810), NO_GROUND, known, GAP)
    assert [p.action for p in out] == [Action.NEW]


def test_run_near_finished_flight_is_late_never_joins_it():
    known = [Known(7, 0, 100 * US, 11, False)]
    out = segment.place(t(50, 150), NO_GROUND, known, GAP)
    assert [p.action for p in out] == [Action.LATE]
    assert known[0].last_us == 100 * US


def test_landing_between_open_flight_and_run_starts_new_flight():
    known = [Known(7, 0, 100 * US, 11, True)]
    out = segment.place(t(200, 210), t(150), known, GAP)
    assert [p.action for p in out] == [Action.NEW]


def test_run_bridging_two_open_flights_merges_them():
    known = [Known(1, 0, 100 * US, 5, True), Known(2, 1000 * US, 1100 * US, 5, True)]
    out = segment.place(t(500, 600), NO_GROUND, known, GAP)
    assert [(p.action, p.into) for p in out] == [(Action.EXTEND, [1, 2])]
    assert (known[0].first_us, known[0].last_us, known[0].n_positions) == (0, 1100 * US, 12)
    assert len(known) == 1
