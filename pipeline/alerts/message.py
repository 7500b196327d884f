"""The JSON body of a flag alert: the same object for the webhook POST, the MQTT message and
the NOTIFY payload (documented in docs/alerts.md)."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

import sqlalchemy as sa

from pipeline.config import Settings

EVENT = "flag"

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


def encode(payload: dict[str, Any]) -> bytes:
    """Wire form of a message: compact UTF-8 JSON."""
    return json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode()
