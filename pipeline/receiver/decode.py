"""Frames -> position rows: pyModeS ``PipeDecoder`` plus the checks and bookkeeping around it.

Each position is stored once, at the time of the frame it belongs to. ``PipeDecoder`` gives
both halves of a globally decoded CPR pair the newer frame's position, and while it builds
trust in a new aircraft it holds positions back and fills them in later. Here a position is
taken only from the frame whose ``decode()`` call produced it (the newer half of the pair);
held positions are watched and emitted when ``PipeDecoder`` fills them in.

Between two ``decode()`` calls only what must follow the frame order is done: a position is
noted with the aircraft's callsign and velocity at that time. The range, duplicate and speed
checks and the COPY text of the positions noted since the last ``take()`` run afterwards in one
tight loop, in the same order and with the same results: interleaved with ``decode()`` calls,
whose work evicts ours from the CPU caches, the same checks and formatting cost about three
times as much.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
import time
from dataclasses import dataclass, field

from pyModeS import PipeDecoder

log = logging.getLogger(__name__)

# Same envelope as PipeDecoder's own motion check: 1500 kt plus 2 km of position noise.
MAX_SPEED_KMPS = 1500 * 1.852 / 3600
SPEED_MARGIN_KM = 2.0
# Aircraft state (latest callsign and velocity, last stored position) and held positions are
# forgotten after this much silence; PipeDecoder forgets its own state after the same time.
STATE_TTL_S = 300.0
_MAX_HELD_PER_AIRCRAFT = 8
_EARTH_KM_PER_DEG = 6371.0088 * math.pi / 180
_NULL = "\\N"          # COPY text NULL
# One COPY text line: minute prefix + seconds, icao24, latitude, longitude, altitude, speed /
# track / vertical rate / callsign, on_ground, then receiver id and newline. (One %-format per
# row costs less than the equivalent f-string's separate format steps.)
_LINE = "%s%09.6f+00\t%s\t%.7f\t%.7f\t%s\t%s\t%s%s"


# Called directly rather than through super(): this runs once per message.
_base_handle_cpr_pair = PipeDecoder._handle_cpr_pair


class _CrcGatedPipeDecoder(PipeDecoder):
    """``PipeDecoder`` that keeps CRC-failed DF17/18 frames out of CPR pairing.

    pyModeS 3.6 pairs a CRC-failed position frame like a good one (corrupted bits then become
    positions km off and spoil the good frame they pair with). Gating on the ``crc_valid`` that
    ``decode()`` has just computed costs nothing, where checking the CRC a second time before
    ``decode()`` would cost about a tenth of the decoder's throughput.
    """

    __slots__ = ("held",)

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.held: list[dict] = []

    def _handle_cpr_pair(self, result, icao, timestamp):  # noqa: ANN001 (pyModeS signature)
        if result.get("crc_valid") is False:
            return True        # "handled": no pairing, no local decoding for this frame
        return _base_handle_cpr_pair(self, result, icao, timestamp)

    def _bootstrap_accumulate(self, results, icao, lat, lon, timestamp):  # noqa: ANN001
        # The first dict is the frame being decoded, the newer half that owns the position.
        self.held.append(results[0] if isinstance(results, list) else results)
        super()._bootstrap_accumulate(results, icao, lat, lon, timestamp)


for _hook in ("_handle_cpr_pair", "_bootstrap_accumulate"):
    if not hasattr(PipeDecoder, _hook):   # pragma: no cover - guards a pyModeS upgrade
        raise ImportError(f"pyModeS PipeDecoder has no {_hook}(); this pyModeS is not supported")


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
    aircraft: set[str] = field(default_factory=set)   # aircraft with a stored position

    @property
    def rejected(self) -> int:
        return (self.rejected_range + self.rejected_speed + self.rejected_altitude
                + self.out_of_order + self.duplicates)


class _Extra:
    """Ground speed, track, vertical rate and callsign of an aircraft from one update on. Their
    COPY text is made by ``take()`` for the first row that carries them."""

    __slots__ = ("values", "text")

    def __init__(self, values: tuple) -> None:
        self.values = values
        self.text: str | None = None


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


def _text(value: object) -> str:
    if value is None:
        return "\\N"
    if isinstance(value, float):
        return f"{value:.2f}"
    return str(value).replace("\\", "").replace("\t", " ")


class PositionDecoder:
    """Feeds raw Mode-S frames to pyModeS and turns what it decodes into checked rows."""

    def __init__(self, receiver_lat: float, receiver_lon: float, range_km: float,
                 receiver_id: str = "default") -> None:
        self.pipe = _CrcGatedPipeDecoder(surface_ref=(receiver_lat, receiver_lon))
        self.counters = DecodeCounters()
        self.days: set[dt.date] = set()          # days of the rows returned by take()
        # Positions noted and not yet checked: (aircraft, t, lat, lon, altitude, extra,
        # on_ground), in the order they were decoded.
        self._found: list[tuple] = []
        self._minute = -1                        # minute of the last COPY line, and its text
        self._prefix = ""
        self._tail = f"\t{_text(receiver_id)}\n"
        self._ref = (receiver_lat, receiver_lon)
        self._cos_ref = math.cos(math.radians(receiver_lat))
        self._max_km = 1.5 * range_km
        self._aircraft: dict[str, _Aircraft] = {}
        self._next_sweep = -math.inf
        self._motion_rejected = 0

    # -- raw frames ---------------------------------------------------------------------------
    def feed(self, times: list[float], messages: list[str]) -> None:
        """Decode messages (hex) received at ``times``, in order; positions wait for
        ``take()``."""
        decode = self.pipe.decode
        held = self.pipe.held
        aircraft = self._aircraft
        note = self._found.append
        next_sweep = self._next_sweep
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
        ac.seen = t
        return ac

    # -- checks and rows ------------------------------------------------------------------------
    def _note(self, ac: _Aircraft, t: float, lat: float, lon: float, alt: object,
              extra: _Extra, on_ground: bool) -> None:
        """A decoded position, checked by the next ``take()``."""
        self._found.append((ac, t, lat, lon, alt, extra, on_ground))

    def take(self) -> tuple[str, int]:
        """Check the positions noted since the last call, in the order they were noted, and
        return the COPY text lines of the accepted ones (joined) and how many there are.

        Range: farther than 1.5 x range from the receiver. Duplicate: same time and position as
        the aircraft's last stored row. Speed: more than 1500 kt (plus 2 km of noise) from that
        row. Distances are equirectangular: within 0.1 % of the great circle over a receiver's
        range, and several times cheaper per row.
        """
        found = self._found
        if not found:
            return "", 0
        self._found = []
        counters = self.counters
        new_aircraft = counters.aircraft.add
        ref_lat, ref_lon = self._ref
        cos_ref, max_km, km_per_deg = self._cos_ref, self._max_km, _EARTH_KM_PER_DEG
        sqrt = math.sqrt
        minute_now, prefix, tail = self._minute, self._prefix, self._tail
        lines: list[str] = []
        line = lines.append
        far = doubled = fast = 0
        for ac, t, lat, lon, alt, extra, on_ground in found:
            dy = lat - ref_lat
            dx = (lon - ref_lon) * cos_ref
            if sqrt(dx * dx + dy * dy) * km_per_deg > max_km:
                far += 1
                continue
            last = ac.last
            if last is None:
                ac.last = (t, lat, lon)
                new_aircraft(ac.icao)
            else:
                t0, lat0, lon0 = last
                if t == t0 and lat == lat0 and lon == lon0:
                    doubled += 1                  # the same frame twice (merged feeds)
                    continue
                dy = lat - lat0
                dx = (lon - lon0) * cos_ref
                if sqrt(dx * dx + dy * dy) * km_per_deg > (MAX_SPEED_KMPS * abs(t - t0)
                                                           + SPEED_MARGIN_KM):
                    fast += 1
                    continue
                if t >= t0:
                    ac.last = (t, lat, lon)
            extra_text = extra.text
            if extra_text is None:
                extra_text = extra.text = "\t".join([_text(v) for v in extra.values])
            minute = int(t // 60)
            if minute != minute_now:
                minute_now, prefix = minute, self._minute_text(minute)
            line(_LINE % (prefix, t - minute * 60, ac.icao, lat, lon,
                          _NULL if alt is None else int(alt), extra_text,
                          "t" if on_ground else "f", tail))
        self._minute, self._prefix = minute_now, prefix
        counters.rejected_range += far
        counters.duplicates += doubled
        counters.rejected_speed += fast
        counters.positions += len(lines)
        return "".join(lines), len(lines)

    def _minute_text(self, minute: int) -> str:
        """'YYYY-MM-DD HH:MM:' of a minute since the epoch (UTC); notes its day."""
        st = time.gmtime(minute * 60)
        self.days.add(dt.date(st.tm_year, st.tm_mon, st.tm_mday))
        return time.strftime("%Y-%m-%d %H:%M:", st)

    def _sweep(self, now: float) -> None:
        """Forget aircraft silent for STATE_TTL_S, so memory follows the live traffic."""
        self._next_sweep = now + 60.0
        stale = [k for k, ac in self._aircraft.items() if now - ac.seen > STATE_TTL_S]
        for k in stale:
            ac = self._aircraft.pop(k)
            self.counters.held_dropped += sum(1 for d, _, _ in ac.held if d.get("latitude") is None)

    @property
    def aircraft_active(self) -> int:
        return len(self._aircraft)
