"""Receiver adapter: bytes -> frames (Beast, AVR, SBS) -> pyModeS -> positions -> PostgreSQL."""
