"""Shared steps of the model benchmarks: throw-away databases, and the Paris day plus injected
anomalies through the real ingest path (tests/paris_replay.py)."""

from __future__ import annotations

import sys
import tempfile
import uuid
from pathlib import Path

import psycopg2
import sqlalchemy as sa

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

import helpers_flights as hf  # noqa: E402, F401  (re-exported: bench scripts use _data.hf)
import paris_replay  # noqa: E402
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
    """The Paris day plus ``fraction`` (of all flights) injected anomalies, through the real
    path (tests/paris_replay.py). Returns the labels per icao24 (1 = injected anomaly)."""
    with tempfile.TemporaryDirectory() as tmp:
        return paris_replay.load(engine, fraction, Path(tmp), seed=seed)
