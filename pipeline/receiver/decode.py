"""Frames -> position rows: pyModeS ``PipeDecoder`` plus the checks and bookkeeping around it.

Each position is stored once, at the time of the frame it belongs to. ``PipeDecoder`` gives
both halves of a globally decoded CPR pair the newer frame's position, and while it builds
trust in a new aircraft it holds positions back and fills them in later. Here a position is
taken only from the frame whose ``decode()`` call produced it (the newer half of the pair);
held positions are watched and emitted when ``PipeDecoder`` fills them in.

Between two ``decode()`` calls only what must follow the frame order is done: a position is
noted with the aircraft's callsign and velocity at that time. The range, duplicate and speed
checks and the COPY rows of the positions noted since the last ``take()`` are done afterwards
for the whole batch with NumPy, with the same results as checking row by row in order: each
aircraft's rows are checked against its previous row at once, and only an aircraft with a
rejected or older-than-previous row in the batch is checked row by row.

Per-aircraft state is bounded in time and in size. ADS-B is unauthenticated: a stream of
invented addresses must not grow memory for as long as the service runs. State of an aircraft
silent for ``STATE_TTL_S`` is forgotten (here and in ``PipeDecoder``); beyond ``MAX_AIRCRAFT``
aircraft tracked at once the least recently seen ones are forgotten early, and
``PipeDecoder``'s caches are trimmed to match (``aircraft_evicted``, with a warning at most
once a minute).
"""

from __future__ import annotations

import datetime as dt
import heapq
import logging
import math
import time
from collections.abc import Collection, Container, Sequence
from dataclasses import dataclass, field

import numpy as np
from pyModeS import PipeDecoder

from pipeline.db.rows import RowEncoder, details

log = logging.getLogger(__name__)

# Same envelope as PipeDecoder's own motion check: 1500 kt plus 2 km of position noise.
MAX_SPEED_KMPS = 1500 * 1.852 / 3600
SPEED_MARGIN_KM = 2.0
# Aircraft state (latest callsign and velocity, last stored position) and held positions are
# forgotten after this much silence; PipeDecoder forgets its own state after the same time.
STATE_TTL_S = 300.0
# Aircraft tracked at once, at most: several times what a long-range receiver at a busy site
# hears within five minutes (a thousand or two); more is a flood of invented addresses. Above
# it the least recently seen tenth is forgotten at once, so eviction runs once per few hundred
# new addresses, not on every one.
MAX_AIRCRAFT = 5_000
_EVICT_TO = 0.9
EVICTION_LOG_INTERVAL_S = 60.0
_MAX_HELD_PER_AIRCRAFT = 8
_EARTH_KM_PER_DEG = 6371.0088 * math.pi / 180
_EPOCH_DAY = dt.date(1970, 1, 1).toordinal()


# Called directly rather than through super(): this runs once per message.
_base_handle_cpr_pair = PipeDecoder._handle_cpr_pair


