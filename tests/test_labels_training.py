"""The user's verdicts in training and evaluation: a flight judged normal is trained on even when
the active model flagged it or the tortuosity screen would leave it out, one judged anomalous
never is (the newest verdict counts), and ``evaluate --labels db`` judges the flights that
have a verdict, labelled by it."""

from __future__ import annotations

import argparse
import csv
import datetime as dt

import numpy as np
import pytest
import sqlalchemy as sa

import helpers_flights as hf
from pipeline import cli
from pipeline.evaluation import evaluate
from pipeline.model import data, train

pytestmark = pytest.mark.slow

EPOCHS = 2                     # what is tested is which flights are fitted, not how well


def _q(engine, sql, **kw):
    with engine.connect() as c:
        return c.execute(sa.text(sql), kw).all()


def judge(engine, flight_id: int, *verdicts: str) -> None:
    """Verdicts on one flight, oldest first (an hour apart)."""
    with engine.begin() as c:
        for i, verdict in enumerate(verdicts):
            c.execute(sa.text(
                "INSERT INTO flight_labels (flight_id, icao24, verdict, author, created_at) "
                "SELECT :f, icao24, :v, 'alice', now() - make_interval(hours => :h) "
                "FROM flights WHERE id = :f"),
                {"f": flight_id, "v": verdict, "h": len(verdicts) - i})


@pytest.fixture(scope="module")
def judged(databases, tmp_path_factory):
    """Simulated flights (6 working patterns among them), an active model that flagged some,
    and verdicts that overrule it and the screen; the cases by name."""
    url, _ = hf.sim_database(databases, n_normal=60, n_anomalies=6)
    settings = hf.model_settings(url, tmp_path_factory.mktemp("labels"))
    engine = sa.create_engine(url)
    window = data.load_window(engine, settings)
    screened, _ = train.tortuous(window.tortuosity, settings.train_screen_k,
                                 settings.train_screen_min_tortuosity)
    tortuous = window.ids[screened].tolist()
    plain = [int(i) for i in window.ids[~screened]]
    assert len(tortuous) >= 4 and len(plain) >= 50
    case = {
        "flagged_normal": plain[0],            # flagged by the active model, judged normal
        "flagged_plain": plain[1],             # flagged, no verdict
        "flagged_changed_mind": plain[2],      # flagged, judged normal, then anomalous
        "ordinary_anomalous": plain[3],        # neither flagged nor screened, judged anomalous
        "ordinary_back_to_normal": plain[4],   # judged anomalous, then normal
        "tortuous_normal": tortuous[0],        # above the screen, judged normal
        "tortuous_plain": tortuous[1],         # above the screen, no verdict
        "tortuous_anomalous": tortuous[2],     # above the screen, judged anomalous
    }
    with engine.begin() as c:
        active = c.execute(sa.text(
            "INSERT INTO models (version, status, threshold, params, path, site) "
            "VALUES ('earlier', 'active', 1.0, '{}', 'absent.keras', 'default') "
            "RETURNING id")).scalar_one()
        c.execute(sa.text("UPDATE flights SET flagged = (id = ANY(:f)), model_id = :m, score = 0, "
                          "threshold = 1"),
                  {"m": active, "f": [case["flagged_normal"], case["flagged_plain"],
                                      case["flagged_changed_mind"]]})
    judge(engine, case["flagged_normal"], "normal")
    judge(engine, case["flagged_changed_mind"], "normal", "anomalous")
    judge(engine, case["ordinary_anomalous"], "anomalous")
    judge(engine, case["ordinary_back_to_normal"], "anomalous", "normal")
    judge(engine, case["tortuous_normal"], "normal")
    judge(engine, case["tortuous_anomalous"], "anomalous")
    engine.dispose()
    return url, settings, active, case


@pytest.fixture(scope="module")
def trained(databases, judged):
    """The judged database after a (short) training run; its model is active."""
    url, settings, active, case = judged
    url = hf.copy_database(databases, url)
    settings = settings.replace(database_url=url)
    engine = sa.create_engine(url)
    result = train.run_training(settings, seed=4, verbose=False, engine=engine,
                                arch=hf.tiny_arch(), max_epochs=EPOCHS)
    with engine.begin() as c:       # a 2-epoch fit may miss the recall floor; evaluate needs it
        c.execute(sa.text("UPDATE models SET status = CASE WHEN id = :i THEN 'active' "
                          "ELSE 'retired' END"), {"i": result.model_id})
    yield engine, settings, active, case, result
    engine.dispose()


