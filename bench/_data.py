"""Shared loading step of the model benchmarks: the Paris day plus injected anomalies.

The real path: the Paris Beast capture and an anomaly-only Beast stream aligned to it
(``simulate.write_paris_anomalies``) are replayed into one database by the ingest, then
``process --final`` cuts flights and draws their images.
"""

from __future__ import annotations

import sys
import tempfile
import uuid
from pathlib import Path

import psycopg2
import sqlalchemy as sa

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

import helpers_flights as hf  # noqa: E402  (volume benchmarks draw CSV tracks directly)
from pipeline import config, simulate  # noqa: E402
from pipeline.db import migrate  # noqa: E402
from pipeline.flights import store  # noqa: E402
from pipeline.receiver.ingest import ingest_file  # noqa: E402

ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"
PARIS_CSV = ROOT.parent / "shared" / "data" / "paris_2021-10-07.csv.gz"
PARIS_BEAST = ROOT.parent / "shared" / "data" / "paris_2021-10-07.beast"
PARIS_START = "2021-10-07T12:00:01Z"
PARIS_FLIGHTS = 239          # flights of the Paris day (gap rule), for the injected share


def new_database() -> str:
    name = f"adsb_bench_{uuid.uuid4().hex[:10]}"
    conn = psycopg2.connect(ADMIN)
    conn.autocommit = True
    conn.cursor().execute(f'CREATE DATABASE "{name}"')
    conn.close()
    url = f"postgresql+psycopg2://postgres@127.0.0.1:5432/{name}"
    engine = sa.create_engine(url)
    migrate.upgrade(engine)
    engine.dispose()
    return url


def drop_database(url: str) -> None:
    conn = psycopg2.connect(ADMIN)
    conn.autocommit = True
    conn.cursor().execute(f'DROP DATABASE IF EXISTS "{sa.engine.make_url(url).database}" WITH (FORCE)')
    conn.close()


def load(engine: sa.Engine, fraction: float, seed: int = 0) -> dict[str, int]:
    """The Paris day plus ``fraction`` (of all flights) injected anomalies, through the real
    path: both Beast streams replayed by the ingest, then ``process --final``. Returns the
    labels per icao24 (1 = injected anomaly)."""
    url = engine.url.render_as_string(hide_password=False)
    with tempfile.TemporaryDirectory() as tmp:
        settings = config.load({}, {"database_url": url, "data_dir": tmp, "receiver_lat": 48.88,
                                    "receiver_lon": 2.42, "range_km": 121.0})
        ingest_file(settings, PARIS_BEAST, start_time=PARIS_START, progress=False)
        with engine.connect() as conn:
            real = conn.execute(sa.text("SELECT DISTINCT icao24 FROM positions")).scalars().all()
        labels = {icao: 0 for icao in real}
        n = round(fraction * PARIS_FLIGHTS / (1 - fraction)) if fraction else 0
        if n:
            beast, csv_path = Path(tmp) / "anomalies.beast", Path(tmp) / "anomalies.csv"
            sims = simulate.write_paris_anomalies(beast, csv_path, n, seed=seed)
            ingest_file(settings, beast, start_time=PARIS_START, progress=False)
            labels.update({f.icao24: 1 for f in sims})
        store.process_flights(engine, settings, final=True, wait=True)
    return labels
