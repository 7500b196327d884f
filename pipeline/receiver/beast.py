"""Mode-S Beast binary format (dump1090/readsb port 30005).

``0x1a TYPE COUNTER(6) SIGNAL(1) MESSAGE``: TYPE '1' Mode A/C (2 bytes), '2' Mode-S short
(7 bytes), '3' Mode-S long (14 bytes); every 0x1a inside COUNTER, SIGNAL or MESSAGE is sent
twice. COUNTER is a 48-bit big-endian 12 MHz clock.
"""

from __future__ import annotations

import logging
import math
import time
from bisect import bisect_left
from collections.abc import Callable, Sequence

import numpy as np
from pyModeS.util import crc

log = logging.getLogger(__name__)

ESC = 0x1A
_TYPE_BY_LEN = {2: 0x31, 7: 0x32, 14: 0x33}
COUNTER_HZ = 12_000_000
COUNTER_MOD = 1 << 48


def encode_frame(msg: bytes, counter: int, signal: int = 0) -> bytes:
    """One Beast frame for a raw message of 2, 7 or 14 bytes."""
    kind = _TYPE_BY_LEN.get(len(msg))
    if kind is None:
        raise ValueError(f"a Beast message is 2, 7 or 14 bytes, not {len(msg)}")
    body = (counter % COUNTER_MOD).to_bytes(6, "big") + bytes([signal & 0xFF]) + msg
    return bytes([ESC, kind]) + body.replace(b"\x1a", b"\x1a\x1a")

# Body length (after ESC TYPE, before escaping) by type byte: 6 counter + 1 signal + message.
_BODY_LEN = {0x31: 7 + 2, 0x32: 7 + 7, 0x33: 7 + 14}
_BODY_LEN_BY_TYPE = tuple(_BODY_LEN.get(kind, 0) for kind in range(256))
# Whole frame length (ESC TYPE body) by type byte, 0 for anything that is not a frame type.
_FRAME_LEN = np.array([2 + n if n else 0 for n in _BODY_LEN_BY_TYPE], dtype=np.int64)
_MODE_AC = 0x31
_STATUS = 0x34
# Longest escaped frame: ESC TYPE + every body byte doubled.
MAX_FRAME_BYTES = 2 + 2 * (7 + 14)
_COUNTER_AT = np.arange(2, 8)          # counter bytes, from the marker