def test_verdicts_overrule_the_active_models_flags_and_the_screen(databases, judged):
    url, settings, active, case = judged
    engine = sa.create_engine(url)
    window = data.load_window(engine, settings, active)
    engine.dispose()
    keep, excluded, verdicts = train.screen(window, settings, False, active)
    kept = set(window.ids[keep].tolist())
    for name in ("flagged_normal", "ordinary_back_to_normal", "tortuous_normal"):
        assert case[name] in kept, name
    for name in ("flagged_plain", "flagged_changed_mind", "ordinary_anomalous",
                 "tortuous_plain", "tortuous_anomalous"):
        assert case[name] not in kept, name
    assert sorted(excluded["judged_anomalous"]["flights"]) == sorted(
        [case["flagged_changed_mind"], case["ordinary_anomalous"], case["tortuous_anomalous"]])
    assert excluded["flagged_by_active"] == {"model_id": active,
                                             "flights": [case["flagged_plain"]],
                                             "flagged_but_trained_on": []}
    assert case["tortuous_plain"] in excluded["screened"]["flights"]
    assert not {case["tortuous_normal"], case["tortuous_anomalous"]} & set(
        excluded["screened"]["flights"])
    # Each excluded flight under one reason, and nothing else is left out.
    lists = [excluded[k]["flights"] for k in ("judged_anomalous", "flagged_by_active", "screened")]
    assert sum(map(len, lists)) == len(set().union(*lists)) == (~keep).sum()
    assert verdicts == {"judged_anomalous_excluded": 3, "judged_normal_kept": 3,
                        "judged_normal_flagged_by_active": 1, "judged_normal_screened": 1}

    # --plain fits every flight of the window, but never one judged anomalous.
    keep, excluded, _ = train.screen(window, settings, True, active)
    assert set(window.ids[~keep].tolist()) == set(excluded["judged_anomalous"]["flights"])
    assert len(excluded["judged_anomalous"]["flights"]) == 3


def test_a_flight_judged_normal_is_loaded_before_the_flight_limit_cuts(judged):
    url, settings, _, case = judged
    engine = sa.create_engine(url)
    oldest = _q(engine, "SELECT id FROM flights ORDER BY last_seen LIMIT 1")[0][0]
    judge(engine, oldest, "normal")
    try:
        window = data.load_window(engine, settings.replace(train_max_flights=10))
        assert len(window.ids) == 10 and oldest in window.ids.tolist()
        assert window.verdict_is("normal")[window.ids.tolist().index(oldest)]
    finally:
        with engine.begin() as c:
            c.execute(sa.text("DELETE FROM flight_labels WHERE flight_id = :f"), {"f": oldest})
        engine.dispose()


def test_training_records_the_verdicts_in_the_model_row(trained):
    engine, _, active, case, result = trained
    row = _q(engine, "SELECT n_train, n_excluded, excluded, params FROM models WHERE id = :i",
             i=result.model_id)[0]
    excluded = row.excluded
    assert sorted(excluded["judged_anomalous"]["flights"]) == sorted(
        [case["flagged_changed_mind"], case["ordinary_anomalous"], case["tortuous_anomalous"]])
    assert excluded["flagged_by_active"]["flights"] == [case["flagged_plain"]]
    left_out = {f for reason in excluded.values() for f in reason["flights"]}
    assert row.n_excluded == len(left_out) == sum(len(r["flights"]) for r in excluded.values())
    assert not {case["flagged_normal"], case["tortuous_normal"],
                case["ordinary_back_to_normal"]} & left_out
    assert row.n_train + row.n_excluded == 66
    assert row.params["verdicts"]["judged_normal_kept"] == 3
    assert row.params["verdicts"]["judged_anomalous_excluded"] == 3


