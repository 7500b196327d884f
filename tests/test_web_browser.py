"""The web pages in a real browser (Debian's Chromium driven by Playwright): every page loads
without console errors and with every image; the flight page draws the track with no map tiles
(offline); a verdict click lands in flight_labels and changes the page; a server bound beyond
loopback refuses writes without the token. Takes the home and flight pages' screenshots; with
ADSB_TEST_SCREENSHOTS=docs/img they replace README's pictures (web-home.png, web-flight.png),
else they go to the test's temporary directory and the work tree is left as it was.

Map tiles never come from the network here: requests to tile.openstreetmap.org are answered
by the test (a plain tile, as if online) or aborted (offline).
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import pytest
import sqlalchemy as sa
from PIL import Image

from pipeline.evaluation.simulate import NORMAL_KINDS
from pipeline.web.app import create_app
from pipeline.web.server import WebServer
from test_web import build_site, labels, site_settings

pytestmark = pytest.mark.slow

CHROMIUM = Path("/usr/bin/chromium")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync"]
TILES = "https://tile.openstreetmap.org/**"

if not CHROMIUM.exists():
    pytest.skip("browser tests need /usr/bin/chromium (Debian package chromium); Playwright "
                "drives it and never downloads a browser", allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api", reason="browser tests need playwright")


@pytest.fixture
def shots(tmp_path) -> Path:
    """Where the screenshots go: ADSB_TEST_SCREENSHOTS (e.g. docs/img), else a temporary one."""
    where = Path(os.environ.get("ADSB_TEST_SCREENSHOTS") or tmp_path)
    where.mkdir(parents=True, exist_ok=True)
    return where


def _screenshot(page, path: Path, full_page: bool) -> None:
    page.screenshot(path=str(path), full_page=full_page)
    with Image.open(path) as shot:           # a real picture of the page, not an empty file
        assert shot.format == "PNG" and shot.width >= 800 and shot.height >= 400, shot.size


def _tile() -> bytes:
    img = Image.new("RGB", (256, 256), (236, 232, 222))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


TILE_PNG = _tile()


@pytest.fixture(scope="module")
def site_db(databases):
    url = databases.create()
    engine = sa.create_engine(url)
    site = build_site(engine)
    yield url, engine, site
    engine.dispose()


@pytest.fixture(scope="module")
def server(site_db, tmp_path_factory):
    url, engine, _ = site_db
    settings = site_settings(url, tmp_path_factory.mktemp("web"))
    srv = WebServer(create_app(settings, engine), "127.0.0.1", 0).start()
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=FLAGS)
        yield b
        b.close()


class Watch:
    """Console errors, uncaught exceptions, failed requests and error responses of a page."""

    def __init__(self, page, tiles: str) -> None:
        self.errors: list[str] = []
        self.tile_failures = 0
        page.on("console", self._console)
        page.on("pageerror", lambda e: self.errors.append(f"page error: {e}"))
        page.on("requestfailed", self._failed)
        page.on("response", lambda r: r.status >= 400 and self.errors.append(
            f"{r.status} {r.url}"))
        if tiles == "online":
            page.route(TILES, lambda route: route.fulfill(status=200, body=TILE_PNG,
                                                          content_type="image/png"))
        else:
            page.route(TILES, lambda route: route.abort("internetdisconnected"))

    def _console(self, msg) -> None:
        if msg.type != "error":
            return
        if msg.location.get("url", "").startswith("https://tile.openstreetmap.org/"):
            self.tile_failures += 1          # the offline test aborts these on purpose
            return
        self.errors.append(f"console: {msg.text} ({msg.location.get('url')})")

    def _failed(self, request) -> None:
        if not request.url.startswith("https://tile.openstreetmap.org/"):
            self.errors.append(f"request failed: {request.url} {request.failure}")


def open_page(browser, url: str, tiles: str = "online", **context):
    ctx = browser.new_context(viewport={"width": 1280, "height": 1000}, **context)
    page = ctx.new_page()
    watch = Watch(page, tiles)
    page.goto(url, wait_until="load")
    page.wait_for_load_state("networkidle")
    return page, watch


def images(page) -> list[dict]:
    return page.evaluate("""() => Array.from(document.images).map(i => ({
        src: i.currentSrc || i.src, complete: i.complete, width: i.naturalWidth,
        tile: i.classList.contains('leaflet-tile')}))""")


def test_every_page_loads_without_console_errors_and_with_every_image(server, site_db, browser):
    _, _, site = site_db
    flagged = site.by_kind("holding")
    plain = next(f for f in site.flights if f.kind in NORMAL_KINDS and not f.flagged)
    pages = ["", "flights", "flights?flagged=1", f"flights?q={flagged.icao24}", "models",
             f"flights/{flagged.id}", f"flights/{plain.id}", f"flights/{site.by_kind('open').id}"]
    for path in pages:
        page, watch = open_page(browser, server.url + path)
        if path.startswith("flights/"):
            page.wait_for_selector("#map[data-ready]")
            page.wait_for_load_state("networkidle")
        imgs = images(page)
        assert watch.errors == [], (path, watch.errors)
        assert all(i["complete"] and i["width"] > 0 for i in imgs), (path, imgs)
        if path == "":
            assert sum("/thumb.png" in i["src"] for i in imgs) == 3
        if path == f"flights/{flagged.id}":
            assert sum("/panel/" in i["src"] for i in imgs) == 33
            assert sum(i["tile"] for i in imgs) > 0          # tiles shown when they load
            assert page.locator("#tiles-note").is_hidden()
        page.context.close()


def test_flight_page_draws_the_track_offline(server, site_db, browser, shots):
    _, _, site = site_db
    orbit = site.by_kind("orbit")
    page, watch = open_page(browser, server.url + f"flights/{orbit.id}", tiles="offline")
    page.wait_for_selector("#map[data-ready]")
    page.wait_for_selector("#tiles-note:not([hidden])")
    assert watch.errors == [] and watch.tile_failures > 0
    # The track is drawn from the page's data: SVG paths with real geometry inside the map.
    runs = page.locator("#map path.track")
    assert runs.count() >= 1
    for k in range(runs.count()):
        assert len(runs.nth(k).get_attribute("d") or "") > 20
    box = page.locator("#map").bounding_box()
    track_box = runs.first.bounding_box()
    assert track_box and box and track_box["width"] > 50 and track_box["height"] > 50
    assert box["x"] <= track_box["x"] and track_box["x"] + track_box["width"] <= \
        box["x"] + box["width"] + 1
    # Colours by altitude, as listed in the legend.
    legend = page.locator(".altitude-legend").inner_text()
    assert "altitude" in legend and "10,000 – 15,000 ft" in legend
    # What stands in for the missing tiles: rings, grid, airports, the receiver.
    assert page.locator("#map path.range-ring").count() == 5
    assert page.locator("#map path.grid-line").count() > 8
    assert page.locator("#map path.airport.major").count() >= 3
    assert "LFPG/CDG" in page.locator("#map").inner_text()
    assert page.locator(".ring-label").first.inner_text() == "25 km"
    # Every image loaded (failed tiles are replaced by a transparent one).
    imgs = images(page)
    assert all(i["complete"] and i["width"] > 0 for i in imgs), imgs
    assert sum("/panel/" in i["src"] for i in imgs) == 33
    _screenshot(page, shots / "web-flight.png", full_page=False)
    page.context.close()


def test_home_page_screenshot(server, browser, shots):
    page, watch = open_page(browser, server.url)
    assert watch.errors == []
    assert page.locator("#receiver-state").inner_text() == "connected"
    _screenshot(page, shots / "web-home.png", full_page=True)
    page.context.close()


def test_verdict_click_lands_in_flight_labels_and_changes_the_page(server, site_db, browser):
    _, engine, site = site_db
    survey = site.by_kind("survey")
    assert labels(engine, survey.id) == []
    page, watch = open_page(browser, server.url + f"flights/{survey.id}")
    assert page.locator("#standing").inner_text() == "flagged"
    page.fill("input[name=note]", "survey of the new motorway")
    page.fill("input[name=author]", "ana")
    page.click("#judge-anomalous")
    page.wait_for_selector("#saved")
    assert labels(engine, survey.id) == [("anomalous", "ana", "survey of the new motorway")]
    assert page.locator("#standing").inner_text() == "flagged · confirmed anomalous"
    assert "survey of the new motorway" in page.locator("#verdicts").inner_text()
    page.click("#judge-normal")
    page.wait_for_selector("#verdicts tr.counts >> text=normal")
    assert labels(engine, survey.id)[-1] == ("normal", "web", None)
    assert page.locator("#standing").inner_text() == "known: judged normal, although flagged"
    assert watch.errors == []
    # The home page no longer lists it among the flags.
    page.goto(server.url)
    assert survey.callsign not in page.locator("#week").inner_text()
    page.context.close()


def test_write_without_token_is_refused_beyond_loopback(site_db, browser, tmp_path):
    url, engine, site = site_db
    fid = site.by_kind("calibration").id
    bare = WebServer(create_app(site_settings(url, tmp_path, web_host="0.0.0.0"), engine),
                     "0.0.0.0", 0).start()
    try:
        page, watch = open_page(browser, f"http://127.0.0.1:{bare.port}/flights/{fid}")
        assert "no token is configured" in page.locator("#writes-disabled").inner_text()
        assert page.locator("#verdict-form").count() == 0
        # A hand-made form is refused all the same.
        page.evaluate("""fid => {
            const f = document.createElement('form');
            f.method = 'post'; f.action = '/flights/' + fid + '/verdict';
            f.innerHTML = '<input name="verdict" value="anomalous">';
            document.body.appendChild(f); f.submit(); }""", fid)
        page.wait_for_selector("#message")
        assert "Verdict not saved" in page.locator("h1").inner_text()
        assert "no token is configured" in page.locator("#message").inner_text()
        assert labels(engine, fid) == []
        page.context.close()
    finally:
        bare.stop()

    tokened = WebServer(create_app(site_settings(url, tmp_path, web_host="0.0.0.0",
                                                 web_token="kitten-42"), engine),
                        "0.0.0.0", 0).start()
    try:
        page, watch = open_page(browser, f"http://127.0.0.1:{tokened.port}/flights/{fid}")
        page.click("#judge-anomalous")                        # no token typed
        page.wait_for_selector("#message")
        assert "wrong or missing token" in page.locator("#message").inner_text()
        assert labels(engine, fid) == []
        page.go_back()
        page.fill("input[name=token]", "kitten-42")
        page.click("#judge-anomalous")
        page.wait_for_selector("#saved")
        assert labels(engine, fid) == [("anomalous", "web", None)]
        page.context.close()
    finally:
        tokened.stop()
