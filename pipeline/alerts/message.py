"""The JSON body of an alert (a flag, its withdrawal, a traffic change): the same object for the
webhook POST, the MQTT message and the NOTIFY payload (documented in docs/alerts.md)."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

import sqlalchemy as sa

from pipeline.config import Settings

EVENT = "flag"
CHANGE_EVENT = "traffic_change"
WITHDRAWN_EVENT = "withdrawn"

# The flag as the scorer has just written it (flights + its score by this model).
_FLAGS = sa.text("""
    SELECT f.id, f.icao24, f.callsign, f.receiver_id, f.first_seen, f.last_seen,
           s.score, s.threshold, s.channel, s.scored_at, m.version
      FROM flights f
      JOIN flight_scores s ON s.flight_id = f.id AND s.model_id = :model
      JOIN models m ON m.id = s.model_id
     WHERE f.id = ANY(:ids)
     ORDER BY f.id""")


def base_url(settings: Settings) -> str:
    """Where users open the web pages: ADSB_PUBLIC_URL, else the pages' own address."""
    if settings.public_url:
        return settings.public_url.rstrip("/")
    return f"http://{settings.web_host}:{settings.web_port}"


def flight_url(settings: Settings, flight_id: int) -> str:
    return f"{base_url(settings)}/flights/{flight_id}"


def _iso(t: dt.datetime | None) -> str | None:
    if t is None:
        return None
    return t.astimezone(dt.timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


def body(row: Any, settings: Settings) -> dict[str, Any]:
    """The message of one flag (a row of ``_FLAGS``)."""
    ratio = row.score / row.threshold if row.threshold else None
    return {
        "event": EVENT,
        "flight_id": int(row.id),
        "icao24": row.icao24,
        "callsign": row.callsign,
        "first_seen": _iso(row.first_seen),
        "last_seen": _iso(row.last_seen),
        "score": round(float(row.score), 6),
        "threshold": round(float(row.threshold), 6),
        "score_ratio": round(ratio, 2) if ratio is not None else None,
        "channel": row.channel,
        "model_version": row.version,
        "scored_at": _iso(row.scored_at),
        "receiver": row.receiver_id,
        "url": flight_url(settings, int(row.id)),
    }


def bodies(conn: sa.Connection, settings: Settings, model_id: int,
           flight_ids: list[int]) -> list[dict[str, Any]]:
    """Messages of the given flights' flags by ``model_id`` (read in the caller's transaction,
    so they are exactly what it wrote)."""
    rows = conn.execute(_FLAGS, {"model": model_id, "ids": flight_ids}).all()
    return [body(r, settings) for r in rows]


def withdrawal_bodies(conn: sa.Connection, settings: Settings, model_id: int,
                      flagged_by: dict[int, str]) -> list[dict[str, Any]]:
    """Messages withdrawing the flags of the given flights (flight id -> the version of the
    model whose flag alerted): the flight as ``model_id`` has just scored it, below its
    threshold."""
    out = []
    for b in bodies(conn, settings, model_id, sorted(flagged_by)):
        out.append({**b, "event": WITHDRAWN_EVENT,
                    "flagged_by_model_version": flagged_by[b["flight_id"]]})
    return out


_CHANGE = sa.text("""
    SELECT c.*, m.version, f.icao24 AS f_icao24, f.callsign, f.receiver_id
      FROM traffic_changes c
      JOIN models m ON m.id = c.model_id
      LEFT JOIN flights f ON f.id = c.opened_by_flight
     WHERE c.id = :id""")


def change_body(conn: sa.Connection, settings: Settings, change_id: int) -> dict[str, Any]:
    """The one message of a traffic change (read in the caller's transaction). ``flight_id``
    is the flight that carries it; its ``url`` is the home page's list of changes."""
    c = conn.execute(_CHANGE, {"id": change_id}).one()
    return {
        "event": CHANGE_EVENT,
        "traffic_change_id": int(c.id),
        "site": c.site,
        "channel": c.channel,
        "region": c.region,
        "started_at": _iso(c.started_at),
        "detected_at": _iso(c.detected_at),
        "flights_flagged": int(c.flights_flagged),
        "flights_scored": int(c.flights_scored),
        "expected_flags": round(float(c.expected_flags), 2),
        "p_value": float(f"{c.p_value:.3g}"),
        "model_version": c.version,
        "flight_id": int(c.opened_by_flight) if c.opened_by_flight is not None else None,
        "icao24": c.f_icao24,
        "callsign": c.callsign,
        "receiver": c.receiver_id,
        "url": f"{base_url(settings)}/#changes",
    }


def encode(payload: dict[str, Any]) -> bytes:
    """Wire form of a message: compact UTF-8 JSON."""
    return json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode()
