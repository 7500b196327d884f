"""Alerts on new flags: outbox and NOTIFY in the flag's transaction, delivery to a real webhook
receiver and a real Mosquitto broker, retries with backoff, give-up, and scoring never waiting
for an endpoint."""

from __future__ import annotations

import json
import random
import re
import select
import socket
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import paho.mqtt.client as mqtt
import psycopg2
import pytest
import sqlalchemy as sa
import yaml

import helpers_flights as hf
from pipeline.alerts import delivery, message, outbox, sinks
from pipeline.db.engine import plain_url
from pipeline.model import score, train
from pipeline.service.metrics import DatabaseCollector
from pipeline.service.scheduler import ALERT_TICK_S, Worker, build_scheduler

pytestmark = pytest.mark.slow

N_FLAGGED = 5
DOC = Path(__file__).resolve().parents[1] / "docs" / "alerts.md"
MQTT_HOST, MQTT_PORT = "127.0.0.1", 1883


# ---- a database whose active model flags exactly N_FLAGGED flights -------------------------------
@pytest.fixture(scope="module")
def trained(databases, tmp_path_factory):
    """Simulated flights and an active (briefly fitted) model whose threshold lies between the
    5th and 6th highest score, so each test knows which flights a scoring pass flags. Nothing
    is scored in the template; each test works on a copy."""
    url, _ = hf.sim_database(databases, n_normal=60, n_anomalies=4)
    data_dir = tmp_path_factory.mktemp("alerts")
    settings = hf.model_settings(url, data_dir, alert_notify_channel="")
    engine = sa.create_engine(url)
    try:
        result = train.run_training(settings, seed=3, verbose=False, engine=engine, plain=True,
                                    arch=hf.tiny_arch(), max_epochs=3)
        with engine.begin() as c:
            # A 3-epoch fit may miss the recall floor; what is tested here is what follows a flag.
            c.execute(sa.text("UPDATE models SET status = 'active' WHERE id = :i"),
                      {"i": result.model_id})
        score._cache.clear()
        assert score.score_pending(engine, settings) == 64
        with engine.begin() as c:
            ranked = c.execute(sa.text("SELECT id, score FROM flights ORDER BY score DESC")).all()
            threshold = (ranked[N_FLAGGED - 1].score + ranked[N_FLAGGED].score) / 2
            c.execute(sa.text("UPDATE models SET threshold = :t"), {"t": threshold})
            c.execute(sa.text("DELETE FROM flight_scores"))
            c.execute(sa.text("UPDATE flights SET score = NULL, threshold = NULL, flagged = NULL, "
                              "model_id = NULL, scored_at = NULL"))
    finally:
        engine.dispose()
        score._cache.clear()
    return url, data_dir, sorted(r.id for r in ranked[:N_FLAGGED])


@pytest.fixture
def db(databases, trained):
    url, data_dir, flagged = trained
    engine = sa.create_engine(hf.copy_database(databases, url))

    def settings(**alerts):
        return hf.model_settings(engine.url.render_as_string(hide_password=False), data_dir,
                                 **alerts)

    yield engine, settings, flagged
    engine.dispose()


def _q(engine, sql, **kw):
    with engine.connect() as c:
        return c.execute(sa.text(sql), kw).all()


def _outbox(engine, sink=None):
    return _q(engine, "SELECT * FROM alert_outbox WHERE :s IS NULL OR sink = :s ORDER BY id",
              s=sink)


# ---- LISTEN ------------------------------------------------------------------------------------
@pytest.fixture
def listener(db):
    engine, _, _ = db
    conn = psycopg2.connect(plain_url(engine.url))
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute("LISTEN adsb_flags")
    yield conn
    conn.close()


def notifications(conn, expect: int | None = None, wait: float = 5.0) -> list[dict]:
    """Payloads received; waits until ``expect`` arrived (or ``wait`` seconds passed)."""
    out: list[dict] = []
    deadline = time.monotonic() + wait
    while True:
        conn.poll()
        while conn.notifies:
            n = conn.notifies.pop(0)
            assert n.channel == "adsb_flags"
            out.append(json.loads(n.payload))
        left = deadline - time.monotonic()
        if (expect is not None and len(out) >= expect) or left <= 0:
            return out
        select.select([conn], [], [], left)


