"""A day whose runway direction the model never saw is one traffic change with one alert, not a
burst of flags: trained on two days of one simulated site (westerly runways), the model scores
a third, ordinary, day and then a fourth on which both airports land the other way, flight by
flight in small batches as the worker does through a day. Patterns flown that day still alert
on their own."""

from __future__ import annotations

import datetime as dt

import pytest
import sqlalchemy as sa

import runway_swap as rs
from pipeline.model import changes

pytestmark = pytest.mark.slow

START = rs.START
SWAPPED_DAY = rs.SWAPPED_DAY


@pytest.fixture(scope="module")
def site(databases, runway_trained):
    engine, settings, by_id = rs.scored_site(databases, runway_trained,
                                             rs.swapped_day(rs.TEST_PER_DAY))
    yield engine, settings, by_id
    engine.dispose()


def _day(t: dt.datetime) -> int:
    return rs.day_of(t)


def test_the_swapped_day_is_one_change_with_one_alert(site):
    engine, settings, by_id = site
    with engine.connect() as conn:
        rows, alerts = rs.changes_and_alerts(conn)
        flagged = conn.execute(sa.text("""
            SELECT f.id, f.first_seen, f.traffic_change_id, s.channel FROM flights f
              JOIN flight_scores s ON s.flight_id = f.id AND s.model_id = f.model_id
             WHERE f.flagged""")).all()
        view = conn.execute(sa.text("SELECT count(*) FROM flagged_flights "
                                    "WHERE traffic_change_id IS NOT NULL")).scalar_one()
    print("\n" + "\n".join(f"change {r['id']}: {r['channel']}, {r['region']}, started "
                            f"{r['started_at']:%d %H:%M}, detected {r['detected_at']:%d %H:%M}, "
                            f"{r['flights_flagged']} flags of {r['flights_scored']} scored "
                            f"(p {r['p_value']:.1g})" for r in rows))
    assert len(rows) == 1, rows
    change = rows[0]
    assert _day(change["started_at"]) == SWAPPED_DAY and change["ended_at"] is None
    assert change["p_value"] < settings.change_alpha
    assert change["flights_flagged"] >= 10

    swapped_ordinary = [f for f in by_id.values() if f.day == SWAPPED_DAY and not f.label]
    own = [a for a in alerts if a.event == "flag" and _day(a.first_seen) == SWAPPED_DAY
           and not by_id[a.flight_id].label]
    flags_of_day = [f for f in flagged if _day(f.first_seen) == SWAPPED_DAY
                    and not by_id[f.id].label]
    print(f"swapped day: {len(flags_of_day)} of {len(swapped_ordinary)} ordinary flights "
          f"flagged, {len(own)} alerted on their own")
    # Without the change every one of them would have alerted.
    assert len(flags_of_day) >= 20
    # One alert for the change. The first flags of a change are evidence only together: their
    # alerts are held (ADSB_CHANGE_HOLD_MIN) until the test trips and the change withdraws
    # them. So no more single alerts than twice the flag rate allows on a day.
    assert [a.event for a in alerts].count("traffic_change") == 1
    assert len(own) <= 2 * settings.flag_rate * len(swapped_ordinary)
    members_alone = [a for a in alerts if a.event == "flag" and a.traffic_change_id is not None]
    assert len(members_alone) <= 1, members_alone
    carrier = next(a for a in alerts if a.event == "traffic_change")
    assert carrier.traffic_change_id == change["id"]
    assert view == change["flights_flagged"]


def test_the_ordinary_unseen_day_raises_no_change(site):
    engine, _, _ = site
    with engine.connect() as conn:
        started = conn.execute(sa.text("SELECT started_at FROM traffic_changes")).scalars().all()
    assert all(_day(t) == SWAPPED_DAY for t in started)


def test_patterns_of_another_group_still_alert_on_their_own(site):
    engine, _, by_id = site
    with engine.connect() as conn:
        change = conn.execute(sa.text("SELECT id, channel FROM traffic_changes")).one()
        rows = conn.execute(sa.text("""
            SELECT f.id, s.channel, f.traffic_change_id, s.where_score, s.direction_score,
                   f.threshold, f.tortuosity,
                   EXISTS (SELECT 1 FROM alert_outbox o WHERE o.flight_id = f.id) AS alerted,
                   (SELECT max(o.next_attempt_at - o.created_at) FROM alert_outbox o
                     WHERE o.flight_id = f.id) AS waited
              FROM flights f
              JOIN flight_scores s ON s.flight_id = f.id AND s.model_id = f.model_id
             WHERE f.flagged AND f.first_seen >= :d"""),
            {"d": START + dt.timedelta(days=SWAPPED_DAY)}).all()
    patterns = [r for r in rows if by_id[r.id].label]
    assert len(patterns) >= 3, "the day's patterns were not flagged"
    # They stand out from the changed traffic: each alerts on its own.
    assert sum(r.alerted and r.traffic_change_id is None for r in patterns) >= 3, patterns
    for r in rows:
        # A flag joins the change when the change's group alone would raise it and it flies no
        # pattern, whichever group carried it (the swapped approaches are rare in shape too).
        if changes.carried(r, change.channel):
            assert r.traffic_change_id == change.id, r
        else:
            assert r.traffic_change_id is None and r.alerted, r
        if changes.is_pattern(r.tortuosity):    # patterns: sent at once, never held for a change
            assert r.waited <= dt.timedelta(seconds=1), r
    # The day's patterns are patterns by their path (twice as long as their ends need or more).
    assert all(changes.is_pattern(r.tortuosity) for r in patterns), patterns


