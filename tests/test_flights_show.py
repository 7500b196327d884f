"""``show``: an enlarged, labelled picture whose pixels are the stored image's pixels."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pytest
import sqlalchemy as sa
from PIL import Image

from helpers_positions import UTC, copy_positions, track
from pipeline import cli
from pipeline.flights import raster, show

T0 = dt.datetime(2021, 10, 7, 12, 0, tzinfo=UTC)


def test_show_writes_both_channels_enlarged_on_a_fixed_scale(db_url, engine, tmp_path, capsys):
    copy_positions(engine, track("aaaaaa", T0, 50, dlat=0.01, dlon=0.02))
    assert cli.main(["process", "--final", "--no-score", "--database-url", db_url]) == 0
    with engine.connect() as conn:
        fid, png = conn.execute(sa.text("SELECT id, image FROM flights")).one()
    out = tmp_path / "f.png"
    assert cli.main(["show", str(fid), "--out", str(out), "--database-url", db_url]) == 0
    rgb = np.asarray(Image.open(out).convert("RGB"))
    pic = np.asarray(Image.open(out).convert("L"))
    img = raster.decode_png(png)
    side = raster.SIZE * show.SCALE
    top = show.PAD + show.LINE_H
    # Panels: where, direction, shape.
    for k, ch in ((0, raster.WHERE), (2, raster.SHAPE)):
        left = show.PAD + k * (side + show.PAD)
        panel = pic[top:top + side, left:left + side]
        # Every enlarged pixel is pure black (1) or pure white (0), exactly as stored.
        np.testing.assert_array_equal(panel[::show.SCALE, ::show.SCALE] == 0, img[:, :, ch] == 1)
        assert set(np.unique(panel)) <= {0, 255}
    # Direction: the where pixels in the colour of the track's heading (north-east here), the
    # rest white.
    left = show.PAD + (side + show.PAD)
    panel = rgb[top:top + side:show.SCALE, left:left + side:show.SCALE]
    lit = img[:, :, raster.DIRECTION].any(axis=-1)
    np.testing.assert_array_equal(lit, img[:, :, raster.WHERE] == 1)
    sector = int(np.argmax(img[:, :, raster.DIRECTION].sum(axis=(0, 1))))
    assert sector == 1                                              # NE
    assert (panel[lit] == show.SECTOR_RGB[sector].astype(np.uint8)).all()
    assert (panel[~lit] == 255).all()
    # The caption is drawn below the panels.
    assert (pic[top + side + show.PAD:] < 128).any()
    assert cli.main(["show", "999", "--out", str(out), "--database-url", db_url]) == 1
    assert "no flight with id 999" in capsys.readouterr().err


def test_fixed_scale_does_not_stretch_faint_values():
    faint = np.full((64, 64), 0.1)
    assert show.to_gray(faint).min() == 230 and show.to_gray(np.ones((64, 64))).max() == 0


def test_show_says_why_a_short_flight_has_no_picture(db_url, engine):
    copy_positions(engine, track("bbbbbb", T0, 5, dlat=0.01, dlon=0.02))
    assert cli.main(["process", "--final", "--no-score", "--database-url", db_url]) == 0
    with engine.connect() as conn:
        fid, state, png = conn.execute(sa.text("SELECT id, state, image FROM flights")).one()
    assert state == "finished" and png is None
    with pytest.raises(ValueError, match="5 positions over 20 s are too few to draw"):
        show.render_flight(engine, fid, 121.0)
