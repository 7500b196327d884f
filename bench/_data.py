"""Shared loading step of the model benchmarks: the Paris day plus injected anomalies.

Until the ingest and flights stages are merged this builds flights straight from the Paris CSV
and the simulator (tests/helpers_flights.py); switching to the real path (replay the Paris Beast
file and ``simulate.write_paris_anomalies`` into one database, then ``process --final``) only
changes :func:`load`.
"""

from __future__ import annotations

import sys
import uuid
from pathlib import Path

import psycopg2
import sqlalchemy as sa

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

import helpers_flights as hf  # noqa: E402
from pipeline import simulate  # noqa: E402
from pipeline.db import migrate  # noqa: E402

ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"
PARIS_CSV = ROOT.parent / "shared" / "data" / "paris_2021-10-07.csv.gz"


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
    """Paris flights plus ``fraction`` (of the total) injected anomalies; returns the labels."""
    paris = hf.paris_tracks(PARIS_CSV)
    n = round(fraction * len(paris) / (1 - fraction)) if fraction else 0
    sims = hf.sim_tracks(simulate.generate(0, n, seed=seed, anomaly_kinds=simulate.PATTERN_KINDS),
                         simulate.PARIS_WINDOW_START)
    hf.insert_tracks(engine, paris + sims)
    return hf.labels_of(paris + sims)
