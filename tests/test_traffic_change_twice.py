"""The wind turns twice in one day: a traffic change that subsides and comes back is a second
change with its own one alert, not a burst. Trained on two days of one simulated site
(westerly runways), the model scores an ordinary third day and then a fourth on which both
airports land the other way until 10:00, the usual way until 17:00 and the other way again
after, a few flights at a time as the worker does."""

from __future__ import annotations

import datetime as dt

import pytest
import sqlalchemy as sa

import runway_swap as rs

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def site(databases, runway_trained):
    engine, settings, by_id = rs.scored_site(databases, runway_trained,
                                             rs.back_and_forth_day(rs.TEST_PER_DAY))
    yield engine, settings, by_id
    engine.dispose()


def _hour(t: dt.datetime) -> float:
    return (t - rs.START).total_seconds() / 3600.0 - 24.0 * rs.day_of(t)


def test_a_change_that_subsides_and_comes_back_is_a_second_change_with_its_own_alert(site):
    engine, settings, by_id = site
    with engine.connect() as conn:
        rows, alerts = rs.changes_and_alerts(conn)
        members = conn.execute(sa.text(
            "SELECT id, first_seen, traffic_change_id FROM flights "
            "WHERE traffic_change_id IS NOT NULL")).all()
    print("\n" + "\n".join(f"change {r['id']}: {r['channel']}, started {r['started_at']:%d %H:%M}, "
                            f"detected {r['detected_at']:%d %H:%M}, ended "
                            f"{r['ended_at'] and format(r['ended_at'], '%d %H:%M')} "
                            f"({r['end_reason']}), {r['flights_flagged']} flags"
                            for r in rows))
    assert len(rows) == 2, rows
    first, second = rows
    assert {rs.day_of(r["started_at"]) for r in rows} == {rs.SWAPPED_DAY}
    # The first ended because its group's flags fell back once the runways turned back at
    # 10:00, about a window of usual traffic later (not held open by the odd chance flag of
    # the usual traffic until the evening), and before the second began; the second is still
    # open (no model has learnt it yet).
    assert first["end_reason"] == "subsided"
    assert _hour(first["started_at"]) < 10
    assert 10 + settings.change_window_h <= _hour(first["ended_at"]) \
        < 10 + settings.change_window_h + 1.5
    assert first["ended_at"] <= second["started_at"] and _hour(second["started_at"]) >= 17
    assert second["ended_at"] is None
    # Each change holds the flights of its own spell of the other runway (and, while it is
    # open, the odd chance flag of the usual traffic its group raises: at most one here).
    for change, (lo, hi) in zip(rows, rs.OTHER_WAY_HOURS):
        held = sorted(_hour(m.first_seen) for m in members if m.traffic_change_id == change["id"])
        print(f"change {change['id']} holds flights that began at", [round(h, 1) for h in held])
        assert len(held) == change["flights_flagged"] >= 10
        assert sum(not lo <= h < hi for h in held) <= 1, change["id"]
        assert all(change["started_at"] <= m.first_seen for m in members
                   if m.traffic_change_id == change["id"])
    # One alert per change, and no more single alerts of ordinary flights that day than twice
    # the flag rate allows.
    carriers = [a for a in alerts if a.event == "traffic_change"]
    assert sorted(a.traffic_change_id for a in carriers) == [first["id"], second["id"]]
    ordinary = [f for f in by_id.values() if f.day == rs.SWAPPED_DAY and not f.label]
    own = [a for a in alerts if a.event == "flag" and rs.day_of(a.first_seen) == rs.SWAPPED_DAY
           and not by_id[a.flight_id].label]
    print(f"swapped day: {len(ordinary)} ordinary flights, {len(own)} alerted on their own")
    assert len(own) <= 2 * settings.flag_rate * len(ordinary)
