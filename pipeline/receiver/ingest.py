"""Receiver -> PostgreSQL: wiring of source, framing, decoding and the COPY writer.

``ingest_file()`` replays a capture, ``run_live()`` follows a receiver until ``stop`` is set;
both return the ``IngestStats`` they updated while running (the service reads them for its
metrics). This module never imports TensorFlow.
"""

from __future__ import annotations

import datetime as dt
import logging
import signal
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import numpy as np

from pipeline.config import Settings
from pipeline.receiver.avr import AvrParser
from pipeline.receiver.beast import BeastParser, CounterClock, LiveCounterClock
from pipeline.receiver.decode import DecodeCounters, PositionDecoder
from pipeline.receiver.lines import LineParser
from pipeline.receiver.sbs import SbsParser
from pipeline.receiver.sources import TcpSource, detect_format, read_file

if TYPE_CHECKING:
    from pipeline.db.writer import PositionWriter

log = logging.getLogger(__name__)

STATUS_INTERVAL_S = 60.0
_PARSERS: dict[str, type[BeastParser] | type[LineParser]] = {
    "beast": BeastParser, "avr": AvrParser, "sbs": SbsParser}


class IngestStats:
    """Live counters of one ingest run; every attribute is safe to read from another thread."""

    def __init__(self, fmt: str) -> None:
        self.format = fmt
        self.bytes = 0
        self.started = time.monotonic()
        self.sbs_bad_time = 0
        self.parser: BeastParser | LineParser = _PARSERS[fmt]()
        self.decoder: PositionDecoder | None = None   # set by the _Pipeline updating these
        self.writer: PositionWriter | None = None
        self.source: TcpSource | None = None
        self.live_clock: LiveCounterClock | None = None   # live ADSB_RECEIVER_CLOCK=counter
        self.wall_clock: WallClock | None = None          # set by the _Pipeline

    # Framing
    @property
    def frames(self) -> int:
        return self.parser.frames

    @property
    def garbage_bytes(self) -> int:
        return self.parser.garbage_bytes

    @property
    def truncated_frames(self) -> int:
        return self.parser.truncated

    @property
    def bad_lines(self) -> int:
        return getattr(self.parser, "bad_lines", 0) + self.sbs_bad_time

    # Decoding
    @property
    def _counters(self) -> DecodeCounters:
        if self.decoder is None:    # read before the pipeline is built (as before: AttributeError)
            raise AttributeError("no decoder yet: the ingest has not started")
        return self.decoder.counters

    @property
    def messages(self) -> int:
        return self._counters.messages if self.format != "sbs" else self.parser.frames

    @property
    def crc_failures(self) -> int:
        return self._counters.crc_failures

    @property
    def positions(self) -> int:
        return self._counters.positions

    @property
    def rejected_range(self) -> int:
        return self._counters.rejected_range

    @property
    def rejected_speed(self) -> int:
        return self._counters.rejected_speed

    @property
    def rejected_altitude(self) -> int:
        return self._counters.rejected_altitude

    @property
    def out_of_order(self) -> int:
        return self._counters.out_of_order

    @property
    def duplicates(self) -> int:
        return self._counters.duplicates

    @property
    def aircraft_seen(self) -> int:
        return len(self._counters.aircraft)

    @property
    def aircraft_tracked(self) -> int:
        return self.decoder.aircraft_active if self.decoder else 0

    @property
    def aircraft_evicted(self) -> int:
        return self._counters.aircraft_evicted

    @property
    def clock_reanchors(self) -> int:
        return self.live_clock.reanchors if self.live_clock else 0

    @property
    def clock_bad_counters(self) -> int:
        return self.live_clock.bad_counters if self.live_clock else 0

    @property
    def clock_steps(self) -> int:
        return self.wall_clock.steps if self.wall_clock else 0

    # Writing
    @property
    def rows_written(self) -> int:
        return self.writer.rows_written if self.writer else 0

    @property
    def rows_buffered(self) -> int:
        return self.writer.pending if self.writer else 0

    @property
    def rows_journaled(self) -> int:
        return self.writer.rows_journaled if self.writer else 0

    @property
    def write_errors(self) -> int:
        return self.writer.write_errors if self.writer else 0

    @property
    def rows_already_stored(self) -> int:
        return self.writer.rows_already_stored if self.writer else 0

    @property
    def rows_conflicting(self) -> int:
        return self.writer.rows_conflicting if self.writer else 0

    @property
    def rows_rejected(self) -> int:
        return self.writer.rows_rejected if self.writer else 0

    @property
    def journal_errors(self) -> int:
        return self.writer.journal_errors if self.writer else 0

    @property
    def write_lag_s(self) -> float:
        return self.writer.write_lag_s if self.writer else 0.0

    @property
    def reconnects(self) -> int:
        return self.source.reconnects if self.source else 0

    def as_dict(self) -> dict[str, float | int]:
        names = ("bytes", "frames", "garbage_bytes", "truncated_frames", "bad_lines", "messages",
                 "crc_failures", "positions", "rejected_range", "rejected_speed",
                 "rejected_altitude", "out_of_order", "duplicates", "aircraft_seen",
                 "aircraft_tracked", "aircraft_evicted", "clock_reanchors", "clock_bad_counters",
                 "clock_steps",
                 "rows_written", "rows_buffered", "rows_journaled", "rows_already_stored",
                 "rows_conflicting", "rows_rejected", "write_errors",
                 "journal_errors", "write_lag_s", "reconnects")
        return {name: getattr(self, name) for name in names}