# ---- a webhook receiver --------------------------------------------------------------------------
class Receiver:
    """A tiny HTTP server recording every POST; answers 503 to the first ``fail_first``."""

    def __init__(self, fail_first: int = 0, delay_s: float = 0.0) -> None:
        self.requests: list[tuple[float, int, dict]] = []      # (time, status, body)
        self.fail_first = fail_first
        lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 (http.server API)
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                assert self.headers["Content-Type"] == "application/json"
                time.sleep(delay_s)
                with lock:
                    status = 503 if len(outer.requests) < outer.fail_first else 200
                    outer.requests.append((time.time(), status, body))
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook?token=secret"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def delivered(self) -> list[dict]:
        return [body for _, status, body in self.requests if status == 200]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver():
    made: list[Receiver] = []

    def make(**kw) -> Receiver:
        made.append(Receiver(**kw))
        return made[-1]

    yield make
    for r in made:
        r.close()


def documented(info: str, marker: str = "") -> str:
    """The one fenced block of docs/alerts.md with this info string (containing ``marker``)."""
    blocks = [m.group(2) for m in re.finditer(r"^```([^\n]*)\n(.*?)^```", DOC.read_text(),
                                              re.S | re.M)
              if m.group(1).strip() == info and marker in m.group(2)]
    assert len(blocks) == 1, (info, marker, len(blocks))
    return blocks[0]


def _closed_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


# ---- enqueueing ----------------------------------------------------------------------------------
def test_new_flags_are_queued_per_sink_and_notified_only_on_commit(db, listener):
    engine, settings, flagged = db
    s = settings(alert_webhook_url="http://127.0.0.1:9/hook",
                 alert_mqtt_url=f"mqtt://{MQTT_HOST}:{MQTT_PORT}",
                 public_url="https://adsb.example.org/")
    scorer = score._usable_active(engine, "default")
    # One scoring batch, rolled back: no alert may survive a flag that was not committed.
    with engine.connect() as conn, conn.begin() as tx:
        rows = conn.execute(score._PENDING, {"model": scorer.model.id, "since": None,
                                             "limit": 1000, "rescore": False, "started": None,
                                             "format": scorer.image_format,
                                             "site": "default"}).all()
        ids, images, bad = score._decode(rows, scorer.channels)
        score._score_batch(conn, scorer, ids, images, bad, s)
        assert conn.execute(sa.text("SELECT count(*) FROM alert_outbox")).scalar() == \
            2 * N_FLAGGED
        tx.rollback()
    assert notifications(listener, wait=1.0) == []
    assert _outbox(engine) == []

    assert score.score_pending(engine, s) == 64
    notes = notifications(listener, expect=N_FLAGGED)
    assert sorted(n["flight_id"] for n in notes) == flagged
    queued = _outbox(engine)
    assert sorted((r.flight_id, r.sink) for r in queued) == sorted(
        (f, sink) for f in flagged for sink in ("mqtt", "webhook"))
    assert all(r.attempts == 0 and r.delivered_at is None and r.last_error is None for r in queued)
    # The body is the flag as stored, the same for NOTIFY, webhook and MQTT.
    facts = {r.id: r for r in _q(engine, """
        SELECT f.id, f.icao24, f.callsign, f.first_seen, f.last_seen, f.receiver_id, s.score,
               s.threshold, s.channel, m.version
          FROM flights f JOIN flight_scores s ON s.flight_id = f.id AND s.model_id = f.model_id
          JOIN models m ON m.id = f.model_id WHERE f.flagged""")}
    assert sorted(facts) == flagged
    by_flight = {n["flight_id"]: n for n in notes}
    for r in queued:
        assert r.payload == by_flight[r.flight_id]
    for fid, body in by_flight.items():
        f = facts[fid]
        assert set(body) == {"event", "flight_id", "icao24", "callsign", "first_seen",
                             "last_seen", "score", "threshold", "score_ratio", "channel",
                             "model_version", "scored_at", "receiver", "url"}
        assert body["event"] == "flag" and body["icao24"] == f.icao24
        assert body["callsign"] == f.callsign and body["receiver"] == f.receiver_id == "default"
        assert body["first_seen"] == f.first_seen.isoformat(timespec="seconds").replace(
            "+00:00", "Z")
        assert body["score"] == pytest.approx(f.score, abs=1e-6) and body["score"] > \
            body["threshold"]
        assert body["threshold"] == pytest.approx(f.threshold, abs=1e-6)
        assert body["score_ratio"] == round(f.score / f.threshold, 2) >= 1.0
        assert body["channel"] == f.channel and body["model_version"] == f.version
        assert body["url"] == f"https://adsb.example.org/flights/{fid}"


