"""Wall-clock stamps of live messages: spread over the read's interval; host clock steps counted."""

from __future__ import annotations

import logging

from pipeline.receiver.ingest import WALL_SPREAD_S, IngestStats, WallClock


def test_messages_of_a_read_are_spread_in_order_over_the_time_since_the_previous_read():
    clock = WallClock()
    assert clock.stamp(4, 1000.0, 50.0) == [1000.0 - WALL_SPREAD_S + 0.25 * k for k in (1, 2, 3, 4)]
    assert clock.stamp(2, 1000.2, 50.2) == [1000.1, 1000.2]
    assert clock.stamp(1, 1000.3, 50.3) == [1000.3]
    # After a silence, only the last WALL_SPREAD_S: the messages arrived just now.
    times = clock.stamp(2, 1100.0, 150.0)
    assert times == [1100.0 - WALL_SPREAD_S / 2, 1100.0] and clock.steps == 0


def test_a_step_of_the_host_clock_is_counted_logged_once_and_does_not_stretch_a_read(caplog):
    clock = WallClock()
    clock.stamp(1, 1000.0, 50.0)
    with caplog.at_level(logging.WARNING, "pipeline.receiver.ingest"):
        forward = clock.stamp(2, 1000.5 + 3600, 50.5)       # +1 h while 0.5 s passed
        backward = clock.stamp(2, 1001.0, 51.0)              # and back
    assert clock.steps == 2
    # Each read keeps its own half second, not an hour of spread.
    assert forward == [1000.25 + 3600, 1000.5 + 3600] and backward == [1000.75, 1001.0]
    steps = [r for r in caplog.records if "host clock stepped" in r.getMessage()]
    assert len(steps) == 1 and "+3600 s" in steps[0].getMessage()


def test_steps_reach_the_counters():
    stats = IngestStats("beast")
    stats.wall_clock = WallClock()
    stats.wall_clock.stamp(1, 0.0, 0.0)
    stats.wall_clock.stamp(1, -3600.0, 1.0)
    assert stats.clock_steps == 1
