"""Pieces of the network benchmark (bench/network.py) that stand on their own and are tested
cheaply (tests/test_network_tools.py): where the receivers stand and which transmissions each
one hears, the per-receiver Beast streams and the server that paces them on one shared clock,
and the comparison of what the database holds against the simulator's truth."""

from __future__ import annotations

import math
import socket
import threading
import time
from dataclasses import dataclass, field

import numpy as np

from pipeline.evaluation import simulate
from pipeline.geo import to_local_km
from pipeline.receiver.beast import COUNTER_HZ, encode_frame
from pipeline.service.beast_server import BeastServer

# Bits of the per-message "heard by" mask are receivers: an int64 holds up to 63.
MAX_RECEIVERS = 63


# ---- where the receivers stand ------------------------------------------------------------------
@dataclass(frozen=True)
class Receiver:
    id: str
    x_km: float                    # east of the site's centre
    y_km: float                    # north of the site's centre
    lat: float
    lon: float
    clock_offset_s: float          # added to every time this receiver stamps


def grid(cols: int, rows: int, half_side_km: float, centre: tuple[float, float], *,
         max_offset_s: float = 0.5, seed: int = 0) -> list[Receiver]:
    """``cols`` x ``rows`` receivers at the centres of equal cells tiling the square of
    ``half_side_km`` around ``centre``, named r00, r01, ... row by row from the south-west,
    each with its own clock offset drawn uniformly in [-max_offset_s, max_offset_s]."""
    if not 0 < cols * rows <= MAX_RECEIVERS:
        raise ValueError(f"1 to {MAX_RECEIVERS} receivers, not {cols * rows}")
    rng = np.random.default_rng([seed, 7])
    offsets = rng.uniform(-max_offset_s, max_offset_s, cols * rows)
    dx, dy = 2 * half_side_km / cols, 2 * half_side_km / rows
    out = []
    for r in range(rows):
        for c in range(cols):
            x, y = -half_side_km + (c + 0.5) * dx, -half_side_km + (r + 0.5) * dy
            lat, lon = simulate._to_latlon(np.array(x), np.array(y), *centre)
            i = len(out)
            out.append(Receiver(f"r{i:02d}", x, y, round(float(lat), 6), round(float(lon), 6),
                                round(float(offsets[i]), 4)))
    return out


def neighbour_radius(cols: int, rows: int, half_side_km: float, reach: float = 1.15) -> float:
    """A hearing radius that reaches the nearest receiver in each of the four directions
    (``reach`` times the larger grid spacing), so that neighbours' coverage overlaps and every
    point of the square is heard (a cell's farthest point is half its diagonal away)."""
    return reach * max(2 * half_side_km / cols, 2 * half_side_km / rows)


def in_range(x_km: np.ndarray, y_km: np.ndarray, receivers: list[Receiver],
             radius_km: float) -> np.ndarray:
    """(n points, n receivers): which receivers are within ``radius_km`` of each point."""
    rx = np.array([r.x_km for r in receivers])
    ry = np.array([r.y_km for r in receivers])
    return np.hypot(np.asarray(x_km)[:, None] - rx, np.asarray(y_km)[:, None] - ry) <= radius_km


# ---- what each receiver hears ------------------------------------------------------------------
@dataclass
class Stream:
    """One receiver's traffic: Beast frames in time order, as one byte string (``ends``: end
    offset of each frame) with their simulated times; ``positions``: position messages."""

    times: np.ndarray
    blob: bytes
    ends: np.ndarray
    positions: int

    @property
    def frames(self) -> int:
        return int(self.times.size)


@dataclass
class FlightTruth:
    """One simulated flight's position transmissions (t[k] = t0 + k seconds of the stream) and
    which receivers heard each: ``heard[k, r]``."""

    icao24: str
    t0: float
    heard: np.ndarray

    @property
    def n(self) -> int:
        return int(self.heard.shape[0])

    def heard_by_any(self) -> np.ndarray:
        """Indices k of the transmissions at least one receiver heard."""
        return np.flatnonzero(self.heard.any(axis=1))