def test_link_defaults_to_the_web_pages_address(db):
    _, settings, _ = db
    assert message.flight_url(settings(web_host="10.0.0.5", web_port=8760), 42) == \
        "http://10.0.0.5:8760/flights/42"


def test_a_rescore_does_not_alert_again_nor_does_the_next_model(db, listener):
    engine, settings, flagged = db
    s = settings(alert_webhook_url="http://127.0.0.1:9/hook")
    score.score_pending(engine, s)
    assert len(notifications(listener, expect=N_FLAGGED)) == N_FLAGGED
    assert score.score_pending(engine, s, rescore=True) == 64
    # The nightly model: a new active model re-scores the recent flights and flags them again.
    with engine.begin() as conn:
        hf.activate_copy_of_model(conn)
    assert score.score_pending(engine, s) == 64
    assert _q(engine, "SELECT count(*) FROM flight_scores WHERE flagged")[0][0] == 2 * N_FLAGGED
    assert notifications(listener, wait=1.0) == []
    assert sorted(r.flight_id for r in _outbox(engine)) == flagged


def test_a_flight_judged_normal_does_not_alert(db, listener):
    engine, settings, flagged = db
    normal, changed_mind, *_ = flagged
    with engine.begin() as conn:
        conn.execute(sa.text("""
            INSERT INTO flight_labels (flight_id, icao24, verdict, author, created_at)
            SELECT v.f, f.icao24, v.verdict, v.author, v.at FROM (VALUES
              (:a, 'anomalous', 'alice', now() - interval '2 hours'),
              (:a, 'normal', 'bob', now() - interval '1 hour'),
              (:b, 'normal', 'alice', now() - interval '2 hours'),
              (:b, 'anomalous', 'alice', now() - interval '1 hour')) v(f, verdict, author, at)
            JOIN flights f ON f.id = v.f"""),
            {"a": normal, "b": changed_mind})
    s = settings(alert_webhook_url="http://127.0.0.1:9/hook")
    score.score_pending(engine, s)
    alerted = [f for f in flagged if f != normal]
    assert sorted(n["flight_id"] for n in notifications(listener, expect=len(alerted))) == alerted
    assert notifications(listener, wait=0.5) == []
    assert sorted(r.flight_id for r in _outbox(engine)) == alerted
    # Still flagged (the model's opinion is kept), just not listed nor alerted.
    assert _q(engine, "SELECT flagged FROM flights WHERE id = :i", i=normal)[0][0] is True
    listed = _q(engine, "SELECT flight_id, verdict FROM flagged_flights ORDER BY flight_id")
    assert [tuple(r) for r in listed] == [
        (f, "anomalous" if f == changed_mind else None) for f in alerted]


def _new_active_model(conn, threshold: str) -> int:
    """Another model row on the same file, with the given threshold (an SQL expression of the
    first model's), made active: the nightly model, for tests of what its re-score does."""
    conn.execute(sa.text("UPDATE models SET status = 'retired' WHERE status = 'active'"))
    return conn.execute(sa.text(f"""
        INSERT INTO models (version, status, threshold, params, path, sha256, site)
        SELECT version || '-' || (SELECT count(*) FROM models), 'active', {threshold}, params,
               path, sha256, site FROM models ORDER BY id LIMIT 1
        RETURNING id""")).scalar_one()


