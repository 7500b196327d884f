"""What every request of the pages needs, hung off ``app.state.web`` by :func:`create_app`
(app.py) and read by the handlers (routes.py): settings, the engine, the write policy, the
templates and a small cache."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from starlette.requests import Request
from starlette.responses import Response
from starlette.templating import Jinja2Templates

from pipeline.config import Settings
from pipeline.web.security import CSRF_COOKIE, WritePolicy


@dataclass
class WebContext:
    settings: Settings
    engine: sa.Engine
    policy: WritePolicy
    templates: Jinja2Templates
    cache: dict[Any, Any] = field(default_factory=dict)

    def render(self, request: Request, name: str, context: dict[str, Any],
               status_code: int = 200) -> Response:
        """A page, with the CSRF proof for its forms (and the nonce cookie, on a first visit)."""
        nonce = request.cookies.get(CSRF_COOKIE) or self.policy.new_nonce()
        context = {**context, "csrf": self.policy.csrf_proof(nonce), "policy": self.policy,
                   "settings": self.settings, "path": request.url.path}
        response = self.templates.TemplateResponse(request, name, context,
                                                   status_code=status_code)
        if request.cookies.get(CSRF_COOKIE) != nonce:
            response.set_cookie(CSRF_COOKIE, nonce, httponly=True, samesite="strict",
                                secure=request.url.scheme == "https", path="/")
        return response