@dataclass
class Network:
    streams: list[Stream]
    truth: dict[str, FlightTruth]
    transmitted: int               # messages sent by the aircraft
    heard_messages: int            # messages summed over receivers (what the network offers)


def hear(flights: list[simulate.SimFlight], receivers: list[Receiver], centre: tuple[float, float],
         radius_km: float, loss: float, seed: int = 0) -> Network:
    """Which receivers hear which message: those within ``radius_km`` of the aircraft when it
    transmits, each losing a message independently with probability ``loss``. Messages are
    the simulator's own (simulate.messages: positions at 1 Hz, identification and velocity
    every 5 s, each with the position it was sent from); a frame's 12 MHz counter counts
    simulated seconds from the stream's start, as every receiver's does (each ingest anchors it
    at the start plus its own clock offset)."""
    if len(receivers) > MAX_RECEIVERS:
        raise ValueError(f"at most {MAX_RECEIVERS} receivers")
    rng = np.random.default_rng([seed, 11])
    bits = np.int64(1) << np.arange(len(receivers), dtype=np.int64)
    times: list[np.ndarray] = []
    masks: list[np.ndarray] = []
    is_pos: list[np.ndarray] = []
    frames: list[bytes] = []
    truth: dict[str, FlightTruth] = {}
    transmitted = 0
    for f in flights:
        x, y = to_local_km(f.lat, f.lon, *centre)
        near = in_range(x, y, receivers, radius_km)
        msgs = list(simulate.messages(f))
        transmitted += len(msgs)
        t = np.fromiter((m[0] for m in msgs), float, len(msgs))
        pos = np.fromiter((_is_position(m[1]) for m in msgs), bool, len(msgs))
        # Every message belongs to the position transmitted just before it (the simulator sends
        # identification and velocity 0.1 and 0.2 s after a position).
        k = np.cumsum(pos) - 1
        heard = near[k] & (rng.random((len(msgs), len(receivers))) >= loss)
        mask = heard.astype(np.int64) @ bits
        keep = np.flatnonzero(mask)
        times.append(t[keep])
        masks.append(mask[keep])
        is_pos.append(pos[keep])
        frames.extend(encode_frame(msgs[i][1], int(round(t[i] * COUNTER_HZ)), signal=160)
                      for i in keep.tolist())
        truth[f.icao24] = FlightTruth(f.icao24, float(f.t[0]), heard[pos])
    all_t = np.concatenate(times) if times else np.empty(0)
    all_m = np.concatenate(masks) if masks else np.empty(0, np.int64)
    all_p = np.concatenate(is_pos) if is_pos else np.empty(0, bool)
    order = np.argsort(all_t, kind="stable")
    lengths = np.fromiter((len(fr) for fr in frames), np.int64, len(frames))
    streams = []
    for r in range(len(receivers)):
        idx = order[(all_m[order] >> r) & 1 == 1]
        blob = b"".join([frames[i] for i in idx.tolist()])
        streams.append(Stream(all_t[idx], blob, np.cumsum(lengths[idx]), int(all_p[idx].sum())))
    return Network(streams, truth, transmitted, sum(s.frames for s in streams))


def _is_position(msg: bytes) -> bool:
    """A DF17 airborne position message (type code 9-18; the simulator sends 11)."""
    return msg[0] >> 3 == 17 and 9 <= msg[4] >> 3 <= 18