def test_a_newer_model_that_does_not_confirm_a_flag_withdraws_its_alert(db, listener, receiver):
    """The nightly model re-scores the recent days; a flag it does not confirm leaves
    flagged_flights and the pages, so its alert is withdrawn: deleted where nobody was sent it
    yet, followed by a "withdrawn" message where someone was (or a send failed and will be
    retried: the withdrawal goes after it). A flag that comes back alerts again."""
    engine, settings, flagged = db
    s = settings(alert_webhook_url="http://127.0.0.1:9/hook")
    score.score_pending(engine, s)
    assert len(notifications(listener, expect=N_FLAGGED)) == N_FLAGGED
    # Two sent, one failed (retried in 2 s), one held (an hour), one due and never tried.
    sent, failed, held = flagged[:2], flagged[2], flagged[3]
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE alert_outbox SET delivered_at = now() "
                             "WHERE flight_id = ANY(:f)"), {"f": sent})
        conn.execute(sa.text("""UPDATE alert_outbox SET attempts = 1, last_error = 'HTTP 503',
                                next_attempt_at = now() + interval '2 seconds'
                                WHERE flight_id = :f"""), {"f": failed})
        conn.execute(sa.text("UPDATE alert_outbox SET next_attempt_at = now() + interval "
                             "'1 hour' WHERE flight_id = :f"), {"f": held})
        first = conn.execute(sa.text("SELECT version FROM models WHERE status = 'active'")).scalar()
        nightly = _new_active_model(conn, "1e9")           # flags nothing
    assert score.score_pending(engine, s) == 64
    assert _q(engine, "SELECT count(*) FROM flagged_flights")[0][0] == 0

    rows = _outbox(engine)
    flags = {r.flight_id: r for r in rows if r.payload["event"] == "flag"}
    withdrawn = {r.flight_id: r for r in rows if r.payload["event"] == "withdrawn"}
    assert sorted(flags) == [*sent, failed]                  # never sent: deleted
    assert sorted(withdrawn) == [*sent, failed]
    for f, r in withdrawn.items():
        assert r.model_id == nightly and r.sink == "webhook" and r.delivered_at is None
        assert r.payload["flagged_by_model_version"] == first
        assert r.payload["flight_id"] == f and r.payload["score"] < r.payload["threshold"]
    assert withdrawn[failed].next_attempt_at == flags[failed].next_attempt_at
    assert set(json.loads(documented("json", '"event": "withdrawn"'))) == \
        set(withdrawn[failed].payload)                        # the message docs/alerts.md shows
    notified = notifications(listener, expect=3)
    assert sorted(n["flight_id"] for n in notified) == [*sent, failed]
    assert {n["event"] for n in notified} == {"withdrawn"}

    # Sent as they fall due: the failed flag first, its withdrawal after it.
    hook = receiver()
    d = delivery.Deliverer(settings(alert_webhook_url=hook.url))
    assert d.deliver_due(engine).sent == 2
    time.sleep(2.2)
    assert d.deliver_due(engine).sent == 2
    assert [(b["event"], b["flight_id"]) for b in hook.delivered()] == [
        ("withdrawn", sent[0]), ("withdrawn", sent[1]), ("flag", failed), ("withdrawn", failed)]

    # The same model again: nothing new. A model that flags them again: each alerts anew.
    assert score.score_pending(engine, s, rescore=True) == 64
    assert len(_outbox(engine)) == len(rows) and notifications(listener, wait=0.5) == []
    with engine.begin() as conn:
        again = _new_active_model(conn, "threshold")
    assert score.score_pending(engine, s) == 64
    assert sorted(r.flight_id for r in _outbox(engine) if r.model_id == again) == flagged
    assert sorted(n["flight_id"] for n in notifications(listener, expect=N_FLAGGED)) == flagged


# ---- delivery ------------------------------------------------------------------------------------
def _mqtt_up() -> bool:
    try:
        socket.create_connection((MQTT_HOST, MQTT_PORT), timeout=2).close()
        return True
    except OSError:
        return False


