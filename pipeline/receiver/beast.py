"""Mode-S Beast binary format (dump1090/readsb port 30005).

``0x1a TYPE COUNTER(6) SIGNAL(1) MESSAGE``: TYPE '1' Mode A/C (2 bytes), '2' Mode-S short
(7 bytes), '3' Mode-S long (14 bytes); every 0x1a inside COUNTER, SIGNAL or MESSAGE is sent
twice. COUNTER is a 48-bit big-endian 12 MHz clock.
"""

from __future__ import annotations

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
