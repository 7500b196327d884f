"""Spoofing and floods: ADS-B is unauthenticated, so anyone can send frames of invented aircraft
or of real aircraft somewhere they are not. A flood of invented addresses must not grow the
ingest's memory, fill the flights table with trainable flights or reach the trainer; positions
that jump farther than any aircraft flies must be rejected and counted, and the real aircraft
whose address is abused must keep every one of its positions and its flight.

The frames are encoded with the simulator's ADS-B encoder and go through the real live ingest
(TCP Beast server, 12 MHz counter clock, PostgreSQL) and the real flight cutter.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
import random
import threading
import time

import numpy as np
import pytest
import sqlalchemy as sa
from prometheus_client import CollectorRegistry, generate_latest

from conftest import PARIS_LAT, PARIS_LON, PARIS_RANGE_KM
from helpers_positions import UTC, copy_positions, track
from pipeline.evaluation import simulate
from pipeline.flights import segment, store
from pipeline.receiver import decode
from pipeline.receiver.beast import COUNTER_HZ, encode_frame
from pipeline.receiver.ingest import IngestStats, ingest_file, run_live, status_line
from pipeline.service.beast_server import BeastServer
from pipeline.service.metrics import IngestCollector

N_GHOSTS = 10_000
GHOST_FRAMES = 6            # a handful of position frames each, one a second
REAL = "3c6444"


def real_flight(seconds: int = 300, icao24: str = REAL, seed: int = 1) -> simulate.SimFlight:
    """A simulated airliner crossing the Paris receiver's range, cut to ``seconds``."""
    rng = np.random.default_rng(seed)
    f = simulate.make_flight("transit", icao24, 0.0, simulate.Corridors.for_range(PARIS_RANGE_KM),
                             rng, PARIS_LAT, PARIS_LON)
    n = slice(0, seconds)
    return simulate.SimFlight(f.icao24, f.callsign, f.kind, 0, f.t[n], f.lat[n], f.lon[n],
                              f.alt[n], f.gs[n], f.track[n], f.vrate[n])


def ghost_messages(n: int, seed: int = 7) -> list[tuple[float, bytes]]:
    """Position frames of ``n`` invented aircraft (random addresses), each seen a handful of
    times flying straight at 450 kt somewhere within 100 km of the receiver, within 200 s."""
    rng = np.random.default_rng(seed)
    addresses = rng.choice(1 << 24, size=n + 1, replace=False)
    addresses = addresses[addresses != int(REAL, 16)][:n]
    out = []
    cos_ref = math.cos(math.radians(PARIS_LAT))
    for addr in addresses.tolist():
        t0, r, a = rng.uniform(0, 200), rng.uniform(0, 100), rng.uniform(0, 2 * math.pi)
        heading, alt = rng.uniform(0, 2 * math.pi), float(rng.integers(100, 400) * 100)
        for k in range(GHOST_FRAMES):
            x = r * math.sin(a) + 0.23 * k * math.sin(heading)      # km, 0.23 km/s = 450 kt
            y = r * math.cos(a) + 0.23 * k * math.cos(heading)
            out.append((t0 + k, simulate.position_message(
                f"{addr:06x}", PARIS_LAT + y / 111.2, PARIS_LON + x / (111.2 * cos_ref), alt,
                odd=bool(k % 2))))
    return out


def beast(messages: list[tuple[float, bytes]]) -> list[tuple[float, bytes]]:
    """(time, Beast frame) in time order, the 12 MHz counter counting from 0 s."""
    return [(t, encode_frame(m, int(round(t * COUNTER_HZ)), signal=160))
            for t, m in sorted(messages, key=lambda tm: tm[0])]


