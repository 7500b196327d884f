"""The web pages over a real database: what each page shows, the flights list's filters and keyset
pagination, verdict writes and their refusals (token, CSRF, origin, loopback), the reader role,
and the server inside the service and alone.

The site: simulated flights around the Paris receiver (ordinary traffic plus holding, orbit,
survey and calibration patterns) with all their positions, rasterized by the project's own code;
three models written through the registry (one active, one retired, one rejected); scores and
reconstructions as the scorer stores them. It is a replay of 7 October 2021 (clock 15:00 UTC),
so "today" and "this week" do not depend on when the tests run.
"""

from __future__ import annotations

import datetime as dt
import html
import io
import json
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np
import pytest
import sqlalchemy as sa
from PIL import Image
from starlette.testclient import TestClient

import flagged_data
import helpers_flights as hf
from conftest import PARIS_LAT, PARIS_LON, PARIS_RANGE_KM
from pipeline import config
from pipeline.db import partitions
from pipeline.db.schema import flight_labels, flight_scores, flights, pipeline_state, positions
from pipeline.evaluation import simulate
from pipeline.flights import raster
from pipeline.model import registry
from pipeline.model.score import reconstruction_png
from pipeline.web import airports, pictures
from pipeline.web.app import create_app
from pipeline.web.server import WebServer, start_for_service

UTC = dt.timezone.utc
CLOCK = dt.datetime(2021, 10, 7, 15, 0, 0, tzinfo=UTC)
TODAY = CLOCK.replace(hour=0)
WINDOW = dt.datetime(2021, 10, 7, 11, 50, 0, tzinfo=UTC)   # simulated flights start after this
THRESHOLD = 6.0
STRIDE = 4                 # every 4th simulated second: a position every 4 s, as a busy receiver
LOOPBACK = "http://127.0.0.1:8760"


# ---- the site ----------------------------------------------------------------------------------
@dataclass
class SiteFlight:
    id: int
    icao24: str
    callsign: str
    kind: str
    first_seen: dt.datetime
    last_seen: dt.datetime
    n_positions: int
    score: float | None
    flagged: bool
    channel: str | None = None
    lat: np.ndarray = field(default_factory=lambda: np.zeros(0))
    lon: np.ndarray = field(default_factory=lambda: np.zeros(0))
    alt: np.ndarray = field(default_factory=lambda: np.zeros(0))
    verdicts: list[str] = field(default_factory=list)


@dataclass
class Site:
    flights: list[SiteFlight]
    active_id: int
    retired_id: int
    rejected_id: int

    def by_kind(self, kind: str) -> SiteFlight:
        return next(f for f in self.flights if f.kind == kind)

    def named(self, callsign: str) -> SiteFlight:
        return next(f for f in self.flights if f.callsign == callsign)


# Where each simulated flight goes: (day offset, score ratio, carrying channel, verdicts).
PLAN = {
    "holding": (0, 4.0, "shape", []),
    "orbit": (0, 2.5, "shape", ["anomalous"]),
    "survey": (-2, 3.0, "shape", []),
    "calibration": (-10, 5.0, "shape", []),      # older than a week: only in the per-day plot
}
FALSE_ALARM = 1.3          # one ordinary flight flagged by the model, then judged normal


def _model(conn, version: str, status: str, activated: dt.datetime | None, **values) -> int:
    base = dict(version=version, created_at=(activated or CLOCK) - dt.timedelta(hours=1),
                data_from=(activated or CLOCK) - dt.timedelta(days=7), data_to=activated or CLOCK,
                n_train=1800, n_val=1800, n_excluded=42,
                excluded={"flagged_by_active": {"model_id": None, "flights": list(range(30))},
                          "screened": {"rule": "log tortuosity > median + 3 MAD",
                                       "tortuosity_cutoff": 2.4, "flights": list(range(12))}},
                epochs=61, seconds=312.5, val_loss=0.01234, recall_where=0.91,
                precision_where=0.22, recall_shape=0.88, precision_shape=0.2,
                threshold=THRESHOLD, threshold_method="0.99 quantile of the out-of-fold scores",
                params={"folds": 3, "scored_groups": ["where", "shape", "direction"]},
                path=f"/models/{version}.keras", sha256="0" * 64, site="default")
    base.update(values)
    model_id = registry.insert_candidate(conn, base)
    if status == "rejected":
        registry.reject(conn, model_id, "lit-pixel recall of the where channel 0.412 is below 0.5")
    else:
        registry.activate(conn, model_id, "out-of-fold loss 0.01234 (first model or nothing to "
                                          "compare on)")
        # The registry stamps now(); the site is a replay of 2021.
        conn.execute(sa.text("UPDATE models SET activated_at = :t WHERE id = :id"),
                     {"t": activated, "id": model_id})
    return model_id


def _error_pixel(image: np.ndarray, rec: np.ndarray, channel: str) -> tuple[int, int]:
    idx = {"where": [raster.WHERE], "shape": [raster.SHAPE]}.get(channel, list(range(2, 10)))
    err = np.abs(image[:, :, idx].astype(float) - rec[:, :, idx]).max(axis=-1)
    r, c = np.unravel_index(int(np.argmax(err)), err.shape)
    return int(r), int(c)


