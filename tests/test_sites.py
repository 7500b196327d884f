"""Several receivers in one database: sites, flights merged across the receivers of a site.

Real traffic (the Paris CSV's first hour) heard by simulated receivers: each stores what it
heard under its own receiver_id, as its own ingest would, with its own clock offset. A receiver
``all`` that hears everything, in a site of its own, is the truth the merged flights are held
against."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pytest
import sqlalchemy as sa

from conftest import PARIS_CSV, PARIS_LAT, PARIS_LON, PARIS_RANGE_KM, need
from helpers_positions import Pos, copy_positions, read_paris_airborne
from pipeline.db import sites
from pipeline.flights import merge, store

UTC = dt.timezone.utc
HOUR_END = dt.datetime(2021, 10, 7, 13, 0, tzinfo=UTC)


@pytest.fixture(scope="module")
def hour() -> list[Pos]:
    """Airborne positions of the first hour near Paris."""
    rows = read_paris_airborne(need(PARIS_CSV))
    return [p for p in rows if p.time < HOUR_END]


def heard(rows: list[Pos], receiver: str, *, keep=None, offset_s: float = 0.0) -> list[Pos]:
    """What ``receiver`` stores of ``rows``: those ``keep`` selects, stamped by its own clock."""
    off = dt.timedelta(seconds=offset_s)
    return [p._replace(receiver_id=receiver, time=p.time + off) for p in rows
            if keep is None or keep(p)]


def member(settings, receiver: str, site: str | None, lat: float, lon: float):
    """Settings of one receiver; a site of several shares the Paris frame."""
    extra = {} if site is None else {"site": site, "site_lat": PARIS_LAT, "site_lon": PARIS_LON}
    return settings.replace(receiver_id=receiver, receiver_lat=lat, receiver_lon=lon, **extra)


def finished(engine, site: str) -> list[dict]:
    """Finished flights of a site."""
    with engine.connect() as c:
        rows = c.execute(sa.text(
            "SELECT * FROM flights WHERE site = :s AND state = 'finished' ORDER BY first_seen"),
            {"s": site})
        return [r._asdict() for r in rows]


def match(flights: list[dict], f: dict) -> dict | None:
    """The flight of ``flights`` of the same aircraft starting within a second of ``f`` (the
    receivers' clocks differ by less)."""
    same = [g for g in flights if g["icao24"] == f["icao24"]
            and abs((g["first_seen"] - f["first_seen"]).total_seconds()) <= 1.0]
    assert len(same) <= 1
    return same[0] if same else None


def same_flights(merged: list[dict], truth: list[dict]) -> None:
    """Flight for flight: the same cut, positions, image and features as one receiver that
    heard everything."""
    assert len(merged) == len(truth)
    for t in truth:
        m = match(merged, t)
        assert m is not None, (t["icao24"], t["first_seen"])
        assert m["n_positions"] == t["n_positions"], t["icao24"]
        assert abs((m["last_seen"] - t["last_seen"]).total_seconds()) <= 1.0, t["icao24"]
        assert m["image"] == t["image"], t["icao24"]
        assert m["path_km"] == pytest.approx(t["path_km"], rel=1e-4), t["icao24"]
        assert m["max_distance_km"] == pytest.approx(t["max_distance_km"], rel=1e-4)


def test_overlap_and_handover_make_one_flight_per_aircraft(engine, settings, hour):
    """North hears everything north of 48.80 N, south everything south of 48.95 N (their
    clocks 0.35 s apart): between the two both hear each transmission. Every flight of the
    merged site is the flight one receiver hearing everything would have made: copies counted
    once, a flight crossing from one receiver to the other one flight."""
    north = member(settings, "north", "paris", 49.30, 2.40)
    south = member(settings, "south", "paris", 48.45, 2.40)
    truth = member(settings, "all", None, PARIS_LAT, PARIS_LON)
    copy_positions(engine, heard(hour, "north", keep=lambda p: p.latitude >= 48.80)
                   + heard(hour, "south", keep=lambda p: p.latitude <= 48.95, offset_s=0.35)
                   + heard(hour, "all"))
    for s in (north, south, truth):
        sites.register_engine(engine, s)
    store.process_all(engine, settings, final=True)

    merged, alone = finished(engine, "paris"), finished(engine, "all")
    assert len(alone) > 50
    same_flights(merged, alone)
    both = [f for f in merged if f["receivers"] == ["north", "south"]]
    assert len(both) > 10                         # heard by both: overlap or handover
    with engine.connect() as c:
        stored = c.execute(sa.text(
            "SELECT receiver_id, count(*) FROM positions GROUP BY 1 ORDER BY 1")).all()
        overlap = c.execute(sa.text(
            "SELECT count(*) FROM positions WHERE receiver_id = 'all' "
            "AND latitude BETWEEN 48.80 AND 48.95")).scalar()
    counts = dict(stored)
    # Stored once per receiver that heard it; used once per flight.
    assert counts["north"] + counts["south"] == counts["all"] + overlap
    assert sum(f["n_positions"] for f in merged) == sum(f["n_positions"] for f in alone)
    # The documented query returns each receiver's copy of the flight's positions.
    f = max(both, key=lambda f: f["n_positions"])
    with engine.connect() as c:
        rows = c.execute(sa.text(store.FLIGHT_POSITIONS_SQL), {"id": f["id"]}).all()
    assert {r.receiver_id for r in rows} == {"north", "south"}
    assert len(rows) > f["n_positions"]
    assert f["receiver_id"] in ("north", "south")


def test_a_receiver_down_is_covered_by_the_other(engine, settings, hour):
    """East and west both hear everything, west's clock 0.5 s behind; east is down from
    12:15 to 12:26 (longer than the 10-minute gap). The merged flights are those of one receiver hearing everything, while east
    alone (the same rows in a site of its own) cuts the flights its outage crossed."""
    down = (dt.datetime(2021, 10, 7, 12, 15, tzinfo=UTC), dt.datetime(2021, 10, 7, 12, 26, tzinfo=UTC))
    up = lambda p: not down[0] <= p.time < down[1]      # noqa: E731
    copy_positions(engine, heard(hour, "east", keep=up) + heard(hour, "west", offset_s=-0.5)
                   + heard(hour, "all") + heard(hour, "east-solo", keep=up))
    for s in (member(settings, "east", "paris", 48.88, 2.80),
              member(settings, "west", "paris", 48.88, 2.00),
              member(settings, "all", None, PARIS_LAT, PARIS_LON),
              member(settings, "east-solo", "solo", 48.88, 2.80)):
        sites.register_engine(engine, s)
    store.process_all(engine, settings, final=True)

    merged, alone, solo = (finished(engine, s) for s in ("paris", "all", "solo"))
    same_flights(merged, alone)
    crossing = [f for f in alone if f["first_seen"] < down[0] - dt.timedelta(minutes=1)
                and f["last_seen"] > down[1] + dt.timedelta(minutes=1)]
    assert crossing                          # flights the outage cut in two for east alone
    for f in crossing:
        piece = match(solo, f)
        assert piece is not None and piece["last_seen"] < down[0], f["icao24"]


def test_receivers_of_different_sites_make_their_own_flights_in_their_own_frames(
        engine, settings, hour):
    """No ADSB_SITE: each receiver is a site of its own, framed on itself. An aircraft heard
    by both is a flight in each site, the same shape drawn at a different place."""
    one = settings.replace(receiver_id="orly", receiver_lat=48.72, receiver_lon=2.38)
    two = settings.replace(receiver_id="cdg", receiver_lat=49.01, receiver_lon=2.55)
    rows = [p for p in hour if p.time < dt.datetime(2021, 10, 7, 12, 20, tzinfo=UTC)]
    copy_positions(engine, heard(rows, "orly") + heard(rows, "cdg"))
    sites.register_engine(engine, two)
    store.process_all(engine, one, final=True)          # registers its own receiver
    a, b = finished(engine, "orly"), finished(engine, "cdg")
    assert len(a) == len(b) > 10
    with engine.connect() as c:
        frames = dict(c.execute(sa.text("SELECT id, latitude FROM sites")).all())
    assert frames == {"orly": 48.72, "cdg": 49.01}
    pairs = [(f, match(b, f)) for f in a if f["image"] is not None]
    assert pairs and all(g is not None for _, g in pairs)
    assert all(f["image"] != g["image"] for f, g in pairs)                 # another frame
    # The same shape: its side differs only by the projection about another centre.
    assert all(f["shape_side_km"] == pytest.approx(g["shape_side_km"], rel=0.02) for f, g in pairs)
    assert all(f["receivers"] == ["orly"] for f in a)


def test_a_site_keeps_its_frame(engine, settings):
    """The first registration sets the frame; another receiver adopts it; an explicit other
    centre is refused with the stored one in the message."""
    first = settings.replace(receiver_id="r1", site="club", site_lat=45.0, site_lon=5.0)
    site = sites.register_engine(engine, first)
    assert (site.id, site.centre, site.receivers) == ("club", (45.0, 5.0), ("r1",))
    adopted = sites.register_engine(engine, settings.replace(receiver_id="r2", site="club",
                                                             receiver_lat=45.3, receiver_lon=5.2))
    assert adopted.centre == (45.0, 5.0) and adopted.receivers == ("r1", "r2")
    with pytest.raises(sites.SiteConflict, match=r"45\.00000, 5\.00000"):
        sites.register_engine(engine, settings.replace(receiver_id="r3", site="club",
                                                       site_lat=45.5, site_lon=5.0))
    plain = sites.register_engine(engine, settings)
    assert (plain.id, plain.centre, plain.range_km) == (
        "default", (PARIS_LAT, PARIS_LON), PARIS_RANGE_KM)


def test_copies_of_one_transmission_are_kept_once():
    """Receiver 0 reports one position twice (0 s, 1 s), receiver 1 heard the same
    transmissions 0.3 s later: receiver 0's two points stay, receiver 1's copies go. A
    position seen again 3.5 s after the cluster ended is another transmission; points elsewhere
    stay."""
    t = np.array([0, 300_000, 500_000, 1_000_000, 1_300_000, 4_800_000, 5_000_000], np.int64)
    lat = np.array([48.0, 48.0, 48.001, 48.0, 48.0, 48.0, 48.002])
    lon = np.array([2.0, 2.0, 2.001, 2.0, 2.0, 2.0, 2.002])
    src = np.array([0, 1, 1, 0, 1, 1, 0])
    keep = merge.first_copies(t, lat, lon, src, np.array([0, 7]), 2_000_000)
    assert keep.tolist() == [True, False, True, True, False, True, True]
    # A receiver with more points in a cluster is the one kept, whoever was first.
    keep = merge.first_copies(t[:5], lat[:5], lon[:5], np.array([1, 0, 1, 0, 0]),
                              np.array([0, 5]), 2_000_000)
    assert keep.tolist() == [False, True, True, True, True]
    # Across two tracks nothing is a copy.
    keep = merge.first_copies(t[:2], lat[:2], lon[:2], src[:2], np.array([0, 1, 2]), 2_000_000)
    assert keep.tolist() == [True, True]