class _CrcGatedPipeDecoder(PipeDecoder):
    """``PipeDecoder`` that keeps CRC-failed DF17/18 frames out of CPR pairing.

    pyModeS 3.6 pairs a CRC-failed position frame like a good one (corrupted bits then become
    positions km off and spoil the good frame they pair with). Gating on the ``crc_valid`` that
    ``decode()`` has just computed costs nothing, where checking the CRC a second time before
    ``decode()`` would cost about a tenth of the decoder's throughput.

    It also decodes a frame locally when its CPR pair fails the motion check (so frames sent
    under a real aircraft's address elsewhere cannot erase its positions), and forgets the
    state of given addresses (``forget``, ``trim``) to bound memory.
    """

    __slots__ = ("held",)

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.held: list[dict] = []

    def _handle_cpr_pair(self, result, icao, timestamp):  # noqa: ANN001 (pyModeS signature)
        if result.get("crc_valid") is False:
            return True        # "handled": no pairing, no local decoding for this frame
        stats = self._stats
        rejected = stats["position_rejected"]
        if not _base_handle_cpr_pair(self, result, icao, timestamp):
            return False
        if stats["position_rejected"] != rejected and result.get("bds") == "0,5":
            # The pair failed the motion check. Its other half may be a frame a spoofer sent
            # under this address (or a corrupt one): this frame's own position, decoded
            # locally from the aircraft's last accepted one and put through the same motion
            # check, is kept if it fits, so interleaved false frames cannot erase a real
            # aircraft's positions. One rejection is counted per frame, not per attempt.
            self._handle_local_cpr(result, icao, timestamp)
            stats["position_rejected"] = rejected + (result.get("latitude") is None)
        return True

    def _bootstrap_accumulate(self, results, icao, lat, lon, timestamp):  # noqa: ANN001
        # The first dict is the frame being decoded, the newer half that owns the position.
        self.held.append(results[0] if isinstance(results, list) else results)
        super()._bootstrap_accumulate(results, icao, lat, lon, timestamp)

    def forget(self, icaos: Collection[str]) -> None:
        """Drop every cache PipeDecoder keeps for these addresses."""
        stats = self._stats
        for name in _PIPE_CACHES:
            cache = getattr(self, name)
            pending = name in _PIPE_PENDING
            for icao in icaos:
                entry = cache.pop(icao, None)
                if pending and entry:
                    stats["pending_pairs"] = max(0, stats["pending_pairs"] - len(entry))

    def largest_cache(self) -> int:
        return max(len(getattr(self, name)) for name in _PIPE_CACHES)

    def trim(self, keep: Container[str]) -> int:
        """Forget the addresses not in ``keep`` (the aircraft the caller tracks); returns how
        many distinct addresses were forgotten. Only Mode-S replies other than DF17/18 and
        CRC-failed frames leave such state (for Comm-B inference, which positions never use)."""
        foreign = {icao for name in _PIPE_CACHES for icao in getattr(self, name)
                   if icao not in keep}
        self.forget(foreign)
        return len(foreign)


# PipeDecoder's per-address caches (pyModeS 3.6), and those that hold lists of pending frames.
_PIPE_CACHES = ("_state", "_pending_even", "_pending_odd", "_trusted_icaos", "_adsb_altitude",
                "_adsb_velocity", "_position_history", "_airborne_position_reference",
                "_bootstrap")
_PIPE_PENDING = ("_pending_even", "_pending_odd")

for _hook in ("_handle_cpr_pair", "_bootstrap_accumulate", "_handle_local_cpr"):
    if not hasattr(PipeDecoder, _hook):   # pragma: no cover - guards a pyModeS upgrade
        raise ImportError(f"pyModeS PipeDecoder has no {_hook}(); this pyModeS is not supported")
if not set(_PIPE_CACHES) <= set(PipeDecoder.__slots__):   # pragma: no cover - as above
    raise ImportError("pyModeS PipeDecoder keeps its per-aircraft state in other attributes; "
                      "this pyModeS is not supported")


class AddressSet:
    """Distinct 24-bit ICAO addresses, counted exactly in a fixed 2 MiB bitmap: a set of strings
    would grow with every invented address a spoofer sends, for as long as the service runs."""

    __slots__ = ("_bits", "_n")

    def __init__(self) -> None:
        self._bits = bytearray(1 << 21)
        self._n = 0

    def add(self, icao: str) -> None:
        i = int(icao, 16)
        bit = 1 << (i & 7)
        if not self._bits[i >> 3] & bit:
            self._bits[i >> 3] |= bit
            self._n += 1

    def __contains__(self, icao: object) -> bool:
        if not isinstance(icao, str):
            return False
        i = int(icao, 16)
        return bool(self._bits[i >> 3] & (1 << (i & 7)))

    def __len__(self) -> int:
        return self._n

    def __eq__(self, other: object) -> bool:
        if isinstance(other, AddressSet):
            return self._n == other._n and self._bits == other._bits
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]   # mutable, like a set