def build_site(engine: sa.Engine) -> Site:
    """Insert the site (see the module's docstring) into an empty, migrated database."""
    sim = simulate.generate(10, 4, seed=7, anomaly_kinds=simulate.PATTERN_KINDS,
                            ref_lat=PARIS_LAT, ref_lon=PARIS_LON, range_km=PARIS_RANGE_KM,
                            duration_s=2.9 * 3600)
    normal = [f for f in sim if not f.label]
    # The aircraft of the first ordinary flight also flew yesterday (its previous flight).
    plan: list[tuple[simulate.SimFlight, int, float, str | None, list[str]]] = []
    rng = np.random.default_rng(3)
    for f in sim:
        if f.label:
            plan.append((f, *PLAN[f.kind]))
        elif f is normal[1]:
            plan.append((f, 0, FALSE_ALARM, "where", ["anomalous", "normal"]))
        else:
            plan.append((f, 0, float(rng.uniform(0.05, 0.8)), "shape", []))
    plan.append((normal[0], -1, 0.4, "shape", []))
    site_flights: list[SiteFlight] = []
    inserted_at = dt.datetime.now(UTC)
    with engine.begin() as conn:
        hf.ensure_default_site(conn, PARIS_LAT, PARIS_LON, PARIS_RANGE_KM)
        retired = _model(conn, "20210927T0300", "retired", CLOCK - dt.timedelta(days=10, hours=12))
        rejected = _model(conn, "20211003T0300", "rejected", None, val_loss=0.0301,
                          recall_where=0.412)
        active = _model(conn, "20211004T0300", "active", CLOCK - dt.timedelta(days=3, hours=12))
        for f, day, ratio, channel, verdicts in plan:
            keep = np.arange(0, len(f.t), STRIDE)
            t = WINDOW + dt.timedelta(days=day)
            times = [t + dt.timedelta(seconds=float(s)) for s in f.t[keep]]
            partitions.ensure(conn, {x.date() for x in times})
            track = hf.Track(f.icao24, f.callsign, np.array([x.timestamp() for x in times]),
                             f.lat[keep], f.lon[keep], f.alt[keep].astype(float))
            row = hf.flight_row(track, PARIS_LAT, PARIS_LON, PARIS_RANGE_KM)
            fid = conn.execute(flights.insert().values(**row).returning(flights.c.id)).scalar_one()
            conn.execute(positions.insert(), [
                dict(time=x, icao24=f.icao24, latitude=float(la), longitude=float(lo),
                     altitude=int(a), groundspeed=float(g), track=float(tr), vertical_rate=int(v),
                     callsign=f.callsign, on_ground=False, receiver_id="default",
                     inserted_at=inserted_at)
                for x, la, lo, a, g, tr, v in zip(times, f.lat[keep], f.lon[keep], f.alt[keep],
                                                  f.gs[keep], f.track[keep], f.vrate[keep])])
            model_id = retired if day <= -10 else active
            score = ratio * THRESHOLD
            flagged = score > THRESHOLD
            image = raster.decode_png(row["image"])
            rec = flagged_data.reconstruction_of(image) if flagged else None
            pixel = _error_pixel(image, rec, channel) if rec is not None and channel else None
            conn.execute(flight_scores.insert().values(
                flight_id=fid, icao24=f.icao24, model_id=model_id, score=score, threshold=THRESHOLD,
                flagged=flagged, where_score=score if channel == "where" else score / 3,
                shape_score=score if channel == "shape" else score / 4,
                direction_score=score / 5, channel=channel,
                error_row=pixel[0] if pixel else None, error_col=pixel[1] if pixel else None,
                reconstruction=reconstruction_png(rec) if rec is not None else None,
                scored_at=times[-1] + dt.timedelta(minutes=15)))
            conn.execute(flights.update().where(flights.c.id == fid).values(
                score=score, threshold=THRESHOLD, flagged=flagged, model_id=model_id,
                scored_at=times[-1] + dt.timedelta(minutes=15)))
            for k, verdict in enumerate(verdicts):
                conn.execute(flight_labels.insert().values(
                    flight_id=fid, icao24=f.icao24, verdict=verdict, author="ana", note=f"look {k}",
                    created_at=CLOCK - dt.timedelta(minutes=30 - k)))
            site_flights.append(SiteFlight(
                fid, f.icao24, f.callsign, f.kind if f.label else ("false alarm" if verdicts
                                                                   else f.kind),
                times[0], times[-1], len(times), score, flagged, channel, f.lat[keep],
                f.lon[keep], f.alt[keep].astype(float), verdicts))
        # Two aircraft in the air at the clock (the data clock is the newest flight's end):
        # one open flight and a position of a second aircraft in the last minute.
        live = [CLOCK - dt.timedelta(seconds=s) for s in (240, 120, 50, 0)]
        partitions.ensure(conn, {TODAY.date()})
        fid = conn.execute(flights.insert().values(
            icao24="f0ffff", callsign="LIVE1", receiver_id="default", site="default",
            first_seen=live[0],
            last_seen=live[-1], n_positions=4, state="open", late=False)
            .returning(flights.c.id)).scalar_one()
        conn.execute(positions.insert(), [
            dict(time=x, icao24=ic, latitude=48.9, longitude=2.5, altitude=3000, on_ground=False,
                 receiver_id="default", inserted_at=inserted_at)
            for x, ic in [(x, "f0ffff") for x in live] + [(CLOCK - dt.timedelta(seconds=20),
                                                           "f0fffe")]])
        site_flights.append(SiteFlight(fid, "f0ffff", "LIVE1", "open", live[0], live[-1], 4,
                                       None, False))
        conn.execute(pipeline_state.insert().values(
            key="ingest:default", updated_at=sa.func.now(),
            value={"connected": True, "source": "beast://127.0.0.1:30005",
                   "messages_per_s": 812.4, "positions_per_s": 96.1, "positions": 123456}))
    return Site(site_flights, active, retired, rejected)