def serve_live(settings, frames: list[tuple[float, bytes]], on_start=None) -> IngestStats:
    """Serve ``frames`` over TCP as a receiver would and run the live ingest until all are
    decoded and written."""
    server = BeastServer(frames, speed=None, chunk_frames=500).start()
    live = settings.replace(receiver_host="127.0.0.1", receiver_port=server.port,
                            receiver_format="beast", receiver_clock="counter",
                            receiver_timeout_s=5.0)
    stop, stats = threading.Event(), IngestStats("beast")
    worker = threading.Thread(target=run_live, args=(live, stop),
                              kwargs={"stats": stats, "on_start": on_start})
    worker.start()
    try:
        deadline = time.monotonic() + 120
        while stats.bytes < sum(len(f) for _, f in frames) and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        stop.set()
        worker.join(60)
        server.stop()
    assert not worker.is_alive()
    assert stats.frames == len(frames)
    return stats


def prometheus_text(stats: IngestStats) -> str:
    registry = CollectorRegistry()
    registry.register(IngestCollector(lambda: stats))
    return generate_latest(registry).decode()


def trainable(engine) -> list[tuple]:
    """Flights the trainer and the scorer read: finished, with an image."""
    with engine.connect() as conn:
        return conn.execute(sa.text(
            "SELECT icao24, n_positions FROM flights "
            "WHERE state = 'finished' AND image IS NOT NULL ORDER BY icao24")).all()


@pytest.mark.slow
def test_a_flood_of_invented_aircraft_stays_bounded_and_never_reaches_training(
        settings, engine, caplog):
    real = real_flight()
    frames = beast(ghost_messages(N_GHOSTS) + list(simulate.messages(real)))
    peak = {"aircraft": 0, "cache": 0}

    def measure(stats: IngestStats) -> None:
        decoder = stats.decoder
        assert decoder is not None
        feed = decoder.feed

        def feed_and_measure(times, messages):
            feed(times, messages)
            peak["aircraft"] = max(peak["aircraft"], decoder.aircraft_active)
            peak["cache"] = max(peak["cache"], decoder.pipe.largest_cache())

        decoder.feed = feed_and_measure      # type: ignore[method-assign]

    with caplog.at_level(logging.WARNING, logger="pipeline.receiver.decode"):
        stats = serve_live(settings, frames, on_start=measure)

    # Memory: per-aircraft state never held more than the bound, here and in PipeDecoder.
    assert 0 < peak["aircraft"] <= decode.MAX_AIRCRAFT < N_GHOSTS
    assert peak["cache"] <= decode.MAX_AIRCRAFT
    assert stats.aircraft_evicted >= N_GHOSTS + 1 - decode.MAX_AIRCRAFT
    assert stats.aircraft_tracked <= decode.MAX_AIRCRAFT
    # Every address with a stored position is counted (in a fixed-size bitmap), nearly every
    # invented one among them (a few pairs straddle a CPR zone boundary and give no position).
    with engine.connect() as conn:
        addresses = conn.execute(sa.text("SELECT count(DISTINCT icao24) FROM positions")).scalar()
    assert stats.aircraft_seen == addresses > 0.99 * N_GHOSTS
    # One warning however many evictions (at most one a minute), and the status line says so.
    evictions = [r for r in caplog.records if "forgot" in r.getMessage()]
    assert len(evictions) == 1, [r.getMessage() for r in evictions]
    line = status_line(stats, 60.0, None)
    assert f"aircraft evicted {stats.aircraft_evicted}" in line
    exported = prometheus_text(stats)
    assert f"adsb_ingest_aircraft_evicted_total {float(stats.aircraft_evicted)}" in exported
    assert "# TYPE adsb_ingest_aircraft_tracked gauge" in exported

    # Nothing accepted was dropped: the ghosts' positions are stored like any other ...
    assert stats.rows_written == stats.positions > N_GHOSTS * 3
    res = store.process_flights(engine, settings, final=True)
    assert res.closed == res.created == addresses
    # ... but a handful of positions is never a flight the model sees: only the real aircraft's
    # flight has an image, so only it is scored and trained on.
    assert res.undrawn == addresses - 1
    [(icao24, n_positions)] = trainable(engine)
    assert icao24 == REAL and n_positions >= len(real.t) - 3