@dataclass
class DecodeCounters:
    messages: int = 0            # Mode-S frames decoded
    crc_failures: int = 0        # DF17/18 frames whose CRC failed (dropped)
    positions: int = 0           # position rows accepted
    rejected_range: int = 0      # farther than 1.5 x range from the receiver
    rejected_speed: int = 0      # impossible speed (PipeDecoder's motion check, or ours from
                                 # the aircraft's previous stored position)
    rejected_altitude: int = 0   # altitude jump PipeDecoder refused (a spike: no position)
    out_of_order: int = 0        # position frame older than the aircraft's previous frame
    duplicates: int = 0          # same aircraft, time and position as the last stored row
    held_dropped: int = 0        # positions PipeDecoder held back and never confirmed
    aircraft_evicted: int = 0    # addresses whose state was forgotten early (MAX_AIRCRAFT)
    aircraft: AddressSet = field(default_factory=AddressSet)   # aircraft with a stored position

    @property
    def rejected(self) -> int:
        return (self.rejected_range + self.rejected_speed + self.rejected_altitude
                + self.out_of_order + self.duplicates)


class _Extra:
    """Ground speed, track, vertical rate and callsign of an aircraft from one update on. Their
    COPY fields are encoded by ``take()`` for the first row that carries them."""

    __slots__ = ("values", "fields")

    def __init__(self, values: tuple) -> None:
        self.values = values
        self.fields: bytes | None = None

    def encode(self) -> bytes:
        self.fields = details(*self.values)
        return self.fields


class _Aircraft:
    __slots__ = ("icao", "extra", "callsign", "gs", "track", "vr", "last", "seen", "held")

    def __init__(self, icao: str, seen: float) -> None:
        self.icao = icao.lower()
        self.callsign: str | None = None
        self.gs: float | None = None
        self.track: float | None = None
        self.vr: int | None = None
        self.extra = _Extra((None, None, None, None))
        self.last: tuple[float, float, float] | None = None   # (t, lat, lon) last stored
        self.seen = seen
        self.held: list[tuple[dict, float, _Extra]] = []

    def set_extra(self) -> None:
        self.extra = _Extra((self.gs, self.track, self.vr, self.callsign))


