"""`adsb-pipeline report`: the right flights, fixed-scale pictures, a page a browser renders."""

from __future__ import annotations

import datetime as dt
import html
import json
import logging
import re
import subprocess
from pathlib import Path

import numpy as np
import pytest
import sqlalchemy as sa
from PIL import Image

import flagged_data
from pipeline import cli
from pipeline.web import report

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update",
                  "--disable-sync"]
RECENT_FLAGGED = ["FHBXA", "SRV<b>&1", "FGZNX"]     # by score; AFR77 (flagged) is 3 days old


def run_report(db_url: str, out: Path, *options: str) -> int:
    return cli.main(["report", "--out", str(out), "--database-url", db_url, *options])


def callsigns_in(page: str) -> list[str]:
    return [html.unescape(m) for m in re.findall(r"<h2>\d+\. (.*?) <small>", page)]


@pytest.mark.parametrize("text,seconds", [("24h", 86400), ("90m", 5400), ("7d", 604800),
                                          ("2w", 1209600), ("1.5h", 5400), ("30s", 30)])
def test_since_accepts_units(text, seconds):
    assert report.parse_since(text).total_seconds() == seconds


@pytest.mark.parametrize("text", ["24", "h", "-1h", "0h", "1y", "24 hours"])
def test_since_rejects_nonsense(text):
    with pytest.raises(ValueError, match="--since"):
        report.parse_since(text)


def panel(picture: Image.Image, row: int, col: int) -> np.ndarray:
    return np.asarray(picture.crop(report.panel_box(row, col)))


def test_pictures_use_one_fixed_scale_never_rescaled():
    original = np.zeros((64, 64, 2), dtype=np.uint8)
    original[10, :, :] = 1
    faint = np.full((64, 64, 2), 0.25)
    strong = np.full((64, 64, 2), 0.9)
    pic_faint = report.render_flight(original, faint)
    pic_strong = report.render_flight(original, strong)
    for row in (0, 1):
        assert (panel(pic_faint, row, 1) == 64).all()            # 0.25 * 255, not stretched to 255
        assert (panel(pic_strong, row, 1) == 230).all()
        err = panel(pic_faint, row, 2)
        # Enlarged by nearest neighbour: stored pixel (10, x) is rows 40..43 of the panel.
        assert (err[40:44] == report.heat(np.array(0.75))).all()
        assert (err[:40] == report.heat(np.array(0.25))).all()
        orig = panel(pic_faint, row, 0)
        assert (orig[40:44] == 255).all() and (orig[:40] == 0).all()
    assert report.heat(np.array(0.0)).tolist() != report.heat(np.array(1.0)).tolist()


def test_report_lists_recent_flagged_flights_by_score_with_escaped_text(db_url, engine, tmp_path):
    flights = flagged_data.insert(engine)
    out = tmp_path / "report"
    assert run_report(db_url, out) == 0
    page = (out / "index.html").read_text()
    assert callsigns_in(page) == RECENT_FLAGGED
    assert "SRV&lt;b&gt;&amp;1" in page and "<b>&1" not in page
    by_name = {f.callsign: f for f in flights}
    for name in RECENT_FLAGGED:
        picture = out / f"flight_{by_name[name].id}.png"
        assert Image.open(picture).size == (report.WIDTH, report.HEIGHT)
        assert f'src="{picture.name}"' in page
    assert len(list(out.glob("*.png"))) == 3

    assert run_report(db_url, out, "--since", "7d", "--top", "2") == 0
    page = (out / "index.html").read_text()
    assert callsigns_in(page) == ["AFR77", "FHBXA"]
    assert len(list(out.glob("flight_*.png"))) == 2          # pictures of dropped flights go