def test_short_flights_are_kept_but_never_drawn(engine, settings, monkeypatch):
    monkeypatch.setattr(store, "COMMIT_MARGIN", dt.timedelta(0))
    t0 = dt.datetime(2021, 10, 7, 12, 0, tzinfo=UTC)
    need_n, need_s = segment.MIN_DRAWN_POSITIONS, segment.MIN_DRAWN_S
    copy_positions(engine,
                   track("aaaaa1", t0, 5)                                   # a ghost's handful
                   + track("aaaaa2", t0, need_n - 1, step_s=2 * need_s / need_n)  # long, sparse
                   + track("aaaaa3", t0, need_n, step_s=(need_s - 1) / (need_n - 1))  # short
                   + track("aaaaa4", t0, need_n, step_s=(need_s + 1) / (need_n - 1)))  # enough
    res = store.process_flights(engine, settings, final=True)
    with engine.connect() as conn:
        got = {r.icao24: r for r in conn.execute(sa.text(
            "SELECT icao24, state, image IS NOT NULL AS drawn, n_positions, path_km "
            "FROM flights"))}
    assert res.closed == 4 and res.undrawn == 3
    assert {a: f.drawn for a, f in got.items()} == {
        "aaaaa1": False, "aaaaa2": False, "aaaaa3": False, "aaaaa4": True}
    # Kept, finished, with their summary: SQL users still see them.
    assert all(f.state == "finished" and f.path_km > 0 for f in got.values())
    assert got["aaaaa1"].n_positions == 5
    assert trainable(engine) == [("aaaaa4", need_n)]


def teleports(real: simulate.SimFlight) -> list[tuple[float, bytes]]:
    """Frames under the real aircraft's address, at its altitude (so the altitude check does
    not catch them): every 2 s from 100 km east of the receiver, and every 5 s from New York."""
    out = []
    alt = lambda t: float(np.interp(t, real.t, real.alt))  # noqa: E731
    for k, t in enumerate(np.arange(real.t[0] + 30, real.t[-1], 2.0).tolist()):
        out.append((t + 0.5, simulate.position_message(
            real.icao24, PARIS_LAT + 0.3, PARIS_LON + 1.35 + k * 0.001, alt(t + 0.5),
            odd=bool(k % 2))))
    for k, t in enumerate(np.arange(real.t[0] + 10, real.t[-1], 5.0).tolist()):
        out.append((t + 0.7, simulate.position_message(
            real.icao24, 40.71, -74.0 + k * 0.001, alt(t + 0.7), odd=bool(k % 2))))
    return out


def replay(settings, tmp_path, frames: list[tuple[float, bytes]], name: str) -> IngestStats:
    path = tmp_path / name
    path.write_bytes(b"".join(f for _, f in frames))
    return ingest_file(settings, path, "beast", "2021-10-07T12:00:01Z", progress=False)


def flight_rows(url: str, icao24: str) -> tuple[list[tuple], list[tuple]]:
    eng = sa.create_engine(url)
    try:
        with eng.connect() as conn:
            positions = conn.execute(sa.text(
                "SELECT time, latitude, longitude, altitude FROM positions WHERE icao24 = :a "
                "ORDER BY time"), {"a": icao24}).all()
            flights = conn.execute(sa.text(
                "SELECT first_seen, last_seen, n_positions, image FROM flights "
                "WHERE icao24 = :a"), {"a": icao24}).all()
    finally:
        eng.dispose()
    return positions, flights


