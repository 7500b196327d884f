"""Senders of one alert message: a webhook POST (httpx) and an MQTT publish (paho-mqtt).

Each send either returns (the endpoint took the message: HTTP 2xx, MQTT PUBACK) or raises
:class:`SinkError` within a few seconds; retries are the delivery job's business. Log lines and
errors name an endpoint by scheme, host and port only: URLs may carry credentials or tokens.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from typing import Any, Protocol
from urllib.parse import unquote, urlsplit

import httpx
import paho.mqtt.client as mqtt

from pipeline import __version__
from pipeline.alerts import message, outbox
from pipeline.config import Settings

# httpx logs every request with its full URL at INFO, and a webhook URL may carry a token.
logging.getLogger("httpx").setLevel(logging.WARNING)

CONNECT_TIMEOUT_S = 3.0
SEND_TIMEOUT_S = 5.0           # an endpoint slower than this is treated as down
MQTT_QOS = 1                   # at least once, as the outbox


class SinkError(RuntimeError):
    """The endpoint did not take the message (the text says why, without credentials)."""


class Sink(Protocol):
    name: str
    endpoint: str

    def send(self, payload: dict[str, Any]) -> None: ...

    def close(self) -> None: ...


def redacted(url: str) -> str:
    """scheme://host[:port] of a URL: no user, password, path or query."""
    try:
        parts = urlsplit(url)
        valid = parts.port is None or parts.port > 0    # .port raises on a port out of range
    except ValueError:
        valid = False
    return f"{parts.scheme}://{parts.netloc.rpartition('@')[2] or '?'}" if valid \
        else "(invalid URL)"


def _error(e: BaseException) -> str:
    text = str(e).splitlines()[0][:200] if str(e) else ""
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


class WebhookSink:
    """POSTs the message as ``application/json``; any 2xx answer is a delivery. Redirects are
    not followed (a moved endpoint is a configuration to fix, not to guess)."""

    name = outbox.WEBHOOK

    def __init__(self, url: str, timeout_s: float = SEND_TIMEOUT_S) -> None:
        self.url = url
        self.endpoint = redacted(url)
        self._client = httpx.Client(
            timeout=httpx.Timeout(timeout_s, connect=min(CONNECT_TIMEOUT_S, timeout_s)),
            headers={"User-Agent": f"adsb-pipeline/{__version__}",
                     "Content-Type": "application/json"})

    def send(self, payload: dict[str, Any]) -> None:
        try:
            r = self._client.post(self.url, content=message.encode(payload))
        except (httpx.HTTPError, httpx.InvalidURL) as e:
            raise SinkError(_error(e)) from None
        if not r.is_success:
            raise SinkError(f"HTTP {r.status_code} {r.reason_phrase}".rstrip())

    def close(self) -> None:
        self._client.close()


class MqttSink:
    """Publishes to ``<ADSB_ALERT_MQTT_TOPIC>/<receiver>`` with QoS 1, not retained (a retained
    flag would be replayed to every new subscriber as if it were new). One connection per
    delivery pass, opened at the first message."""

    name = outbox.MQTT

    def __init__(self, url: str, topic_prefix: str, timeout_s: float = SEND_TIMEOUT_S) -> None:
        try:
            parts = urlsplit(url)
            if parts.scheme not in ("mqtt", "mqtts") or not parts.hostname:
                raise ValueError("expected mqtt://[user:pass@]host[:port]")
            self.host = parts.hostname
            self.port = parts.port or (8883 if parts.scheme == "mqtts" else 1883)
        except ValueError as e:
            raise SinkError(f"ADSB_ALERT_MQTT_URL is not usable: {e}") from None
        self.tls = parts.scheme == "mqtts"
        self.user = unquote(parts.username) if parts.username else None
        self.password = unquote(parts.password) if parts.password else None
        self.endpoint = f"{parts.scheme}://{self.host}:{self.port}"
        self.prefix = topic_prefix.strip("/")
        self.timeout_s = timeout_s
        self._client: mqtt.Client | None = None

    def topic(self, payload: dict[str, Any]) -> str:
        return f"{self.prefix}/{payload.get('receiver') or 'default'}"

    def _connect(self) -> mqtt.Client:
        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2,
                             client_id=f"adsb-pipeline-{uuid.uuid4().hex[:12]}",
                             clean_session=True, reconnect_on_failure=False)
        connect_s = min(CONNECT_TIMEOUT_S, self.timeout_s)      # TCP connect and CONNACK
        deadline = time.monotonic() + connect_s
        client.connect_timeout = connect_s
        if self.user is not None:
            client.username_pw_set(self.user, self.password)
        if self.tls:
            client.tls_set()
        answered = threading.Event()
        refused: list[str] = []

        def on_connect(_client, _userdata, _flags, reason_code, _properties):
            if reason_code.is_failure:
                refused.append(str(reason_code))
            answered.set()

        client.on_connect = on_connect
        try:
            client.connect(self.host, self.port, keepalive=max(10, int(4 * self.timeout_s)))
        except (OSError, ValueError) as e:
            raise SinkError(_error(e)) from None
        client.loop_start()
        if not answered.wait(max(0.1, deadline - time.monotonic())) or refused:
            client.loop_stop()
            client.disconnect()
            raise SinkError(f"broker refused the connection: {refused[0]}" if refused
                            else f"no CONNACK within {connect_s:g} s")
        return client

    def send(self, payload: dict[str, Any]) -> None:
        if self._client is None:
            self._client = self._connect()
        try:
            info = self._client.publish(self.topic(payload), message.encode(payload),
                                        qos=MQTT_QOS, retain=False)
            info.wait_for_publish(self.timeout_s)
            if not info.is_published():
                raise SinkError(f"no PUBACK within {self.timeout_s:g} s")
        except (RuntimeError, ValueError) as e:
            self.close()
            raise SinkError(_error(e)) from None

    def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            client.disconnect()
            client.loop_stop()


def open_sink(name: str, settings: Settings) -> Sink:
    """The sender for outbox rows of sink ``name`` under these settings; SinkError when that
    sink is not configured here (rows written by a worker with other settings)."""
    if name == WebhookSink.name:
        if not settings.alert_webhook_url:
            raise SinkError("ADSB_ALERT_WEBHOOK_URL is not set in the worker that delivers")
        return WebhookSink(settings.alert_webhook_url, SEND_TIMEOUT_S)
    if name == MqttSink.name:
        if not settings.alert_mqtt_url:
            raise SinkError("ADSB_ALERT_MQTT_URL is not set in the worker that delivers")
        return MqttSink(settings.alert_mqtt_url, settings.alert_mqtt_topic, SEND_TIMEOUT_S)
    raise SinkError(f"unknown alert sink {name!r}")