class BeastParser:
    """Incremental Beast framing: feed any byte chunks, get complete Mode-S frames back.

    The buffer never holds more than one partial frame (``MAX_FRAME_BYTES``), whatever the peer
    sends. Bytes outside frames are counted as garbage and skipped until the next marker.

    Most frames contain no 0x1a byte besides their marker. Those are found and cut out for a
    whole chunk at once with NumPy: a marker starts such a *clean* frame when its type byte is a
    frame type and the next 0x1a comes no earlier than the frame's end. Only the other markers
    (escaped bytes, cut frames, status frames, garbage) are walked one by one, and that walk
    skips the clean frames it would have found itself, so the result is the same as reading the
    stream byte by byte.
    """

    __slots__ = ("_buf", "frames", "modeac", "status", "truncated", "garbage_bytes")

    def __init__(self) -> None:
        self._buf = b""
        self.frames = 0            # Mode-S frames returned
        self.modeac = 0            # Mode A/C frames (type '1'), skipped
        self.status = 0            # type '4' status frames, skipped
        self.truncated = 0         # frames cut short by a new marker
        self.garbage_bytes = 0     # bytes outside any frame

    def reset(self) -> None:
        """Forget a partial frame (a new connection starts a new stream)."""
        self.garbage_bytes += len(self._buf)
        self._buf = b""

    def feed(self, data: bytes) -> list[tuple[int, bytes]]:
        """Frames completed by ``data``: (48-bit counter, raw 7- or 14-byte message)."""
        counters, messages = self._parse(data, False)
        return list(zip(counters.tolist(), messages))

    def feed_hex(self, data: bytes) -> tuple[np.ndarray, list[str]]:
        """The same frames as ``feed()``, as an int64 array of counters and a list of messages
        in lower-case hex (what the decoder takes), without a Python object per frame for the
        counters."""
        return self._parse(data, True)

    def _parse(self, data: bytes, as_hex: bool) -> tuple[np.ndarray, list]:
        buf = self._buf + data if self._buf else bytes(data)
        n = len(buf)
        view = np.frombuffer(buf, np.uint8)
        marks = np.flatnonzero(view == ESC)
        m = len(marks)
        # Type byte after each marker (none after a marker that ends the buffer).
        kinds = view[np.minimum(marks + 1, n - 1)] if m else marks
        if m and marks[-1] == n - 1:
            kinds[-1] = 0
        lengths = _FRAME_LEN[kinds]
        ends = marks + lengths
        following = np.empty(m, np.int64)
        following[:-1] = marks[1:]
        if m:
            following[-1] = n
        clean = (lengths > 0) & (following >= ends)
        taken = clean.copy()               # clean frames the stream walk reaches

        marks_l, ends_l = marks.tolist(), ends.tolist()
        cum = [0]
        cum += np.cumsum(lengths).tolist()
        others = np.flatnonzero(~clean).tolist()
        slow: list[tuple[int, int, bytes]] = []   # (marker index, counter, message)
        garbage = pos = i = k = 0
        kept = n                           # start of a partial frame kept for the next call
        body_lens = _BODY_LEN_BY_TYPE
        while True:
            while k < len(others) and others[k] < i:
                k += 1
            j = others[k] if k < len(others) else m
            if j > i:                      # clean frames i .. j-1, garbage between them
                end = ends_l[j - 1]
                garbage += end - pos - (cum[j] - cum[i])
                pos = end
            if j == m:
                break
            start = marks_l[j]
            garbage += start - pos
            if start + 1 >= n:             # a marker without its type byte yet
                kept = pos = start
                taken[j:] = False
                break
            kind = buf[start + 1]
            body_len = body_lens[kind]
            if not body_len:
                # 0x1a 0x1a outside a frame is an escaped data byte of a frame we joined
                # mid-way; '4' is a receiver status frame whose content is not needed.
                if kind == _STATUS:
                    self.status += 1
                    pos = start + 2
                else:
                    garbage += 2 if kind == ESC else 1
                    pos = start + (2 if kind == ESC else 1)
            else:
                body, end = self._unescape(buf, start + 2, body_len)
                if body is None:
                    if end < 0:            # incomplete: wait for more bytes
                        kept = pos = start
                        taken[j:] = False
                        break
                    self.truncated += 1    # a new frame began inside this one
                    pos = end
                else:
                    pos = end
                    if kind == _MODE_AC:
                        self.modeac += 1
                    else:
                        slow.append((j, int.from_bytes(body[:6], "big"), body[7:]))
            # Markers inside what was just consumed are data, not frames.
            i = bisect_left(marks_l, pos, j + 1)
            if i > j + 1:
                taken[j + 1:i] = False
        if kept == n:
            garbage += n - pos
        self.garbage_bytes += garbage

        emit = taken & (kinds != _MODE_AC)
        self.modeac += int(np.count_nonzero(taken)) - int(np.count_nonzero(emit))
        index = np.flatnonzero(emit)
        starts = marks[index]
        # 48-bit big-endian counters, read as the low six bytes of a big-endian uint64.
        wide = np.zeros((len(index), 8), np.uint8)
        wide[:, 2:] = view[starts[:, None] + _COUNTER_AT]
        counters = wide.view(">u8").ravel().astype(np.int64)
        first, last = (starts + 9).tolist(), ends[index].tolist()
        messages: list[str | bytes]            # str if as_hex, else bytes
        if as_hex:
            text = buf.hex()
            messages = [text[2 * a:2 * b] for a, b in zip(first, last)]
        else:
            messages = [buf[a:b] for a, b in zip(first, last)]
        if slow:
            order = np.argsort(np.concatenate([index, [s[0] for s in slow]]), kind="stable")
            counters = np.concatenate([counters, [s[1] for s in slow]]).astype(np.int64)[order]
            messages += [s[2].hex() if as_hex else s[2] for s in slow]
            messages = [messages[o] for o in order.tolist()]

        rest = buf[kept:]
        if len(rest) > MAX_FRAME_BYTES:    # cannot happen for a partial frame; stay bounded
            self.garbage_bytes += len(rest)
            rest = b""
        self._buf = rest
        self.frames += len(messages)
        return counters, messages

    @staticmethod
    def _unescape(buf: bytes, i: int, length: int) -> tuple[bytes | None, int]:
        """Undo 0x1a doubling from ``buf[i:]``. Returns (body, end), (None, -1) when more
        bytes are needed, or (None, position of the new marker) when the frame was cut."""
        out = b""
        n = len(buf)
        while True:
            need = length - len(out)
            esc = buf.find(b"\x1a", i, i + need)
            if esc < 0:                       # no 0x1a among the bytes still needed
                if i + need > n:
                    return None, -1
                return out + buf[i:i + need], i + need
            if esc + 1 >= n:
                return None, -1
            if buf[esc + 1] != 0x1A:
                return None, esc
            out += buf[i:esc + 1]
            i = esc + 2