# Longest interval the messages of one read are spread over in wall-clock mode (a read after a
# long silence holds messages that arrived just now, not during the silence).
WALL_SPREAD_S = 1.0
# The wall clock moved this much more or less than the monotonic clock between two reads: the
# host's clock was stepped (NTP at boot, a hand-set date).
WALL_STEP_S = 5.0
STEP_LOG_EVERY_S = 60.0


class WallClock:
    """Receive times of live messages in wall-clock mode.

    The messages of one read arrived over the time since the previous read (at most
    ``WALL_SPREAD_S``), so they are spread evenly over it, in order: two positions of one
    aircraft in one read (a burst after a stall) keep distinct, increasing times instead of one
    shared stamp - positions are unique per aircraft and time.

    A step of the host's clock cannot be undone here (which clock is right is unknown), but it
    is counted (``clock_steps``) and logged: positions around it are stored off by the step, and
    a flight crossing it may be cut in two."""

    def __init__(self) -> None:
        self.steps = 0
        self._prev: tuple[float, float] | None = None      # (wall, monotonic) of the last read
        self._last_log = -STEP_LOG_EVERY_S

    def stamp(self, n: int, received: float, mono: float) -> list[float]:
        prev = self._prev
        self._prev = (received, mono)
        if prev is None:
            start = received - WALL_SPREAD_S
        else:
            step = (received - prev[0]) - (mono - prev[1])
            if abs(step) > WALL_STEP_S:
                self.steps += 1
                if mono - self._last_log >= STEP_LOG_EVERY_S:
                    self._last_log = mono
                    log.warning("the host clock stepped by %+.0f s between two reads: positions "
                                "are stamped with the new time (ADSB_RECEIVER_CLOCK=counter "
                                "takes the receiver's own counter); %d steps so far", step,
                                self.steps)
                prev = (received - (mono - prev[1]), prev[1])
            start = max(prev[0], received - WALL_SPREAD_S)
        if n == 1 or start >= received:
            return [received] * n
        width = (received - start) / n
        return [start + width * (i + 1) for i in range(n)]