def test_teleporting_positions_are_rejected_and_the_real_flight_stays_intact(
        settings, databases, tmp_path):
    real = real_flight(900)
    others = [real_flight(900, f"3c65{i:02x}", seed=10 + i) for i in range(2)]
    clean = [m for f in [real, *others] for m in simulate.messages(f)]
    spoofed = teleports(real)
    clean_db, spoofed_db = databases.create(), databases.create()
    replay(settings.replace(database_url=clean_db), tmp_path, beast(clean), "clean.beast")
    stats = replay(settings.replace(database_url=spoofed_db), tmp_path, beast(clean + spoofed),
                   "spoofed.beast")
    for url in (clean_db, spoofed_db):
        eng = sa.create_engine(url)
        store.process_flights(eng, settings.replace(database_url=url), final=True)
        eng.dispose()

    # Each false frame is one rejected position: from the real aircraft's last positions it
    # implies far more than 1,500 kt (New York too: the motion check comes before the range).
    assert (stats.rejected_speed, stats.rejected_range) == (len(spoofed), 0), stats.as_dict()
    want_positions, want_flights = flight_rows(clean_db, real.icao24)
    got_positions, got_flights = flight_rows(spoofed_db, real.icao24)
    # The real aircraft keeps every position (false frames paired with its own are decoded
    # from its own track instead of erasing them) and nothing else is stored under its address.
    assert len(want_positions) >= len(real.t) - 3
    assert got_positions == want_positions
    # Its flight is the same single flight, with the same image.
    assert len(want_flights) == 1 and got_flights == want_flights
    assert want_flights[0].image is not None


def test_the_decoder_forgets_the_least_recently_seen_beyond_its_bound(caplog):
    """With a bound of 50: a real aircraft that keeps sending is never forgotten while 500
    invented ones come and go; Mode-S replies from invented addresses (DF4/DF20 carry no
    address, only a parity from which one is derived) only fill PipeDecoder's cache, which is
    trimmed back."""
    decoder = decode.PositionDecoder(PARIS_LAT, PARIS_LON, PARIS_RANGE_KM, max_aircraft=50)
    real = real_flight(120)
    messages = list(simulate.messages(real))
    rng = random.Random(3)
    for i in range(500):
        t = i * 0.2
        messages.append((t + 0.05, simulate.position_message(
            f"{0xE00000 + i:06x}", PARIS_LAT + 0.1, PARIS_LON, 30000, odd=bool(i % 2))))
        df4 = (4 << 51) | (0x0318 << 32) | rng.getrandbits(24)          # random parity
        df20 = (20 << 107) | (0x0318 << 88) | (rng.getrandbits(56) << 24) | rng.getrandbits(24)
        messages += [(t + 0.1, df4.to_bytes(7, "big")), (t + 0.15, df20.to_bytes(14, "big"))]
    messages.sort(key=lambda tm: tm[0])
    with caplog.at_level(logging.WARNING, logger="pipeline.receiver.decode"):
        for i in range(0, len(messages), 100):
            part = messages[i:i + 100]
            decoder.feed([t for t, _ in part], [m.hex() for _, m in part])
            decoder.take()
            assert decoder.aircraft_active <= 50 and decoder.pipe.largest_cache() <= 50
            assert real.icao24.upper() in decoder._aircraft
    # 450 invented DF17 addresses beyond the bound, and about 1,000 derived from DF4/DF20
    # parities (all but the last call's, which stay under the bound).
    assert decoder.counters.aircraft_evicted >= 450 + 1000 - 50
    assert len([r for r in caplog.records if "forgot" in r.getMessage()]) == 1
    # The real aircraft kept its state throughout: it gets exactly the positions it gets alone.
    alone = decode.PositionDecoder(PARIS_LAT, PARIS_LON, PARIS_RANGE_KM, max_aircraft=50)
    mine = [(t, m.hex()) for t, m in sorted(simulate.messages(real), key=lambda tm: tm[0])]
    alone.feed([t for t, _ in mine], [m for _, m in mine])
    alone.take()
    assert decoder.counters.positions == alone.counters.positions >= len(real.t) - 3


def test_the_address_set_counts_exactly_in_fixed_memory():
    seen = decode.AddressSet()
    size = len(seen._bits)
    for icao in ("000000", "ffffff", "3c6444", "3C6444", "abcdef", "000000"):
        seen.add(icao)
    assert len(seen) == 4 and "3c6444" in seen and "3c6445" not in seen
    for i in range(0, 1 << 24, 997):
        seen.add(f"{i:06x}")
    assert len(seen) == len({f"{i:06x}" for i in range(0, 1 << 24, 997)} | {
        "ffffff", "3c6444", "abcdef"}) and len(seen._bits) == size == 1 << 21
