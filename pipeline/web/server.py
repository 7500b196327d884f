"""Serving the pages: uvicorn in a thread of the service (``run``, ``worker``), or alone
(``adsb-pipeline web``, :func:`pipeline.service.serve.web_command`).

The socket is bound here, before uvicorn starts, so a port already in use is an ``OSError`` the
caller reports at once (uvicorn would only log it from its thread and exit that thread).
"""

from __future__ import annotations

import logging
import socket
import threading
import time

import sqlalchemy as sa
import uvicorn
from starlette.applications import Starlette

from pipeline.config import Settings
from pipeline.web.app import create_app

log = logging.getLogger(__name__)

START_TIMEOUT_S = 15.0
STOP_TIMEOUT_S = 5.0


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket on host:port (port 0: any free port), IPv4 or IPv6."""
    family, kind, proto, _, address = socket.getaddrinfo(
        host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(128)
    except OSError:
        sock.close()
        raise
    return sock


class WebServer:
    """uvicorn serving ``app`` on an already bound socket, in a daemon thread."""

    def __init__(self, app: Starlette, host: str, port: int) -> None:
        self.host = host
        self.app = app
        self._sock = bind(host, port)
        self.port = int(self._sock.getsockname()[1])
        # log_config=None: uvicorn must not reconfigure the service's logging; the access log
        # would log every picture of every page view.
        self._server = uvicorn.Server(uvicorn.Config(
            app, log_config=None, access_log=False, lifespan="off",
            timeout_graceful_shutdown=2, server_header=False))
        self._thread = threading.Thread(target=self._run, name="web", daemon=True)
        self.failed: BaseException | None = None

    def _run(self) -> None:
        try:
            self._server.run(sockets=[self._sock])
        except BaseException as e:  # noqa: BLE001 - uvicorn exits its thread with SystemExit
            self.failed = e
            log.error("web pages stopped: %s", e)

    @property
    def url(self) -> str:
        host = self.host if self.host not in ("", "0.0.0.0", "::") else "127.0.0.1"
        return f"http://{f'[{host}]' if ':' in host else host}:{self.port}/"

    def start(self) -> "WebServer":
        self._thread.start()
        deadline = time.monotonic() + START_TIMEOUT_S
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"web server on {self.host}:{self.port} did not start"
                                   + (f": {self.failed}" if self.failed else ""))
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(STOP_TIMEOUT_S)
        if self._thread.is_alive():
            self._server.force_exit = True
            self._thread.join(STOP_TIMEOUT_S)
        self._sock.close()


def start_for_service(settings: Settings, engine: sa.Engine) -> WebServer | None:
    """The pages beside the service's work, on its engine; None when disabled (port 0) or when
    the address cannot be bound (logged: the service runs on without its pages)."""
    if settings.web_port == 0:
        return None
    try:
        server = WebServer(create_app(settings, engine), settings.web_host,
                           settings.web_port).start()
    except (OSError, RuntimeError) as e:
        log.error("web pages on %s:%d not started: %s", settings.web_host, settings.web_port, e)
        return None
    log.info("web pages on %s (writes: %s)", server.url, writes(server))
    return server


def writes(server: WebServer) -> str:
    """Who may write, for the log line at start."""
    p = server.app.state.web.policy
    if p.token is not None:
        return "with the token"
    return "from this machine" if p.loopback else "refused: no ADSB_WEB_TOKEN"


def serve_until(settings: Settings, engine: sa.Engine, stop: threading.Event) -> int:
    """Only the pages, on ``engine``, until ``stop`` is set; the exit status of ``adsb-pipeline
    web`` (:func:`pipeline.service.serve.web_command` owns the signals, the engine and the
    migrations)."""
    try:
        server = WebServer(create_app(settings, engine), settings.web_host,
                           settings.web_port).start()
    except (OSError, RuntimeError) as e:
        log.error("web: cannot serve on %s:%d: %s", settings.web_host, settings.web_port, e)
        return 1
    log.info("web pages on %s (writes: %s); Ctrl-C stops", server.url, writes(server))
    print(f"serving {server.url}", flush=True)
    try:
        while not stop.wait(0.5):
            if server.failed is not None:
                return 1
    finally:
        server.stop()
    return 0
