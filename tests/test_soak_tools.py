"""The soak benchmark's own pieces (bench/_soak_tools.py): the receiver's accounting of what it
sent, the sent-versus-stored comparison, the /proc sampler and the fault schedule. The bench
itself runs for half an hour and is not part of the suite; these keep it from rotting."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

from _soak_tools import (  # noqa: E402
    DAY_S,
    Accounting,
    FaultSchedule,
    Series,
    SoakReceiver,
    children,
    flag_summary,
    frames,
    is_position,
    parse_metrics,
    proc_sample,
)
from pipeline.evaluation import simulate  # noqa: E402
from pipeline.receiver.beast import BeastParser  # noqa: E402


def _read_all(port: int, until_closed: bool = True, timeout: float = 10.0) -> bytes:
    data = b""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.settimeout(1.0)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                chunk = s.recv(65536)
            except socket.timeout:
                if not until_closed:
                    break
                continue
            if not chunk:
                break
            data += chunk
    return data


def _position_keys(data: bytes) -> list[str]:
    _, messages = BeastParser().feed_hex(data)
    return [m[2:8].lower() for m in messages if is_position(bytes.fromhex(m))]


def test_receiver_counts_exactly_the_positions_it_sent_and_skips_while_silent():
    flights = simulate.generate(4, 0, seed=3, duration_s=60.0)
    total = sum(len(f.t) for f in flights)
    rx = SoakReceiver(frames(flights, 1_000_000.0), start_unix=1_000_000.0, speed=None,
                      chunk_frames=50).start()
    try:
        first = _read_all(rx.port, until_closed=False, timeout=3.0)
        assert rx.finished.is_set()
        got = _position_keys(first)
        assert len(got) == sum(rx.sent.values()) == total
        assert {k[0] for k in rx.sent} == {f.icao24 for f in flights}
        assert all(day == 0 for _, day in rx.sent)
    finally:
        rx.stop()


def test_silence_closes_the_port_and_skips_that_traffic():
    flights = simulate.generate(3, 0, seed=4, duration_s=30.0)
    rx = SoakReceiver(frames(flights, 0.0), start_unix=0.0, speed=500.0, chunk_frames=20).start()
    try:
        with socket.create_connection(("127.0.0.1", rx.port), timeout=5) as s:
            s.settimeout(5)
            received = s.recv(4096)
            rx.silence(wall_s=1.0, drop_s=120.0)
            while chunk := s.recv(65536):        # the receiver hangs up
                received += chunk
        time.sleep(0.2)                          # the listening socket closes just after
        with pytest.raises(OSError):             # and refuses while it is down
            socket.create_connection(("127.0.0.1", rx.port), timeout=0.3).close()
        time.sleep(1.5)
        received += _read_all(rx.port, until_closed=False, timeout=15.0)
        assert rx.finished.is_set()
        sent, skipped = sum(rx.sent.values()), sum(rx.skipped.values())
        silence = rx.silences[0]
        # The silence's own traffic, then what went out while the client waited to reconnect.
        assert silence["positions_skipped"] > 0 and silence["reconnect_wait_s"] >= 0.2
        assert skipped == (silence["positions_skipped"]
                           + silence["positions_skipped_before_reconnect"])
        assert sent + skipped == sum(len(f.t) for f in flights)
        assert len(_position_keys(received)) == sent       # what was counted is what arrived
    finally:
        rx.stop()


def test_accounting_finds_lost_extra_and_duplicated_positions():
    acc = Accounting(sent={("aaaaaa", 0): 10, ("bbbbbb", 0): 5, ("cccccc", 1): 7})
    acc.record_day(0, [("aaaaaa", 10, 10), ("bbbbbb", 6, 4), ("dddddd", 2, 2)])
    acc.record_day(1, [("cccccc", 7, 7)])
    s0 = acc.summary([0])
    assert s0 == {"sent": 15, "stored": 18, "lost": 1, "extra": 2, "duplicated": 2,
                  "aircraft_short": 1}
    assert acc.summary([1])["lost"] == 0 and acc.summary([0, 1])["sent"] == 22
    # A day counted again replaces its earlier count (a journal loaded later).
    acc.record_day(0, [("aaaaaa", 10, 10), ("bbbbbb", 5, 5)])
    assert acc.summary([0])["lost"] == 0 and acc.summary([0])["extra"] == 0


def test_proc_sampler_sees_memory_growth_cpu_and_children():
    code = ("import time\nx = bytearray(200 * 2**20)\nfor i in range(0, len(x), 4096): x[i] = 1\n"
            "t = time.process_time()\nwhile time.process_time() - t < 0.5: pass\n"
            "time.sleep(30)\n")
    p = subprocess.Popen([sys.executable, "-c", code])
    try:
        deadline = time.monotonic() + 20
        sample = proc_sample(p.pid)
        while sample and (sample[0] < 200 * 2**20 or sample[1] < 0.5) \
                and time.monotonic() < deadline:
            time.sleep(0.1)
            sample = proc_sample(p.pid)
        assert sample is not None and sample[0] >= 200 * 2**20 and sample[1] >= 0.5
        assert p.pid in children(os.getpid())
    finally:
        p.kill()
        p.wait()
    assert proc_sample(p.pid) is None


def test_series_growth_after_the_first_day():
    s = Series()
    for h in range(0, 72):                       # 3 days, 100 MiB then 105 MiB then 108 MiB
        rss = (100 if h < 24 else 105 if h < 48 else 108) * 2**20
        s.add(h * 3600.0 + 1800, 1, (rss, h))
    assert s.rss_at_end_of_day(0) == 100 * 2**20
    assert s.growth_after_day1(2) == pytest.approx(0.08)
    s.add(80 * 3600.0, 2, (1, 5.0))              # a restarted process adds its own CPU
    assert s.cpu_s == 71 + 5.0


def test_fault_schedule_hands_out_each_fault_once_in_order():
    sched = FaultSchedule([("b", 2.5), ("a", 1.0), ("c", 6.0)])
    assert sched.due(0.5 * DAY_S) == []
    assert [f.name for f in sched.due(3 * DAY_S)] == ["a", "b"]
    assert sched.due(3 * DAY_S) == [] and sched.pending() == ["c"]
    assert [f.name for f in sched.due(7 * DAY_S)] == ["c"]


def test_parse_metrics_reads_counters_and_gauges():
    text = ("# HELP adsb_ingest_rows_written_total ingest rows written\n"
            "adsb_ingest_rows_written_total 1234.0\nadsb_ingest_write_lag_s 0.5\n"
            "adsb_ingest_journal_errors_total 2.0\nadsb_database_up 1.0\n")
    assert parse_metrics(text) == {"rows_written": 1234.0, "write_lag_s": 0.5,
                                   "journal_errors": 2.0}


def test_flag_summary_counts_each_day_against_the_simulated_truth():
    flights = simulate.generate_days(2, 40, seed=3)
    conditions = simulate.day_conditions(2, seed=3)
    ordinary = [f for f in flights if not f.label]
    odd = [f for f in flights if f.label]
    assert odd, "the simulation has no anomaly to count"
    rows = [(f.icao24, 1, i % 4 == 0) for i, f in enumerate(ordinary)]
    rows += [(f.icao24, 2, True) for f in odd] + [("ffffff", 1, True)]   # not simulated
    days = flag_summary(rows, flights, conditions)
    assert [d["scored"] for d in days] == [sum(f.day == d for f in flights) for d in (0, 1)]
    assert sum(d["ordinary_flagged"] for d in days) == (len(ordinary) + 3) // 4
    assert sum(d["anomalies_flagged"] for d in days) == sum(d["anomalies"] for d in days) \
        == len(odd)
    assert {m for d in days for m in d["models"]} == {1, 2}
    assert [d["runways_flipped"] for d in days] == [list(c.runway_flipped) for c in conditions]
    # With the traffic change of each flag and the alerts sent.
    rows = [(f.icao24, 1, True, 7 if i % 2 else None) for i, f in enumerate(ordinary)]
    alerts = [(f.icao24, "flag") for i, f in enumerate(ordinary) if not i % 2]
    alerts += [(ordinary[1].icao24, "traffic_change"), (odd[0].icao24, "flag"),
               (ordinary[0].icao24, "withdrawn")]
    days = flag_summary(rows, flights, conditions, alerts)
    assert sum(d["ordinary_in_change"] for d in days) == len(ordinary) // 2
    assert sum(d["alerts_ordinary"] for d in days) == (len(ordinary) + 1) // 2
    assert sum(d["alerts_change"] for d in days) == 1
    assert days[ordinary[1].day]["alerts_change"] == 1
    assert sum(d["alerts_anomalies"] for d in days) == 1
    assert sum(d["withdrawn_ordinary"] for d in days) == 1
    assert days[ordinary[0].day]["withdrawn_ordinary"] == 1
    assert sum(d["withdrawn_anomalies"] for d in days) == 0