def test_evaluate_takes_its_labels_from_the_verdicts(trained, tmp_path, capsys):
    engine, settings, _, case, _ = trained
    args = cli.build_parser().parse_args(["evaluate", "--labels", "db", "--out",
                                          str(tmp_path / "scores.csv")])
    assert args.labels == evaluate.LABELS_FROM_DB
    assert evaluate.command(settings, args) == 0
    assert "6 flights judged, 3 anomalous" in capsys.readouterr().out
    rows = {int(r["flight_id"]): int(r["label"])
            for r in csv.DictReader(open(tmp_path / "scores.csv"))}
    assert rows == {case["flagged_normal"]: 0, case["ordinary_back_to_normal"]: 0,
                    case["tortuous_normal"]: 0, case["flagged_changed_mind"]: 1,
                    case["ordinary_anomalous"]: 1, case["tortuous_anomalous"]: 1}

    # The CSV labels still work: every flight judged, by its aircraft.
    icao = dict(_q(engine, "SELECT id, icao24 FROM flights"))
    labels = tmp_path / "labels.csv"
    labels.write_text(f"icao24,label\n{icao[case['tortuous_plain']]},1\n")
    args = argparse.Namespace(labels=str(labels), out=None, train_until=None, seed=0)
    assert evaluate.command(settings, args) == 0
    assert "66 flights judged, 1 anomalous" in capsys.readouterr().out


def test_evaluate_as_deployed_judges_only_later_flights_with_a_verdict(trained):
    engine, settings, _, case, _ = trained
    starts = dict(_q(engine, "SELECT id, first_seen FROM flights"))
    until = sorted(starts.values())[len(starts) * 3 // 5]
    later = sorted((f for f, t in starts.items() if t >= until), key=starts.get)
    judge(engine, later[-1], "normal")
    judge(engine, later[-2], "anomalous")
    try:
        labels = evaluate.read_labels_db(engine)
        expected = {f: labels.flight[f] for f in labels.flight if starts[f] >= until}
        report = evaluate.evaluate_split(engine, settings, labels, until, seed=0,
                                         arch=hf.tiny_arch(), max_epochs=EPOCHS)
    finally:
        with engine.begin() as c:
            c.execute(sa.text("DELETE FROM flight_labels WHERE flight_id = ANY(:f)"),
                      {"f": later[-2:]})
    assert dict(zip(report.flights.ids.tolist(), report.y.tolist())) == expected
    assert {later[-1], later[-2]} <= set(expected) and 0 < report.y.sum() < len(report.y)
    assert report.train_until == until and isinstance(until, dt.datetime)
    assert np.isfinite(report.rows[0].auc)


def _window_flagged(margins: list[float], n: int) -> data.Window:
    """A window of ``n`` ordinary flights (no images needed by the screen), the first
    ``len(margins)`` flagged by the active model at those score / threshold ratios."""
    start = dt.datetime(2026, 11, 23, tzinfo=dt.timezone.utc)
    flagged = np.arange(n) < len(margins)
    margin = np.full(n, np.nan)
    margin[:len(margins)] = margins
    return data.Window(start, start + dt.timedelta(days=2), np.arange(100, 100 + n),
                       [f"{i:06x}" for i in range(n)], None, flagged,  # type: ignore[arg-type]
                       np.ones(n), np.full(n, np.datetime64("2026-11-23T12:00"), "datetime64[us]"),
                       np.full(n, "", dtype=object), margin)


def test_a_flagged_share_far_above_the_anomalies_is_trained_on(settings, caplog):
    """The active model flagged 40 of 100 flights (a runway it never saw): only the 5 flagged by
    the widest margin are left out, the other 35 are trained on, so the next model learns the
    change instead of flagging it for ever. Under the cap every flagged flight is left out."""
    settings = settings.replace(train_flagged_max_share=0.05)
    margins = [1.0 + 0.1 * i for i in range(40)]
    margins[3] = np.nan                  # flagged, but no ratio: left out first
    window = _window_flagged(margins, 100)
    keep, excluded, _ = train.screen(window, settings, False, 7)
    left_out = excluded["flagged_by_active"]["flights"]
    assert sorted(left_out) == [103, 136, 137, 138, 139]
    assert len(excluded["flagged_by_active"]["flagged_but_trained_on"]) == 35
    assert int(keep.sum()) == 95 and not keep[[3, 36, 37, 38, 39]].any()
    assert "the traffic has changed" in caplog.text

    window = _window_flagged([2.0, 1.5, 1.1], 100)
    keep, excluded, _ = train.screen(window, settings, False, 7)
    assert excluded["flagged_by_active"]["flights"] == [100, 101, 102]
    assert excluded["flagged_by_active"]["flagged_but_trained_on"] == []
    assert int(keep.sum()) == 97