class CounterClock:
    """Turns the 48-bit 12 MHz counter into Unix seconds: ``t = anchor + counter / 12 MHz``,
    counting wrap-arounds (2**48 ticks, about 271 days)."""

    _NEAR = COUNTER_HZ * 3600      # a real wrap goes from the last hour to the first hour

    __slots__ = ("anchor", "_last", "_wraps")

    def __init__(self, anchor: float) -> None:
        self.anchor = anchor
        self._last = 0
        self._wraps = 0

    def seconds(self, counter: int) -> float:
        last = self._last
        if counter < last and last > COUNTER_MOD - self._NEAR and counter < self._NEAR:
            self._wraps += 1
        self._last = counter
        return self.anchor + (counter + self._wraps * COUNTER_MOD) / COUNTER_HZ

    def stamp_array(self, counters: np.ndarray) -> list[float]:
        """``seconds()`` of each counter of an int64 array, in order, as a list. Counters and
        the offset stay below 2**53, so NumPy's float division gives the same values as
        Python's division of the integers."""
        if not len(counters):
            return []
        if self._last > COUNTER_MOD - self._NEAR or counters.max() > COUNTER_MOD - self._NEAR:
            seconds = self.seconds
            return [seconds(counter) for counter in counters.tolist()]
        self._last = int(counters[-1])
        return (self.anchor + (counters + self._wraps * COUNTER_MOD) / COUNTER_HZ).tolist()


# A live counter time further behind the wall clock than this, or further ahead of the previous
# frame's than the wall time between their arrivals plus this, is not believed. Wide enough for
# a backlog of received bytes (minutes of a busy feed fit in socket buffers) and for crystal
# drift (tens of ppm: seconds a day), narrow enough for what breaks the anchor: a receiver
# restart (the counter starts again from 0), a corrupt counter (random over 271 days).
MAX_CLOCK_SLIP_S = 300.0
CLOCK_LOG_INTERVAL_S = 60.0


def adsb_crc_ok(message: str) -> bool:
    """True for a DF17/18 message (hex) whose CRC checks: the only frames whose integrity can
    be verified without state (other formats overlay the parity with the address)."""
    return (len(message) == 28 and int(message[:2], 16) >> 3 in (17, 18)
            and crc(message) == 0)