# ---- serving the streams on one clock -----------------------------------------------------------
class SharedClock:
    """Simulated time -> wall time for every receiver at once: each server sends a frame when
    the shared clock reaches its time, so all receivers hear a transmission at the same wall
    moment (BeastServer's own pacing starts at each server's first frame, which differs from
    receiver to receiver)."""

    def __init__(self, speed: float) -> None:
        self.speed = speed
        self.go = threading.Event()
        self.sim0 = 0.0
        self.wall0 = 0.0

    def start(self, sim0: float) -> None:
        self.sim0, self.wall0 = sim0, time.time()
        self.go.set()

    def sim_now(self) -> float:
        return self.sim0 + (time.time() - self.wall0) * self.speed

    def wall_of(self, sim_t: float | np.ndarray) -> float | np.ndarray:
        """Unix time at which the stream reaches simulated time ``sim_t``."""
        return self.wall0 + (sim_t - self.sim0) / self.speed


class PacedReceiver(BeastServer):
    """A BeastServer serving one receiver's :class:`Stream` on a :class:`SharedClock`: every
    ``tick_s`` it sends, in one ``sendall``, the frames that fell due. Resumes where it stopped
    when the client reconnects (a live feed is consumed once). ``behind_s``: the most a sent
    batch lagged behind its due time (a saturated machine shows here, and in the lag)."""

    def __init__(self, stream: Stream, clock: SharedClock, *, tick_s: float = 0.05) -> None:
        super().__init__(iter(()), speed=None)
        self.stream, self.clock, self.tick_s = stream, clock, tick_s
        self.index = 0                           # frames sent so far
        self.connected = threading.Event()
        self.connections = 0
        self.behind_s = 0.0
        self.last_sent_wall = 0.0

    def _send_all(self, conn: socket.socket) -> None:
        self.connections += 1
        self.connected.set()
        s = self.stream
        view = memoryview(s.blob)
        while not self._stop.is_set() and not self.clock.go.wait(0.2):
            pass
        while self.index < s.frames and not self._stop.is_set():
            j = int(np.searchsorted(s.times, self.clock.sim_now(), side="right"))
            if j > self.index:
                lo = int(s.ends[self.index - 1]) if self.index else 0
                try:
                    conn.sendall(view[lo:int(s.ends[j - 1])])
                except OSError:
                    return                       # the client went away; resume on reconnect
                now = time.time()
                self.behind_s = max(self.behind_s,
                                    now - float(self.clock.wall_of(s.times[self.index])) - self.tick_s)
                self.bytes_sent += int(s.ends[j - 1]) - lo
                self.index = self.frames_sent = j
                self.last_sent_wall = now
            self._stop.wait(self.tick_s)
        if self.index >= s.frames:
            self.finished.set()
        while not self._stop.is_set():           # stay connected, like a quiet receiver
            self._stop.wait(0.2)


# ---- the database against the truth ------------------------------------------------------------
def transmission_index(stored_s: np.ndarray, anchor_s: float, t0: float,
                       tolerance_s: float = 0.01) -> np.ndarray:
    """Index k of the transmission each stored time is (a receiver stores transmission k at
    anchor + t0 + k, anchor = the stream's start plus its clock offset); -1 where a time is
    not within ``tolerance_s`` of any transmission."""
    rel = np.asarray(stored_s, dtype=np.float64) - anchor_s - t0
    k = np.round(rel).astype(np.int64)
    return np.where(np.abs(rel - k) <= tolerance_s, k, -1)