class _Pipeline:
    """One parser + one decoder + the writer; ``process()`` takes bytes with a receive time."""

    def __init__(self, settings: Settings, fmt: str, writer: PositionWriter, *, clock: str,
                 start_time: float | None = None, stats: IngestStats | None = None) -> None:
        self.stats = stats if stats is not None else IngestStats(fmt)
        self.fmt = fmt
        self.clock_mode = clock                  # "wall", "counter" (anchor at first frame)
        self.clock = CounterClock(start_time) if start_time is not None else None
        # Counter anchored at the wall clock (live without a start time): checked frame by frame.
        self.live_clock = LiveCounterClock() if clock == "counter" and self.clock is None else None
        self.decoder = PositionDecoder(settings.receiver_lat, settings.receiver_lon,
                                       settings.range_km, settings.receiver_id)
        self.stats.decoder = self.decoder
        self.stats.writer = self.writer = writer
        self.stats.live_clock = self.live_clock
        self._last_t = start_time
        self.wall_clock = WallClock()
        self.stats.wall_clock = self.wall_clock

    def _wall_times(self, n: int, received: float) -> list[float]:
        return self.wall_clock.stamp(n, received, time.monotonic())

    def new_connection(self) -> None:
        self.stats.parser.reset()

    def process(self, data: bytes, received: float) -> None:
        self.stats.bytes += len(data)
        parser = self.stats.parser
        if isinstance(parser, BeastParser):
            counters, messages = parser.feed_hex(data)
            self._decode(counters, messages, received)
        else:
            self._lines(parser.feed(data), received)
        self._hand_over()

    def finish(self, received: float) -> None:
        parser = self.stats.parser
        if isinstance(parser, LineParser):  # the last line may lack its line break
            self._lines(parser.finish(), received)
        self.decoder.finish()
        self._hand_over()

    def _lines(self, items: list, received: float) -> None:
        if self.fmt == "avr":
            self._avr(items, received)
        else:
            self._sbs(items, received)

    def _hand_over(self) -> None:
        data, rows, days = self.decoder.take()
        if rows:
            self.writer.put(data, rows, days)

    def _decode(self, counters, messages: list[str], received: float) -> None:
        """Beast frames: every one carries the receiver's counter."""
        if not messages:
            return
        if self.clock_mode == "wall":
            times = self._wall_times(len(messages), received)
        else:
            if self.live_clock is not None:
                times = self.live_clock.stamp(counters, messages, received)
            else:
                assert self.clock is not None
                times = self.clock.stamp_array(counters)
            self._last_t = times[-1]
        self.decoder.feed(times, messages)

    def _avr(self, frames: list[tuple[int | None, bytes]], received: float) -> None:
        """AVR lines: '@'/'<' lines carry the counter, '*' lines take the latest time."""
        if not frames:
            return
        messages = [msg.hex() for _, msg in frames]
        if self.clock_mode == "wall":
            self.decoder.feed(self._wall_times(len(frames), received), messages)
            return
        times = []
        if self.live_clock is not None:
            counted = [(c, m) for (c, _), m in zip(frames, messages) if c is not None]
            stamped = iter(self.live_clock.stamp(np.array([c for c, _ in counted], np.int64),
                                                 [m for _, m in counted], received))
            seconds: Callable[[int], float] = lambda _counter: next(stamped)  # noqa: E731
        else:
            assert self.clock is not None
            seconds = self.clock.seconds
        for counter, _ in frames:
            if counter is None:
                t = self._last_t if self._last_t is not None else received
            else:
                t = seconds(counter)
            self._last_t = t
            times.append(t)
        self.decoder.feed(times, messages)

    def _sbs(self, records: list, received: float) -> None:
        dec = self.decoder
        wall = self._wall_times(len(records), received) if self.clock_mode == "wall" else None
        for i, rec in enumerate(records):
            t = wall[i] if wall is not None else rec.time
            if t is None:
                self.stats.sbs_bad_time += 1
                continue
            if rec.kind == "pos":
                dec.add_position(rec.icao, t, rec.latitude, rec.longitude, rec.altitude,
                                 rec.on_ground)
            elif rec.kind == "id":
                dec.update_identity(rec.icao, t, rec.callsign)
            else:
                dec.update_velocity(rec.icao, t, rec.groundspeed, rec.track, rec.vertical_rate)