def test_mosquitto_receives_each_flag_once_qos1_not_retained(db):
    if not _mqtt_up():
        pytest.skip(f"no MQTT broker (Mosquitto) listening on {MQTT_HOST}:{MQTT_PORT}")
    engine, settings, flagged = db
    prefix = f"adsb-test-{uuid.uuid4().hex[:8]}/flags"
    s = settings(alert_mqtt_url=f"mqtt://{MQTT_HOST}:{MQTT_PORT}", alert_mqtt_topic=prefix)
    got: list[mqtt.MQTTMessage] = []
    subscribed = threading.Event()
    sub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
    sub.on_subscribe = lambda *a: subscribed.set()
    sub.on_message = lambda _c, _u, msg: got.append(msg)
    sub.connect(MQTT_HOST, MQTT_PORT)
    sub.loop_start()
    try:
        sub.subscribe(f"{prefix}/#", qos=1)
        assert subscribed.wait(5)
        score.score_pending(engine, s)
        worker = Worker(s, engine)
        result = worker.deliver_alerts()                 # the scheduler's job function
        assert (result.sent, result.failed) == (N_FLAGGED, 0)
        deadline = time.monotonic() + 5
        while len(got) < N_FLAGGED and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        sub.disconnect()
        sub.loop_stop()
    rows = {r.flight_id: r for r in _outbox(engine)}
    assert sorted(rows) == flagged and all(r.delivered_at is not None for r in rows.values())
    assert len(got) == N_FLAGGED
    for msg in got:
        assert msg.topic == f"{prefix}/default" and msg.qos == 1 and not msg.retain
        body = json.loads(msg.payload)
        assert body == rows[body["flight_id"]].payload
    # Nothing retained: a subscriber arriving later gets no old flag.
    late: list = []
    sub2 = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
    sub2.on_message = lambda _c, _u, msg: late.append(msg)
    sub2.connect(MQTT_HOST, MQTT_PORT)
    sub2.loop_start()
    sub2.subscribe(f"{prefix}/#", qos=1)
    time.sleep(1.0)
    sub2.disconnect()
    sub2.loop_stop()
    assert late == []
    assert worker.deliver_alerts().sent == 0              # delivered once, not again


def test_webhook_failing_twice_gets_the_body_after_backoff(db, receiver):
    engine, settings, flagged = db
    hook = receiver(fail_first=2)
    s = settings(alert_webhook_url=hook.url)
    score.score_pending(engine, s)
    d = delivery.Deliverer(s, backoff_base_s=0.4, rng=random.Random(7))
    first = min(flagged)
    schedule = []                      # (failures so far, next_attempt_at) after each failure
    deadline = time.monotonic() + 20
    while _q(engine, "SELECT count(*) FROM alert_outbox WHERE delivered_at IS NULL")[0][0]:
        assert time.monotonic() < deadline, hook.requests
        if d.deliver_due(engine).failed:
            row = _q(engine, "SELECT attempts, next_attempt_at, last_error FROM alert_outbox "
                             "WHERE flight_id = :f", f=first)[0]
            schedule.append((row.attempts, row.next_attempt_at.timestamp()))
            assert row.last_error == "HTTP 503 Service Unavailable"
        time.sleep(0.02)
    statuses = [status for _, status, _ in hook.requests]
    # One try per backoff step while the endpoint fails (the other alerts wait behind the
    # oldest), then every alert once.
    assert statuses == [503, 503] + [200] * N_FLAGGED
    assert [b["flight_id"] for _, _, b in hook.requests[:3]] == [first] * 3
    assert [a for a, _ in schedule] == [1, 2]
    for (failures, due), (sent_at, _, _), (next_sent_at, _, _) in zip(
            schedule, hook.requests, hook.requests[1:3]):
        step = 0.4 * 2 ** (failures - 1)
        assert step / 2 - 0.05 <= due - sent_at <= step + 0.05     # backoff with jitter
        assert next_sent_at >= due - 0.01                           # and it was honoured
    rows = {r.flight_id: r for r in _outbox(engine)}
    assert sorted(b["flight_id"] for b in hook.delivered()) == flagged
    for body in hook.delivered():
        assert body == rows[body["flight_id"]].payload
    assert rows[first].attempts == 2 and rows[first].delivered_at is not None
    assert all(rows[f].attempts == 0 for f in flagged if f != first)
    assert d.deliver_due(engine).sent == 0


