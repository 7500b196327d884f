"""ADSB_* settings: read once from the environment and the command line, validated once.

Every setting is an environment variable with the ``ADSB_`` prefix and the same setting as a
command-line option (``ADSB_RANGE_KM`` <-> ``--range-km``); the option wins. An invalid value
is a :class:`ConfigError` naming the setting; the CLI turns it into one line and exit status 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Callable, Mapping

PREFIX = "ADSB_"


class ConfigError(ValueError):
    """A setting has a value the service cannot run with."""

    def __init__(self, env: str, value: object, why: str) -> None:
        super().__init__(f"invalid setting {env}={value!r}: {why}")
        self.env = env


def _setting(default: Any, help: str, *, choices: tuple[str, ...] | None = None,
             minimum: float | None = None, maximum: float | None = None,
             secret: bool = False) -> Any:
    return field(default=default, metadata={
        "help": help, "choices": choices, "min": minimum, "max": maximum, "secret": secret})


@dataclass(frozen=True)
class Settings:
    """All settings of the service. Field ``range_km`` is ``ADSB_RANGE_KM`` / ``--range-km``."""

    database_url: str | None = _setting(
        None, "PostgreSQL URL (postgresql://user:pass@host/db). Unset: an embedded PostgreSQL "
              "server is started in ADSB_DATA_DIR.", secret=True)
    database_password_file: str | None = _setting(
        None, "File holding the database password (Docker/compose secrets); it replaces the "
              "password in ADSB_DATABASE_URL.")
    data_dir: Path = _setting(Path("./adsb-data"), "Directory for the embedded database, the "
                              "ingest journal and, by default, models and reports.")
    model_dir: Path | None = _setting(None, "Directory for model files (default: ADSB_DATA_DIR/models).")
    receiver_host: str = _setting("127.0.0.1", "Host of dump1090/readsb.")
    receiver_port: int | None = _setting(None, "TCP port of the receiver (default by format: "
                                         "beast 30005, avr 30002, sbs 30003).", minimum=1, maximum=65535)
    receiver_format: str = _setting("beast", "Receiver output format.", choices=("beast", "avr", "sbs"))
    receiver_lat: float = _setting(48.88, "Receiver latitude, degrees (reference for decoding and "
                                   "the centre of the 'where' image).", minimum=-90, maximum=90)
    receiver_lon: float = _setting(2.42, "Receiver longitude, degrees.", minimum=-180, maximum=180)
    receiver_id: str = _setting("default", "Name stored with every position (several receivers "
                                "can share one database).")
    site: str | None = _setting(None, "The site this receiver belongs to: the area one model "
                                "learns, drawn in one fixed frame. Receivers of one site are "
                                "merged (an aircraft heard by several is one flight). Default: "
                                "ADSB_RECEIVER_ID, a site of its own.")
    site_lat: float | None = _setting(None, "Centre of the site's fixed 'where' frame, latitude "
                                      "(default: this receiver's). Set it, with ADSB_SITE_LON, "
                                      "on every receiver of a site of several.",
                                      minimum=-90, maximum=90)
    site_lon: float | None = _setting(None, "Centre of the site's fixed frame, longitude "
                                      "(default: this receiver's).", minimum=-180, maximum=180)
    merge_tolerance_s: float = _setting(2.0, "Receivers of one site that hear the same "
                                        "transmission store a copy each; the flight uses it "
                                        "once: same aircraft, same position, times within this "
                                        "many seconds (how far the receivers' clocks may "
                                        "disagree).", minimum=0, maximum=60)
    receiver_timeout_s: float = _setting(60.0, "No byte from the receiver for this long: the "
                                         "link is treated as dead and reconnected.", minimum=0.1)
    receiver_clock: str = _setting("wall", "Time stamp of live messages: 'wall' = receive time; "
                                   "'counter' = the Beast/AVR 12 MHz counter, anchored at the "
                                   "wall clock on the first frame that passes CRC, re-anchored "
                                   "after a receiver restart.",
                                   choices=("wall", "counter"))
    range_km: float = _setting(121.0, "Receiver range: positions beyond 1.5x are rejected; the "
                               "'where' image covers +-range.", minimum=1, maximum=1000)
    retention_days: int | None = _setting(None, "Drop position partitions older than this many "
                                          "days (default: keep everything).", minimum=1)
    batch_rows: int = _setting(5000, "Rows per COPY batch (a batch is also flushed every second).",
                               minimum=1)
    buffer_max_rows: int = _setting(2_000_000, "Rows held in memory while the database is "
                                    "unreachable or slower than the receiver; beyond that they "
                                    "spill to the on-disk journal.",
                                    minimum=1000)
    flight_gap_s: float = _setting(600.0, "Silence that ends a flight, seconds.", minimum=1)
    train_days: float = _setting(7.0, "Train on finished flights of the last N days of the data clock.",
                                 minimum=0.01)
    train_max_flights: int = _setting(20000, "At most this many flights per training run.", minimum=10)
    train_min_flights: int = _setting(200, "Refuse to train on fewer flights.", minimum=10)
    train_budget_s: float = _setting(600.0, "Wall-clock budget of one training run, seconds.", minimum=5)
    train_cron: str = _setting("0 3 * * *", "When the worker retrains (crontab syntax, UTC).")
    worker_tick_s: float = _setting(60.0, "Seconds between the worker's passes that close, "
                                    "rasterize and score flights. Shorter only to replay "
                                    "traffic faster than real time (bench/soak.py).", minimum=1)
    job_lease_s: float = _setting(60.0, "A running job whose worker has not beaten for this "
                                  "long (killed, frozen, host gone) is queued again for "
                                  "another worker; workers beat every sixth of it.",
                                  minimum=3, maximum=3600)
    retention_interval_s: float = _setting(86400.0, "Seconds between the worker's retention "
                                           "passes (partitions ahead, ADSB_RETENTION_DAYS). "
                                           "Shorter only to replay traffic faster than real "
                                           "time (bench/soak.py).", minimum=10)
    train_seed: int | None = _setting(None, "Fixed random seed for training (reproducible runs).")
    train_screen_k: float = _setting(3.0, "Leave flights out of training whose log tortuosity is "
                                     "above median + k x MAD of the window (circling and "
                                     "patterns are never learnt as normal); 0 disables.",
                                     minimum=0, maximum=50)
    train_screen_min_tortuosity: float = _setting(
        1.8, "The screen never leaves out a flight below this tortuosity (path / end-to-end "
        "distance): an ordinary turn or a vectored approach is not a pattern.", minimum=1,
        maximum=100)
    shape_min_tortuosity: float = _setting(
        1.3, "The shape channel never flags a flight below this tortuosity (path / end-to-end "
        "distance): a nearly straight flight cannot be a pattern, whatever its pixels say. On a "
        "real en-route day ordinary flights reached 1.28, patterns started at 1.46 (one glider "
        "1.13). The where and direction channels still flag straight flights; 0 disables.",
        minimum=0, maximum=100)
    train_flagged_max_share: float = _setting(
        0.05, "Flights the active model flagged are left out of training, but at most this "
        "share of the window (those flagged by the widest margin): when it flags more, the "
        "traffic has changed (the other runway in use, a new route) and the next model must "
        "learn it, not leave it out for ever.", minimum=0, maximum=1)
    train_folds: int = _setting(3, "Cross-fitting folds: each flight of the window is scored by a "
                                "fold model that never saw it (threshold), and the model is the "
                                "ensemble of the fold models.", minimum=2, maximum=20)
    routes_min_hours: float = _setting(
        20.0, "The where and direction channels raise flags only once the training window spans "
        "this many hours of traffic: a few hours are too sparse a picture of a site's routes "
        "(the shape channel flags from the first model on).", minimum=0, maximum=10000)
    flag_rate: float = _setting(0.01, "Share of ordinary flights to flag: the threshold is the "
                                "(1 - rate) quantile of the scores of flights the model did not "
                                "train on. 0.01 = about 1 in 100 ordinary flights, e.g. 10 a day "
                                "at a site with 1,000 flights a day, plus the real anomalies.",
                                minimum=0.0001, maximum=0.5)
    rescore_days: float = _setting(1.0, "When a new model becomes active, re-score this many days.",
                                   minimum=0)
    change_window_h: float = _setting(
        3.0, "Traffic changes: the share of flags among the flights scored in the newest this "
        "many hours of the data clock (and in its newest half and quarter, which see a sudden "
        "change sooner) is tested against ADSB_FLAG_RATE after every scoring batch.",
        minimum=0.1, maximum=168)
    change_alpha: float = _setting(
        1e-6, "Traffic changes: a burst of flags is a traffic change when that many flags or "
        "more would come by chance with at most this probability (binomial tail at "
        "ADSB_FLAG_RATE). Small, because the test runs after every batch; 0 disables traffic "
        "changes (every flag alerts on its own).", minimum=0, maximum=0.05)
    change_min_flags: int = _setting(
        5, "Traffic changes: never fewer flags than this in the window, however few flights.",
        minimum=2)
    change_hold_min: float = _setting(
        90.0, "Traffic changes: the webhook and MQTT alert of a flag carried by where or "
        "direction waits this many minutes of the data clock (at most as long on the wall "
        "clock) before it is sent; should a traffic change open meanwhile and take the flag "
        "in, the change's one alert replaces it. Flags carried by shape, and the NOTIFY "
        "channel, are never held. 0 sends every flag at once.", minimum=0, maximum=1440)
    change_train_flights: int = _setting(
        100, "Traffic changes: once this many flights have finished since an open change "
        "began, a training is queued (the new traffic is learnt that day, not at the next "
        "ADSB_TRAIN_CRON); 0 leaves it to the schedule.", minimum=0)
    train_profile: str = _setting("auto", "What a training run fits: 'full' = the window and "
                                  "folds as set; 'small' = at most 2 folds and the newest 6,000 "
                                  "flights, under a third of full's work per epoch on a busy "
                                  "site (a Raspberry Pi's night); 'auto' = small on a host with "
                                  "at most 4 CPUs and under 6 GiB of memory, else full.",
                                  choices=("auto", "full", "small"))
    metrics_host: str = _setting("127.0.0.1", "Address of the Prometheus /metrics and /healthz endpoint.")
    metrics_port: int = _setting(9108, "Port of the metrics endpoint (0 disables it).",
                                 minimum=0, maximum=65535)
    web_host: str = _setting("127.0.0.1", "Address of the web pages (flags, flights, models). "
                             "Bound beyond loopback, every write needs ADSB_WEB_TOKEN.")
    web_port: int = _setting(8760, "Port of the web pages (0 disables them). The default keeps "
                             "clear of tar1090/SkyAware (80, 8080), the FR24 feeder (8754) and "
                             "Plane Finder (30053).", minimum=0, maximum=65535)
    web_token: str | None = _setting(None, "Token the web pages ask for before a write (a "
                                     "verdict). Needed when ADSB_WEB_HOST is not loopback.",
                                     secret=True)
    web_token_file: str | None = _setting(None, "File holding ADSB_WEB_TOKEN (Docker/compose "
                                          "secrets); it replaces ADSB_WEB_TOKEN.")
    public_url: str | None = _setting(None, "Address users open the web pages at, for links in "
                                      "alerts (default: http://ADSB_WEB_HOST:ADSB_WEB_PORT).")
    alert_webhook_url: str | None = _setting(None, "POST a JSON body to this URL on each new "
                                             "flag (unset: no webhook).", secret=True)
    alert_mqtt_url: str | None = _setting(None, "MQTT broker for flag messages, "
                                          "mqtt://[user:pass@]host[:port] (mqtts:// for TLS; "
                                          "unset: no MQTT).",
                                          secret=True)
    alert_mqtt_topic: str = _setting("adsb/flags", "MQTT topic prefix; messages go to "
                                     "<prefix>/<ADSB_RECEIVER_ID>.")
    alert_notify_channel: str | None = _setting("adsb_flags", "PostgreSQL NOTIFY channel for new "
                                                "flags (LISTEN adsb_flags); empty disables.")
    alert_backoff_max_s: float = _setting(600.0, "Longest wait between two delivery attempts of "
                                          "an alert while its endpoint is down.", minimum=1)
    alert_give_up_hours: float = _setting(24.0, "An alert not delivered after this many hours is "
                                          "given up (logged and counted).", minimum=0.01)
    log_level: str = _setting("INFO", "Log level.", choices=("DEBUG", "INFO", "WARNING", "ERROR"))

    # ---- derived values -------------------------------------------------------------------
    @property
    def port(self) -> int:
        if self.receiver_port is not None:
            return self.receiver_port
        return {"beast": 30005, "avr": 30002, "sbs": 30003}[self.receiver_format]

    @property
    def site_id(self) -> str:
        return self.site or self.receiver_id

    @property
    def site_centre(self) -> tuple[float, float]:
        """Centre of this receiver's site frame as its settings say (the stored one wins,
        see pipeline/db/sites.py)."""
        return (self.site_lat if self.site_lat is not None else self.receiver_lat,
                self.site_lon if self.site_lon is not None else self.receiver_lon)

    @property
    def models_path(self) -> Path:
        return self.model_dir if self.model_dir is not None else self.data_dir / "models"

    def replace(self, **changes: Any) -> "Settings":
        return dataclasses.replace(self, **changes)


def env_name(name: str) -> str:
    return PREFIX + name.upper()


def option_name(name: str) -> str:
    return "--" + name.replace("_", "-")


def _base_type(f: dataclasses.Field) -> Callable[[str], Any]:
    t = str(f.type)
    if "Path" in t:
        return Path
    if "int" in t:
        return int
    if "float" in t:
        return float
    return str


def _convert(f: dataclasses.Field, raw: Any) -> Any:
    env = env_name(f.name)
    if raw is None:
        return None
    if isinstance(raw, str) and raw.strip() == "" and "None" in str(f.type):
        return None
    conv = _base_type(f)
    try:
        value = raw if isinstance(conv, type) and isinstance(raw, conv) else conv(raw)
    except (TypeError, ValueError):
        raise ConfigError(env, raw, f"expected {conv.__name__}") from None
    meta = f.metadata
    if meta["choices"] and value not in meta["choices"]:
        raise ConfigError(env, raw, "expected one of " + ", ".join(meta["choices"]))
    if meta["min"] is not None and value < meta["min"]:
        raise ConfigError(env, raw, f"must be >= {meta['min']}")
    if meta["max"] is not None and value > meta["max"]:
        raise ConfigError(env, raw, f"must be <= {meta['max']}")
    if isinstance(value, float) and value != value:
        raise ConfigError(env, raw, "must be a number")
    return value


def load(environ: Mapping[str, str] | None = None,
         overrides: Mapping[str, Any] | None = None) -> Settings:
    """Settings from the environment, then ``overrides`` (CLI options) on top; validated."""
    environ = os.environ if environ is None else environ
    overrides = overrides or {}
    values: dict[str, Any] = {}
    for f in fields(Settings):
        if overrides.get(f.name) is not None:
            values[f.name] = _convert(f, overrides[f.name])
        elif env_name(f.name) in environ:
            values[f.name] = _convert(f, environ[env_name(f.name)])
    settings = Settings(**values)
    if settings.database_password_file and not Path(settings.database_password_file).is_file():
        raise ConfigError(env_name("database_password_file"), settings.database_password_file,
                          "file does not exist")
    if settings.web_token_file and not Path(settings.web_token_file).is_file():
        raise ConfigError(env_name("web_token_file"), settings.web_token_file,
                          "file does not exist")
    if (settings.site_lat is None) != (settings.site_lon is None):
        name = "site_lon" if settings.site_lon is None else "site_lat"
        raise ConfigError(env_name(name), None, "ADSB_SITE_LAT and ADSB_SITE_LON go together")
    if settings.train_min_flights > settings.train_max_flights:
        raise ConfigError(env_name("train_min_flights"), settings.train_min_flights,
                          "must not exceed ADSB_TRAIN_MAX_FLIGHTS")
    return settings


def add_options(parser: argparse.ArgumentParser) -> None:
    """One option per setting; values stay strings here and are validated by :func:`load`."""
    group = parser.add_argument_group("settings (each also an ADSB_* environment variable)")
    for f in fields(Settings):
        group.add_argument(option_name(f.name), dest=f"setting_{f.name}", default=None,
                           metavar=env_name(f.name), help=f.metadata["help"])


def from_args(args: argparse.Namespace, environ: Mapping[str, str] | None = None) -> Settings:
    overrides = {f.name: getattr(args, f"setting_{f.name}", None) for f in fields(Settings)}
    return load(environ, overrides)


def describe() -> list[tuple[str, str, str]]:
    """(ENV, default, meaning) for every setting: the table of docs/configuration.md."""
    rows = []
    for f in fields(Settings):
        default = f.default if f.default is not None else "(unset)"
        rows.append((env_name(f.name), str(default), f.metadata["help"]))
    return rows