@dataclass
class PositionCount:
    sent: int = 0                  # position messages the receiver's server sent
    stored: int = 0                # rows in positions
    lost: int = 0                  # sent, not stored
    extra: int = 0                 # stored, never sent (or not a transmission's time)
    duplicated: int = 0            # rows beyond one per transmission
    aircraft_short: int = 0        # aircraft with fewer stored than sent
    shortfall: dict[int, int] = field(default_factory=dict)   # positions short: aircraft

    def add(self, sent_k: np.ndarray, stored_k: np.ndarray) -> None:
        """One aircraft: indices of the transmissions sent and of the rows stored."""
        uniq = np.unique(stored_k)
        valid = uniq[uniq >= 0]
        self.sent += int(sent_k.size)
        self.stored += int(stored_k.size)
        self.duplicated += int(stored_k.size - uniq.size)
        self.extra += int(np.setdiff1d(valid, sent_k).size + (uniq < 0).sum())
        lost = int(np.setdiff1d(sent_k, valid).size)
        self.lost += lost
        if lost:
            self.aircraft_short += 1
            self.shortfall[lost] = self.shortfall.get(lost, 0) + 1

    def merge(self, other: PositionCount) -> None:
        for name in ("sent", "stored", "lost", "extra", "duplicated", "aircraft_short"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        for k, v in other.shortfall.items():
            self.shortfall[k] = self.shortfall.get(k, 0) + v


def pieces(k: np.ndarray, gap_s: float) -> int:
    """Flights the gap rule makes of transmissions ``k`` (1 s apart): runs separated by a
    silence longer than the gap (no on-ground positions in the simulation)."""
    if k.size == 0:
        return 0
    return 1 + int((np.diff(np.sort(k)) > gap_s).sum())


@dataclass
class FlightMatch:
    """Flights in the database against the simulated ones (same icao24: unique per simulated
    flight), each simulated flight expected as ``pieces`` of the transmissions the network
    stored (normally 1)."""

    simulated: int = 0
    heard: int = 0                 # with at least one position stored by some receiver
    merged: int = 0                # exactly the expected number of flights, all finished
    split: int = 0                 # more flight rows than expected (open ones included)
    joined: int = 0                # fewer flights than expected, but some
    missing: int = 0               # heard, no flight at all
    spurious: int = 0              # flights of an aircraft never heard (or never simulated)
    unfinished: int = 0            # flights not finished
    positions_exact: int = 0       # merged flights whose n_positions = distinct stored
    positions_off: list[tuple[str, int, int]] = field(default_factory=list)  # icao, n, expected
    short_of_heard: dict[int, int] = field(default_factory=dict)  # heard - stored: flights


def match_flights(truth: dict[str, FlightTruth], stored: dict[str, np.ndarray],
                  flights: dict[str, list[tuple[str, int]]], gap_s: float) -> FlightMatch:
    """``stored``: per aircraft, the transmission indices stored by any receiver; ``flights``:
    per aircraft, (state, n_positions) of each flight row."""
    m = FlightMatch(simulated=len(truth))
    for icao, rows in flights.items():
        if icao not in truth or stored.get(icao, np.empty(0)).size == 0:
            m.spurious += len(rows)
        m.unfinished += sum(state != "finished" for state, _ in rows)
    for icao, tr in truth.items():
        got = np.unique(stored.get(icao, np.empty(0, np.int64)))
        expected = pieces(got, gap_s)
        if expected == 0:
            continue
        m.heard += 1
        short = int(tr.heard_by_any().size - got.size)
        m.short_of_heard[short] = m.short_of_heard.get(short, 0) + 1
        everything = flights.get(icao, [])
        rows = [r for r in everything if r[0] == "finished"]
        if not rows:
            m.missing += 1
        elif len(everything) > expected:
            m.split += 1
        elif len(rows) < expected:
            m.joined += 1
        else:
            m.merged += 1
            n = sum(r[1] for r in rows)
            if n == got.size:
                m.positions_exact += 1
            else:
                m.positions_off.append((icao, n, int(got.size)))
    return m


def percentiles(values: list[float] | np.ndarray, qs: tuple[float, ...] = (50, 95)
                ) -> list[float | None]:
    a = np.asarray(values, dtype=np.float64)
    return [None if a.size == 0 else round(float(np.percentile(a, q)), 1) for q in qs]


def receivers_at_capacity(cores: float, share_per_receiver: float) -> float:
    """How many receivers like the measured ones fill ``cores`` (share: of one core at 1x)."""
    return math.inf if share_per_receiver <= 0 else cores / share_per_receiver
