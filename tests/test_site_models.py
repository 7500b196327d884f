"""Each site trains, thresholds and scores its own model: one site's training neither retires
nor replaces another's model, scoring a site uses its own model only, and the SQL surface names
the site."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

import helpers_flights as hf
from pipeline.model import registry, score, train
from pipeline.service import scheduler

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def two_sites(databases):
    """Simulated finished flights in site 'default' and the same flights again in site 'club'
    (another frame centre: a second receiver network on the same database)."""
    url, _ = hf.sim_database(databases, n_normal=40, n_anomalies=2)
    engine = sa.create_engine(url)
    with engine.begin() as c:
        c.execute(sa.text("INSERT INTO sites (id, latitude, longitude, range_km) "
                          "VALUES ('club', 48.88, 2.42, 121)"))
        c.execute(sa.text("INSERT INTO receivers (id, site) VALUES ('club', 'club')"))
        cols = [r for r in c.execute(sa.text(
            "SELECT column_name FROM information_schema.columns WHERE table_name = 'flights' "
            "AND column_name NOT IN ('id', 'site', 'receivers', 'receiver_id')")).scalars()]
        c.execute(sa.text(
            f"INSERT INTO flights ({', '.join(cols)}, site, receivers, receiver_id) "
            f"SELECT {', '.join(cols)}, 'club', '{{club}}', 'club' FROM flights"))
    engine.dispose()
    return url


def fit(settings, engine) -> int:
    result = train.run_training(settings, seed=1, verbose=False, engine=engine, plain=True,
                                arch=hf.tiny_arch(), max_epochs=3)
    if result.status != "active":       # a 3-epoch fit may miss the recall floor
        with engine.begin() as c:
            registry.activate(c, result.model_id, "test")
    return result.model_id


def by_site(engine) -> dict[str, dict]:
    with engine.connect() as c:
        rows = c.execute(sa.text("""
            SELECT f.site, count(*) AS flights, count(f.score) AS scored,
                   array_agg(DISTINCT f.model_id) FILTER (WHERE f.model_id IS NOT NULL) AS models,
                   array_agg(DISTINCT s.site) FILTER (WHERE s.site IS NOT NULL) AS score_sites
              FROM flights f LEFT JOIN flight_scores s ON s.icao24 = f.icao24
                                                     AND s.flight_id = f.id
             GROUP BY f.site"""))
        return {r.site: r._asdict() for r in rows}


def test_each_site_trains_and_scores_its_own_model(two_sites, tmp_path):
    engine = sa.create_engine(two_sites)
    settings = hf.model_settings(two_sites, tmp_path)
    worker = scheduler.Worker(settings, engine)
    score._cache.clear()
    try:
        assert worker.sites_ready_to_train() == ["club", "default"]
        first = fit(settings, engine)
        with engine.connect() as c:
            assert registry.get(c, first).site == "default"
            assert registry.active(c, "club") is None
        assert worker.sites_ready_to_train() == ["club"]
        assert score.score_pending(engine, settings) == 42          # the site with a model
        s = by_site(engine)
        assert (s["default"]["scored"], s["default"]["models"]) == (42, [first])
        assert s["default"]["score_sites"] == ["default"]
        assert s["club"]["scored"] == 0 and s["club"]["models"] is None

        second = fit(settings.replace(site="club"), engine)
        with engine.connect() as c:
            assert registry.active(c, "default").id == first         # untouched
            assert registry.active(c, "club").id == second
            thresholds = dict(c.execute(sa.text(
                "SELECT site, threshold FROM models WHERE status = 'active'")).all())
        assert set(thresholds) == {"default", "club"}
        assert score.score_pending(engine, settings) == 42          # only the club's now
        s = by_site(engine)
        assert (s["club"]["scored"], s["club"]["models"], s["club"]["score_sites"]) == (
            42, [second], ["club"])
        assert s["default"]["models"] == [first]
        with engine.connect() as c:
            flagged = c.execute(sa.text(
                "SELECT g.site, f.model_id, m.site AS model_site FROM flagged_flights g "
                "JOIN flights f ON f.id = g.flight_id JOIN models m ON m.id = f.model_id")).all()
        assert all(r.site == r.model_site for r in flagged)
        # A third model of one site retires that site's active model only.
        third = fit(settings.replace(site="club"), engine)
        with engine.connect() as c:
            status = dict(c.execute(sa.text("SELECT id, status FROM models")).all())
        assert (status[first], status[second], status[third]) == ("active", "retired", "active")
    finally:
        score._cache.clear()
        engine.dispose()
