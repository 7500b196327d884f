"""A simulated site whose runways turn round on a day the model never saw, for the traffic-change
test and bench (``bench/traffic_change.py``).

Days 0-2 are ordinary (seed 1 lands on the preferred westerly runways on all three); on day
``SWAPPED_DAY`` both airports land the other way (north-easterly wind) with the same corridors,
volume and daily shape, plus one flight of each pattern. ``load`` inserts them all as finished
flights; ``train_before_day_two`` trains on days 0-1 only; ``score_as_the_worker_does`` scores
the rest a few flights at a time in time order, as the worker's passes do through a day.
"""

from __future__ import annotations

import datetime as dt

import sqlalchemy as sa

from helpers_flights import insert_tracks, sim_tracks
from pipeline.config import Settings
from pipeline.evaluation import simulate
from pipeline.model import score, train

START = simulate.WEEK_START
SEED = 1                  # days 0-2 of seed 1 all land on the preferred (westerly) runways
SWAPPED_DAY = 3
SWAPPED = simulate.DayConditions(SWAPPED_DAY, 50.0, 15.0, 1.5, (True, True))
PATTERNS = ("orbit", "survey", "calibration", "holding")


def load(engine: sa.Engine, per_day: int, seed: int = SEED) -> dict[int, simulate.SimFlight]:
    """Insert the four days; returns flights.id -> the flight."""
    flights = (simulate.generate_days(3, per_day, anomaly_fraction=0.02, seed=seed)
               + simulate.generate_day(SWAPPED_DAY, SWAPPED, per_day, patterns=PATTERNS,
                                       seed=seed))
    ids = insert_tracks(engine, sim_tracks(flights, START))
    return dict(zip(ids, flights))


def train_before_day_two(engine: sa.Engine, settings: Settings, *, seed: int = 3,
                         max_epochs: int = 20):
    """Train on days 0-1 only (the later days are held back as not yet finished)."""
    day2 = START + dt.timedelta(days=2)
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE flights SET state = 'open' WHERE first_seen >= :d"),
                     {"d": day2})
    try:
        return train.run_training(settings, seed=seed, verbose=False, engine=engine,
                                  max_epochs=max_epochs)
    finally:
        with engine.begin() as conn:
            conn.execute(sa.text("UPDATE flights SET state = 'finished' WHERE state = 'open'"))


def score_as_the_worker_does(engine: sa.Engine, settings: Settings, batch: int = 6) -> int:
    return score.score_pending(engine, settings, batch=batch)


def day_of(t: dt.datetime) -> int:
    return (t - START).days


def figures(engine: sa.Engine, by_id: dict[int, simulate.SimFlight]) -> dict:
    """What a user of the swapped day saw: ordinary flights flagged, alerts of their own, the
    changes and their alerts, how long after its first flight each change was found."""
    with engine.connect() as conn:
        changes = conn.execute(sa.text(
            "SELECT * FROM traffic_changes ORDER BY id")).mappings().all()
        alerts = conn.execute(sa.text("""
            SELECT o.flight_id, o.payload->>'event' AS event, f.first_seen
              FROM alert_outbox o JOIN flights f ON f.id = o.flight_id
             WHERE o.sink = 'webhook'""")).all()
        flagged = conn.execute(sa.text(
            "SELECT id, first_seen FROM flights WHERE flagged")).all()
    day = [f for f in by_id.values() if f.day == SWAPPED_DAY and not f.label]
    return {
        "ordinary": len(day),
        "ordinary_flagged": sum(day_of(r.first_seen) == SWAPPED_DAY and not by_id[r.id].label
                                for r in flagged),
        "own_alerts": sum(a.event == "flag" and day_of(a.first_seen) == SWAPPED_DAY
                          and not by_id[a.flight_id].label for a in alerts),
        "change_alerts": sum(a.event == "traffic_change" for a in alerts),
        "changes": changes,
        # From the first flight of the change (its flags began) to the flag that proved it.
        "found_after_min": [(c["detected_at"] - c["started_at"]).total_seconds() / 60
                            for c in changes],
    }
