"""SBS / BaseStation text format (dump1090/readsb port 30003): already-decoded ``MSG`` lines.

``MSG,type,session,aircraft,HEXIDENT,flight,date_gen,time_gen,date_log,time_log,callsign,
altitude,groundspeed,track,lat,lon,vertical_rate,squawk,alert,emergency,spi,on_ground``.
MSG,1 carries the callsign, MSG,3 (airborne) and MSG,2 (surface) a position, MSG,4 the
velocity. There are no raw frames, so no pyModeS step: the fields become position rows directly.
"""

from __future__ import annotations

import calendar
import math
import re
from dataclasses import dataclass

from pipeline.receiver.lines import LineParser

_MAX_LINE = 512
_ICAO = re.compile(r"^[0-9A-Fa-f]{6}$")
_CALLSIGN = re.compile(r"^[A-Z0-9 #_@]{1,8}$")


@dataclass(slots=True)
class SbsRecord:
    kind: str                     # "pos", "id" or "vel"
    time: float | None            # Unix seconds from the generated date/time, None if absent
    icao: str                     # lower-case hex
    latitude: float | None = None
    longitude: float | None = None
    altitude: int | None = None
    on_ground: bool = False
    callsign: str | None = None
    groundspeed: float | None = None
    track: float | None = None
    vertical_rate: int | None = None


def _num(text: str) -> float | None:
    if not text:
        return None
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"not a finite number: {text!r}")
    return value


def _int(text: str) -> int | None:
    value = _num(text)
    return None if value is None else int(round(value))


class SbsParser(LineParser):
    """Incremental SBS parser: feed byte chunks, get ``SbsRecord`` objects back."""

    __slots__ = ("_day_cache", "ignored")
    max_line = _MAX_LINE

    def __init__(self) -> None:
        super().__init__()
        self._day_cache: dict[str, float] = {}
        self.ignored = 0         # well-formed lines that carry nothing stored (MSG,5-8, AIR, ...)

    def _parse(self, lines: list[bytes]) -> list[SbsRecord]:
        out = []
        for raw in lines:
            try:
                line = raw.decode("ascii").strip()
            except UnicodeDecodeError:
                self.bad_lines += 1
                continue
            if not line:
                continue
            try:
                record = self._record(line.split(","))
            except (ValueError, IndexError):
                self.bad_lines += 1
                continue
            if record is not None:
                out.append(record)
        self.frames += len(out)
        return out

    def _time(self, date: str, clock: str) -> float | None:
        if not date or not clock:
            return None
        day = self._day_cache.get(date)
        if day is None:
            y, m, d = (int(x) for x in date.split("/"))
            day = float(calendar.timegm((y, m, d, 0, 0, 0)))
            if len(self._day_cache) > 64:
                self._day_cache.clear()
            self._day_cache[date] = day
        hh, mm, ss = clock.split(":")
        seconds = int(hh) * 3600 + int(mm) * 60 + float(ss)
        if not (0 <= seconds < 86401):
            raise ValueError(f"bad time of day {clock!r}")
        return day + seconds

    def _record(self, f: list[str]) -> SbsRecord | None:
        if f[0] != "MSG":
            self.ignored += 1
            return None
        kind = f[1]
        if kind not in ("1", "2", "3", "4"):
            self.ignored += 1
            return None
        icao = f[4].strip()
        if not _ICAO.match(icao):
            raise ValueError(f"bad hex ident {icao!r}")
        t = self._time(f[6], f[7])
        icao = icao.lower()
        if kind == "1":
            callsign = f[10].strip()
            if not _CALLSIGN.match(callsign):
                raise ValueError(f"bad callsign {callsign!r}")
            return SbsRecord("id", t, icao, callsign=callsign)
        if kind == "4":
            gs, track, vr = _num(f[12]), _num(f[13]), _int(f[16])
            if gs is None and track is None and vr is None:
                raise ValueError("velocity message without velocity")
            return SbsRecord("vel", t, icao, groundspeed=gs, track=track, vertical_rate=vr)
        lat, lon = _num(f[14]), _num(f[15])
        if lat is None or lon is None or not (-90 <= lat <= 90) or not (-180 <= lon <= 180):
            raise ValueError("position message without a valid position")
        on_ground = kind == "2" or (len(f) > 21 and f[21].strip() in ("-1", "1"))
        record = SbsRecord("pos", t, icao, latitude=lat, longitude=lon, altitude=_int(f[11]),
                           on_ground=on_ground)
        if kind == "2":
            record.groundspeed, record.track = _num(f[12]), _num(f[13])
        return record


def _field(value: object) -> str:
    return "" if value is None else str(value)


def format_line(kind: int, icao: str, t: float, *, callsign: str | None = None,
                altitude: int | None = None, groundspeed: float | None = None,
                track: float | None = None, latitude: float | None = None,
                longitude: float | None = None, vertical_rate: int | None = None,
                on_ground: bool = False) -> str:
    """One SBS ``MSG`` line (without newline), as dump1090 writes it."""
    import time

    whole = int(t)
    date = time.strftime("%Y/%m/%d", time.gmtime(whole))
    clock = time.strftime("%H:%M:%S", time.gmtime(whole)) + f"{t - whole:.3f}"[1:]
    fields = ["MSG", str(kind), "1", "1", icao.upper(), "1", date, clock, date, clock,
              _field(callsign), _field(altitude), _field(groundspeed), _field(track),
              _field(latitude), _field(longitude), _field(vertical_rate), "", "", "", "",
              "-1" if on_ground else "0"]
    return ",".join(fields)
