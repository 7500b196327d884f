"""Configuration, CLI errors, migrations, partitions, raster core and the embedded server."""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys

import numpy as np
import pytest
import sqlalchemy as sa

from pipeline import config
from pipeline.db import partitions
from pipeline.flights import features, raster


def run_cli(*args, env=None, timeout=120):
    e = {k: v for k, v in os.environ.items() if not k.startswith("ADSB_")}
    e.update(env or {})
    return subprocess.run([sys.executable, "-m", "pipeline.cli", *args], capture_output=True,
                          text=True, env=e, timeout=timeout)


def test_settings_from_environment_and_options():
    s = config.load({"ADSB_RANGE_KM": "150", "ADSB_RECEIVER_FORMAT": "sbs"}, {"range_km": "90"})
    assert s.range_km == 90.0          # the option wins over the environment
    assert s.receiver_format == "sbs" and s.port == 30003


@pytest.mark.parametrize("env,value", [("ADSB_RANGE_KM", "abc"), ("ADSB_RECEIVER_FORMAT", "json"),
                                       ("ADSB_RECEIVER_LAT", "91"), ("ADSB_RECEIVER_PORT", "0")])
def test_invalid_setting_is_one_line_naming_it_and_exit_2(env, value):
    r = run_cli("db", "url", env={env: value})
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and env in lines[0]


def test_invalid_option_names_the_setting():
    r = run_cli("db", "url", "--range-km", "-5")
    assert r.returncode == 2 and "ADSB_RANGE_KM" in r.stderr


def test_migration_creates_partitioned_positions_with_comments(engine):
    with engine.connect() as c:
        kind = c.execute(sa.text("SELECT relkind FROM pg_class WHERE relname='positions'")).scalar()
        assert kind == "p"
        comment = c.execute(sa.text(
            "SELECT col_description('positions'::regclass, attnum) FROM pg_attribute "
            "WHERE attrelid='positions'::regclass AND attname='altitude'")).scalar()
        assert "feet" in comment
        idx = set(c.execute(sa.text("SELECT indexname FROM pg_indexes WHERE tablename='positions'")).scalars())
        assert {"positions_icao24_time_idx", "positions_time_brin"} <= idx


def test_partitions_are_created_once_and_dropped_by_retention(engine):
    day = dt.date(2021, 10, 7)
    with engine.begin() as c:
        assert partitions.ensure(c, [day, day + dt.timedelta(days=1)]) == [
            "positions_p20211007", "positions_p20211008"]
        assert partitions.ensure(c, [day]) == []
        c.execute(sa.text("INSERT INTO positions (time, icao24, latitude, longitude) "
                          "VALUES ('2021-10-07T12:00:00Z', 'abcdef', 48.8, 2.4)"))
    with engine.begin() as c:
        assert partitions.drop_before(c, day + dt.timedelta(days=1)) == ["positions_p20211007"]
        assert c.execute(sa.text("SELECT count(*) FROM positions")).scalar() == 0
        assert list(partitions.existing(c)) == [day + dt.timedelta(days=1)]


def test_raster_draws_connected_binary_lines_and_roundtrips_png():
    # A 3 km-radius orbit 20 km east of the receiver.
    t = np.linspace(0, 2 * np.pi, 200)
    x, y = 20 + 3 * np.cos(t), 3 * np.sin(t)
    img, side = raster.rasterize_xy(x, y, range_km=120)
    assert img.shape == (64, 64, raster.NCH) and set(np.unique(img)) <= {0, 1}
    # In the receiver frame the orbit is a couple of pixels; in its own frame it is a ring.
    assert img[:, :, 0].sum() < 20
    assert img[:, :, 1].sum() > 100
    assert img[32, 32, 1] == 0                      # the ring's centre is dark
    assert 6 <= side <= 7
    back = raster.decode_png(raster.encode_png(img))
    assert np.array_equal(back, img)


def test_batch_png_decoding_equals_pillow_and_rejects_corrupt_images():
    import io

    from PIL import Image

    rng = np.random.default_rng(0)
    imgs = (rng.random((50, 64, 64, 2)) < 0.03).astype(np.uint8)
    blobs = [raster.encode_png(i) for i in imgs]
    assert np.array_equal(raster.decode_pngs(blobs), imgs)
    assert np.array_equal(np.stack([raster.decode_png(b) for b in blobs]), imgs)
    # A PNG from another writer (8-bit, Pillow) takes the general path, in the same batch.
    other = io.BytesIO()
    Image.fromarray(np.concatenate([imgs[0, :, :, 0], imgs[0, :, :, 1]], 1) * 255).save(other, "PNG")
    assert np.array_equal(raster.decode_pngs([other.getvalue(), blobs[1]]), imgs[:2])
    bad = bytearray(blobs[0])
    bad[len(bad) // 2] ^= 0xFF
    with pytest.raises(ValueError):
        raster.decode_pngs([blobs[1], bytes(bad)])


def test_raster_clips_segments_at_the_frame_edge():
    x = np.array([-500.0, 500.0])      # a straight line far beyond +-120 km, through the centre
    y = np.array([0.0, 0.0])
    img, _ = raster.rasterize_xy(x, y, range_km=120)
    row = img[:, :, 0].sum(axis=1)
    assert row.max() == 64                # one full-width row lit, nothing wrapped or lost


def test_features_of_a_circle_and_a_line():
    t = np.linspace(0, 4 * np.pi, 400)
    circle = features.compute_xy(5 * np.cos(t), 5 * np.sin(t))
    line = features.compute_xy(np.linspace(0, 100, 100), np.zeros(100))
    assert line.tortuosity == pytest.approx(1.0, abs=1e-6)
    assert line.turning_deg == pytest.approx(0.0, abs=1e-6)
    assert circle.tortuosity > 20 and circle.turning_deg == pytest.approx(720, rel=0.02)


def test_embedded_server_is_reused_and_stopped(tmp_path):
    env = {"ADSB_DATA_DIR": str(tmp_path / "d")}
    first = run_cli("db", "url", env=env)
    assert first.returncode == 0, first.stderr
    pg_version = tmp_path / "d" / "postgres" / "PG_VERSION"
    assert pg_version.exists()
    stamp = pg_version.stat().st_mtime_ns
    up = run_cli("db", "upgrade", env=env)
    assert up.returncode == 0, up.stderr
    again = run_cli("db", "url", env=env)
    assert again.stdout == first.stdout and pg_version.stat().st_mtime_ns == stamp
    import psycopg2
    conn = psycopg2.connect(first.stdout.strip())
    with conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM flights")
        assert cur.fetchone() == (0,)
    conn.close()
    assert run_cli("db", "stop", env=env).returncode == 0
    assert not (tmp_path / "d" / "postgres" / "postmaster.pid").exists()


def test_configuration_doc_documents_every_setting():
    from pathlib import Path

    doc = (Path(__file__).resolve().parents[1] / "docs" / "configuration.md").read_text()
    missing = [env for env, _, _ in config.describe() if f"\n| `{env}` |" not in doc]
    assert not missing, f"docs/configuration.md's table lacks {missing}"