def test_two_workers_never_send_the_same_alert(db, receiver):
    engine, settings, _ = db
    hook = receiver(delay_s=0.05)
    s = settings(alert_webhook_url=hook.url)
    score.score_pending(engine, s)
    with engine.begin() as conn:          # more alerts than flags: every scored flight
        ids = list(conn.execute(sa.text("SELECT id FROM flights WHERE NOT flagged")).scalars())
        outbox.enqueue(conn, s, conn.execute(sa.text(
            "SELECT id FROM models WHERE status = 'active'")).scalar_one(), ids)
    results: list[delivery.PassResult] = []
    workers = [threading.Thread(target=lambda: results.append(
        delivery.Deliverer(s).deliver_due(engine))) for _ in range(2)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    bodies = [b["flight_id"] for b in hook.delivered()]
    assert len(bodies) == len(set(bodies)) == 64
    assert sum(r.sent for r in results) == 64 and all(r.sent for r in results)
    assert _q(engine, "SELECT count(*) FROM alert_outbox WHERE delivered_at IS NULL")[0][0] == 0


def test_scoring_neither_waits_for_nor_contacts_a_webhook_that_hangs(db, monkeypatch):
    engine, settings, flagged = db
    hang = socket.socket()                         # accepts connections, never answers
    hang.bind(("127.0.0.1", 0))
    hang.listen(8)
    hang.settimeout(0.05)
    accepted: list[socket.socket] = []
    s = settings(alert_webhook_url=f"http://127.0.0.1:{hang.getsockname()[1]}/hook")
    try:
        assert score.score_pending(engine, s) == 64
        with pytest.raises(TimeoutError):
            accepted.append(hang.accept()[0])      # scoring made no connection
        assert len(_outbox(engine)) == N_FLAGGED
        monkeypatch.setattr(sinks, "SEND_TIMEOUT_S", 60.0)
        sender = threading.Thread(target=delivery.Deliverer(s).deliver_due, args=(engine,))
        sender.start()
        hang.settimeout(10)
        accepted.append(hang.accept()[0])          # the delivery job is now stuck in a send
        t0 = time.monotonic()
        assert score.score_pending(engine, s, rescore=True) == 64
        took = time.monotonic() - t0
        assert sender.is_alive(), "the send ended before scoring: nothing was shown"
        assert took < 30
    finally:
        for c in accepted:
            c.close()                              # the stuck send fails now
        hang.close()
    sender.join(10)
    assert not sender.is_alive()
    row = _q(engine, "SELECT attempts, last_error, next_attempt_at > now() AS later "
                     "FROM alert_outbox WHERE flight_id = :f", f=min(flagged))[0]
    assert row.attempts == 1 and row.later and row.last_error


def test_an_alert_past_the_give_up_time_is_given_up_logged_and_counted(db, receiver, caplog):
    engine, settings, flagged = db
    hook = receiver()
    s = settings(alert_webhook_url=hook.url, alert_give_up_hours=24)
    score.score_pending(engine, s)
    old = flagged[2]
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE alert_outbox SET created_at = now() - interval '25 hours', "
                             "attempts = 40, last_error = 'HTTP 502 Bad Gateway' "
                             "WHERE flight_id = :f"), {"f": old})
    caplog.set_level("INFO", logger="pipeline.alerts")
    result = delivery.Deliverer(s).deliver_due(engine)
    assert (result.sent, result.given_up) == (N_FLAGGED - 1, 1)
    assert old not in [b["flight_id"] for b in hook.delivered()]
    row = _q(engine, "SELECT delivered_at, next_attempt_at, last_error FROM alert_outbox "
                     "WHERE flight_id = :f", f=old)[0]
    assert row.delivered_at is None and row.last_error == "given up: HTTP 502 Bad Gateway"
    assert _q(engine, "SELECT next_attempt_at = 'infinity' FROM alert_outbox WHERE flight_id "
                      "= :f", f=old)[0][0]
    gave_up = [r for r in caplog.records if "gave up" in r.message]
    assert len(gave_up) == 1 and gave_up[0].levelname == "ERROR"
    assert f"flights {old}" in gave_up[0].message and "24 h" in gave_up[0].message
    metrics = {(s.name, s.labels.get("sink")): s.value
               for family in DatabaseCollector(engine).collect() for s in family.samples}
    assert metrics[("adsb_alerts_sent_total", "webhook")] == N_FLAGGED - 1
    assert metrics[("adsb_alerts_given_up_total", "webhook")] == 1
    assert metrics[("adsb_alerts_failed_total", "webhook")] == 40
    assert metrics[("adsb_alerts_pending", "webhook")] == 0
    # The documented way to send a given-up alert again.
    with engine.begin() as conn:
        conn.execute(sa.text(documented("sql", "UPDATE alert_outbox")))
    assert delivery.Deliverer(s).deliver_due(engine).sent == 1
    assert [b["flight_id"] for b in hook.delivered()][-1] == old