class LiveCounterClock:
    """The receiver's 12 MHz counter anchored at the wall clock, for a live stream
    (``ADSB_RECEIVER_CLOCK=counter``): ``t = anchor + counter / 12 MHz``.

    Nothing protects a Beast or AVR counter: the first frame after joining a stream mid-frame
    can be garbage, and a receiver restart starts its counter again from 0. So:

    * the anchor is taken at the first frame that passes CRC (DF17/18); frames before it are
      stamped with the wall clock;
    * a frame whose counter goes backwards, lags the wall clock by more than
      ``MAX_CLOCK_SLIP_S`` or leaps ahead of the previous frame by more than the wall time
      between them plus ``MAX_CLOCK_SLIP_S`` re-anchors the clock at its own arrival if it
      passes CRC (``reanchors``, logged at most once a minute); a frame that cannot be verified
      is given the previous frame's time instead (``bad_counters``), so a nonsense counter
      never reaches the decoder.

    Counter times may run ahead of the wall clock (a capture served faster than real time);
    only jumps are judged. Wrap-arounds of the 48-bit counter (~271 days) are followed.
    """

    _NEAR = COUNTER_HZ * 3600      # a real wrap goes from the last hour to the first hour

    def __init__(self, verified: Callable[[str], bool] = adsb_crc_ok,
                 max_slip_s: float = MAX_CLOCK_SLIP_S) -> None:
        self.verified = verified
        self.max_slip_s = max_slip_s
        self.anchor: float | None = None
        self.reanchors = 0
        self.bad_counters = 0
        self.unanchored = 0            # frames stamped with the wall clock before the anchor
        self._wraps = 0
        self._last_total = 0           # counter + wraps, of the last frame believed
        self._last_t = 0.0             # its time
        self._last_received = 0.0      # and the wall clock when it arrived
        self._unlogged = 0
        self._next_log = -math.inf

    def stamp(self, counters: np.ndarray, messages: Sequence[str], received: float
              ) -> list[float]:
        """Unix seconds of frames with these counters (int64) and messages (hex), received
        together at ``received``."""
        n = len(counters)
        if not n:
            return []
        start = 0
        if self.anchor is None:
            verified = self.verified
            start = next((i for i, m in enumerate(messages) if verified(m)), n)
            self.unanchored += start
            if start == n:
                return [received] * n
            self._anchor_at(int(counters[start]), received)
            log.info("receiver clock: 12 MHz counter anchored at the wall clock on the first "
                     "frame that passed CRC (%d frames before it stamped with the wall clock)",
                     self.unanchored)
        anchor = self.anchor
        assert anchor is not None
        times = [received] * start
        totals = counters[start:] + self._wraps * COUNTER_MOD
        if self._steady(anchor, totals, received):
            stamped = (anchor + totals / COUNTER_HZ).tolist()
            self._last_total, self._last_t = int(totals[-1]), stamped[-1]
            self._last_received = received
            return times + stamped
        return times + self._one_by_one(counters[start:].tolist(), messages[start:], received)

    def _steady(self, anchor: float, totals: np.ndarray, received: float) -> bool:
        """Every frame follows the one before it as a working receiver's would (the usual case,
        checked for the whole chunk at once)."""
        if totals[0] < self._last_total:
            return False
        if len(totals) > 1:
            step = np.diff(totals)
            if step.min() < 0 or step.max() > self.max_slip_s * COUNTER_HZ:
                return False
        first = anchor + int(totals[0]) / COUNTER_HZ
        return (first >= received - self.max_slip_s
                and first - self._last_t <= received - self._last_received + self.max_slip_s)

    def _one_by_one(self, counters: list[int], messages: Sequence[str], received: float
                    ) -> list[float]:
        out = []
        slip = self.max_slip_s
        for counter, message in zip(counters, messages):
            anchor = self.anchor            # a re-anchor moves it
            assert anchor is not None
            total = counter + self._wraps * COUNTER_MOD
            wrapped = (total < self._last_total and counter < self._NEAR
                       and self._last_total % COUNTER_MOD > COUNTER_MOD - self._NEAR)
            if wrapped:
                total += COUNTER_MOD
            t = anchor + total / COUNTER_HZ
            if (total >= self._last_total and t >= received - slip
                    and t - self._last_t <= received - self._last_received + slip):
                self._wraps += wrapped
                self._last_total, self._last_t, self._last_received = total, t, received
            elif self.verified(message):
                self._reanchor(counter, t, received)
                t = received
            else:
                self.bad_counters += 1
                t = self._last_t
            out.append(t)
        return out

    def _anchor_at(self, counter: int, received: float) -> None:
        self.anchor = received - counter / COUNTER_HZ
        self._wraps = 0
        self._last_total, self._last_t, self._last_received = counter, received, received

    def _reanchor(self, counter: int, t: float, received: float) -> None:
        if t < self._last_t:
            why = f"counter went back by {self._last_t - t:.1f} s (receiver restarted?)"
        elif t < received - self.max_slip_s:
            why = f"counter time {received - t:.1f} s behind the wall clock"
        else:
            why = f"counter leapt {t - self._last_t:.1f} s ahead of the previous frame's"
        self._anchor_at(counter, received)
        self.reanchors += 1
        self._unlogged += 1
        now = time.monotonic()
        if now >= self._next_log:
            self._next_log = now + CLOCK_LOG_INTERVAL_S
            log.warning("receiver clock: %s; re-anchored the 12 MHz counter at the wall clock "
                        "(%d re-anchors since the last such line, %d in all)", why,
                        self._unlogged, self.reanchors)
            self._unlogged = 0