def site_settings(url: str, tmp: Path, **changes) -> config.Settings:
    values = {"database_url": url, "data_dir": str(tmp / "data"), "receiver_lat": PARIS_LAT,
              "receiver_lon": PARIS_LON, "range_km": PARIS_RANGE_KM}
    values.update(changes)
    return config.load({}, values)


@pytest.fixture(scope="module")
def site_template(databases):
    """A database holding the site; tests work on copies (a template copy is cheap)."""
    url = databases.create()
    engine = sa.create_engine(url)
    site = build_site(engine)
    engine.dispose()
    return url, site


@pytest.fixture
def site(databases, site_template, tmp_path):
    url = hf.copy_database(databases, site_template[0])
    engine = sa.create_engine(url)
    yield engine, site_template[1], site_settings(url, tmp_path)
    engine.dispose()


def client(engine, settings, *, bound_host: str | None = None, base_url: str = LOOPBACK
           ) -> TestClient:
    return TestClient(create_app(settings, engine, bound_host=bound_host), base_url=base_url,
                      follow_redirects=False)


def section(page: str, name: str) -> str:
    m = re.search(rf'<section[^>]*id="{name}".*?</section>', page, re.S)
    assert m, f"no section {name}"
    return m.group(0)


def text(fragment: str) -> str:
    return html.unescape(re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", fragment))).strip()


def csrf_of(page: str) -> str:
    m = re.search(r'name="csrf" value="([0-9a-f]{64})"', page)
    assert m, "no CSRF field in the page"
    return m.group(1)


def labels(engine, flight_id: int) -> list[tuple[str, str, str | None]]:
    with engine.connect() as c:
        return [tuple(r) for r in c.execute(sa.text(
            "SELECT verdict, author, note FROM flight_labels WHERE flight_id = :f ORDER BY id"),
            {"f": flight_id})]


def png_size(data: bytes) -> tuple[int, int]:
    return Image.open(io.BytesIO(data)).size


# ---- home --------------------------------------------------------------------------------------
def test_home_shows_receiver_model_flags_plots_and_precision(site):
    engine, s, settings = site
    page = client(engine, settings).get("/")
    assert page.status_code == 200
    body = page.text
    status = text(section(body, "status"))
    assert "connected" in status and "812" in status and "beast://127.0.0.1:30005" in status
    assert re.search(r'id="aircraft-now">2<', body)          # the open flight + one more aircraft
    with engine.connect() as conn:
        today_positions = conn.execute(sa.text("SELECT count(*) FROM positions WHERE time >= :d"),
                                       {"d": TODAY}).scalar()
    assert f'id="positions-today">{today_positions:,}<' in body
    assert f"{sum(f.last_seen >= TODAY for f in s.flights)} flights" in status
    assert "20211004T0300" in status and "1,800 flights" in status
    # Flag rate since activation: the active model scored every flight but the calibration
    # (scored 10 days ago by the retired model).
    scored = [f for f in s.flights if f.score is not None and f.kind != "calibration"]
    flagged = [f for f in scored if f.flagged]
    assert f"{len(flagged)} of {len(scored)} scored since activation" in status

    todays = section(body, "today")
    # Flagged today, highest ratio first; the false alarm judged normal is known, not listed.
    assert [text(t) for t in re.findall(r'<span class="title">(.*?)</span>', todays)] == [
        f"{s.by_kind(k).callsign} {s.by_kind(k).icao24}" for k in ("holding", "orbit")]
    assert "1 known (judged normal)" in text(todays)
    assert "confirmed" in text(todays)                        # the orbit judged anomalous
    week = section(body, "week")
    assert s.by_kind("survey").callsign in week and s.by_kind("calibration").callsign not in week
    assert "4.00 ×" in text(todays) and "shape" in text(todays)

    # Flags per day: one bar per day of the last 30, today's count in its hover text.
    per_day = re.search(r'<svg class="chart per-day".*?</svg>', body, re.S).group(0)
    assert per_day.count('<rect class="bar"') == 30
    assert "Thu 07 Oct: 3 flagged of 12 scored" in per_day
    assert "Sun 26 Sep" in per_day or "Mon 27 Sep" in per_day   # the calibration's day
    hist = re.search(r'<svg class="chart histogram".*?</svg>', body, re.S).group(0)
    assert "threshold 6" in hist and hist.count("<rect") == 40
    over = sum(int(n) for n in re.findall(r'class="bar over".*?: (\d+) flights', hist))
    assert over == len([f for f in s.flights if f.flagged and f.last_seen >= CLOCK -
                        dt.timedelta(days=7)])

    prec = text(section(body, "precision"))
    assert "Flags you judged: 2, of which 1 anomalous and 1 normal: precision 50.0 %" in prec
    assert re.search(r"shape 1 1 0 100.0 %", prec) and re.search(r"where 1 0 1 0.0 %", prec)


def test_home_thumbnails_are_where_and_shape_pictures(site):
    engine, s, settings = site
    c = client(engine, settings)
    body = c.get("/").text
    srcs = re.findall(r'<img class="thumb" src="([^"]+)"', body)
    assert len(srcs) == 3                                      # holding, orbit; survey this week
    for src in srcs:
        r = c.get(src)
        assert r.status_code == 200 and r.headers["content-type"] == "image/png"
        img = np.asarray(Image.open(io.BytesIO(r.content)).convert("L"))
        assert img.shape == (128, 260)
        where, shape = img[:, :128], img[:, 132:]
        # White track pixels on black, in both frames; the orbit fills its own frame more.
        assert (where == 255).sum() > 20 and (shape == 255).sum() > 20
    orbit = s.by_kind("orbit")
    img = np.asarray(Image.open(io.BytesIO(c.get(f"/flights/{orbit.id}/thumb.png").content))
                     .convert("L"))
    expected = raster.rasterize(orbit.lat, orbit.lon, PARIS_LAT, PARIS_LON, PARIS_RANGE_KM)[0]
    assert ((img[::2, :128:2] == 255) == expected[:, :, raster.WHERE].astype(bool)).all()


def test_home_of_an_empty_database_says_what_is_missing(engine, tmp_path, db_url):
    page = client(engine, site_settings(db_url, tmp_path)).get("/")
    assert page.status_code == 200
    body = text(page.text)
    assert "no report" in body and "none yet" in body and "No flags since" in body
    assert "No flag judged yet" in body


# ---- one flight --------------------------------------------------------------------------------
def map_data(page: str) -> dict:
    m = re.search(r'<script type="application/json" id="flight-data">(.*?)</script>', page, re.S)
    return json.loads(m.group(1))


def test_flight_page_has_track_profiles_airports_sql_and_history(site):
    engine, s, settings = site
    orbit = s.by_kind("orbit")
    c = client(engine, settings)
    page = c.get(f"/flights/{orbit.id}")
    assert page.status_code == 200
    body = page.text
    assert "flagged · confirmed anomalous" in text(re.search(r'id="standing">(.*?)</span>', body).group(1))
    data = map_data(body)
    # Every stored position is on the map, in runs of one altitude band each.
    points = [p for run in data["track"] for p in run["points"]]
    assert len(points) - (len(data["track"]) - 1) == orbit.n_positions
    assert points[0] == [round(orbit.lat[0], 5), round(orbit.lon[0], 5)]
    assert data["start"] == [pytest.approx(orbit.lat[0]), pytest.approx(orbit.lon[0])]
    assert data["receiver"] == {"lat": PARIS_LAT, "lon": PARIS_LON}
    assert data["range_km"] == PARIS_RANGE_KM and data["ring_step_km"] == 25
    assert any(a["code"].startswith("LFPG") for a in data["airports"])   # CDG is in range
    assert len(data["legend"]) == 14
    assert data["tiles"]["url"].startswith("https://tile.openstreetmap.org/")
    # Altitude and ground-speed profiles.
    profiles = section(body, "profiles")
    assert profiles.count('<polyline class="line"') == 2
    # Nearest airports at both ends, straight from airportsdata.
    near = text(section(body, "airports"))
    for lat, lon in ((orbit.lat[0], orbit.lon[0]), (orbit.lat[-1], orbit.lon[-1])):
        for a in airports.nearest(lat, lon):
            assert a.code in near and a.name in near
    # The SQL the page shows is the documented one; it returns exactly the drawn positions.
    sql = html.unescape(re.search(r'<section id="sql">.*?<code>(.*?)</code>', body, re.S).group(1))
    assert f"f.id = {orbit.id}" in sql
    with engine.connect() as conn:
        assert len(conn.execute(sa.text(sql)).all()) == orbit.n_positions
    # Verdict history, newest first; scores by model.
    history = text(section(body, "verdict"))
    assert "anomalous ana look 0" in history
    assert "20211004T0300" in text(section(body, "scores"))


def test_flight_page_links_the_aircraft_previous_flight(site):
    engine, s, settings = site
    today = next(f for f in s.flights if f.kind in simulate.NORMAL_KINDS
                 and sum(g.icao24 == f.icao24 for g in s.flights) == 2
                 and f.first_seen.date() == TODAY.date())
    earlier = next(g for g in s.flights if g.icao24 == today.icao24 and g is not today)
    c = client(engine, settings)
    aircraft = section(c.get(f"/flights/{today.id}").text, "aircraft")
    assert f'href="/flights/{earlier.id}"' in aircraft
    assert f'href="/flights/{today.id}"' in section(c.get(f"/flights/{earlier.id}").text,
                                                    "aircraft")   # as its next flight


def test_flight_pictures_every_channel_original_reconstruction_error(site):
    engine, s, settings = site
    holding = s.by_kind("holding")
    c = client(engine, settings)
    body = c.get(f"/flights/{holding.id}").text
    srcs = re.findall(r'<img class="panel[^"]*" src="([^"]+)"', body)
    # The three groups, then each heading alone (a row per kind, a column per heading).
    assert srcs == [f"/flights/{holding.id}/panel/{ch}/{k}.png"
                    for ch in ("where", "shape", "direction") for k in pictures.KINDS] + [
        f"/flights/{holding.id}/panel/{ch}/{k}.png"
        for k in pictures.KINDS for ch in raster.CHANNELS[2:]]
    assert 'class="carried"><th>shape *' in body
    got = {}
    for src in srcs:
        r = c.get(src)
        side = 128 if "/dir_" in src else 192
        assert r.status_code == 200 and png_size(r.content) == (side, side), src
        got[src] = np.asarray(Image.open(io.BytesIO(r.content)).convert("RGB"))
    base = f"/flights/{holding.id}/panel"
    # Original: the stored image, enlarged 3x, white on black (the ring aside).
    with engine.connect() as conn:
        image = raster.decode_png(conn.execute(sa.select(flights.c.image).where(
            flights.c.id == holding.id)).scalar_one())
    for ch, k in (("where", raster.WHERE), ("shape", raster.SHAPE), ("dir_e", 4)):
        zoom = 2 if ch.startswith("dir_") else 3
        rgb = got[f"{base}/{ch}/original.png"][zoom // 2::zoom, zoom // 2::zoom]
        ring = np.all(rgb == pictures.RING, axis=-1)
        assert ((rgb[:, :, 0] == 255) == image[:, :, k].astype(bool))[~ring].all(), ch
    # The reconstruction is a grey blur; the error is large on the track and small off it.
    rec = got[f"{base}/shape/reconstruction.png"][1::3, 1::3, 0]
    assert 0 < rec.max() < 255 and len(np.unique(rec)) > 4
    err = got[f"{base}/where/error.png"].astype(int)
    assert err.sum(axis=-1).max() > err.sum(axis=-1).min() + 100
    # The largest error of the carrying channel is ringed (cyan), only there.
    cyan = np.all(got[f"{base}/shape/error.png"] == pictures.RING, axis=-1)
    assert cyan.sum() > 20
    assert not np.all(got[f"{base}/where/error.png"] == pictures.RING, axis=-1).any()
    # A direction channel alone is in grey; the eight together in heading colours.
    colours = got[f"{base}/direction/original.png"].reshape(-1, 3)
    assert len({tuple(p) for p in colours if p.any()}) >= 2


def test_unflagged_flight_shows_originals_only_and_known_flight_is_known(site):
    engine, s, settings = site
    c = client(engine, settings)
    plain = next(f for f in s.flights if f.kind in simulate.NORMAL_KINDS and not f.flagged)
    body = c.get(f"/flights/{plain.id}").text
    assert "not flagged" in body and "only" in text(section(body, "pictures"))
    srcs = re.findall(r'<img class="panel[^"]*" src="([^"]+)"', body)
    assert len(srcs) == 11 and all(src.endswith("/original.png") for src in srcs)
    r = c.get(f"/flights/{plain.id}/panel/where/reconstruction.png")
    assert r.status_code == 404 and "only flagged flights keep one" in r.text
    known = s.by_kind("false alarm")
    body = c.get(f"/flights/{known.id}").text
    standing = text(re.search(r'id="standing">(.*?)</span>', body).group(1))
    assert standing == "known: judged normal, although flagged"
    assert "normal ana look 1" in text(section(body, "verdict"))      # newest first
    assert c.get("/flights/999999").status_code == 404
    assert c.get(f"/flights/{plain.id}/panel/nowhere/original.png").status_code == 404


# ---- flights list ------------------------------------------------------------------------------
def add_plain_flights(engine, n: int, tied: int) -> list[int]:
    """n flights without images, ending a minute apart before the site's week; ``tied`` of them
    end at the same instant (a page boundary must not lose or repeat one)."""
    end = TODAY - dt.timedelta(days=20)
    rows = []
    for k in range(n):
        last = end - dt.timedelta(minutes=k if k >= tied else 0)
        rows.append(dict(icao24=f"a{k:05x}", callsign=f"TST{k % 7}", receiver_id="default",
                         site="default", first_seen=last - dt.timedelta(minutes=30), last_seen=last,
                         n_positions=100, state="finished", late=False))
    with engine.begin() as c:
        return [c.execute(flights.insert().values(**r).returning(flights.c.id)).scalar_one()
                for r in rows]


def walk(c: TestClient, url: str, rel: str) -> tuple[list[int], list[str]]:
    """Follow the rel=next/prev links from ``url``; the flight ids in page order."""
    ids: list[int] = []
    pages = []
    while url:
        r = c.get(url)
        assert r.status_code == 200, r.text
        pages.append(url)
        ids += [int(x) for x in re.findall(r'<tr[^>]*>\s*<td><a href="/flights/(\d+)"', r.text)]
        m = re.search(rf'<a rel="{rel}" href="([^"]+)"', r.text)
        url = html.unescape(m.group(1)) if m else ""
    return ids, pages


def expected_order(engine, where: str = "true", **params) -> list[int]:
    with engine.connect() as conn:
        return [r[0] for r in conn.execute(sa.text(
            f"SELECT id FROM flights WHERE {where} ORDER BY last_seen DESC, id DESC"), params)]


def test_flights_list_pages_by_keyset_both_ways_without_loss(site):
    engine, s, settings = site
    add_plain_flights(engine, 130, tied=60)
    c = client(engine, settings)
    ids, pages = walk(c, "/flights", "next")
    assert ids == expected_order(engine) and len(ids) == len(set(ids)) == 130 + len(s.flights)
    assert len(pages) == -(-len(ids) // 50) and all("before=" in p for p in pages[1:])
    # Back from the last page with the "newer" links: the same pages, in reverse.
    last = c.get(pages[-1]).text
    back_url = html.unescape(re.search(r'<a rel="prev" href="([^"]+)"', last).group(1))
    back, back_pages = walk(c, back_url, "prev")
    chunks = [ids[k:k + 50] for k in range(0, len(ids), 50)]
    assert back == [i for chunk in chunks[-2::-1] for i in chunk]
    assert len(back_pages) == len(pages) - 1


def test_flights_list_filters(site):
    engine, s, settings = site
    add_plain_flights(engine, 30, tied=0)
    c = client(engine, settings)
    flagged, _ = walk(c, "/flights?flagged=1", "next")
    assert flagged == expected_order(engine, "flagged AND state = 'finished'")
    assert len(flagged) == 5                  # holding, orbit, survey, calibration, false alarm
    body = c.get("/flights?flagged=1").text
    assert body.count('<span class="badge known">known</span>') == 1
    one = s.by_kind("survey")
    by_call, _ = walk(c, f"/flights?q={one.callsign.lower()}", "next")
    assert by_call == expected_order(engine, "callsign = :c", c=one.callsign)
    twice = next(f for f in s.flights if sum(g.icao24 == f.icao24 for g in s.flights) == 2)
    by_icao, _ = walk(c, f"/flights?q={twice.icao24.upper()}", "next")
    assert by_icao == expected_order(engine, "icao24 = :i", i=twice.icao24) and len(by_icao) == 2
    day = (TODAY - dt.timedelta(days=2)).date().isoformat()
    by_day, _ = walk(c, f"/flights?from={day}&to={day}", "next")
    assert by_day == [one.id]
    week, _ = walk(c, f"/flights?from={(TODAY - dt.timedelta(days=6)).date()}&flagged=on", "next")
    assert set(week) == {f.id for f in s.flights if f.flagged and f.kind != "calibration"}
    tst, _ = walk(c, "/flights?q=TST3&to=" + (TODAY - dt.timedelta(days=20)).date().isoformat(),
                  "next")
    assert tst == expected_order(engine, "callsign = 'TST3'") and len(tst) == 4
    assert c.get("/flights?q=nobody").text.count("No flights match") == 1
    bad = c.get("/flights?from=07/10/2021")
    assert bad.status_code == 400 and "YYYY-MM-DD" in bad.text
    assert c.get("/flights?before=xyz").status_code == 400


# ---- models ------------------------------------------------------------------------------------
def test_models_page_explains_each_model(site):
    engine, s, settings = site
    body = client(engine, settings).get("/models").text
    articles = re.findall(r'<article class="model (\w+)" id="model-(\d+)">(.*?)</article>', body,
                          re.S)
    assert [(st, int(i)) for st, i, _ in articles] == [
        ("active", s.active_id), ("rejected", s.rejected_id), ("retired", s.retired_id)]
    active, rejected, retired = (text(a[2]) for a in articles)
    assert "Active since 2021-10-04 03:00:00 UTC" in active
    assert "flagged by active: 30 flights (model id" not in active       # None is left out
    assert "flagged by active: 30 flights" in active
    assert "screened: 12 flights (rule log tortuosity > median + 3 MAD, tortuosity cutoff 2.4)" \
        in active
    assert "validation loss 0.01234" in active and "where 0.91, shape 0.88" in active
    assert "0.99 quantile of the out-of-fold scores" in active
    # Flag rate since activation, from the model's scores after it became active.
    mine = [f for f in s.flights if f.score is not None and f.kind != "calibration"]
    assert f"({sum(f.flagged for f in mine)} of {len(mine)} flights scored)" in active
    assert "Not promoted: lit-pixel recall of the where channel 0.412 is below 0.5" in rejected
    assert "never active" in rejected
    assert f"when model {s.active_id} replaced it" in retired
    assert "(1 of 1 flights scored)" in retired                      # the calibration


# ---- writes ------------------------------------------------------------------------------------
def judge(c: TestClient, flight_id: int, verdict: str, **fields):
    page = c.get(f"/flights/{flight_id}")
    form = {"csrf": csrf_of(page.text), "verdict": verdict, **fields}
    return c.post(f"/flights/{flight_id}/verdict", data=form)


def test_verdict_from_loopback_is_stored_and_changes_the_pages(site):
    engine, s, settings = site
    holding = s.by_kind("holding")
    c = client(engine, settings)
    r = judge(c, holding.id, "normal", note="  a published holding  ", author="ana")
    assert r.status_code == 303 and r.headers["location"].startswith(f"/flights/{holding.id}?saved=")
    assert labels(engine, holding.id) == [("normal", "ana", "a published holding")]
    body = c.get(r.headers["location"]).text
    assert 'id="saved"' in body and "known: judged normal" in body
    home = c.get("/").text
    assert holding.callsign not in section(home, "today")
    assert "2 known (judged normal)" in text(section(home, "today"))
    # No author given: "web"; the newest verdict counts.
    assert judge(c, holding.id, "anomalous").status_code == 303
    assert labels(engine, holding.id)[-1] == ("anomalous", "web", None)
    assert holding.callsign in section(c.get("/").text, "today")
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT verdict FROM flight_verdicts WHERE flight_id = :f"),
                            {"f": holding.id}).scalar() == "anomalous"


def test_verdict_needs_a_valid_csrf_proof_and_a_same_origin_form(site):
    engine, s, settings = site
    fid = s.by_kind("orbit").id
    before = labels(engine, fid)
    c = client(engine, settings)
    page = c.get(f"/flights/{fid}").text
    csrf = csrf_of(page)
    no_proof = c.post(f"/flights/{fid}/verdict", data={"verdict": "normal"})
    assert no_proof.status_code == 403 and "security check failed" in no_proof.text
    forged = c.post(f"/flights/{fid}/verdict", data={"verdict": "normal", "csrf": "0" * 64})
    assert forged.status_code == 403
    other_site = c.post(f"/flights/{fid}/verdict", data={"verdict": "normal", "csrf": csrf},
                        headers={"origin": "https://evil.example"})
    assert other_site.status_code == 403 and "another site" in other_site.text
    cross = c.post(f"/flights/{fid}/verdict", data={"verdict": "normal", "csrf": csrf},
                   headers={"sec-fetch-site": "cross-site"})
    assert cross.status_code == 403
    # A browser without the nonce cookie (another site's form) cannot pass the proof.
    fresh = client(engine, settings)
    assert fresh.post(f"/flights/{fid}/verdict",
                      data={"verdict": "normal", "csrf": csrf}).status_code == 403
    same = c.post(f"/flights/{fid}/verdict", data={"verdict": "normal", "csrf": csrf},
                  headers={"origin": LOOPBACK, "sec-fetch-site": "same-origin"})
    assert same.status_code == 303
    assert labels(engine, fid) == before + [("normal", "web", None)]


def test_loopback_server_refuses_a_rebound_host_name(site):
    engine, s, settings = site
    fid = s.by_kind("orbit").id
    c = client(engine, settings, base_url="http://adsb.attacker.example:8760")
    r = judge(c, fid, "normal")
    assert r.status_code == 403 and "opened as 'adsb.attacker.example'" in html.unescape(r.text)
    assert len(labels(engine, fid)) == 1
    localhost = client(engine, settings, base_url="http://localhost:8760")
    assert judge(localhost, fid, "normal").status_code == 303


def test_beyond_loopback_without_token_writes_are_refused(site):
    engine, s, settings = site
    fid = s.by_kind("holding").id
    c = client(engine, settings, bound_host="0.0.0.0", base_url="http://192.0.2.10:8760")
    page = c.get(f"/flights/{fid}").text
    assert 'id="writes-disabled"' in page and "ADSB_WEB_TOKEN" in page
    assert "verdict-form" not in page
    # No form to take a CSRF proof from; refused whatever the proof.
    r = c.post(f"/flights/{fid}/verdict", data={"verdict": "anomalous", "csrf": "0" * 64})
    assert r.status_code == 403 and "no token is configured" in r.text
    assert labels(engine, fid) == []


def test_beyond_loopback_the_token_is_needed_and_then_remembered(site, tmp_path):
    engine, s, settings = site
    fid = s.by_kind("holding").id
    token_file = tmp_path / "web_token"
    token_file.write_text("s3cret-token\n")
    tokened = site_settings(settings.database_url, tmp_path, web_host="0.0.0.0",
                            web_token="ignored", web_token_file=str(token_file))
    c = client(engine, tokened, base_url="http://192.0.2.10:8760")
    assert 'name="token"' in c.get(f"/flights/{fid}").text
    missing = judge(c, fid, "anomalous")
    assert missing.status_code == 403 and "wrong or missing token" in missing.text
    assert judge(c, fid, "anomalous", token="ignored").status_code == 403   # the file wins
    assert labels(engine, fid) == []
    ok = judge(c, fid, "anomalous", token="s3cret-token", author="bob")
    assert ok.status_code == 303 and "adsb_write" in ok.headers["set-cookie"]
    assert "s3cret-token" not in ok.headers["set-cookie"]
    assert judge(c, fid, "normal").status_code == 303          # remembered by this browser
    assert labels(engine, fid) == [("anomalous", "bob", None), ("normal", "web", None)]
    # A token is asked for even on loopback once one is configured (a proxy may expose it).
    local = client(engine, site_settings(settings.database_url, tmp_path, web_token="abc"))
    assert judge(local, fid, "normal").status_code == 403


def test_behind_a_reverse_proxy_the_public_origin_is_accepted(site, tmp_path):
    engine, s, settings = site
    fid = s.by_kind("orbit").id
    proxied = site_settings(settings.database_url, tmp_path, web_token="t0k",
                            public_url="https://adsb.example.org")
    c = client(engine, proxied)                  # the proxy talks to 127.0.0.1:8760
    page = c.get(f"/flights/{fid}").text
    for origin, status in (("https://adsb.example.org", 303), ("https://evil.example", 403)):
        r = c.post(f"/flights/{fid}/verdict", headers={"origin": origin},
                   data={"verdict": "normal", "csrf": csrf_of(page), "token": "t0k"})
        assert r.status_code == status, (origin, r.text)
    assert labels(engine, fid)[1:] == [("normal", "web", None)]


def test_bad_verdicts_are_refused_and_nothing_is_written(site):
    engine, s, settings = site
    fid = s.by_kind("orbit").id
    c = client(engine, settings)
    assert judge(c, fid, "boring").status_code == 400
    page = c.get(f"/flights/{fid}").text
    r = c.post("/flights/999999/verdict", data={"verdict": "normal", "csrf": csrf_of(page)})
    assert r.status_code == 404
    assert labels(engine, fid) == [("anomalous", "ana", "look 0")]
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM flight_labels WHERE flight_id = 999999")
                            ).scalar() == 0


def test_reader_role_cannot_write_verdicts(site):
    engine, s, _ = site
    fid = s.by_kind("orbit").id
    with engine.connect() as conn:
        conn.execute(sa.text("SET ROLE adsb_reader"))
        assert conn.execute(sa.text("SELECT count(*) FROM flight_labels")).scalar() == 3
        assert conn.execute(sa.text("SELECT count(*) FROM flight_verdicts")).scalar() == 2
        for sql in ("INSERT INTO flight_labels (flight_id, verdict, author) "
                    "VALUES (:f, 'normal', 'reader')",
                    "UPDATE flight_labels SET verdict = 'normal' WHERE flight_id = :f",
                    "DELETE FROM flight_labels WHERE flight_id = :f"):
            with pytest.raises(sa.exc.ProgrammingError, match="permission denied"):
                with conn.begin_nested():
                    conn.execute(sa.text(sql), {"f": fid})
        conn.rollback()
    assert labels(engine, fid) == [("anomalous", "ana", "look 0")]


def test_pages_send_security_headers_and_leaflet_is_served_locally(site):
    engine, s, settings = site
    c = client(engine, settings)
    r = c.get(f"/flights/{s.by_kind('orbit').id}")
    csp = r.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp
    assert "img-src 'self' data: https://tile.openstreetmap.org" in csp
    assert r.headers["x-frame-options"] == "DENY"
    assert "adsb_csrf=" in r.headers["set-cookie"] and "samesite=strict" in \
        r.headers["set-cookie"].lower() and "httponly" in r.headers["set-cookie"].lower()
    for src in re.findall(r'<(?:script|link)[^>]+(?:src|href)="([^"]+)"', r.text):
        assert not src.startswith("http"), src                  # nothing from a CDN
        assert c.get(src).status_code == 200, src
    assert "Leaflet 1.9" in c.get("/leaflet/leaflet.js").text[:400]


def test_database_down_gives_a_503_page(tmp_path):
    settings = site_settings("postgresql+psycopg2://postgres@127.0.0.1:1/nothing", tmp_path)
    engine = sa.create_engine(settings.database_url, connect_args={"connect_timeout": 2})
    r = client(engine, settings).get("/")
    assert r.status_code == 503 and "Database unreachable" in r.text
    engine.dispose()


# ---- serving -----------------------------------------------------------------------------------
def test_server_thread_serves_pages_and_stops(site):
    engine, s, settings = site
    server = WebServer(create_app(settings, engine), "127.0.0.1", 0).start()
    try:
        r = httpx.get(server.url + f"flights/{s.by_kind('orbit').id}", timeout=10)
        assert r.status_code == 200 and "leaflet.js" in r.text
    finally:
        server.stop()
    assert not server._thread.is_alive()
    with pytest.raises(httpx.ConnectError):
        httpx.get(server.url, timeout=2)


def test_service_start_reports_a_busy_port_and_goes_on(site, caplog):
    engine, s, settings = site
    first = WebServer(create_app(settings, engine), "127.0.0.1", 0).start()
    try:
        busy = settings.replace(web_host="127.0.0.1", web_port=first.port)
        assert start_for_service(busy, engine) is None
        assert "not started" in caplog.text
        assert start_for_service(settings.replace(web_port=0), engine) is None
    finally:
        first.stop()


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.parametrize("command", ["web", "worker"])
def test_command_serves_the_pages_until_sigterm(site, tmp_path, command):
    engine, s, settings = site
    port = free_port()
    env = {**os.environ, "ADSB_DATABASE_URL": settings.database_url,
           "ADSB_DATA_DIR": str(tmp_path / "data"), "ADSB_WEB_PORT": str(port),
           "ADSB_METRICS_PORT": "0", "ADSB_RECEIVER_LAT": str(PARIS_LAT),
           "ADSB_RECEIVER_LON": str(PARIS_LON), "ADSB_LOG_LEVEL": "INFO"}
    proc = subprocess.Popen([sys.executable, "-m", "pipeline.cli", command], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                r = httpx.get(f"http://127.0.0.1:{port}/models", timeout=5)
                break
            except httpx.TransportError:
                assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
                assert time.monotonic() < deadline, "pages did not come up"
                time.sleep(0.2)
        assert r.status_code == 200 and "20211004T0300" in r.text
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0, out
    assert f"web pages on http://127.0.0.1:{port}/" in out