def test_report_of_a_replayed_day_counts_back_from_the_data_clock(db_url, engine, tmp_path):
    replay_end = dt.datetime(2021, 10, 7, 15, 0, tzinfo=dt.timezone.utc)
    flagged_data.insert(engine, now=replay_end)
    out = tmp_path / "report"
    assert run_report(db_url, out, "--since", "1h") == 0
    page = (out / "index.html").read_text()
    assert callsigns_in(page) == RECENT_FLAGGED
    assert "2021-10-07 14:57:00 UTC (data clock)" in page      # newest position: FHBXA


def test_unreadable_image_is_reported_and_the_rest_still_drawn(db_url, engine, tmp_path, caplog):
    flights = flagged_data.insert(engine)
    bad = next(f for f in flights if f.callsign == "FHBXA")
    with engine.begin() as c:
        c.execute(sa.text("UPDATE flights SET image = 'not a png' WHERE id = :id"), {"id": bad.id})
    out = tmp_path / "report"
    with caplog.at_level(logging.WARNING, logger="pipeline.web.report"):
        assert run_report(db_url, out) == 0
    page = (out / "index.html").read_text()
    assert callsigns_in(page) == RECENT_FLAGGED
    assert "image unreadable" in page
    assert not (out / f"flight_{bad.id}.png").exists()
    assert len(list(out.glob("flight_*.png"))) == 2
    assert any(f"flight {bad.id}: image unreadable" in r.getMessage() for r in caplog.records)


def test_empty_window_gives_a_page_saying_so(db_url, tmp_path):
    assert run_report(db_url, tmp_path / "r") == 0
    assert "No flagged flights" in (tmp_path / "r" / "index.html").read_text()


def test_bad_options_exit_2(db_url, tmp_path):
    assert run_report(db_url, tmp_path / "r", "--since", "yesterday") == 2
    assert run_report(db_url, tmp_path / "r", "--top", "0") == 2


# ---- in a real browser ------------------------------------------------------------------------
_IMAGE_CHECK = """<script>
window.addEventListener('load', () => {
  const out = document.createElement('pre');
  out.id = 'img-check';
  out.textContent = JSON.stringify([...document.images].map(i => ({
    src: i.getAttribute('src'), ok: i.complete && i.naturalWidth > 0,
    width: i.naturalWidth, shown: i.getBoundingClientRect().width})));
  document.body.appendChild(out);
});
</script>
</body>"""


def chromium(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(CHROMIUM), *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'chromium-profile'}", *args],
        capture_output=True, text=True, timeout=120)


@pytest.mark.slow
@pytest.mark.skipif(not CHROMIUM.exists(), reason="headless browser check needs /usr/bin/chromium "
                    "(Debian package chromium; .ci/run installs it when run as root)")
def test_page_renders_in_chromium_with_every_image_loaded(db_url, engine, tmp_path):
    flagged_data.insert(engine)
    out = tmp_path / "report"
    assert run_report(db_url, out) == 0
    page = (out / "index.html").read_text()
    check = out / "check.html"          # same folder, so relative image paths resolve the same
    check.write_text(page.replace("</body>", _IMAGE_CHECK))
    r = chromium(tmp_path, "--virtual-time-budget=10000", "--dump-dom", check.as_uri())
    m = re.search(r'<pre id="img-check">(.*?)</pre>', r.stdout, re.S)
    assert m, f"page did not finish loading in chromium:\n{r.stderr[-2000:]}"
    images = json.loads(html.unescape(m.group(1)))
    assert len(images) == 3
    assert all(i["ok"] and i["width"] == report.WIDTH for i in images), images
    assert all(0 < i["shown"] <= report.WIDTH for i in images), images

    shot = tmp_path / "screenshot.png"
    chromium(tmp_path, "--window-size=1100,1400", "--hide-scrollbars", f"--screenshot={shot}",
             (out / "index.html").as_uri())
    pixels = np.asarray(Image.open(shot).convert("RGB"))
    # The pictures' black panels and coloured error maps are on the screen, not a blank page.
    assert (pixels.sum(axis=-1) < 30).mean() > 0.05
    assert (np.ptp(pixels, axis=-1) > 80).mean() > 0.001
