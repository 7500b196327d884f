"""A simulated site whose runways turn round on a day the model never saw, for the traffic-change
tests and bench (``bench/traffic_change.py``).

Days 0-2 are ordinary (seed 1 lands on the preferred westerly runways on all three); on day
``SWAPPED_DAY`` both airports land the other way (north-easterly wind) with the same corridors,
volume and daily shape, plus one flight of each pattern (``swapped_day``; ``back_and_forth_day``:
the wind turns twice, the other way round in the morning and the evening, westerly between).
``load`` inserts days 0-2 and the swapped day as finished flights; ``train_before_day_two``
trains on days 0-1 only; ``score_as_the_worker_does`` scores the rest a few flights at a time
in time order, as the worker's passes do through a day. The tests train once
(``trained_site``: days 0-2 and the model) and score each day ``SWAPPED_DAY`` on a copy.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from dataclasses import dataclass
from pathlib import Path

import sqlalchemy as sa

from helpers_flights import copy_database, insert_tracks, model_settings, sim_tracks
from pipeline.config import Settings
from pipeline.evaluation import simulate
from pipeline.model import score, train

START = simulate.WEEK_START
SEED = 1                  # days 0-2 of seed 1 all land on the preferred (westerly) runways
SWAPPED_DAY = 3
SWAPPED = simulate.DayConditions(SWAPPED_DAY, 50.0, 15.0, 1.5, (True, True))
PATTERNS = ("orbit", "survey", "calibration", "holding")


TEST_PER_DAY = 150         # flights a day of the tests' site


def usual_days(per_day: int, seed: int = SEED) -> list[simulate.SimFlight]:
    """Days 0-2: the ordinary traffic the model is trained on (days 0-1) and first judges."""
    return simulate.generate_days(3, per_day, anomaly_fraction=0.02, seed=seed)


def swapped_day(per_day: int, seed: int = SEED) -> list[simulate.SimFlight]:
    """Day ``SWAPPED_DAY``: both airports land the other way all day, one flight of each
    pattern among them."""
    return simulate.generate_day(SWAPPED_DAY, SWAPPED, per_day, patterns=PATTERNS, seed=seed)


def load(engine: sa.Engine, per_day: int, seed: int = SEED) -> dict[int, simulate.SimFlight]:
    """Insert days 0-2 and the swapped day; returns flights.id -> the flight."""
    flights = usual_days(per_day, seed) + swapped_day(per_day, seed)
    ids = insert_tracks(engine, sim_tracks(flights, START))
    return dict(zip(ids, flights))


# Hours of SWAPPED_DAY flown the other way round by back_and_forth_day; westerly between.
OTHER_WAY_HOURS = ((0.0, 10.0), (17.0, 24.0))


def back_and_forth_day(per_day: int, seed: int = SEED) -> list[simulate.SimFlight]:
    """Day ``SWAPPED_DAY`` with both airports landing the other way until 10:00 and again from
    17:00, on the preferred westerly runways between (the conditions of day 2): two traffic
    changes on one day. In time order."""
    westerly = dataclasses.replace(simulate.day_conditions(3, seed=seed)[2], day=SWAPPED_DAY)
    other_way = swapped_day(per_day, seed)
    # Other addresses for the westerly set: the same day's flights would otherwise share them.
    usual = simulate.generate_day(SWAPPED_DAY, westerly, per_day, patterns=(), seed=seed + 1,
                                  icao_base=simulate.ICAO_PREFIX + 0xA0000)
    day = [f for f in other_way if _other_way(f)] + [f for f in usual if not _other_way(f)]
    return sorted(day, key=lambda f: float(f.t[0]))


def hour_of_day(f: simulate.SimFlight) -> float:
    """Hour of its day at which a flight of a load begins."""
    return float(f.t[0]) / 3600.0 - 24.0 * f.day


def _other_way(f: simulate.SimFlight) -> bool:
    return any(lo <= hour_of_day(f) < hi for lo, hi in OTHER_WAY_HOURS)


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


WEBHOOK = "http://127.0.0.1:9/hook"        # never called: the outbox rows are what is judged


@dataclass(frozen=True)
class TrainedSite:
    """Days 0-2 of the site in a database of their own and the model trained on days 0-1:
    the template each test's day ``SWAPPED_DAY`` is scored on a copy of."""

    url: str
    by_id: dict[int, simulate.SimFlight]       # flights.id -> the flight, days 0-2
    data_dir: Path                             # where its model file lies


def trained_site(databases, data_dir: Path, per_day: int = TEST_PER_DAY) -> TrainedSite:
    """Insert days 0-2 into a new database and train on days 0-1 (one training shared by the
    scenarios of the swapped day: the same flights, seed and epochs give the same model)."""
    url = databases.create()
    engine = sa.create_engine(url)
    try:
        flights = usual_days(per_day)
        by_id = dict(zip(insert_tracks(engine, sim_tracks(flights, START)), flights))
        train_before_day_two(engine, model_settings(url, data_dir, alert_webhook_url=WEBHOOK))
    finally:
        engine.dispose()                       # a template database takes no connections
    return TrainedSite(url, by_id, data_dir)


def scored_site(databases, trained: TrainedSite, day: list[simulate.SimFlight]):
    """A copy of ``trained`` with the flights of ``day`` (of ``SWAPPED_DAY``) inserted, scored
    as the worker does, alerts going to the webhook outbox: (engine, settings, flights.id ->
    flight of all four days)."""
    url = copy_database(databases, trained.url)
    engine = sa.create_engine(url)
    by_id = {**trained.by_id, **dict(zip(insert_tracks(engine, sim_tracks(day, START)), day))}
    settings = model_settings(url, trained.data_dir, alert_webhook_url=WEBHOOK)
    score_as_the_worker_does(engine, settings)
    return engine, settings, by_id


def score_as_the_worker_does(engine: sa.Engine, settings: Settings, batch: int = 6) -> int:
    return score.score_pending(engine, settings, batch=batch)


def day_of(t: dt.datetime) -> int:
    return (t - START).days


def changes_and_alerts(conn: sa.Connection) -> tuple[list, list]:
    """(the traffic_changes rows in order, the webhook outbox's alerts with their flight's
    start and change)."""
    changes = conn.execute(sa.text("SELECT * FROM traffic_changes ORDER BY id")).mappings().all()
    alerts = conn.execute(sa.text("""
        SELECT o.flight_id, o.payload->>'event' AS event, f.first_seen, f.traffic_change_id
          FROM alert_outbox o JOIN flights f ON f.id = o.flight_id
         WHERE o.sink = 'webhook'""")).all()
    return list(changes), list(alerts)


def figures(engine: sa.Engine, by_id: dict[int, simulate.SimFlight]) -> dict:
    """What a user of the swapped day saw: ordinary flights flagged, alerts of their own, the
    changes and their alerts, how long after its first flight each change was found."""
    with engine.connect() as conn:
        changes, alerts = changes_and_alerts(conn)
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
