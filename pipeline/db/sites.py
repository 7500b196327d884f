"""Sites and receivers: which receivers' positions make one picture, and its fixed frame.

A *site* is the area one model learns: its flights are cut from the positions of all its
receivers (an aircraft heard by two receivers of a site is one flight), drawn in one fixed
*where* frame (centre and range) and scored by the site's own model. A receiver that names no
site (``ADSB_SITE`` unset) is a site of its own, named after it, framed on itself: a single
receiver needs no setting at all.

Every process that knows a receiver's settings (its ingest, a worker, a replay) registers it
when it starts. A site's frame is set by its first registration and kept from then on: every
image of the site is drawn in it, and a model trained on images of one frame cannot score
images of another. A registration that asks for another centre explicitly (``ADSB_SITE_LAT``
and ``ADSB_SITE_LON``) is refused with the stored one in the message; one that merely has
another receiver position or range adopts the site's frame.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import sqlalchemy as sa

from pipeline.config import Settings

log = logging.getLogger(__name__)


_warned: set[str] = set()


class SiteConflict(RuntimeError):
    """A receiver's settings ask for a site frame other than the one stored."""


@dataclass(frozen=True)
class Site:
    id: str
    latitude: float
    longitude: float
    range_km: float
    receivers: tuple[str, ...]

    @property
    def centre(self) -> tuple[float, float]:
        return self.latitude, self.longitude


def register(conn: sa.Connection, settings: Settings) -> Site:
    """Record this process's receiver (position, site) and its site (frame on first
    registration); returns the site as stored."""
    site_id, rid = settings.site_id, settings.receiver_id
    lat, lon = settings.site_centre
    # Serialises registrations of one site: two receivers starting at once agree on one frame.
    conn.execute(sa.text("SELECT pg_advisory_xact_lock(hashtext(:k))"), {"k": f"adsb.site:{site_id}"})
    stored = conn.execute(sa.text(
        "SELECT latitude, longitude, range_km FROM sites WHERE id = :s"), {"s": site_id}).first()
    if stored is None or stored.latitude is None:
        # A new site, or one carried over from a version without sites: its frame is now set.
        conn.execute(sa.text(
            "INSERT INTO sites (id, latitude, longitude, range_km) VALUES (:s, :lat, :lon, :r) "
            "ON CONFLICT (id) DO UPDATE SET latitude = excluded.latitude, "
            "longitude = excluded.longitude, range_km = excluded.range_km"),
            {"s": site_id, "lat": lat, "lon": lon, "r": settings.range_km})
        log.info("site %s: frame centred on %.4f, %.4f, +-%g km", site_id, lat, lon,
                 settings.range_km)
    else:
        moved = _km(stored.latitude, stored.longitude, lat, lon)
        if settings.site_lat is not None and moved > 0.01:
            raise SiteConflict(
                f"site {site_id!r} is framed on {stored.latitude:.5f}, {stored.longitude:.5f} "
                f"(+-{stored.range_km:g} km) since its first receiver registered; "
                f"ADSB_SITE_LAT/ADSB_SITE_LON ask for {lat:.5f}, {lon:.5f}. Images of one site "
                f"share one frame: use the stored centre, or another ADSB_SITE")
        if moved > 0.01 or abs(stored.range_km - settings.range_km) > 1e-9:
            log.info("site %s: receiver %s draws in the site's frame (%.4f, %.4f, +-%g km)",
                     site_id, rid, stored.latitude, stored.longitude, stored.range_km)
    before = conn.execute(sa.text("SELECT site FROM receivers WHERE id = :r"), {"r": rid}).scalar()
    if before is not None and before != site_id:
        log.warning("receiver %s moves from site %s to site %s: its new positions go into %s's "
                    "flights; flights already built stay with %s", rid, before, site_id,
                    site_id, before)
    conn.execute(sa.text(
        "INSERT INTO receivers (id, site, latitude, longitude, updated_at) "
        "VALUES (:r, :s, :lat, :lon, now()) ON CONFLICT (id) DO UPDATE SET site = excluded.site, "
        "latitude = excluded.latitude, longitude = excluded.longitude, updated_at = now() "
        "WHERE (receivers.site, receivers.latitude, receivers.longitude) IS DISTINCT FROM "
        "(excluded.site, excluded.latitude, excluded.longitude)"),
        {"r": rid, "s": site_id, "lat": settings.receiver_lat, "lon": settings.receiver_lon})
    site = get(conn, site_id)
    assert site is not None
    return site


def register_engine(engine: sa.Engine, settings: Settings) -> Site:
    with engine.begin() as conn:
        return register(conn, settings)


_SITES = """
SELECT s.id, s.latitude, s.longitude, s.range_km,
       coalesce(array_agg(r.id ORDER BY r.id) FILTER (WHERE r.id IS NOT NULL), '{{}}')
  FROM sites s LEFT JOIN receivers r ON r.site = s.id
 WHERE s.latitude IS NOT NULL {where}
 GROUP BY s.id ORDER BY s.id"""


def get(conn: sa.Connection, site_id: str) -> Site | None:
    """The site, with its receivers; None when unknown or not framed yet."""
    row = conn.execute(sa.text(_SITES.format(where="AND s.id = :s")), {"s": site_id}).first()
    return None if row is None else Site(row[0], row[1], row[2], row[3], tuple(row[4]))


def framed(conn: sa.Connection) -> list[Site]:
    """Every site with a frame. A site carried over from a version without sites has none
    until a process with one of its receivers' settings starts; its flights wait (logged)."""
    waiting = conn.execute(sa.text(
        "SELECT id FROM sites WHERE latitude IS NULL ORDER BY id")).scalars().all()
    if waiting and set(waiting) - _warned:
        _warned.update(waiting)         # once per process, not every minute
        log.warning("sites %s have no frame yet: their flights wait until an ingest or worker "
                    "with ADSB_RECEIVER_ID of one of their receivers starts", ", ".join(waiting))
    return [Site(r[0], r[1], r[2], r[3], tuple(r[4]))
            for r in conn.execute(sa.text(_SITES.format(where="")))]


def _km(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    """Equirectangular distance, km (enough to tell "the same centre" from another)."""
    x = math.radians(lon2 - lon1) * math.cos(math.radians((lat1 + lat2) / 2))
    return 6371.0 * math.hypot(x, math.radians(lat2 - lat1))
