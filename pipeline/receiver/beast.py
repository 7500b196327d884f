"""Mode-S Beast binary format (dump1090/readsb port 30005).

``0x1a TYPE COUNTER(6) SIGNAL(1) MESSAGE``: TYPE '1' Mode A/C (2 bytes), '2' Mode-S short
(7 bytes), '3' Mode-S long (14 bytes); every 0x1a inside COUNTER, SIGNAL or MESSAGE is sent
twice. COUNTER is a 48-bit big-endian 12 MHz clock.
"""

from __future__ import annotations

import re

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
# Back-to-back Mode-S frames without an escaped byte (most of a stream), and one such frame
# split into (short counter, short message, long counter, long message), two of them empty.
_CLEAN_RUN = re.compile(rb"(?:\x1a2[^\x1a]{14}|\x1a3[^\x1a]{21})+")
_CLEAN_FRAME = re.compile(
    rb"\x1a(?:2([^\x1a]{6})[^\x1a]([^\x1a]{7})|3([^\x1a]{6})[^\x1a]([^\x1a]{14}))")
_STATUS = 0x34
# Longest escaped frame: ESC TYPE + every body byte doubled.
MAX_FRAME_BYTES = 2 + 2 * (7 + 14)


class BeastParser:
    """Incremental Beast framing: feed any byte chunks, get complete Mode-S frames back.

    The buffer never holds more than one partial frame (``MAX_FRAME_BYTES``), whatever the peer
    sends. Bytes outside frames are counted as garbage and skipped until the next marker.
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
        buf = self._buf + data if self._buf else bytes(data)
        out: list[tuple[int, bytes]] = []
        append = out.append
        find = buf.find
        from_bytes = int.from_bytes
        body_lens = _BODY_LEN_BY_TYPE
        clean_run, clean_frames = _CLEAN_RUN.match, _CLEAN_FRAME.findall
        n = len(buf)
        pos = 0
        start = find(b"\x1a")
        while True:
            if start < 0:
                self.garbage_bytes += n - pos
                pos = n
                break
            if start > pos:
                self.garbage_bytes += start - pos
            run = clean_run(buf, start)
            if run is not None:
                pos = run.end()
                out += [(from_bytes(c2 or c3, "big"), m2 or m3)
                        for c2, m2, c3, m3 in clean_frames(buf, start, pos)]
                start = find(b"\x1a", pos)
                continue
            if start + 1 >= n:
                pos = start
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
                    self.garbage_bytes += 2 if kind == 0x1A else 1
                    pos = start + (2 if kind == 0x1A else 1)
                start = find(b"\x1a", pos)
                continue
            end = start + 2 + body_len
            body = buf[start + 2:end]
            if b"\x1a" in body or end > n:
                body, end = self._unescape(buf, start + 2, body_len)
                if body is None:
                    if end < 0:            # incomplete: wait for more bytes
                        pos = start
                        break
                    self.truncated += 1    # a new frame began inside this one
                    pos = end
                    start = find(b"\x1a", pos)
                    continue
            pos = end
            start = find(b"\x1a", pos)
            if kind == 0x31:
                self.modeac += 1
                continue
            append((from_bytes(body[:6], "big"), body[7:]))
        rest = buf[pos:]
        if len(rest) > MAX_FRAME_BYTES:    # cannot happen for a partial frame; stay bounded
            self.garbage_bytes += len(rest)
            rest = b""
        self._buf = rest
        self.frames += len(out)
        return out

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

    def stamp(self, frames: list[tuple[int, bytes]]) -> list[tuple[float, bytes]]:
        """``(seconds(counter), message)`` for each frame, in order: the same values as calling
        ``seconds()`` frame by frame, in one expression per frame when no wrap can occur."""
        limit = COUNTER_MOD - self._NEAR
        if not frames or self._last > limit or max(frames)[0] > limit:
            seconds = self.seconds
            return [(seconds(counter), msg) for counter, msg in frames]
        # Every counter, and the one before the first, is before the last hour of the counter
        # range: seconds() would count no wrap.
        anchor, offset = self.anchor, self._wraps * COUNTER_MOD
        self._last = frames[-1][0]
        return [(anchor + (counter + offset) / COUNTER_HZ, msg) for counter, msg in frames]