def _make_writer(settings: Settings) -> PositionWriter:
    from pipeline.db.engine import make_engine
    from pipeline.db.writer import PositionWriter

    return PositionWriter(make_engine(settings), settings.data_dir / "journal",
                          batch_rows=settings.batch_rows, buffer_max_rows=settings.buffer_max_rows)


def status_line(stats: IngestStats, interval_s: float, previous: dict | None) -> str:
    now = stats.as_dict()
    prev = previous or dict.fromkeys(now, 0)
    rate = lambda key: (now[key] - prev[key]) / max(interval_s, 1e-9)  # noqa: E731
    return (f"{rate('messages'):.0f} msg/s, {rate('positions'):.0f} positions/s, "
            f"CRC failures {now['crc_failures']}, rejected {now['rejected_range']} range + "
            f"{now['rejected_speed']} speed + {now['rejected_altitude']} altitude + "
            f"{now['out_of_order']} out of order, {now['duplicates']} duplicates, "
            f"aircraft seen {now['aircraft_seen']}, rows written {now['rows_written']}, "
            f"buffered {now['rows_buffered']}, journaled {now['rows_journaled']}, "
            f"write errors {now['write_errors']}, write lag {now['write_lag_s']:.1f} s"
            + _alarms(now))


def _alarms(now: dict) -> str:
    """Counters of floods and clock trouble, in the status line only once they are non-zero."""
    parts = []
    if now["journal_errors"]:
        parts.append(f"journal write failures {now['journal_errors']}")
    if now["aircraft_evicted"]:
        parts.append(f"aircraft evicted {now['aircraft_evicted']} (tracking "
                     f"{now['aircraft_tracked']})")
    if now["clock_reanchors"] or now["clock_bad_counters"]:
        parts.append(f"clock re-anchored {now['clock_reanchors']}, bad counters "
                     f"{now['clock_bad_counters']}")
    if now["clock_steps"]:
        parts.append(f"host clock steps {now['clock_steps']}")
    return "".join(", " + p for p in parts)


def _parse_start(start_time: str | float | dt.datetime | None, path: Path) -> float:
    if start_time is None:
        return path.stat().st_mtime
    return parse_start_time(start_time)


def parse_start_time(start_time: str | float | dt.datetime) -> float:
    """Unix seconds of ``--start-time`` (ISO 8601, UTC unless it says otherwise)."""
    if isinstance(start_time, (int, float)):
        return float(start_time)
    if isinstance(start_time, str):
        start_time = dt.datetime.fromisoformat(start_time.replace("Z", "+00:00"))
    if start_time.tzinfo is None:
        start_time = start_time.replace(tzinfo=dt.timezone.utc)
    return start_time.timestamp()


def ingest_file(settings: Settings, path: str | Path, fmt: str = "auto",
                start_time: str | float | dt.datetime | None = None, progress: bool = True,
                stop: threading.Event | None = None,
                writer: PositionWriter | None = None) -> IngestStats:
    """Replay a capture file into the database. Beast and AVR counters are anchored at
    ``start_time`` (counter 0 = start time); SBS lines carry their own times."""
    path = Path(path)
    if fmt == "auto":
        with open(path, "rb") as fh:
            head = fh.read(4096)
        detected = detect_format(head)
        if detected is None and head:
            raise ValueError(f"{path}: cannot tell the format (not Beast, AVR or SBS); "
                             "pass --format")
        fmt = detected or "beast"
    own_writer = writer is None
    writer = writer or _make_writer(settings)
    pipe = _Pipeline(settings, fmt, writer, clock="counter", start_time=_parse_start(start_time, path))
    stats = pipe.stats
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=path.stat().st_size, unit="B", unit_scale=True, desc=path.name,
                   mininterval=0.5)
    try:
        last = time.monotonic()
        for chunk in read_file(path, stop):
            pipe.process(chunk, time.time())
            if bar is not None:
                bar.update(len(chunk))
                now = time.monotonic()
                if now - last > 0.5:
                    last = now
                    bar.set_postfix_str(f"{stats.messages / (now - stats.started):,.0f} msg/s",
                                        refresh=False)
        pipe.finish(time.time())
    finally:
        if bar is not None:
            bar.close()
        if own_writer:
            writer.close()
    log.info("%s (%s): %s", path.name, fmt, _summary(stats))
    return stats


