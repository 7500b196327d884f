"""Raw AVR text format (dump1090/readsb port 30002).

``*HEX;`` is a message without a time stamp; ``@`` + 12 hex digits (the 48-bit 12 MHz counter)
+ HEX + ``;`` carries one; ``<`` + 12 hex digits + 2 hex digits (signal) + HEX + ``;`` is the
same with a signal level. HEX is 4 (Mode A/C, skipped), 14 or 28 hex digits.
"""

from __future__ import annotations

from pipeline.receiver.lines import LineParser

_MAX_LINE = 64
_MSG_LEN = (7, 14)      # bytes


class AvrParser(LineParser):
    """Incremental AVR parser: feed byte chunks, get (counter or None, raw message) back."""

    __slots__ = ("modeac",)
    max_line = _MAX_LINE

    def __init__(self) -> None:
        super().__init__()
        self.modeac = 0

    def _parse(self, lines: list[bytes]) -> list[tuple[int | None, bytes]]:
        out: list[tuple[int | None, bytes]] = []
        for raw in lines:
            line = raw.strip()
            if not line:
                continue
            frame = self._frame(line)
            if frame is not None:
                out.append(frame)
        self.frames += len(out)
        return out

    def _frame(self, line: bytes) -> tuple[int | None, bytes] | None:
        lead = line[:1]
        if line[-1:] != b";" or lead not in (b"*", b"@", b"<"):
            self.bad_lines += 1
            return None
        try:
            raw = bytes.fromhex(line[1:-1].decode("ascii"))
        except (ValueError, UnicodeDecodeError):
            self.bad_lines += 1
            return None
        counter = None
        if lead != b"*":
            counter = int.from_bytes(raw[:6], "big")
            raw = raw[6:] if lead == b"@" else raw[7:]
        if len(raw) not in _MSG_LEN:
            if len(raw) == 2:
                self.modeac += 1
            else:
                self.bad_lines += 1
            return None
        msg = raw
        return counter, msg


def format_frame(msg: bytes, counter: int | None = None) -> str:
    """One AVR line (without newline) for a raw message, timestamped when ``counter`` is given."""
    if counter is None:
        return f"*{msg.hex().upper()};"
    return f"@{counter:012X}{msg.hex().upper()};"
