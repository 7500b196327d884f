"""Pieces of the soak benchmark (bench/soak.py) that stand on their own and are tested cheaply
(tests/test_soak_tools.py): the simulated receiver with exact accounting of what it sent, the
/proc sampler, the fault schedule and the sent-versus-stored comparison."""

from __future__ import annotations

import heapq
import os
import re
import socket
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from operator import itemgetter
from typing import Iterable, Iterator

from pipeline.evaluation import simulate
from pipeline.receiver.beast import COUNTER_HZ, encode_frame

DAY_S = 86400.0
POSITION_TC = 11          # the simulator's airborne position messages (DF17, TC 11)


# ---- what the receiver sends ------------------------------------------------------------------
def is_position(msg: bytes) -> bool:
    """A DF17 airborne position message (type code 9-18; the simulator sends 11)."""
    return msg[0] >> 3 == 17 and 9 <= msg[4] >> 3 <= 18


def frames(flights: list[simulate.SimFlight], start_unix: float
           ) -> Iterator[tuple[float, bytes, bytes]]:
    """(Unix time, raw message, Beast frame) of every flight merged in time order; the 12 MHz
    counter counts from ``start_unix`` (as simulate.stream, with the message kept for
    accounting)."""
    for t, msg in heapq.merge(*(simulate.messages(f) for f in flights), key=itemgetter(0)):
        yield start_unix + t, msg, encode_frame(msg, int(round(t * COUNTER_HZ)), signal=160)