def test_an_endpoint_that_is_down_is_logged_once_then_its_recovery(db, receiver, caplog):
    engine, settings, flagged = db
    s = settings(alert_webhook_url=f"http://127.0.0.1:{_closed_port()}/hook")
    score.score_pending(engine, s)
    caplog.set_level("INFO")
    d = delivery.Deliverer(s)
    for _ in range(4):
        assert d.deliver_due(engine).failed == 1
        with engine.begin() as conn:                      # the next step of the backoff, now
            conn.execute(sa.text("UPDATE alert_outbox SET next_attempt_at = now()"))
    down = [r for r in caplog.records if r.levelname == "WARNING"]
    assert len(down) == 1 and "is not taking alerts" in down[0].message
    assert "secret" not in caplog.text and "/hook" not in caplog.text   # endpoint only
    assert _q(engine, "SELECT max(attempts) FROM alert_outbox")[0][0] == 4
    waiting = _q(engine, documented("sql", "FROM alert_outbox"))
    assert sorted(r.flight_id for r in waiting) == flagged
    assert waiting[0].attempts == 4 and "Connect" in waiting[0].last_error
    d.settings = settings(alert_webhook_url=receiver().url)
    assert d.deliver_due(engine).sent == N_FLAGGED
    back = [r.message for r in caplog.records if "takes alerts again" in r.message]
    assert len(back) == 1 and "after 4 failed attempts" in back[0]


def test_backoff_doubles_with_jitter_up_to_the_cap():
    rng = random.Random(0)
    for failures in range(1, 12):
        step = min(600.0, 5.0 * 2 ** (failures - 1))
        waits = [delivery.backoff_s(failures, 5.0, 600.0, rng) for _ in range(200)]
        assert step / 2 <= min(waits) and max(waits) <= step
        assert max(waits) - min(waits) > step / 4          # jittered, not one value
    assert delivery.backoff_s(10_000, 5.0, 600.0, rng) <= 600.0


def test_the_worker_schedules_delivery_every_few_seconds(db):
    engine, settings, _ = db
    job = build_scheduler(settings(), engine).get_job("alerts")
    assert job is not None and job.trigger.interval.total_seconds() == ALERT_TICK_S <= 10


def test_documented_message_and_home_assistant_automation_match_what_is_sent(db):
    engine, settings, flagged = db
    example = json.loads(documented("json", '"event": "flag"'))
    s = settings()
    score.score_pending(engine, s)
    with engine.connect() as conn:
        sent = message.bodies(conn, s, conn.execute(sa.text(
            "SELECT id FROM models WHERE status = 'active'")).scalar_one(), flagged[:1])[0]
    assert list(example) == list(sent)
    assert {k: type(v) for k, v in example.items()} == {k: type(v) for k, v in sent.items()}
    table = DOC.read_text().split("| field | meaning |")[1].split("\n\n")[0]
    for key in sent:
        assert f"`{key}`" in table, key
    automation = yaml.safe_load(documented("yaml"))[0]
    assert automation["trigger"][0]["topic"] == f"{s.alert_mqtt_topic}/{sent['receiver']}"
    assert "trigger.payload_json.url" in automation["action"][0]["data"]["data"]["url"]


def test_a_failing_traffic_change_review_keeps_the_scores_and_every_flag_alerts(db, caplog):
    engine, settings, flagged = db
    s = settings(alert_webhook_url="http://127.0.0.1:9/hook")
    with engine.begin() as conn:         # the review's table is gone: every query of it fails
        conn.execute(sa.text("ALTER TABLE traffic_changes RENAME TO traffic_changes_gone"))
    assert score.score_pending(engine, s) == 64
    assert sorted(r.flight_id for r in _outbox(engine)) == flagged
    assert _q(engine, "SELECT count(*) FROM flights WHERE score IS NULL")[0][0] == 0
    assert "traffic changes not reviewed for this batch" in caplog.text