def test_the_change_queues_a_training_and_its_flags_are_not_left_out_of_it(site):
    engine, settings, _ = site
    from pipeline.model import data

    with engine.connect() as conn:
        change = conn.execute(sa.text("SELECT * FROM traffic_changes")).mappings().one()
        job = conn.execute(sa.text("SELECT kind, site, state, args FROM jobs WHERE id = :j"),
                           {"j": change["training_job_id"]}).one()
        active = conn.execute(sa.text("SELECT id FROM models WHERE status = 'active'")).scalar()
        members = set(conn.execute(sa.text(
            "SELECT id FROM flights WHERE traffic_change_id = :c"), {"c": change["id"]}).scalars())
    assert (job.kind, job.site, job.state) == ("train", "default", "queued")
    assert f"traffic change {change['id']}" in job.args["reason"]
    window = data.load_window(engine, settings, active)
    flagged = set(window.ids[window.flagged].tolist())
    assert members and members <= set(window.ids.tolist()) and not members & flagged


def test_binomial_tail_matches_the_exact_sum():
    from math import comb

    for k, n, p in [(0, 10, 0.1), (3, 10, 0.01), (5, 40, 0.01), (12, 300, 0.01), (41, 40, 0.5)]:
        exact = sum(comb(n, i) * p**i * (1 - p)**(n - i) for i in range(k, n + 1))
        assert changes.binomial_tail(k, n, p) == pytest.approx(exact, rel=1e-9, abs=1e-300)
    # Chance or not: 3 flags in 100 flights at 1 % is chance, 10 is not.
    now = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    assert changes.test_window([(now, 100, 3)], 0.01, 1e-6, 5) is None
    trip = changes.test_window([(now, 100, 3), (now, 30, 10)], 0.01, 1e-6, 5)
    assert trip is not None and (trip.n, trip.k) == (30, 10)


def test_a_change_subsides_when_its_flags_are_what_chance_gives():
    # A 3-hour window of a small site: one flag among 25 flights is chance (P = 0.22), where
    # "twice the rate" (0.5) would have kept the change open; three are not (P = 0.002).
    assert changes.subsided(0, 25, 0.01) and changes.subsided(1, 25, 0.01)
    assert not changes.subsided(3, 25, 0.01)
    # A busy window: about what twice the rate allows.
    assert changes.subsided(6, 300, 0.01) and not changes.subsided(7, 300, 0.01)


def test_the_home_page_shows_the_change_and_marks_its_flags(site):
    from starlette.testclient import TestClient

    from pipeline.web.app import create_app

    engine, settings, _ = site
    with engine.connect() as conn:
        change = conn.execute(sa.text("SELECT id, region FROM traffic_changes")).one()
    with TestClient(create_app(settings, engine), base_url="http://127.0.0.1") as client:
        page = client.get("/")
    assert page.status_code == 200
    section = page.text.split('id="changes"')[1].split("</section>")[0]
    assert change.region.replace(",", "") in section.replace(",", "") and "open" in section
    assert f"traffic change {change.id}</a>" in page.text


def test_the_change_message_is_the_documented_one(site):
    import json
    import re
    from pathlib import Path

    from pipeline.alerts import message

    engine, settings, _ = site
    doc = (Path(__file__).resolve().parents[1] / "docs" / "alerts.md").read_text()
    example = json.loads(next(m.group(1) for m in re.finditer(r"^```json\n(.*?)^```", doc,
                                                             re.S | re.M)
                              if '"traffic_change"' in m.group(1)))
    with engine.connect() as conn:
        queued = conn.execute(sa.text("SELECT payload FROM alert_outbox WHERE sink = 'webhook' "
                                      "AND payload->>'event' = 'traffic_change'")).scalar_one()
        sent = message.change_body(conn, settings, queued["traffic_change_id"])
    # What was queued is the message as first written (the count of flags has grown since).
    assert {k: v for k, v in queued.items() if k != "flights_flagged"} == \
        {k: v for k, v in sent.items() if k != "flights_flagged"}
    assert list(example) == list(sent)
    assert {k: type(v) for k, v in example.items()} == {k: type(v) for k, v in sent.items()}