class PositionDecoder:
    """Feeds raw Mode-S frames to pyModeS and turns what it decodes into checked rows."""

    def __init__(self, receiver_lat: float, receiver_lon: float, range_km: float,
                 receiver_id: str = "default", max_aircraft: int = MAX_AIRCRAFT) -> None:
        self.pipe = _CrcGatedPipeDecoder(surface_ref=(receiver_lat, receiver_lon))
        self.max_aircraft = max_aircraft
        self.counters = DecodeCounters()
        # Positions noted and not yet checked: (aircraft, t, lat, lon, altitude, extra,
        # on_ground), in the order they were decoded.
        self._found: list[tuple] = []
        self._rows = RowEncoder(receiver_id)
        self._ref = (receiver_lat, receiver_lon)
        self._cos_ref = math.cos(math.radians(receiver_lat))
        self._max_km = 1.5 * range_km
        self._aircraft: dict[str, _Aircraft] = {}
        self._next_sweep = -math.inf
        self._motion_rejected = 0
        self._evicted_unlogged = 0
        self._next_eviction_log = -math.inf

    # -- raw frames ---------------------------------------------------------------------------
    def feed(self, times: list[float], messages: list[str]) -> None:
        """Decode messages (hex) received at ``times``, in order; positions wait for
        ``take()``."""
        decode = self.pipe.decode
        held = self.pipe.held
        aircraft = self._aircraft
        note = self._found.append
        next_sweep = self._next_sweep
        max_aircraft = self.max_aircraft
        crc_failures = rejected_altitude = out_of_order = 0
        try:
            for t, msg in zip(times, messages):
                r = decode(msg, timestamp=t)
                df = r.get("df")
                if df != 17 and df != 18:
                    continue
                if r["crc_valid"] is False:
                    crc_failures += 1
                    continue
                icao = r["icao"]
                ac = aircraft.get(icao)
                if ac is None:
                    ac = aircraft[icao] = _Aircraft(icao, t)
                    if len(aircraft) > max_aircraft:
                        self._evict(ac)
                previous = ac.seen
                ac.seen = t
                bds = r.get("bds")
                if bds == "0,5" or bds == "0,6":
                    lat = r.get("latitude")
                    if lat is not None:
                        if t < previous:
                            # Older than this aircraft's previous frame: PipeDecoder gives it
                            # the position of the newer half of its CPR pair, not where it was.
                            out_of_order += 1
                        else:
                            note((ac, t, lat, r["longitude"], r.get("altitude"), ac.extra,
                                  bds == "0,6"))
                    elif r.get("altitude_mismatch"):
                        rejected_altitude += 1
                    if held:
                        for d in held:
                            # Held and confirmed within this same call: already noted above.
                            if d is not r or lat is None:
                                if t < previous:
                                    out_of_order += 1     # same as above, once confirmed
                                else:
                                    ac.held.append((d, t, ac.extra))
                        held.clear()
                        del ac.held[:-_MAX_HELD_PER_AIRCRAFT]
                    if ac.held:
                        self._release_held(ac, t)
                elif bds == "0,8":
                    callsign = r.get("callsign")
                    if callsign and callsign != ac.callsign:
                        ac.callsign = callsign
                        ac.set_extra()
                elif bds == "0,9":
                    gs, track, vr = r.get("groundspeed"), r.get("track"), r.get("vertical_rate")
                    if gs is not None or vr is not None:
                        ac.gs, ac.track, ac.vr = gs, track, vr
                        ac.set_extra()
                if t >= next_sweep:
                    self._sweep(t)
                    next_sweep = self._next_sweep
        finally:
            counters = self.counters
            counters.messages += len(messages)
            counters.crc_failures += crc_failures
            counters.rejected_altitude += rejected_altitude
            counters.out_of_order += out_of_order
            # PipeDecoder's own motion check (same envelope as ours) drops positions before
            # they are noted: count them with ours.
            moved = self.pipe.stats["position_rejected"]
            counters.rejected_speed += moved - self._motion_rejected
            self._motion_rejected = moved
            # Mode-S replies with addresses of no tracked aircraft (corrupt or invented) only
            # fill PipeDecoder's caches; checked once per call, so they stay within the bound
            # plus one call's frames.
            if self.pipe.largest_cache() > max_aircraft:
                self._note_evicted(self.pipe.trim(aircraft))

    def _release_held(self, ac: _Aircraft, now: float) -> None:
        keep = []
        for entry in ac.held:
            d, t, extra = entry
            lat = d.get("latitude")
            if lat is not None:
                self._note(ac, t, lat, d["longitude"], d.get("altitude"), extra,
                             d.get("bds") == "0,6")
            elif now - t < STATE_TTL_S:
                keep.append(entry)
            else:
                self.counters.held_dropped += 1
        ac.held = keep

    def finish(self) -> None:
        """End of a finite stream: let PipeDecoder release what it still holds."""
        self.pipe.flush()
        for ac in self._aircraft.values():
            if ac.held:
                self._release_held(ac, math.inf)

    # -- already decoded positions (SBS) -----------------------------------------------------
    def update_identity(self, icao: str, t: float, callsign: str) -> None:
        ac = self._get(icao, t)
        if callsign != ac.callsign:
            ac.callsign = callsign
            ac.set_extra()

    def update_velocity(self, icao: str, t: float, gs: float | None, track: float | None,
                        vr: int | None) -> None:
        ac = self._get(icao, t)
        ac.gs, ac.track, ac.vr = gs, track, vr
        ac.set_extra()

    def add_position(self, icao: str, t: float, lat: float, lon: float, altitude: int | None,
                     on_ground: bool) -> None:
        ac = self._get(icao, t)
        self._note(ac, t, lat, lon, altitude, ac.extra, on_ground)
        if t >= self._next_sweep:
            self._sweep(t)

    def _get(self, icao: str, t: float) -> _Aircraft:
        key = icao.upper()
        ac = self._aircraft.get(key)
        if ac is None:
            ac = self._aircraft[key] = _Aircraft(key, t)
            if len(self._aircraft) > self.max_aircraft:
                self._evict(ac)
        ac.seen = t
        return ac

    # -- checks and rows ------------------------------------------------------------------------
    def _note(self, ac: _Aircraft, t: float, lat: float, lon: float, alt: object,
              extra: _Extra, on_ground: bool) -> None:
        """A decoded position, checked by the next ``take()``."""
        self._found.append((ac, t, lat, lon, alt, extra, on_ground))

    def take(self) -> tuple[bytes, int, set[dt.date]]:
        """Check the positions noted since the last call and return the binary COPY rows of the
        accepted ones (``pipeline.db.rows``), how many there are and their days (UTC).

        Range: farther than 1.5 x range from the receiver. Duplicate: same time and position as
        the aircraft's last stored row. Speed: more than 1500 kt (plus 2 km of noise) from that
        row. Distances are equirectangular: within 0.1 % of the great circle over a receiver's
        range, and several times cheaper per row.
        """
        found = self._found
        if not found:
            return b"", 0, set()
        self._found = []
        extras: Sequence[_Extra]
        acs, ts, lats, lons, alts, extras, grounds = zip(*found)
        t = np.array(ts, np.float64)
        lat = np.array(lats, np.float64)
        lon = np.array(lons, np.float64)
        keep, row_aircraft, aircraft = self._check(acs, ts, lats, lons, t, lat, lon)
        n = int(np.count_nonzero(keep))
        self.counters.positions += n
        if not n:
            return b"", 0, set()
        icao = np.array([ac.icao for ac in aircraft], "S6")[row_aircraft]
        altitude = np.array(alts, np.float64)
        ground = np.array(grounds, np.bool_)
        if n < len(ts):
            index = np.flatnonzero(keep)
            t, lat, lon, icao = t[index], lat[index], lon[index], icao[index]
            altitude, ground = altitude[index], ground[index]
            extras = [extras[i] for i in index.tolist()]
        rows = self._rows.encode(t, icao, lat, lon, ground, altitude,
                                 [e.fields or e.encode() for e in extras])
        days = {dt.date.fromordinal(_EPOCH_DAY + int(d))
                for d in np.unique(np.floor_divide(t, 86400.0))}
        return rows, n, days

    def _check(self, acs: tuple, ts: tuple, lats: tuple, lons: tuple, t: np.ndarray,
               lat: np.ndarray, lon: np.ndarray) -> tuple[np.ndarray, np.ndarray, list]:
        """Which rows pass the checks (a mask), the index of each row's aircraft in the list of
        aircraft of the batch, and that list. Updates each aircraft's last stored position."""
        n = len(ts)
        ref_lat, ref_lon = self._ref
        cos_ref, km_per_deg = self._cos_ref, _EARTH_KM_PER_DEG
        dy, dx = lat - ref_lat, (lon - ref_lon) * cos_ref
        near = np.sqrt(dx * dx + dy * dy) * km_per_deg <= self._max_km
        # Rows grouped by aircraft, in their order within each aircraft.
        keys = np.fromiter(map(id, acs), np.int64, n)
        order = np.argsort(keys, kind="stable")
        sorted_keys = keys[order]
        head = np.ones(n, np.bool_)
        head[1:] = sorted_keys[1:] != sorted_keys[:-1]
        group = np.cumsum(head) - 1
        heads = np.flatnonzero(head)
        aircraft = [acs[i] for i in order[heads].tolist()]
        row_aircraft = np.empty(n, np.int64)
        row_aircraft[order] = group
        # Each row against the row before it of the same aircraft, the first one against the
        # aircraft's last stored position.
        gt, glat, glon = t[order], lat[order], lon[order]
        pt, plat, plon = np.roll(gt, 1), np.roll(glat, 1), np.roll(glon, 1)
        has_prev = np.ones(n, np.bool_)
        for h, ac in zip(heads.tolist(), aircraft):
            if ac.last is None:
                has_prev[h] = False
                pt[h], plat[h], plon[h] = gt[h], glat[h], glon[h]
            else:
                pt[h], plat[h], plon[h] = ac.last
        dy, dx = glat - plat, (glon - plon) * cos_ref
        moved = np.sqrt(dx * dx + dy * dy) * km_per_deg
        doubled = (gt == pt) & (glat == plat) & (glon == plon)
        fast = moved > MAX_SPEED_KMPS * np.abs(gt - pt) + SPEED_MARGIN_KM
        # Rows that the simple rule (every row passes and becomes the aircraft's last) may not
        # describe: their aircraft are checked row by row.
        unsure = ~near[order] | (has_prev & (doubled | fast | (gt < pt)))
        keep = np.zeros(n, np.bool_)
        in_order = np.zeros(len(heads), np.bool_)
        if unsure.any():
            in_order[np.unique(group[unsure])] = True
            rows = np.sort(order[in_order[group]])
            keep[self._check_in_order(rows.tolist(), acs, ts, lats, lons)] = True
        simple = ~in_order[group]
        keep[order[simple]] = True
        # The other aircraft: their last row (in sorted order) is their new last position.
        sure = np.flatnonzero(~in_order)
        last = (np.append(heads[1:], n) - 1)[sure]
        for g, position in zip(sure.tolist(), zip(gt[last].tolist(), glat[last].tolist(),
                                                  glon[last].tolist())):
            ac = aircraft[g]
            if ac.last is None:
                self.counters.aircraft.add(ac.icao)
            ac.last = position
        return keep, row_aircraft, aircraft

    def _check_in_order(self, rows: list[int], acs: tuple, ts: tuple, lats: tuple,
                        lons: tuple) -> list[int]:
        """The checks one row after the other (rows in the order they were noted): the rule
        that the batch check reproduces. Returns the rows that pass."""
        counters = self.counters
        ref_lat, ref_lon = self._ref
        cos_ref, max_km, km_per_deg = self._cos_ref, self._max_km, _EARTH_KM_PER_DEG
        sqrt = math.sqrt
        passed = []
        for i in rows:
            ac, t, lat, lon = acs[i], ts[i], lats[i], lons[i]
            dy = lat - ref_lat
            dx = (lon - ref_lon) * cos_ref
            if not sqrt(dx * dx + dy * dy) * km_per_deg <= max_km:
                counters.rejected_range += 1
                continue
            last = ac.last
            if last is None:
                ac.last = (t, lat, lon)
                counters.aircraft.add(ac.icao)
            else:
                t0, lat0, lon0 = last
                if t == t0 and lat == lat0 and lon == lon0:
                    counters.duplicates += 1          # the same frame twice (merged feeds)
                    continue
                dy = lat - lat0
                dx = (lon - lon0) * cos_ref
                if sqrt(dx * dx + dy * dy) * km_per_deg > (MAX_SPEED_KMPS * abs(t - t0)
                                                           + SPEED_MARGIN_KM):
                    counters.rejected_speed += 1
                    continue
                if t >= t0:
                    ac.last = (t, lat, lon)
            passed.append(i)
        return passed

    def _sweep(self, now: float) -> None:
        """Forget aircraft silent for STATE_TTL_S, so memory follows the live traffic."""
        self._next_sweep = now + 60.0
        stale = [k for k, ac in self._aircraft.items() if now - ac.seen > STATE_TTL_S]
        for k in stale:
            ac = self._aircraft.pop(k)
            self.counters.held_dropped += sum(1 for d, _, _ in ac.held if d.get("latitude") is None)

    def _evict(self, newest: _Aircraft) -> None:
        """More than ``max_aircraft`` aircraft: forget the least recently seen tenth, never
        ``newest``, the one that just arrived. Recency alone decides: an aircraft being
        followed sends several frames a second, an invented address is sent a few times and
        falls silent (preferring aircraft without a stored position would instead evict real
        aircraft still being confirmed while long-silent ghosts stay)."""
        excess = len(self._aircraft) - int(self.max_aircraft * _EVICT_TO)
        victims = heapq.nsmallest(excess + 1, self._aircraft.items(),
                                  key=lambda item: item[1].seen)
        keys = [k for k, ac in victims if ac is not newest][:excess]
        for k in keys:
            ac = self._aircraft.pop(k)
            self.counters.held_dropped += sum(1 for d, _, _ in ac.held if d.get("latitude") is None)
        self.pipe.forget(keys)
        self._note_evicted(len(keys))

    def _note_evicted(self, n: int) -> None:
        if not n:
            return
        self.counters.aircraft_evicted += n
        self._evicted_unlogged += n
        now = time.monotonic()
        if now >= self._next_eviction_log:
            self._next_eviction_log = now + EVICTION_LOG_INTERVAL_S
            log.warning("decoder: state of more than %d aircraft (Mode-S addresses included): "
                        "forgot %d, least recently seen first (%d since start; at most one such "
                        "line a minute). A flood of invented addresses, or a receiver range far "
                        "beyond ADSB_RANGE_KM?",
                        self.max_aircraft, self._evicted_unlogged, self.counters.aircraft_evicted)
            self._evicted_unlogged = 0

    @property
    def aircraft_active(self) -> int:
        return len(self._aircraft)
