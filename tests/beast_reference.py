"""Beast framing read one marker at a time: the reference the vectorised ``BeastParser`` must
match frame for frame and counter for counter."""

from __future__ import annotations

from pipeline.receiver.beast import _BODY_LEN_BY_TYPE, MAX_FRAME_BYTES, BeastParser


class SequentialBeastParser:
    def __init__(self) -> None:
        self._buf = b""
        self.frames = self.modeac = self.status = self.truncated = self.garbage_bytes = 0

    def feed(self, data: bytes) -> list[tuple[int, bytes]]:
        buf = self._buf + data
        out = []
        n, pos = len(buf), 0
        start = buf.find(b"\x1a")
        while True:
            if start < 0:
                self.garbage_bytes += n - pos
                pos = n
                break
            self.garbage_bytes += start - pos
            if start + 1 >= n:
                pos = start
                break
            kind = buf[start + 1]
            body_len = _BODY_LEN_BY_TYPE[kind]
            if not body_len:
                if kind == 0x34:
                    self.status += 1
                    pos = start + 2
                else:
                    self.garbage_bytes += 2 if kind == 0x1A else 1
                    pos = start + (2 if kind == 0x1A else 1)
            else:
                body, end = BeastParser._unescape(buf, start + 2, body_len)
                if body is None and end < 0:
                    pos = start
                    break
                pos = end
                if body is None:
                    self.truncated += 1
                elif kind == 0x31:
                    self.modeac += 1
                else:
                    out.append((int.from_bytes(body[:6], "big"), body[7:]))
            start = buf.find(b"\x1a", pos)
        rest = buf[pos:]
        if len(rest) > MAX_FRAME_BYTES:
            self.garbage_bytes += len(rest)
            rest = b""
        self._buf = rest
        self.frames += len(out)
        return out
