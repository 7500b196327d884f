"""Shared fixtures: a real PostgreSQL database per test that needs one, and the shared data.

Databases are created on the server named by ADSB_TEST_ADMIN_URL (default: the local server at
127.0.0.1:5432, user postgres); when none answers there, an embedded server is started in a
temporary directory. Never SQLite, never a mock.
"""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass
from pathlib import Path

import psycopg2
import pytest
import sqlalchemy as sa

from pipeline import config
from pipeline.db import migrate

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
PARIS_BEAST = DATA / "paris_2021-10-07.beast"
PARIS_CSV = DATA / "paris_2021-10-07.csv.gz"
SAMPLE_BEAST = DATA / "sample_dump1090.beast"
PARIS_START = "2021-10-07T12:00:01Z"
PARIS_LAT, PARIS_LON, PARIS_RANGE_KM = 48.88, 2.42, 121.0


def need(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"shared test data {path} is absent (expected ../shared/data beside the repo)")
    return path


def _admin_url(tmp_root: Path) -> str:
    url = os.environ.get("ADSB_TEST_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
    try:
        psycopg2.connect(url, connect_timeout=3).close()
        return url
    except psycopg2.OperationalError:
        return _embedded_admin(tmp_root)


def _embedded_admin(tmp_root: Path) -> str:
    from pipeline.db import embedded

    url = embedded.start(tmp_root / "embedded")          # .../adsb?host=...
    return url.replace("postgresql+psycopg2://", "postgresql://").replace("/adsb?", "/postgres?")


@pytest.fixture(scope="session")
def admin_url(tmp_path_factory) -> str:
    return _admin_url(tmp_path_factory.mktemp("pg"))


class DatabaseFactory:
    """Creates throw-away databases with the schema applied; drops them at the end."""

    def __init__(self, admin_url: str) -> None:
        self.admin_url = admin_url
        self.created: list[str] = []

    def _admin(self):
        conn = psycopg2.connect(self.admin_url)
        conn.autocommit = True
        return conn

    def url_for(self, name: str) -> str:
        base = sa.engine.make_url(self.admin_url).set(database=name, drivername="postgresql+psycopg2")
        return base.render_as_string(hide_password=False)

    def create(self, migrate_schema: bool = True) -> str:
        name = f"adsb_test_{uuid.uuid4().hex[:12]}"
        conn = self._admin()
        with conn.cursor() as cur:
            cur.execute(f'CREATE DATABASE "{name}"')
        conn.close()
        self.created.append(name)
        url = self.url_for(name)
        if migrate_schema:
            engine = sa.create_engine(url)
            migrate.upgrade(engine)
            engine.dispose()
        return url

    def drop_all(self) -> None:
        conn = self._admin()
        with conn.cursor() as cur:
            for name in self.created:
                cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.close()


@pytest.fixture(scope="session")
def databases(admin_url):
    factory = DatabaseFactory(admin_url)
    yield factory
    factory.drop_all()


@pytest.fixture
def db_url(databases) -> str:
    """URL of a fresh, migrated, empty database for this test."""
    return databases.create()


@pytest.fixture
def engine(db_url):
    eng = sa.create_engine(db_url)
    yield eng
    eng.dispose()


@pytest.fixture
def settings(db_url, tmp_path) -> config.Settings:
    """Settings for the Paris data against this test's database."""
    return config.load({}, {
        "database_url": db_url, "data_dir": str(tmp_path / "data"),
        "receiver_lat": PARIS_LAT, "receiver_lon": PARIS_LON, "range_km": PARIS_RANGE_KM,
    })


@dataclass
class SimTrained:
    template: str          # the simulated site, untrained (copy it to train again)
    url: str               # a copy of it after one full training (its model active): read only
    tracks: list
    settings: config.Settings
    result: object


@pytest.fixture(scope="session")
def sim_trained(databases, tmp_path_factory) -> SimTrained:
    """A simulated site of 105 flights (5 anomalies) and one full training on a copy of it:
    a fit of about a minute here, shared by every test that needs a real model of it."""
    import helpers_flights as hf
    from pipeline.model import train

    template, tracks = hf.sim_database(databases, n_normal=100, n_anomalies=5)
    url = hf.copy_database(databases, template)
    settings = hf.model_settings(url, tmp_path_factory.mktemp("sim-trained") / "data")
    engine = sa.create_engine(url)
    try:
        result = train.run_training(settings, seed=9, verbose=False, engine=engine,
                                    max_epochs=60)
    finally:
        engine.dispose()
    return SimTrained(template, url, tracks, settings, result)


@pytest.fixture(scope="session")
def runway_trained(databases, tmp_path_factory):
    """The runway-swap site's days 0-2 and its model trained on days 0-1 (tests/runway_swap.py),
    trained once for the traffic-change tests, which score their own day 3 on a copy."""
    import runway_swap

    return runway_swap.trained_site(databases, tmp_path_factory.mktemp("runway") / "data")
