"""Alerts on new flags: a JSON message per flag, sent by webhook, MQTT and PostgreSQL NOTIFY.

* :mod:`pipeline.alerts.message`  the JSON body (one shape for every sink);
* :mod:`pipeline.alerts.outbox`   written by the scorer in the transaction of the flag: one
  ``alert_outbox`` row per configured sink and a ``pg_notify`` (delivered on commit);
* :mod:`pipeline.alerts.sinks`    webhook (httpx) and MQTT (paho-mqtt) senders, short timeouts;
* :mod:`pipeline.alerts.delivery` the worker's job: claims due rows, sends, retries with
  backoff, gives up after ADSB_ALERT_GIVE_UP_HOURS.

Alerts read what scoring wrote; nothing upstream waits for a sink (see docs/alerts.md).
"""
