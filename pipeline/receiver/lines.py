"""Incremental splitting of a text stream into lines, with a bound on line length."""

from __future__ import annotations

from typing import Any


class LineSplitter:
    """Feed byte chunks, get complete lines (without the line break) back.

    A line longer than ``max_line`` bytes is not a line of the expected format: it is dropped
    (counted in ``overlong``) so that a peer that never sends a newline cannot grow memory.
    """

    __slots__ = ("_rest", "max_line", "overlong", "dropped_bytes")

    def __init__(self, max_line: int) -> None:
        self._rest = b""
        self.max_line = max_line
        self.overlong = 0
        self.dropped_bytes = 0

    def reset(self) -> None:
        self.dropped_bytes += len(self._rest)
        self._rest = b""

    def feed(self, data: bytes) -> list[bytes]:
        buf = self._rest + data if self._rest else bytes(data)
        lines = buf.split(b"\n")
        rest = lines.pop()
        if len(rest) > self.max_line:
            self.overlong += 1
            self.dropped_bytes += len(rest)
            rest = b""
        self._rest = rest
        return lines

    def finish(self) -> list[bytes]:
        """The last line of a stream that does not end with a newline."""
        rest, self._rest = self._rest, b""
        return [rest] if rest.strip() else []


class LineParser:
    """Base of the line-oriented parsers (AVR, SBS): framing into lines and its counters;
    subclasses turn lines into items in ``_parse``."""

    __slots__ = ("_lines", "frames", "bad_lines")
    max_line = 512

    def __init__(self) -> None:
        self._lines = LineSplitter(self.max_line)
        self.frames = 0          # items returned
        self.bad_lines = 0       # lines with missing or malformed fields

    @property
    def garbage_bytes(self) -> int:
        return self._lines.dropped_bytes

    @property
    def truncated(self) -> int:
        return self._lines.overlong

    def reset(self) -> None:
        self._lines.reset()

    def feed(self, data: bytes) -> list[Any]:
        return self._parse(self._lines.feed(data))

    def finish(self) -> list[Any]:
        return self._parse(self._lines.finish())

    def _parse(self, lines: list[bytes]) -> list[Any]:
        raise NotImplementedError
