"""``adsb-pipeline status``: a human summary of the service's state, read from the database."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

import sqlalchemy as sa

from pipeline.config import Settings
from pipeline.db.engine import make_engine
from pipeline.db.state import INGEST_STATE_KEY
from pipeline.flights.clock import data_clock


def _age(delta: dt.timedelta | None) -> str:
    if delta is None:
        return "never"
    s = int(delta.total_seconds())
    if s < 120:
        return f"{s} s ago"
    if s < 7200:
        return f"{s // 60} min ago"
    if s < 172800:
        return f"{s // 3600} h ago"
    return f"{s // 86400} days ago"


def summary(conn: sa.Connection, settings: Settings) -> list[str]:
    now = dt.datetime.now(dt.timezone.utc)
    clock = data_clock(conn, now)
    lines = [f"data clock        {clock:%Y-%m-%d %H:%M:%S} UTC"
             + ("  (replay: newest stored position)" if now - clock > dt.timedelta(minutes=1) else "")]
    row = conn.execute(sa.text("SELECT value, updated_at FROM pipeline_state WHERE key = :k"),
                       {"k": INGEST_STATE_KEY.format(receiver_id=settings.receiver_id)}).first()
    if row is None:
        lines.append("receiver          no live ingest has reported")
    else:
        v = row.value if isinstance(row.value, dict) else json.loads(row.value)
        state = "connected" if v.get("connected") else "DISCONNECTED"
        lines.append(f"receiver          {v.get('source', '?')} {state}, reported {_age(now - row.updated_at)}")
        lines.append(f"messages/s        {v.get('messages_per_s', 0):.0f} (positions/s "
                     f"{v.get('positions_per_s', 0):.0f}, write lag {v.get('write_lag_s', 0):.1f} s)")
    hour = conn.execute(sa.text("SELECT count(*) FROM positions WHERE time > :t"),
                        {"t": clock - dt.timedelta(hours=1)}).scalar()
    lines.append(f"positions         {hour:,} in the last hour of the data clock")
    counts: dict[str, int] = dict(conn.execute(sa.text("SELECT state, count(*) FROM flights GROUP BY state")).all())
    lines.append(f"flights           {counts.get('open', 0):,} open, {counts.get('finished', 0):,} finished")
    models = conn.execute(sa.text(
        "SELECT s.id AS site, m.version, m.created_at, m.n_train, m.threshold FROM sites s "
        "LEFT JOIN models m ON m.site = s.id AND m.status = 'active' "
        "WHERE s.latitude IS NOT NULL ORDER BY s.id")).all()
    rows: list[Any] = list(models) or [None]
    for model in rows:
        where = f" (site {model.site})" if model is not None and len(models) > 1 else ""
        if model is None or model.version is None:
            lines.append(f"model{where:<12} none active yet (trains once enough flights are "
                         "finished)")
        else:
            lines.append(f"model{where:<12} {model.version}, trained "
                         f"{_age(now - model.created_at)} on {model.n_train} flights, "
                         f"threshold {model.threshold:.4g}")
    day_start = clock.replace(hour=0, minute=0, second=0, microsecond=0)
    flags = conn.execute(sa.text(
        "SELECT count(*) FILTER (WHERE flagged), count(score) FROM flights WHERE last_seen >= :d"),
        {"d": day_start}).one()
    lines.append(f"flags today       {flags[0]} of {flags[1]} scored flights")
    for job, finished, ok, err, runs, failures in conn.execute(sa.text(
            "SELECT job, last_finished, last_ok, last_error, runs, failures FROM job_runs ORDER BY job")):
        mark = "ok" if ok else f"FAILED: {(err or '').splitlines()[0][:80] if err else ''}"
        lines.append(f"job {job:<13} last {_age(now - finished if finished else None)}, {mark} "
                     f"({runs} runs, {failures} failures)")
    return lines


def status_command(settings: Settings, args) -> int:
    engine = make_engine(settings)
    try:
        with engine.connect() as conn:
            for line in summary(conn, settings):
                print(line)
    finally:
        engine.dispose()
    return 0
