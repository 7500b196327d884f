"""The Paris day plus injected anomalies, through the real path (used by tests and benchmarks).

The Paris Beast capture and an anomaly-only Beast stream aligned to it
(``simulate.write_paris_anomalies``) are replayed into one database by the ingest, then
``process --final`` cuts flights and draws their images.
"""

from __future__ import annotations

from pathlib import Path

import sqlalchemy as sa

from pipeline import config
from pipeline.evaluation import routes, simulate
from pipeline.flights import store
from pipeline.receiver.ingest import ingest_file

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
PARIS_BEAST = DATA / "paris_2021-10-07.beast"
PARIS_CSV = DATA / "paris_2021-10-07.csv.gz"
PARIS_START = "2021-10-07T12:00:01Z"
PARIS_FLIGHTS = 239          # flights of the Paris day (gap rule), for the injected share


def anomalies_for(fraction: float) -> int:
    """Number of injected anomalies that make ``fraction`` of all flights."""
    return round(fraction * PARIS_FLIGHTS / (1 - fraction)) if fraction else 0


def load(engine: sa.Engine, fraction: float, data_dir: Path, seed: int = 0,
         routes_fraction: float = 0.0, kinds: dict[str, str] | None = None) -> dict[str, int]:
    """Replay the Paris day plus ``fraction`` (of all flights) injected pattern anomalies and
    ``routes_fraction`` of its real flights rotated about the receiver (approaches to nowhere,
    :mod:`pipeline.evaluation.routes`) into the database of ``engine`` and close every flight.
    Returns labels per icao24 (1 = injected); ``kinds``, when given, receives each anomaly's
    kind."""
    url = engine.url.render_as_string(hide_password=False)
    settings = config.load({}, {"database_url": url, "data_dir": str(data_dir),
                                "receiver_lat": 48.88, "receiver_lon": 2.42, "range_km": 121.0})
    ingest_file(settings, PARIS_BEAST, start_time=PARIS_START, progress=False)
    with engine.connect() as conn:
        real = conn.execute(sa.text("SELECT DISTINCT icao24 FROM positions")).scalars().all()
    labels = {icao: 0 for icao in real}
    n = anomalies_for(fraction)
    if n:
        beast, csv_path = Path(data_dir) / "anomalies.beast", Path(data_dir) / "anomalies.csv"
        sims = simulate.write_paris_anomalies(beast, csv_path, n, seed=seed)
        ingest_file(settings, beast, start_time=PARIS_START, progress=False)
        labels.update({f.icao24: 1 for f in sims})
        if kinds is not None:
            kinds.update({f.icao24: f.kind for f in sims})
    if routes_fraction:
        from helpers_flights import paris_tracks

        rotated = routes.rotated_flights(paris_tracks(PARIS_CSV), routes_fraction, seed=seed)
        beast = Path(data_dir) / "routes.beast"
        routes.write_beast(beast, rotated)
        ingest_file(settings, beast, start_time=PARIS_START, progress=False)
        labels.update({a.icao24: 1 for a in rotated})
        if kinds is not None:
            kinds.update({a.icao24: a.kind for a in rotated})
    store.process_flights(engine, settings, final=True, wait=True)
    return labels
