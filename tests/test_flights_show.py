"""``show``: an enlarged, labelled picture whose pixels are the stored image's pixels."""

from __future__ import annotations

import datetime as dt

import numpy as np
import sqlalchemy as sa
from helpers_positions import UTC, copy_positions, track
from PIL import Image

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
    pic = np.asarray(Image.open(out).convert("L"))
    img = raster.decode_png(png)
    side = raster.SIZE * show.SCALE
    top = show.PAD + show.LINE_H
    for ch in range(2):
        left = show.PAD + ch * (side + show.PAD)
        panel = pic[top:top + side, left:left + side]
        # Every enlarged pixel is pure black (1) or pure white (0), exactly as stored.
        np.testing.assert_array_equal(panel[::show.SCALE, ::show.SCALE] == 0, img[:, :, ch] == 1)
        assert set(np.unique(panel)) <= {0, 255}
    # The caption is drawn below the panels.
    assert (pic[top + side + show.PAD:] < 128).any()
    assert cli.main(["show", "999", "--out", str(out), "--database-url", db_url]) == 1
    assert "no flight with id 999" in capsys.readouterr().err


def test_fixed_scale_does_not_stretch_faint_values():
    faint = np.full((64, 64), 0.1)
    assert show.to_gray(faint).min() == 230 and show.to_gray(np.ones((64, 64))).max() == 0
