"""A network of 20 receivers of one site on loopback, through the real processes.

Simulated traffic over one area (``simulate.generate``: corridors, approaches and departures of
two airports, 2 % anomalies) is heard by 20 receivers on a 5 x 4 grid, each hearing what is
within a radius that reaches its neighbours, losing a few messages at random, its clock off by
up to 0.5 s. Each receiver is a Beast TCP server (``_network_tools.PacedReceiver``, a
``BeastServer`` on a clock shared by all twenty) with its own ingest process
(``adsb-pipeline ingest --live`` via bench/_soak_ingest.py, which anchors the receiver's 12 MHz
counter at the simulated start plus the receiver's clock offset: the window lies two days in the
past, so the data clock follows the newest position and the flight gap runs on simulated time,
compressed with it). Two ``adsb-pipeline worker`` processes (``--workers`` up to 4) share the
site's jobs through the queue. All run against a database of their own on the local PostgreSQL
server, created and dropped by the bench.

Prints: positions/s stored and messages/s offered; end-to-end lag from a flight's last
transmission to its flight row finished (``closed_at``), and what it is made of; CPU seconds
and peak RSS per tier (ingests, workers, PostgreSQL backends of the database) and their share of
a core at real time; flights against the simulator's truth (merged, split, missing, spurious;
n_positions against the transmissions stored); per-receiver positions sent against stored;
jobs per kind and per worker. Method and figures: docs/scale.md.

Usage:
    python bench/network.py            # ~10 min on 2 cores
    python bench/network.py --quick    # ~2.5 min smoke run
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np
import psycopg2
import sqlalchemy as sa

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _network_tools import (  # noqa: E402
    FlightMatch,
    Network,
    PacedReceiver,
    PositionCount,
    Receiver,
    SharedClock,
    grid,
    hear,
    match_flights,
    neighbour_radius,
    percentiles,
    receivers_at_capacity,
    transmission_index,
)
from _soak_tools import parse_metrics, proc_pss, proc_sample  # noqa: E402
from pipeline.db import migrate  # noqa: E402
from pipeline.evaluation import simulate  # noqa: E402
from pipeline.flights.store import COMMIT_MARGIN  # noqa: E402
from soak import Daemon, free_port  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
ADMIN_URL = os.environ.get("ADSB_BENCH_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
SITE = "network"
CENTRE = (48.88, 2.42)
COLS, ROWS = 5, 4
SAMPLE_S = 1.0
# Server-wide PostgreSQL processes (shared with every other database of the server).
PG_BACKGROUND = ("checkpointer", "background writer", "walwriter", "autovacuum launcher",
                 "logical replication launcher")
T0 = time.monotonic()


def say(msg: str) -> None:
    print(f"[{time.monotonic() - T0:6.0f} s] {msg}", flush=True)


def parent(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return int(fh.read().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return None


def reaped_cpu(pid: int) -> float | None:
    """CPU seconds of the children ``pid`` has waited for (cutime + cstime): for the
    postmaster, every backend that exited, of every database of the server."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            rest = fh.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(rest[13]) + int(rest[14])) / os.sysconf("SC_CLK_TCK")


class Tier:
    """CPU and memory of the processes of one tier: CPU seconds since the start of the
    stream (a process's CPU before it counts as its baseline), peak of the summed resident
    size and the largest single process."""

    def __init__(self) -> None:
        self.base: dict[int, float] = {}
        self.last: dict[int, float] = {}
        self.peak_sum = 0
        self.peak_one = 0
        self.processes: set[int] = set()

    def sample(self, pids: list[int], *, pss: bool = False, counting: bool = True) -> None:
        total = 0
        for pid in pids:
            s = proc_sample(pid)
            if s is None:
                continue
            mem = (proc_pss(pid) or s[0]) if pss else s[0]
            total += mem
            self.peak_one = max(self.peak_one, mem)
            if not counting:
                self.base[pid] = s[1]
                continue
            self.base.setdefault(pid, 0.0)      # started during the run: its whole life
            self.last[pid] = s[1]
            self.processes.add(pid)
        self.peak_sum = max(self.peak_sum, total)

    def begin(self, pids: list[int], pss: bool = False) -> None:
        """Baselines at the start of the stream; processes that start later count whole."""
        self.sample(pids, pss=pss, counting=False)
        for pid in pids:
            self.last.setdefault(pid, self.base.get(pid, 0.0))
            self.processes.add(pid)

    @property
    def cpu_s(self) -> float:
        return sum(max(0.0, c - self.base.get(p, 0.0)) for p, c in self.last.items())


