"""`adsb-pipeline demo` end to end, as a newcomer runs it: no database URL (embedded PostgreSQL),
a simulated receiver over TCP, the real ingest, flights, training, scoring and report."""

from __future__ import annotations

import csv
import os
import subprocess
import sys

import psycopg2
import pytest


def cli(*args, env, timeout):
    return subprocess.run([sys.executable, "-m", "pipeline.cli", *args], env=env,
                          capture_output=True, text=True, timeout=timeout)


@pytest.mark.slow
def test_demo_flags_the_simulated_anomalies(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("ADSB_")}
    env.update({"ADSB_DATA_DIR": str(tmp_path / "demo"), "ADSB_METRICS_PORT": "0",
                "ADSB_TRAIN_SEED": "3", "ADSB_TRAIN_BUDGET_S": "30"})
    try:
        # A shortened day served as fast as possible; the defaults take about five minutes.
        r = cli("demo", "--flights", "220", "--anomalies", "8", "--hours", "2", "--speed", "0",
                env=env, timeout=800)
        assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-4000:]
        assert "flagged (highest score first)" in r.stdout
        report = tmp_path / "demo" / "report" / "index.html"
        assert report.exists() and "<img" in report.read_text()

        labels = {row["icao24"]: int(row["label"])
                  for row in csv.DictReader(open(tmp_path / "demo" / "demo-labels.csv"))}
        anomalies = {k for k, v in labels.items() if v == 1}
        assert len(anomalies) == 8

        url = cli("db", "url", env=env, timeout=60).stdout.strip()
        conn = psycopg2.connect(url)
        with conn.cursor() as cur:
            cur.execute("SELECT icao24 FROM flagged_flights ORDER BY score DESC")
            flagged = [row[0] for row in cur.fetchall()]
            cur.execute("SELECT count(*) FROM flights WHERE score IS NOT NULL")
            scored = cur.fetchone()[0]
            cur.execute("SELECT count(*) FROM flights WHERE flagged IS DISTINCT FROM (score > threshold)"
                        " AND score IS NOT NULL")
            inconsistent = cur.fetchone()[0]
        conn.close()
    finally:
        cli("db", "stop", env=env, timeout=60)

    assert scored >= 200 and inconsistent == 0
    caught = anomalies & set(flagged)
    print(f"\ndemo: {len(flagged)} of {scored} flights flagged, {len(caught)} of 8 anomalies")
    assert len(caught) >= 4, f"only {len(caught)} of 8 anomalies flagged: {flagged}"
    assert set(flagged[:3]) <= anomalies, f"top of the flags: {flagged[:8]}"
    # Ordinary traffic is mostly left alone.
    assert len(flagged) - len(caught) <= 0.15 * (scored - len(anomalies))
