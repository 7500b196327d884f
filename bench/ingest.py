"""Ingest throughput on the Paris Beast capture, on one core.

Prints framing-only, pyModeS-only (PipeDecoder on the same frames, same timestamps) and
end-to-end (file -> committed rows in PostgreSQL) messages per second, the ratio end-to-end /
pyModeS-only (target >= 0.85) and the peak RSS of the end-to-end run (target <= 250 MB).

    python bench/ingest.py [--db postgresql://postgres@127.0.0.1:5432/postgres] [--bytes N]

A throw-away database is created on the given server and dropped afterwards. The pyModeS-only
and end-to-end runs each take a fresh process, pinned to one core and warmed up the same way;
each round runs both with the same hash seed (dict layouts, and so speed, depend on it) and the
rounds take turns, so that a spell of load from other processes weighs on both alike. Each
figure is the best of ``--repeat`` rounds; the per-round ratios and their median are printed
too.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PARIS = ROOT.parent / "shared" / "data" / "paris_2021-10-07.beast"
START = 1633608001.0
RECEIVER_LAT, RECEIVER_LON, RANGE_KM = 48.88, 2.42, 121.0     # the data README's receiver


def _pin_one_core() -> None:
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})


def peak_rss_mb() -> float:
    """Peak RSS of this process image. (ru_maxrss would report the parent's peak: Linux
    carries it over the exec of a vfork'ed child.)"""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def framing(data: bytes) -> tuple[int, float]:
    from pipeline.receiver.beast import BeastParser, CounterClock

    parser, clock = BeastParser(), CounterClock(START)
    t0 = time.perf_counter()
    n = 0
    for i in range(0, len(data), 65536):
        counters, messages = parser.feed_hex(data[i:i + 65536])
        n += len(clock.stamp_array(counters))
    return n, time.perf_counter() - t0


def pymodes_only(data: bytes) -> tuple[int, float]:
    """``PipeDecoder`` alone, configured as the pipeline configures it (the receiver position
    as surface reference), on frames already cut and stamped."""
    from pyModeS import PipeDecoder

    from pipeline.receiver.beast import BeastParser

    items = [(START + c / 12e6, m.hex()) for c, m in BeastParser().feed(data)]
    pipe = PipeDecoder(surface_ref=(RECEIVER_LAT, RECEIVER_LON))
    decode = pipe.decode
    t0 = time.perf_counter()
    for t, hexmsg in items:
        decode(hexmsg, timestamp=t)
    pipe.flush()
    return len(items), time.perf_counter() - t0


def warm_up(path: str) -> None:
    """Import what ``ingest_file()`` imports on first use and decode one chunk (the first
    ``decode()`` calls import parts of pyModeS), in both kinds of runs, so that neither pays for
    first use. Connecting to the database, creating partitions and the last commit stay in the
    end-to-end time."""
    import pipeline.db.engine  # noqa: F401
    import pipeline.db.writer  # noqa: F401
    from pipeline.receiver.beast import BeastParser, CounterClock
    from pipeline.receiver.decode import PositionDecoder

    with open(path, "rb") as fh:
        counters, messages = BeastParser().feed_hex(fh.read(65536))
    decoder = PositionDecoder(RECEIVER_LAT, RECEIVER_LON, RANGE_KM)
    decoder.feed(CounterClock(START).stamp_array(counters), messages)
    decoder.finish()
    decoder.take()


def end_to_end(path: Path, db_url: str) -> dict:
    from pipeline import config
    from pipeline.receiver.ingest import ingest_file

    settings = config.load({}, {"database_url": db_url, "data_dir": "/tmp/adsb-bench",
                                "receiver_lat": RECEIVER_LAT, "receiver_lon": RECEIVER_LON,
                                "range_km": RANGE_KM})
    t0 = time.perf_counter()
    stats = ingest_file(settings, path, "beast", START, progress=False)
    return {"messages": stats.messages, "rows": stats.rows_written,
            "seconds": time.perf_counter() - t0}


def _child(kind: str, path: Path, db_url: str, seed: int) -> dict:
    """One measurement in a fresh process (its own peak RSS) with the given hash seed."""
    env = dict(os.environ, PYTHONHASHSEED=str(seed))
    out = subprocess.run([sys.executable, __file__, "--child", kind, "--input", str(path),
                          "--db", db_url], capture_output=True, text=True, check=True, env=env)
    return json.loads(out.stdout.strip().splitlines()[-1])


def _run_child(kind: str, path: Path, db_url: str) -> dict:
    _pin_one_core()
    warm_up(str(path))
    if kind == "pymodes":
        n, seconds = pymodes_only(path.read_bytes())
        result = {"messages": n, "seconds": seconds}
    else:
        result = end_to_end(path, db_url)
    return {**result, "rss_mb": peak_rss_mb()}


def _database(admin_url: str):
    import psycopg2
    import sqlalchemy as sa

    from pipeline.db import migrate

    name = f"adsb_bench_{uuid.uuid4().hex[:8]}"
    conn = psycopg2.connect(admin_url)
    conn.autocommit = True
    conn.cursor().execute(f'CREATE DATABASE "{name}"')
    url = sa.engine.make_url(admin_url).set(database=name, drivername="postgresql+psycopg2")
    url_text = url.render_as_string(hide_password=False)
    engine = sa.create_engine(url_text)
    migrate.upgrade(engine)
    engine.dispose()
    return conn, name, url_text


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--db", default="postgresql://postgres@127.0.0.1:5432/postgres",
                    help="admin URL of a PostgreSQL server (a scratch database is created)")
    ap.add_argument("--bytes", type=int, default=0, help="use only the first N bytes")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--child", choices=("pymodes", "e2e"), help=argparse.SUPPRESS)
    ap.add_argument("--input", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(_run_child(args.child, args.input, args.db)))
        return 0
    if not PARIS.exists():
        print(f"missing {PARIS}", file=sys.stderr)
        return 2
    _pin_one_core()
    data = PARIS.read_bytes()
    if args.bytes:
        data = data[:args.bytes]
    path = Path("/tmp/adsb-bench-input.beast")
    path.write_bytes(data)

    n, framing_best, rounds = 0, float("inf"), []
    for seed in range(args.repeat):
        n, s = framing(data)
        framing_best = min(framing_best, s)
        alone = _child("pymodes", path, args.db, seed)
        admin, name, url = _database(args.db)
        try:
            piped = _child("e2e", path, url, seed)
        finally:
            admin.cursor().execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            admin.close()
        rounds.append((alone, piped))
    framing_rate = n / framing_best
    pymodes_rate = max(a["messages"] / a["seconds"] for a, _ in rounds)
    e2e = min((p for _, p in rounds), key=lambda r: r["seconds"])
    e2e_rate = e2e["messages"] / e2e["seconds"]
    paired = sorted(a["seconds"] / p["seconds"] for a, p in rounds)
    per_round = " ".join(f"{a['seconds'] / p['seconds']:.2f}" for a, p in rounds)

    print(f"frames                     {n:>10,}")
    print(f"framing only               {framing_rate:>10,.0f} msg/s")
    print(f"pyModeS PipeDecoder only   {pymodes_rate:>10,.0f} msg/s")
    print(f"end to end (committed)     {e2e_rate:>10,.0f} msg/s   ({e2e['rows']:,} rows, "
          f"{e2e['seconds']:.1f} s)")
    print(f"ratio end-to-end / pyModeS {e2e_rate / pymodes_rate:>10.2f}   (target >= 0.85; "
          f"each round: {per_round})")
    # A round's two runs share a hash seed and a spell of load: their median ratio moves less
    # between runs than the ratio of the best figures, which may come from different rounds.
    print(f"median of the rounds' ratios {statistics.median(paired):>8.2f}")
    print(f"peak RSS of the ingest     {max(p['rss_mb'] for _, p in rounds):>10.0f} MB  "
          f"(target <= 250 MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