class Bench:
    def __init__(self, a: argparse.Namespace) -> None:
        self.a = a
        self.tmp = Path(tempfile.mkdtemp(prefix="adsb-network-"))
        self.db = f"adsb_network_{os.getpid()}"
        self.url = ADMIN_URL.rsplit("/", 1)[0] + "/" + self.db
        self.engine: sa.Engine | None = None
        self.servers: list[PacedReceiver] = []
        self.ingests: list[Daemon] = []
        self.workers: list[Daemon] = []
        self.metrics_ports: list[int] = []
        self.tiers = {k: Tier() for k in ("ingest", "worker", "postgres", "pg_background",
                                          "bench")}
        self.timeline: list[tuple[float, float, int]] = []       # wall, sim, positions stored
        self.load: list[float] = []                                 # 1-minute load average
        self.postmaster: int | None = None
        self.reaped_base = self.reaped_last = 0.0
        self.out: dict = {}

    # ---- setup ---------------------------------------------------------------------------------
    def setup(self) -> None:
        a = self.a
        half = 0.92 * a.range_km           # the simulator's flights stay within this radius
        self.receivers = grid(COLS, ROWS, half, CENTRE, max_offset_s=a.max_offset_s, seed=a.seed)
        self.radius = neighbour_radius(COLS, ROWS, half)
        duration = a.hours * 3600.0
        n_anom = round(a.flights * 0.02)
        t = time.monotonic()
        self.flights = simulate.generate(a.flights - n_anom, n_anom, seed=a.seed,
                                         ref_lat=CENTRE[0], ref_lon=CENTRE[1],
                                         range_km=a.range_km, duration_s=duration)
        self.net: Network = hear(self.flights, self.receivers, CENTRE, self.radius, a.loss,
                                 seed=a.seed)
        net = self.net
        self.sim_end = max(float(s.times[-1]) for s in net.streams if s.frames)
        self.sim_start = min(float(s.times[0]) for s in net.streams if s.frames)
        say(f"{len(self.flights)} flights over {a.hours:g} h, {net.transmitted:,} messages sent "
            f"by the aircraft, {net.heard_messages:,} heard by the {len(self.receivers)} "
            f"receivers ({net.heard_messages / net.transmitted:.2f} receivers a message; radius "
            f"{self.radius:.0f} km, loss {a.loss:.0%}), built in {time.monotonic() - t:.0f} s")
        # Two days back at 10:00 UTC: older than the data clock's 24 h, so it follows the
        # newest stored position (replay) and the gap rule runs on simulated time.
        day = dt.datetime.now(dt.timezone.utc).date() - dt.timedelta(days=2)
        self.start_unix = dt.datetime(day.year, day.month, day.day, 10,
                                      tzinfo=dt.timezone.utc).timestamp()
        with contextlib.closing(psycopg2.connect(ADMIN_URL)) as c:
            c.autocommit = True
            c.cursor().execute(f'CREATE DATABASE "{self.db}"')
            # No parallel query in this database: a parallel worker lives for one query, too
            # short for the 1 s /proc sampling to see its CPU (on 2 shared cores it only
            # contends with the leader anyway); its leader does the same work instead.
            c.cursor().execute(f'ALTER DATABASE "{self.db}" SET max_parallel_workers_per_gather = 0')
        self.engine = sa.create_engine(self.url.replace("postgresql:", "postgresql+psycopg2:"),
                                       pool_size=2)
        # Once here: twenty ingests migrating an empty database at once would race.
        migrate.upgrade(self.engine)
        say(f"database {self.db} created; work directory {self.tmp}")
        self.clock = SharedClock(a.speed)
        self.servers = [PacedReceiver(s, self.clock).start() for s in net.streams]

    def env(self, r: Receiver, **extra: str) -> dict[str, str]:
        a = self.a
        env = {k: v for k, v in os.environ.items() if not k.startswith("ADSB_")}
        env.update({
            "ADSB_DATABASE_URL": self.url, "ADSB_DATA_DIR": str(self.tmp / r.id),
            "ADSB_RECEIVER_ID": r.id, "ADSB_RECEIVER_LAT": str(r.lat),
            "ADSB_RECEIVER_LON": str(r.lon), "ADSB_SITE": SITE,
            "ADSB_SITE_LAT": str(CENTRE[0]), "ADSB_SITE_LON": str(CENTRE[1]),
            "ADSB_RANGE_KM": f"{a.range_km:g}", "ADSB_FLIGHT_GAP_S": f"{a.gap_s:g}",
            "ADSB_RECEIVER_FORMAT": "beast", "ADSB_RECEIVER_HOST": "127.0.0.1",
            "ADSB_WEB_PORT": "0", "ADSB_METRICS_PORT": "0",
            # No reconnects in a quiet stretch or while the others start.
            "ADSB_RECEIVER_TIMEOUT_S": "900",
            "ADSB_ALERT_NOTIFY_CHANNEL": "",
            "ADSB_WORKER_TICK_S": f"{a.tick_s:g}",
            # No training: the bench measures the flow of positions into flights.
            "ADSB_TRAIN_MIN_FLIGHTS": "1000000", "ADSB_TRAIN_MAX_FLIGHTS": "1000000",
            "ADSB_TRAIN_CRON": "0 0 1 1 *",
        })
        env.update(extra)
        return env

    def start_processes(self) -> None:
        a = self.a
        py = sys.executable
        for r, srv in zip(self.receivers, self.servers):
            (self.tmp / r.id).mkdir()
            port = free_port()
            self.metrics_ports.append(port)
            d = Daemon(f"ingest {r.id}", [py, str(ROOT / "bench" / "_soak_ingest.py"),
                                          repr(self.start_unix + r.clock_offset_s)],
                       self.env(r, ADSB_RECEIVER_PORT=str(srv.port),
                                ADSB_METRICS_PORT=str(port)), self.tmp / f"ingest-{r.id}.log")
            d.start()
            self.ingests.append(d)
        # Workers carry the first receiver's settings: registering it again changes nothing.
        r0 = self.receivers[0]
        for i in range(a.workers):
            d = Daemon(f"worker {i}", [py, "-m", "pipeline.cli", "worker"], self.env(r0),
                       self.tmp / f"worker-{i}.log")
            d.start()
            self.workers.append(d)
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            waiting = [r.id for r, s in zip(self.receivers, self.servers)
                       if not s.connected.is_set()]
            dead = [d.name for d in self.ingests + self.workers if d.pid is None]
            if dead:
                raise RuntimeError(f"{', '.join(dead)} exited; logs in {self.tmp}")
            if not waiting and self._jobs_seen():
                break
            time.sleep(1)
        else:
            raise RuntimeError(f"receivers not connected after 240 s: {waiting}")
        say(f"{len(self.ingests)} ingests connected, {len(self.workers)} workers queueing")

    def _jobs_seen(self) -> bool:
        assert self.engine is not None
        with contextlib.suppress(sa.exc.SQLAlchemyError), self.engine.connect() as c:
            return c.execute(sa.text("SELECT count(DISTINCT worker) FROM jobs")).scalar() >= 1
        return False

    # ---- sampling -----------------------------------------------------------------------------
    def pg_pids(self) -> tuple[list[int], list[int]]:
        """PostgreSQL processes serving this database (client backends, its autovacuum
        workers), not the bench's own; and the server-wide background processes."""
        assert self.engine is not None
        with self.engine.connect() as c:
            rows = c.execute(sa.text(
                "SELECT pid, backend_type, datname = current_database() FROM pg_stat_activity "
                "WHERE pid <> pg_backend_pid() AND (datname = current_database() "
                "OR backend_type = ANY(:bg))"), {"bg": list(PG_BACKGROUND)}).all()
        return ([p for p, _, ours in rows if ours], [p for p, kind, ours in rows
                                                     if not ours and kind in PG_BACKGROUND])

    def sample(self, counting: bool = True) -> None:
        own, background = self.pg_pids()
        pids = {"ingest": [d.pid for d in self.ingests if d.pid],
                "worker": [d.pid for d in self.workers if d.pid],
                "postgres": own, "pg_background": background, "bench": [os.getpid()]}
        for name, tier in self.tiers.items():
            pss = name in ("postgres", "pg_background")
            (tier.sample if counting else tier.begin)(pids[name], pss=pss)
        assert self.engine is not None
        with self.engine.connect() as c:
            n = c.execute(sa.text("SELECT coalesce(sum(positions), 0) FROM position_days")).scalar()
        self.timeline.append((time.time(), self.clock.sim_now(), int(n)))
        self.load.append(os.getloadavg()[0])
        if background and self.postmaster is None:
            self.postmaster = parent(background[0])
        if self.postmaster:
            reaped = reaped_cpu(self.postmaster)
            if reaped is not None:
                if not counting:
                    self.reaped_base = reaped
                self.reaped_last = reaped

    def scrape(self) -> list[dict[str, float]]:
        out = []
        for port in self.metrics_ports:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
                    out.append(parse_metrics(r.read().decode()))
            except OSError:
                out.append({})
        return out

    # ---- the run ------------------------------------------------------------------------------
    def run(self) -> None:
        a = self.a
        self.setup()
        self.start_processes()
        self.sample(counting=False)
        self.clock.start(self.sim_start)
        self.go_wall = time.time()
        stream_wall = (self.sim_end - self.sim_start) / a.speed
        say(f"stream started: {self.sim_end - self.sim_start:,.0f} simulated s at {a.speed:g}x "
            f"= {stream_wall:.0f} s")
        next_report = time.monotonic() + 60
        while not all(s.finished.is_set() for s in self.servers):
            time.sleep(SAMPLE_S)
            self.sample()
            dead = [d.name for d in self.ingests + self.workers if d.pid is None]
            if dead:
                raise RuntimeError(f"{', '.join(dead)} exited during the stream; logs in "
                                   f"{self.tmp}")
            if time.monotonic() > next_report:
                next_report += 60
                w, s, n = self.timeline[-1]
                say(f"simulated {(s - self.sim_start) / 3600:.2f} h, {n:,} positions stored, "
                    f"servers behind by at most {max(x.behind_s for x in self.servers):.1f} s")
        self.stream_end_wall = time.time()
        say(f"stream finished in {self.stream_end_wall - self.go_wall:.0f} s")
        # The ingests have written everything once the stored count stops moving.
        stable, last = 0, -1
        while stable < 3:
            time.sleep(SAMPLE_S)
            self.sample()
            n = self.timeline[-1][2]
            stable = stable + 1 if n == last else 0
            last = n
        self.ingest_done_wall = time.time()
        self.final_metrics = self.scrape()
        say(f"ingests drained: {last:,} positions stored")
        # Workers close every flight the gap rule lets them close; the rest (ending within the
        # gap of the newest position) waits for data that never comes and is closed by a
        # final pass below, outside the lag figures.
        deadline = time.monotonic() + COMMIT_MARGIN.total_seconds() + 20 * a.tick_s + 120
        while time.monotonic() < deadline:
            time.sleep(2)
            self.sample()
            if self.closable_open() == 0:
                break
        self.workers_done_wall = time.time()
        self.sample()
        say(f"workers closed every closable flight {self.workers_done_wall - self.ingest_done_wall:.0f} s "
            f"after the ingests drained ({self.closable_open()} closable still open)")
        stop_all(self.ingests + self.workers)
        r = subprocess.run([sys.executable, "-m", "pipeline.cli", "process", "--final",
                            "--no-score"], env=self.env(self.receivers[0]), cwd=ROOT,
                           capture_output=True, text=True)
        say(f"final pass (flights within the gap of the end of the stream): "
            f"{r.stdout.strip() or r.stderr.strip()[-300:]}")
        self.report()

    def closable_open(self) -> int:
        assert self.engine is not None
        with self.engine.connect() as c:
            return int(c.execute(sa.text(
                "SELECT count(*) FROM flights WHERE state = 'open' AND last_seen < "
                "(SELECT max(newest_time) FROM position_days) - make_interval(secs => :g)"),
                {"g": self.a.gap_s}).scalar())

    # ---- the figures ---------------------------------------------------------------------------
    def stored_positions(self) -> dict[str, dict[str, np.ndarray]]:
        """Per receiver and aircraft, the stored times (Unix s)."""
        assert self.engine is not None
        out: dict[str, dict[str, np.ndarray]] = {}
        with self.engine.connect() as c:
            for rid, icao, blob in c.execute(sa.text(
                    "SELECT receiver_id, icao24, string_agg(int8send((extract(epoch FROM time) "
                    "* 1000000)::int8), ''::bytea ORDER BY time) FROM positions "
                    "GROUP BY 1, 2")):
                us = np.frombuffer(blob, dtype=">i8").astype(np.int64)
                out.setdefault(rid, {})[icao] = us / 1e6
        return out

    def report(self) -> None:
        a, net = self.a, self.net
        sim_s = self.sim_end - self.sim_start
        o = self.out
        o["setup"] = {
            "receivers": len(self.receivers), "grid": f"{COLS}x{ROWS}",
            "radius_km": round(self.radius, 1), "loss": a.loss,
            "clock_offsets_s": [r.clock_offset_s for r in self.receivers],
            "area_range_km": a.range_km, "flights": len(self.flights), "hours": a.hours,
            "speed": a.speed, "workers": a.workers, "tick_s": a.tick_s,
            "flight_gap_s": a.gap_s, "simulated_s": round(sim_s),
        }
        # -- throughput
        wall = self.stream_end_wall - self.go_wall
        tl = self.timeline
        n_go = tl[0][2]
        stored_end = [n for w, _, n in tl if w <= self.ingest_done_wall][-1] - n_go
        mid = [(w, n) for w, s, n in tl
               if self.sim_start + 0.25 * sim_s <= s <= self.sim_start + 0.75 * sim_s]
        frames_mid = sum(int(((s.times >= self.sim_start + 0.25 * sim_s)
                              & (s.times <= self.sim_start + 0.75 * sim_s)).sum())
                         for s in net.streams)
        mid_wall = (mid[-1][0] - mid[0][0]) if len(mid) > 1 else float("nan")
        o["throughput"] = {
            "messages_offered": net.heard_messages,
            "messages_offered_per_s": round(net.heard_messages / wall),
            "positions_stored": stored_end,
            "positions_per_s": round(stored_end / (self.ingest_done_wall - self.go_wall)),
            "middle_half": {"messages_offered_per_s": round(frames_mid * a.speed / (0.5 * sim_s)),
                            "positions_per_s": round((mid[-1][1] - mid[0][1]) / mid_wall)
                            if len(mid) > 1 else None},
            "at_1x": {"messages_per_s": round(net.heard_messages / sim_s, 1),
                      "positions_per_s": round(stored_end / sim_s, 1)},
            "stream_wall_s": round(wall), "servers_behind_max_s": round(
                max(s.behind_s for s in self.servers), 2),
        }
        # -- positions against what each receiver sent
        stored = self.stored_positions()
        per_rx: dict[str, dict] = {}
        total = PositionCount()
        union: dict[str, list[np.ndarray]] = {}
        for ri, (r, m) in enumerate(zip(self.receivers, self.final_metrics)):
            pc = PositionCount()
            mine = stored.get(r.id, {})
            anchor = self.start_unix + r.clock_offset_s
            for icao, tr in net.truth.items():
                sent_k = np.flatnonzero(tr.heard[:, ri])
                got = mine.get(icao)
                k = (transmission_index(got, anchor, tr.t0) if got is not None
                     else np.empty(0, np.int64))
                if sent_k.size or k.size:
                    pc.add(sent_k, k)
                if k.size:
                    union.setdefault(icao, []).append(k[k >= 0])
            for icao in set(mine) - set(net.truth):
                pc.extra += mine[icao].size
                pc.stored += mine[icao].size
            decoded = int(m.get("positions", -1))
            per_rx[r.id] = {**{k: v for k, v in vars(pc).items() if k != "shortfall"},
                            "decoded": decoded,
                            "decoded_not_stored": decoded - (pc.stored - pc.duplicated),
                            "rejected": int(sum(m.get(x, 0) for x in (
                                "rejected_range", "rejected_speed", "rejected_altitude",
                                "out_of_order", "duplicates"))),
                            "crc_failures": int(m.get("crc_failures", 0)),
                            "reconnects": int(m.get("reconnects", 0)),
                            "frames_sent": self.servers[ri].frames_sent,
                            "frames": net.streams[ri].frames}
            total.merge(pc)
        o["positions"] = {"total": vars(total), "per_receiver": per_rx,
                          "receivers_with_loss_or_duplicates": [
                              rid for rid, x in per_rx.items()
                              if x["decoded_not_stored"] or x["duplicated"] or x["extra"]]}
        # -- flights against the truth
        union_k = {icao: np.unique(np.concatenate(v)) for icao, v in union.items()}
        assert self.engine is not None
        with self.engine.connect() as c:
            rows = c.execute(sa.text(
                "SELECT id, icao24, state, n_positions, closed_at, late, cardinality(receivers) "
                "FROM flights")).all()
            last_ins = dict(c.execute(sa.text(
                "SELECT f.id, max(p.inserted_at) FROM flights f JOIN positions p ON "
                "p.icao24 = f.icao24 AND p.time BETWEEN f.first_seen AND f.last_seen "
                "GROUP BY f.id")).all())
            o["jobs"] = self.jobs(c)
        by_icao: dict[str, list[tuple[str, int]]] = {}
        for _, icao, state, n, *_ in rows:
            by_icao.setdefault(icao, []).append((state, int(n)))
        fm: FlightMatch = match_flights(net.truth, union_k, by_icao, a.gap_s)
        o["flights"] = {**{k: v for k, v in vars(fm).items() if k != "positions_off"},
                        "positions_off": fm.positions_off[:10],
                        "rows": len(rows), "late": sum(bool(r[5]) for r in rows),
                        "receivers_per_flight": percentiles([r[6] or 0 for r in rows],
                                                            (5, 50, 95))}
        # -- lag: last stored transmission (simulated time -> wall time) to closed_at
        lags, ingest_delay, sched = [], [], []
        margin = COMMIT_MARGIN.total_seconds()
        gap_wall = a.gap_s / a.speed
        tail = 0
        for fid, icao, state, _n, closed, _, _ in rows:
            k = union_k.get(icao)
            if state != "finished" or k is None or not k.size or len(by_icao[icao]) != 1:
                continue
            closed_s = closed.timestamp()
            if closed_s > self.workers_done_wall:
                tail += 1                    # closed by the final pass
                continue
            last_wall = float(self.clock.wall_of(net.truth[icao].t0 + float(k[-1])))
            lags.append(closed_s - last_wall)
            ins = last_ins.get(fid)
            if ins is not None:
                ingest_delay.append(ins.timestamp() - last_wall)
                ready = max(last_wall + gap_wall, ins.timestamp() + margin)
                sched.append(closed_s - ready)
        o["lag_s"] = {
            "flights": len(lags), "closed_by_final_pass": tail,
            "median_p95": percentiles(lags),
            "gap_rule_s": round(gap_wall, 1),
            "commit_margin_s": margin,
            "last_row_stored_after_s_median_p95": percentiles(ingest_delay),
            "after_both_until_closed_s_median_p95": percentiles(sched),
        }
        # -- CPU and memory
        t = self.tiers
        window = self.workers_done_wall - self.go_wall
        cpu = {k: round(v.cpu_s, 1) for k, v in t.items()}
        share = {k: v / sim_s for k, v in cpu.items()}
        o["cpu"] = {
            "window_wall_s": round(window), "simulated_s": round(sim_s), "cpu_s": cpu,
            "share_of_a_core_during_run": {k: round(v.cpu_s / window, 3) for k, v in t.items()},
            "share_of_a_core_at_1x": {k: round(v, 4) for k, v in share.items()},
            "us_per_message_offered": {k: round(cpu[k] / net.heard_messages * 1e6, 1)
                                       for k in ("ingest", "worker", "postgres")},
            "peak_rss_mib": {k: {"sum": round(v.peak_sum / 2**20), "largest": round(
                v.peak_one / 2**20)} for k, v in t.items()},
            "processes": {k: len(v.processes) for k, v in t.items()},
            # Backends that exited during the run (any database of the server: other users'
            # too), whose CPU after their last sample the tiers above miss.
            "pg_exited_backends_server_wide_cpu_s": round(self.reaped_last - self.reaped_base, 1),
            "load_average_1min_median_max": [round(float(np.median(self.load)), 1),
                                             round(max(self.load), 1)],
        }
        per_rx_share = (share["ingest"] + share["postgres"] + share["worker"]) / len(self.receivers)
        us_per_msg = sum(cpu[k] for k in ("ingest", "worker", "postgres")) / net.heard_messages
        o["capacity"] = {
            "cpu_us_per_message_offered": round(us_per_msg * 1e6, 1),
            "messages_per_s_to_fill_2_cores": round(2.0 / us_per_msg),
            "receivers_at_1000_msg_s_to_fill_2_cores": round(2.0 / us_per_msg / 1000, 1),
            "share_per_receiver_at_1x": round(per_rx_share, 5),
            "receivers_to_fill_2_cores": round(receivers_at_capacity(2.0, per_rx_share)),
            # The same work spread over speed times the wall time.
            "flights_job_duty_at_1x": round(o["jobs"]["flights_busy_share"] / a.speed, 5),
            "receivers_to_fill_the_serial_flights_pass": round(receivers_at_capacity(
                1.0, o["jobs"]["flights_busy_share"] / a.speed / len(self.receivers))),
        }
        (self.tmp / "network.json").write_text(json.dumps(o, indent=1, default=str))
        self.print_summary()

    def jobs(self, c: sa.Connection) -> dict:
        window = self.workers_done_wall - self.go_wall
        per_kind = {k: {"jobs": int(n), "states": s, "max_attempts": int(m)} for k, n, s, m in
                    c.execute(sa.text(
                        "SELECT kind, sum(n), jsonb_object_agg(state, n), max(ma) FROM ("
                        "SELECT kind, state, count(*) AS n, max(attempts) AS ma FROM jobs "
                        "GROUP BY 1, 2) x GROUP BY 1 ORDER BY 1"))}
        per_worker = {w: {k: int(n) for k, n in d.items()} for w, d in c.execute(sa.text(
            "SELECT worker, jsonb_object_agg(kind, n) FROM (SELECT worker, kind, count(*) AS n "
            "FROM jobs WHERE worker IS NOT NULL GROUP BY 1, 2) x GROUP BY 1 ORDER BY 1"))}
        busy = c.execute(sa.text(
            "SELECT coalesce(sum(extract(epoch FROM least(finished_at, to_timestamp(:e)) - "
            "greatest(started_at, to_timestamp(:s)))), 0), max(extract(epoch FROM "
            "finished_at - started_at)) FROM jobs WHERE kind = 'flights' AND finished_at > "
            "to_timestamp(:s) AND started_at < to_timestamp(:e)"),
            {"s": self.go_wall, "e": self.workers_done_wall}).one()
        return {"per_kind": per_kind, "per_worker": per_worker,
                "attempts_over_1": int(c.execute(sa.text(
                    "SELECT count(*) FROM jobs WHERE attempts > 1")).scalar()),
                "flights_busy_share": round(float(busy[0]) / window, 3),
                "flights_longest_s": round(float(busy[1] or 0), 1)}

    def print_summary(self) -> None:
        o = self.out
        s, th, lag, cpu, fl, pos, jb, cap = (o[k] for k in (
            "setup", "throughput", "lag_s", "cpu", "flights", "positions", "jobs", "capacity"))
        tot = pos["total"]
        all_sent = all(x["frames_sent"] == x["frames"] for x in pos["per_receiver"].values())
        kinds = ", ".join(f"{k} {v['jobs']} {v['states']}" for k, v in jb["per_kind"].items())
        lines = [
            "==== network results ====",
            f"setup: {s['receivers']} receivers ({s['grid']}, radius {s['radius_km']} km, loss "
            f"{s['loss']:.0%}, clocks within +-{max(abs(x) for x in s['clock_offsets_s']):.2f} s), "
            f"{s['flights']} flights over {s['hours']:g} h at {s['speed']:g}x, {s['workers']} "
            f"workers, tick {s['tick_s']:g} s, ADSB_FLIGHT_GAP_S {s['flight_gap_s']:g}",
            f"offered: {th['messages_offered']:,} messages in {th['stream_wall_s']} s = "
            f"{th['messages_offered_per_s']:,}/s (middle half {th['middle_half']['messages_offered_per_s']:,}/s;"
            f" {th['at_1x']['messages_per_s']:,}/s at 1x); servers behind at most "
            f"{th['servers_behind_max_s']} s",
            f"stored: {th['positions_stored']:,} positions = {th['positions_per_s']:,}/s "
            f"(middle half {th['middle_half']['positions_per_s']:,}/s; "
            f"{th['at_1x']['positions_per_s']:,}/s at 1x)",
            f"lag (last transmission -> closed_at), {lag['flights']} flights: median "
            f"{lag['median_p95'][0]} s, p95 {lag['median_p95'][1]} s; of which the gap rule "
            f"{lag['gap_rule_s']} s ({s['flight_gap_s']:g} simulated s at {s['speed']:g}x) and "
            f"the commit margin {lag['commit_margin_s']:g} s overlap: last row stored "
            f"{lag['last_row_stored_after_s_median_p95'][0]} s after (p95 "
            f"{lag['last_row_stored_after_s_median_p95'][1]}), then closed "
            f"{lag['after_both_until_closed_s_median_p95'][0]} s after both allowed it (p95 "
            f"{lag['after_both_until_closed_s_median_p95'][1]}); "
            f"{lag['closed_by_final_pass']} flights at the end closed by the final pass",
            "cpu s (share of a core during the run / at 1x), peak RSS MiB sum (largest):",
        ]
        for k in ("ingest", "worker", "postgres", "pg_background", "bench"):
            lines.append(f"  {k:14s} {cpu['cpu_s'][k]:8.1f} s  "
                         f"{cpu['share_of_a_core_during_run'][k]:6.3f} / "
                         f"{cpu['share_of_a_core_at_1x'][k]:.4f}  "
                         f"{cpu['peak_rss_mib'][k]['sum']:6d} ({cpu['peak_rss_mib'][k]['largest']})"
                         f"  [{cpu['processes'][k]} processes]")
        lines += [
            f"  PostgreSQL backends that exited during the run, whole server (other users' "
            f"included): {cpu['pg_exited_backends_server_wide_cpu_s']} s; machine load average "
            f"median {cpu['load_average_1min_median_max'][0]}, max "
            f"{cpu['load_average_1min_median_max'][1]} (2 cores)",
            f"  per message offered: ingest {cpu['us_per_message_offered']['ingest']} us, "
            f"worker {cpu['us_per_message_offered']['worker']} us, PostgreSQL "
            f"{cpu['us_per_message_offered']['postgres']} us",
            f"capacity: {cap['share_per_receiver_at_1x']:.4f} of a core per receiver at 1x "
            f"(ingest + worker + PostgreSQL) -> ~{cap['receivers_to_fill_2_cores']} receivers "
            f"like these fill 2 cores; {cap['cpu_us_per_message_offered']} us a message -> "
            f"{cap['messages_per_s_to_fill_2_cores']:,} messages/s fill 2 cores, "
            f"{cap['receivers_at_1000_msg_s_to_fill_2_cores']} receivers at 1,000 messages/s "
            f"each; the site's flights pass (one at a time) was busy "
            f"{jb['flights_busy_share']:.1%} of the run -> full at ~"
            f"{cap['receivers_to_fill_the_serial_flights_pass']} receivers at 1x",
            f"flights: {fl['simulated']} simulated, {fl['heard']} heard; merged {fl['merged']}, "
            f"split {fl['split']}, joined {fl['joined']}, missing {fl['missing']}, spurious "
            f"{fl['spurious']}, unfinished {fl['unfinished']}, late {fl['late']}; n_positions "
            f"= distinct transmissions stored for {fl['positions_exact']} of {fl['merged']}; "
            f"transmissions heard but stored by no receiver per flight: "
            f"{dict(sorted(fl['short_of_heard'].items()))}; receivers per flight (p5/50/95) "
            f"{fl['receivers_per_flight']}",
            f"positions per receiver (every server sent its whole stream: {all_sent}): "
            f"sent {tot['sent']:,}, stored {tot['stored']:,}, duplicated "
            f"{tot['duplicated']}, extra {tot['extra']}, sent not stored {tot['lost']:,} "
            f"({tot['aircraft_short']} aircraft-receiver pairs; by shortfall "
            f"{dict(sorted(tot['shortfall'].items())[:8])}); decoded but not stored: "
            f"{sum(x['decoded_not_stored'] for x in pos['per_receiver'].values())}; receivers "
            f"with a loss after decoding, a duplicate or an extra row: "
            f"{pos['receivers_with_loss_or_duplicates'] or 'none'}",
            f"jobs: {kinds}; "
            f"attempts > 1: {jb['attempts_over_1']}; per worker: "
            f"{'; '.join(f'{w} {d}' for w, d in jb['per_worker'].items())}; longest flights "
            f"pass {jb['flights_longest_s']} s",
            f"(all figures in {self.tmp / 'network.json'}; logs in {self.tmp})",
        ]
        print("\n".join(lines), flush=True)

    def cleanup(self) -> None:
        with contextlib.suppress(Exception):
            stop_all(self.ingests + self.workers)
        for s in self.servers:
            s.stop()
        if self.engine is not None:
            self.engine.dispose()
        if not self.a.keep:
            with contextlib.suppress(psycopg2.Error), contextlib.closing(
                    psycopg2.connect(ADMIN_URL)) as c:
                c.autocommit = True
                c.cursor().execute(f'DROP DATABASE IF EXISTS "{self.db}" WITH (FORCE)')
            for p in self.tmp.glob("r*"):
                shutil.rmtree(p, ignore_errors=True)