def test_a_held_alert_waits_for_the_data_clock_and_a_change_withdraws_it(db, receiver):
    """Flags carried by where or direction wait ADSB_CHANGE_HOLD_MIN for a traffic change to
    take them in: not sent before, released by the data clock (or the wall clock), withdrawn
    by a change while held, never once released."""
    engine, settings, flagged = db
    hook = receiver()
    s = settings(alert_webhook_url=hook.url, change_hold_min=90)
    score.score_pending(engine, s)
    model_id = _q(engine, "SELECT id FROM models WHERE status = 'active'")[0][0]
    ended = {r.id: r.last_seen for r in _q(engine, "SELECT id, last_seen FROM flights "
                                                   "WHERE id = ANY(:i)", i=flagged)}
    order = sorted(flagged, key=lambda f: (ended[f], f))
    with engine.begin() as conn:           # the same flags, as if carried by where/direction
        conn.execute(sa.text("DELETE FROM alert_outbox"))
        outbox.enqueue(conn, s, model_id, flagged, held=set(flagged))
    due = {r.flight_id: r.next_attempt_at - r.created_at for r in _outbox(engine)}
    assert sorted(due) == flagged
    assert all(89 * 60 <= d.total_seconds() <= 91 * 60 for d in due.values()), due
    d = delivery.Deliverer(s)
    assert d.deliver_due(engine).sent == 0 and hook.requests == []

    # The data clock passes a hold after the first flight only: its alert alone goes.
    with engine.begin() as conn:
        assert outbox.release_held(conn, "default", ended[order[0]]) == 1
    assert d.deliver_due(engine).sent == 1
    assert [b["flight_id"] for b in hook.delivered()] == [order[0]]

    # A traffic change takes in the second (held) and the first (already sent): only the held
    # one is withdrawn; what reached the user stays in the outbox as sent.
    with engine.begin() as conn:
        assert outbox.absorb(conn, [order[0], order[1]]) == 1
    left = {r.flight_id: r for r in _outbox(engine)}
    assert order[1] not in left and left[order[0]].delivered_at is not None
    assert sorted(left) == sorted(set(flagged) - {order[1]})

    # Flags not held (the scorer holds only where/direction ones) are due at once.
    with engine.begin() as conn:
        conn.execute(sa.text("DELETE FROM alert_outbox"))
        outbox.enqueue(conn, s, model_id, flagged)
    assert d.deliver_due(engine).sent == N_FLAGGED


def test_the_data_clock_does_not_release_alerts_waiting_behind_an_endpoint_that_is_down(
        db, receiver):
    """While a sink's endpoint is down its other alerts wait behind the failed one (one try
    per backoff step); passing the data clock over them must not make them due again at every
    scoring batch. Once the endpoint takes alerts again, held ones are released as before."""
    engine, settings, flagged = db
    hook = receiver(fail_first=1)
    s = settings(alert_webhook_url=hook.url, change_hold_min=90, alert_backoff_max_s=3600)
    score.score_pending(engine, s)
    model_id = _q(engine, "SELECT id FROM models WHERE status = 'active'")[0][0]
    with engine.begin() as conn:
        conn.execute(sa.text("DELETE FROM alert_outbox"))
        outbox.enqueue(conn, s, model_id, flagged)
    d = delivery.Deliverer(s, backoff_base_s=600.0)      # no retry within the test
    assert d.deliver_due(engine).failed == 1 and len(hook.requests) == 1
    waiting = {r.flight_id: r.next_attempt_at for r in _outbox(engine)}
    end = _q(engine, "SELECT max(last_seen) FROM flights")[0][0]
    with engine.begin() as conn:
        assert outbox.release_held(conn, "default", end) == 0
    assert {r.flight_id: r.next_attempt_at for r in _outbox(engine)} == waiting
    assert d.deliver_due(engine).sent == 0 and len(hook.requests) == 1

    # The endpoint is back and the failed alert went: a held alert is released by the clock.
    with engine.begin() as conn:
        conn.execute(sa.text("DELETE FROM alert_outbox"))
        outbox.enqueue(conn, s, model_id, flagged[:1], held={flagged[0]})
        assert outbox.release_held(conn, "default", end) == 1