class SoakReceiver:
    """A Beast TCP server at ``speed`` times real time that knows exactly which positions went
    out: a position counts as sent once the ``sendall`` of its batch returned (kernel buffers
    of a connection closed by this side are still delivered). ``silence(wall_s, drop_s)``
    closes the connection and the listening socket for ``wall_s`` seconds, like a receiver
    restarted, and skips the frames of the next ``drop_s`` simulated seconds (the traffic it
    never received while down): those are counted as skipped, not sent."""

    def __init__(self, source: Iterable[tuple[float, bytes, bytes]], *, start_unix: float,
                 speed: float | None, port: int = 0, chunk_frames: int = 200) -> None:
        self._source = iter(source)
        self.start_unix, self.speed, self._chunk = start_unix, speed, chunk_frames
        self._sock = socket.create_server(("127.0.0.1", port))
        self._sock.settimeout(0.2)
        self.port = self._sock.getsockname()[1]
        self.sent: Counter[tuple[str, int]] = Counter()      # (icao24, day) -> positions sent
        self.skipped: Counter[tuple[str, int]] = Counter()   # ... not sent while silent
        self.unsent_on_error = 0          # positions of a batch whose sendall failed
        self.frames_sent = 0
        self.last_t = start_unix          # time of the newest frame sent
        self.finished = threading.Event()
        self.silences: list[dict] = []
        self._silence: tuple[float, float] | None = None
        self._reopened: float | None = None
        self._stop = threading.Event()
        self._t0: tuple[float, float] | None = None          # (data time, wall time)
        self._thread = threading.Thread(target=self._serve, name="soak-receiver", daemon=True)

    def start(self) -> "SoakReceiver":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(5)
        self._sock.close()

    def silence(self, wall_s: float, drop_s: float) -> None:
        self._silence = (wall_s, drop_s)

    @property
    def sim_s(self) -> float:
        """Simulated seconds served so far."""
        return self.last_t - self.start_unix

    def _pace(self, t: float) -> None:
        if self.speed is None:
            return
        if self._t0 is None:
            self._t0 = (t, time.monotonic())
        delay = self._t0[1] + (t - self._t0[0]) / self.speed - time.monotonic()
        if delay > 0:
            self._stop.wait(delay)

    def _serve(self) -> None:
        while not self._stop.is_set() and not self.finished.is_set():
            try:
                conn, _ = self._sock.accept()
            except (socket.timeout, OSError):
                continue
            if self._reopened is not None:
                # A live receiver keeps sending after its restart: what it sent before the
                # client reconnected (its backoff) is gone too, one simulated second per
                # second of wall time, like the silence itself.
                waited = time.monotonic() - self._reopened
                self._reopened = None
                self.silences[-1]["reconnect_wait_s"] = round(waited, 1)
                self.silences[-1]["positions_skipped_before_reconnect"] = self._skip(waited)
            with conn:
                self._send_all(conn)
            if self._silence is not None:
                self._go_silent()

    def _go_silent(self) -> None:
        assert self._silence is not None
        wall_s, drop_s = self._silence
        self._silence = None
        self._sock.close()
        began = time.monotonic()
        self._stop.wait(wall_s)
        sim_from = self.sim_s
        skipped = self._skip(drop_s)
        self.silences.append({"wall_s": round(time.monotonic() - began, 1), "sim_from": sim_from,
                              "sim_s": drop_s, "positions_skipped": skipped})
        self._t0 = None                   # pacing starts afresh after the pause
        self._sock = socket.create_server(("127.0.0.1", self.port))
        self._sock.settimeout(0.2)
        self._reopened = time.monotonic()

    def _skip(self, sim_s: float) -> int:
        """Drop the frames of the next ``sim_s`` simulated seconds; returns positions dropped."""
        resume_t, skipped = self.last_t + sim_s, 0
        pending: tuple[float, bytes, bytes] | None = None
        for item in self._source:
            if item[0] >= resume_t:
                pending = item
                break
            if is_position(item[1]):
                self.skipped[(item[1][1:4].hex(), self._day(item[0]))] += 1
                skipped += 1
        if pending is not None:
            self._source = _prepend(pending, self._source)
        self.last_t = resume_t if pending is not None else self.last_t
        return skipped

    def _day(self, t: float) -> int:
        return int((t - self.start_unix) // DAY_S)

    def _send_all(self, conn: socket.socket) -> None:
        batch: list[bytes] = []
        keys: list[tuple[str, int]] = []
        last = self.last_t
        for t, msg, frame in self._source:
            self._pace(t)
            batch.append(frame)
            last = t
            if is_position(msg):
                keys.append((msg[1:4].hex(), self._day(t)))
            if len(batch) >= self._chunk or self._silence is not None:
                if not self._send(conn, batch, keys, last):
                    return
                batch, keys = [], []
                if self._silence is not None:
                    return
            if self._stop.is_set():
                return
        if batch:
            self._send(conn, batch, keys, last)
        self.finished.set()
        while not self._stop.is_set():       # stay connected, like a receiver with no traffic
            self._stop.wait(0.2)

    def _send(self, conn: socket.socket, batch: list[bytes], keys: list[tuple[str, int]],
              last: float) -> bool:
        try:
            conn.sendall(b"".join(batch))
        except OSError:
            self.unsent_on_error += len(keys)
            return False
        self.sent.update(keys)
        self.frames_sent += len(batch)
        self.last_t = last
        return True


def _prepend(item, rest: Iterator) -> Iterator:
    yield item
    yield from rest


# ---- sent versus stored -------------------------------------------------------------------------
@dataclass
class Accounting:
    """Per (icao24, day): positions sent, stored rows and distinct stored times."""

    sent: dict[tuple[str, int], int]
    stored: dict[tuple[str, int], tuple[int, int]] = field(default_factory=dict)

    def record_day(self, day: int, rows: Iterable[tuple[str, int, int]]) -> None:
        """Replace day ``day``'s stored counts with (icao24, rows, distinct times) rows."""
        self.stored = {k: v for k, v in self.stored.items() if k[1] != day}
        for icao, n, distinct in rows:
            self.stored[(icao, day)] = (int(n), int(distinct))

    def shortfalls(self, days: Iterable[int]) -> dict[int, int]:
        """How many aircraft-days fell short by how many positions: {shortfall: aircraft}."""
        days = set(days)
        out: Counter[int] = Counter()
        for k, sent in self.sent.items():
            if k[1] in days:
                short = sent - self.stored.get(k, (0, 0))[1]
                if short > 0:
                    out[short] += 1
        return dict(sorted(out.items()))

    def summary(self, days: Iterable[int]) -> dict[str, int]:
        """Totals over ``days``: sent, stored, lost (sent, not stored), extra (stored, never
        sent), duplicated (rows beyond one per aircraft and time), aircraft short of rows."""
        days = set(days)
        out = dict.fromkeys(("sent", "stored", "lost", "extra", "duplicated",
                             "aircraft_short"), 0)
        keys = {k for k in self.sent if k[1] in days} | {k for k in self.stored if k[1] in days}
        for k in keys:
            sent = self.sent.get(k, 0)
            n, distinct = self.stored.get(k, (0, 0))
            out["sent"] += sent
            out["stored"] += n
            out["duplicated"] += n - distinct
            out["lost"] += max(sent - distinct, 0)
            out["extra"] += max(distinct - sent, 0)
            out["aircraft_short"] += int(distinct < sent)
        return out


# ---- /proc ----------------------------------------------------------------------------------------
_TICKS = os.sysconf("SC_CLK_TCK")
_PAGE = os.sysconf("SC_PAGE_SIZE")


def proc_sample(pid: int) -> tuple[int, float] | None:
    """(resident bytes, CPU seconds user + system) of a live process, None once it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            stat = fh.read()
        with open(f"/proc/{pid}/statm") as fh:
            resident = int(fh.read().split()[1])
    except (FileNotFoundError, ProcessLookupError, IndexError, ValueError):
        return None
    # The command name (2nd field) may hold spaces and parentheses: split after the last ')'.
    rest = stat[stat.rindex(")") + 2:].split()
    if rest[0] == "Z":
        return None
    return resident * _PAGE, (int(rest[11]) + int(rest[12])) / _TICKS


def proc_pss(pid: int) -> int | None:
    """Proportional set size in bytes (shared pages split between the processes sharing
    them: the sum over PostgreSQL's processes counts its shared buffers once)."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as fh:
            for line in fh:
                if line.startswith("Pss:"):
                    return int(line.split()[1]) * 1024
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        pass
    return None


def children(pid: int) -> list[int]:
    out: list[int] = []
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children") as fh:
                out.extend(int(c) for c in fh.read().split())
    except (FileNotFoundError, ProcessLookupError):
        pass
    return out


def cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            return fh.read().replace(b"\0", b" ").decode(errors="replace").strip()
    except (FileNotFoundError, ProcessLookupError):
        return ""


@dataclass
class Series:
    """Samples of one role (e.g. 'ingest'): (simulated seconds, resident bytes) and the CPU
    seconds of every process that played it (a restarted worker is a new process)."""

    rss: list[tuple[float, int]] = field(default_factory=list)
    cpu_by_pid: dict[int, float] = field(default_factory=dict)
    spans: dict[int, list[float]] = field(default_factory=dict)   # pid -> first, last sample
    peak_rss: int = 0

    def add(self, sim_s: float, pid: int, sample: tuple[int, float]) -> None:
        rss, cpu = sample
        self.rss.append((sim_s, rss))
        self.cpu_by_pid[pid] = cpu
        self.add_pid(sim_s, pid)
        self.peak_rss = max(self.peak_rss, rss)

    @property
    def cpu_s(self) -> float:
        return sum(self.cpu_by_pid.values())

    def add_pid(self, sim_s: float, pid: int) -> None:
        self.spans.setdefault(pid, [sim_s, sim_s])[1] = sim_s

    def rss_at_end_of_day(self, day: int) -> int | None:
        """Median resident size over the last simulated hour of ``day`` (0-based)."""
        lo, hi = (day + 1) * DAY_S - 3600, (day + 1) * DAY_S
        vals = sorted(r for t, r in self.rss if lo <= t < hi)
        return vals[len(vals) // 2] if vals else None

    def growth_after_day1(self, last_day: int) -> float | None:
        """Relative growth of the resident size from the end of day 1 to the end of
        ``last_day``."""
        first, last = self.rss_at_end_of_day(0), self.rss_at_end_of_day(last_day)
        if not first or last is None:
            return None
        return last / first - 1.0


# ---- faults -----------------------------------------------------------------------------------
@dataclass
class Fault:
    name: str
    at_day: float                 # simulated days since the start
    done: bool = False


class FaultSchedule:
    """Faults due at simulated times; each is handed out once, in time order."""

    def __init__(self, faults: Iterable[tuple[str, float]]) -> None:
        self.faults = sorted((Fault(n, d) for n, d in faults), key=lambda f: f.at_day)

    def due(self, sim_s: float) -> list[Fault]:
        out = [f for f in self.faults if not f.done and f.at_day * DAY_S <= sim_s]
        for f in out:
            f.done = True
        return out

    def pending(self) -> list[str]:
        return [f.name for f in self.faults if not f.done]


def parse_metrics(text: str, prefix: str = "adsb_ingest_") -> dict[str, float]:
    """Prometheus text exposition -> {name without prefix and _total: value}."""
    out = {}
    for line in text.splitlines():
        m = re.match(rf"{prefix}(\w+?)(?:_total)?(?:\{{[^}}]*\}})? ([-0-9.e+]+|NaN)$", line)
        if m:
            out[m.group(1)] = float(m.group(2))
    return out


def flag_summary(rows: Iterable[tuple], flights: list[simulate.SimFlight],
                 conditions: list[simulate.DayConditions],
                 alerts: Iterable[tuple[str, str]] = ()) -> list[dict]:
    """Per simulated day: flights scored, ordinary ones flagged (and of those, how many a
    traffic change took in), simulated anomalies flagged, the models that scored them, whether
    the day's runways were flipped (an easterly day: a model that has seen only westerly days
    flags its approaches and departures), and the alerts sent: of ordinary flights on their
    own, of anomalies, of traffic changes, and the withdrawals of flags a newer model did not
    confirm (of ordinary flights, of anomalies).

    ``rows``: (icao24, model_id, flagged[, traffic_change_id]) of every scored finished flight;
    ``alerts``: (icao24, event) of every alert of one sink; each simulated flight has its own
    address."""
    truth = {f.icao24: f for f in flights}
    days: list[dict] = [{"day": d, "scored": 0, "ordinary_flagged": 0, "ordinary": 0,
                         "ordinary_in_change": 0, "anomalies_flagged": 0, "anomalies": 0,
                         "models": set(), "runways_flipped": list(c.runway_flipped),
                         "alerts_ordinary": 0, "alerts_anomalies": 0, "alerts_change": 0,
                         "withdrawn_ordinary": 0, "withdrawn_anomalies": 0}
                        for d, c in enumerate(conditions)]
    for icao24, model_id, flagged, *change in rows:
        f = truth.get(icao24)
        if f is None or f.day >= len(days):
            continue
        day = days[f.day]
        day["scored"] += 1
        day["models"].add(model_id)
        kind = "anomalies" if f.label else "ordinary"
        day[kind] += 1
        day[f"{kind}_flagged"] += bool(flagged)
        day["ordinary_in_change"] += bool(flagged and not f.label and change and change[0])
    for icao24, event in alerts:
        f = truth.get(icao24)
        if f is None or f.day >= len(days):
            continue
        kind = "anomalies" if f.label else "ordinary"
        key = "alerts_change" if event == "traffic_change" else \
            f"withdrawn_{kind}" if event == "withdrawn" else f"alerts_{kind}"
        days[f.day][key] += 1
    for day in days:
        day["models"] = sorted(m for m in day["models"] if m is not None)
    return days
