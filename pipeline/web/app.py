"""The Starlette application of the web pages: routes, templates, static files, headers.

:func:`create_app` takes the settings and an engine (the service's own, so the pages and the
worker share one pool); everything a request needs hangs off ``app.state.web``, a
:class:`~pipeline.web.context.WebContext`.
"""

from __future__ import annotations

import datetime as dt
import logging
from decimal import Decimal
from pathlib import Path
from typing import Any

import sqlalchemy as sa
import xstatic.pkg.leaflet  # type: ignore[import-untyped]  # no type information
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates
from starlette.types import ASGIApp, Message, Receive, Scope, Send

import pipeline.web.routes as routes
from pipeline.config import Settings
from pipeline.web.context import WebContext
from pipeline.web.security import WritePolicy

log = logging.getLogger(__name__)

HERE = Path(__file__).resolve().parent
TILE_HOST = "https://tile.openstreetmap.org"
# Scripts and styles only from this server (Leaflet included), map tiles from OpenStreetMap,
# no framing (the verdict form must not be click-jacked).
CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; "
       f"img-src 'self' data: {TILE_HOST}; connect-src 'self'; frame-ancestors 'none'; "
       "base-uri 'none'; form-action 'self'; object-src 'none'")
HEADERS = [(b"content-security-policy", CSP.encode()),
           (b"x-content-type-options", b"nosniff"),
           (b"x-frame-options", b"DENY"),
           # OpenStreetMap's tile policy asks for a Referer; the origin is all it gets.
           (b"referrer-policy", b"strict-origin-when-cross-origin")]


class SecurityHeaders:
    """Adds the headers above to every response (pages, pictures, static files)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = list(message.get("headers", [])) + HEADERS
            await send(message)

        await self.app(scope, receive, send_with_headers)


# ---- template filters ----------------------------------------------------------------------
def _utc(value: dt.datetime | None, fmt: str = "%Y-%m-%d %H:%M:%S") -> str:
    if value is None:
        return "–"
    return value.astimezone(dt.timezone.utc).strftime(fmt) + (" UTC" if "%H" in fmt else "")


def _duration(value: dt.timedelta | float | None) -> str:
    if value is None:
        return "–"
    s = int(value.total_seconds() if isinstance(value, dt.timedelta) else value)
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min"
    if s < 172800:
        return f"{s // 3600} h {s % 3600 // 60:02d} min"
    return f"{s // 86400} days"


def _num(value: Any, digits: int = 3) -> str:
    if value is None:
        return "–"
    if isinstance(value, Decimal):
        value = float(value)
    if isinstance(value, float):
        if value != value:
            return "–"
        return f"{value:,.{digits}g}" if abs(value) < 1e6 else f"{value:,.0f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def _fixed(value: Any, digits: int = 2) -> str:
    return "–" if value is None else f"{float(value):.{digits}f}"


def _pct(value: float | None, digits: int = 1) -> str:
    return "–" if value is None else f"{100 * value:.{digits}f} %"


def _templates() -> Jinja2Templates:
    templates = Jinja2Templates(directory=HERE / "templates")
    env = templates.env
    env.filters.update(utc=_utc, duration=_duration, num=_num, pct=_pct, fixed=_fixed)
    env.trim_blocks = True
    env.lstrip_blocks = True
    return templates


async def _not_found(request: Request, exc: Exception) -> Response:
    status = exc.status_code if isinstance(exc, HTTPException) else 404
    detail = exc.detail if isinstance(exc, HTTPException) else "not found"
    return routes.message(request, status, "Not found" if status == 404 else "Refused", detail)


async def _database_down(request: Request, exc: Exception) -> Response:
    log.warning("web: database query failed: %s", str(exc).splitlines()[0])
    return routes.message(request, 503, "Database unreachable",
                          "The database did not answer; the page will work again when it "
                          "is back.")


def create_app(settings: Settings, engine: sa.Engine, *, bound_host: str | None = None
               ) -> Starlette:
    """The web pages over ``engine``. ``bound_host`` is the address the server listens on
    (default ADSB_WEB_HOST): it decides whether writes need the token."""
    policy = WritePolicy.from_settings(settings, bound_host)
    app = Starlette(
        routes=[
            Route("/", routes.home, name="home"),
            Route("/flights", routes.flights_list, name="flights"),
            Route("/flights/{flight_id:int}", routes.flight_page, name="flight"),
            Route("/flights/{flight_id:int}/verdict", routes.verdict, methods=["POST"],
                  name="verdict"),
            Route("/flights/{flight_id:int}/thumb.png", routes.thumbnail, name="thumb"),
            Route("/flights/{flight_id:int}/panel/{channel}/{kind}.png", routes.panel,
                  name="panel"),
            Route("/models", routes.models_page, name="models"),
            # Browsers ask for it whatever the page says; the pages link the SVG.
            Route("/favicon.ico", lambda request: RedirectResponse("/static/favicon.svg", 301)),
            Mount("/static", StaticFiles(directory=HERE / "static"), name="static"),
            Mount("/leaflet", StaticFiles(directory=xstatic.pkg.leaflet.BASE_DIR),
                  name="leaflet"),
        ],
        exception_handlers={HTTPException: _not_found, sa.exc.OperationalError: _database_down},
    )
    app.add_middleware(SecurityHeaders)
    app.state.web = WebContext(settings, engine, policy, _templates())
    return app