def _summary(stats: IngestStats) -> str:
    return ", ".join(f"{k} {v:.1f}" if isinstance(v, float) else f"{k} {v}"
                     for k, v in stats.as_dict().items())


def run_live(settings: Settings, stop: threading.Event, writer: PositionWriter | None = None,
             stats: IngestStats | None = None, *, start_time: float | None = None,
             on_start: Callable[[IngestStats], None] | None = None) -> IngestStats:
    """Follow the receiver at ADSB_RECEIVER_HOST:port until ``stop`` is set, then flush.

    Pass ``stats=IngestStats(settings.receiver_format)`` (or ``on_start``, which receives the
    stats object as soon as it exists) to read the counters while it runs. ``start_time`` (Unix
    seconds) stamps messages with the receiver's 12 MHz counter anchored there instead of the
    receive time (a simulated receiver serving a past day faster than real time)."""
    own_writer = writer is None
    writer = writer or _make_writer(settings)
    clock = "counter" if start_time is not None else settings.receiver_clock
    pipe = _Pipeline(settings, settings.receiver_format, writer, clock=clock,
                     start_time=start_time, stats=stats)
    stats = pipe.stats
    if on_start is not None:
        on_start(stats)
    source = TcpSource(settings.receiver_host, settings.port, stop,
                       read_timeout_s=settings.receiver_timeout_s)
    stats.source = source
    next_status = time.monotonic() + STATUS_INTERVAL_S
    previous = stats.as_dict()
    try:
        for chunk in source.chunks():
            if chunk is None:
                pipe.new_connection()
            else:
                pipe.process(chunk, time.time())
            now = time.monotonic()
            if now >= next_status:
                log.info("ingest: %s", status_line(stats, STATUS_INTERVAL_S + now - next_status,
                                                   previous))
                previous = stats.as_dict()
                next_status = now + STATUS_INTERVAL_S
    finally:
        pipe.finish(time.time())
        if own_writer:
            writer.close()
    log.info("ingest stopped: %s", _summary(stats))
    return stats


def command(settings: Settings, args) -> int:
    """``adsb-pipeline ingest [FILE] [--live] [--format] [--start-time] [--no-progress]``."""
    if bool(args.file) == bool(args.live):
        log.error("ingest: give either a capture FILE or --live")
        return 2
    stop = threading.Event()

    def _stop(signum, _frame):
        log.info("signal %d: stopping ingest after flushing buffered rows", signum)
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, _stop)
    from pipeline.db import migrate, sites
    from pipeline.db.engine import make_engine

    engine = make_engine(settings)
    try:
        migrate.upgrade(engine)
        sites.register_engine(engine, settings)    # the worker builds flights per site
    except sites.SiteConflict as exc:
        log.error("ingest: %s", exc)
        return 2
    finally:
        engine.dispose()
    if args.live:
        run_live(settings, stop)
        return 0
    path = Path(args.file)
    if not path.is_file():
        log.error("ingest: %s is not a file", path)
        return 2
    try:
        ingest_file(settings, path, args.format, args.start_time,
                    progress=not args.no_progress, stop=stop)
    except ValueError as exc:
        log.error("ingest: %s", exc)
        return 2
    return 0