def stop_all(daemons: list[Daemon], timeout: float = 30) -> None:
    """SIGTERM to every process at once (each ingest flushes for up to 8 s), then wait."""
    for d in daemons:
        if d.pid:
            with contextlib.suppress(ProcessLookupError):
                os.kill(d.pid, signal.SIGTERM)
    for d in daemons:
        d.stop(timeout)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hours", type=float, default=3.0, help="simulated hours of traffic")
    ap.add_argument("--flights", type=int, default=400, help="flights in the window")
    ap.add_argument("--speed", type=float, default=20.0, help="times real time")
    ap.add_argument("--workers", type=int, default=2, choices=range(1, 5))
    ap.add_argument("--tick-s", type=float, default=2.0, help="ADSB_WORKER_TICK_S")
    ap.add_argument("--gap-s", type=float, default=600.0,
                    help="ADSB_FLIGHT_GAP_S in simulated seconds (runs on simulated time)")
    ap.add_argument("--range-km", type=float, default=121.0, help="the area: site range")
    ap.add_argument("--loss", type=float, default=0.03, help="share of messages each loses")
    ap.add_argument("--max-offset-s", type=float, default=0.5, help="receiver clock offsets")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quick", action="store_true", help="a 2-3 minute smoke run")
    ap.add_argument("--keep", action="store_true", help="keep the database and receiver dirs")
    a = ap.parse_args()
    if a.quick:
        a.hours, a.flights, a.speed = 0.5, 60, 40.0
    bench = Bench(a)

    def interrupted(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    # Started in the background, SIGINT is ignored: both signals end the run through the
    # cleanup below (processes stopped, database dropped).
    signal.signal(signal.SIGINT, interrupted)
    signal.signal(signal.SIGTERM, interrupted)
    try:
        bench.run()
    finally:
        bench.cleanup()


if __name__ == "__main__":
    main()
