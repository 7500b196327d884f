"""Who may write (a verdict) and how a form proves it came from these pages.

Reads are open: the pages show what any receiver in range hears. A write needs

* the token (``ADSB_WEB_TOKEN`` or the file ``ADSB_WEB_TOKEN_FILE``) whenever one is configured,
  typed into the form once (a browser that sent it keeps an HttpOnly cookie holding a keyed hash
  of it, never the token itself);
* with no token configured, a server bound to loopback: only this machine can reach it. Bound
  beyond loopback with no token, writes are refused with a message saying how to enable them.
  A loopback server also checks the Host header, so a web site that rebinds its own name to
  127.0.0.1 cannot use the browser of the person running it to write;
* a CSRF proof: the form carries HMAC(secret, nonce) where the nonce sits in a SameSite=Strict
  cookie, so another site can neither read the proof nor send the cookie; the Origin (or
  Referer) header, when the browser sends one, must name this server.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import secrets
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from pipeline.config import Settings

CSRF_COOKIE = "adsb_csrf"
WRITE_COOKIE = "adsb_write"
LOOPBACK_NAMES = ("localhost", "localhost.localdomain", "ip6-localhost")


def configured_token(settings: Settings) -> str | None:
    """ADSB_WEB_TOKEN_FILE's content (it replaces ADSB_WEB_TOKEN), else ADSB_WEB_TOKEN."""
    if settings.web_token_file:
        token = Path(settings.web_token_file).read_text(encoding="utf-8").strip()
    else:
        token = (settings.web_token or "").strip()
    return token or None


def is_loopback(host: str) -> bool:
    """Whether a listening address (or a Host header's name) only reaches this machine. A name
    other than localhost counts as beyond loopback: what it resolves to can change."""
    name = host.strip().strip("[]").lower()
    if name in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def host_name(host_header: str) -> str:
    """The name part of a Host header (``[::1]:8760`` -> ``::1``)."""
    if host_header.startswith("["):
        return host_header[1:].split("]", 1)[0].lower()
    return host_header.rsplit(":", 1)[0].lower() if host_header.count(":") == 1 \
        else host_header.lower()


@dataclass(frozen=True)
class WritePolicy:
    token: str | None
    bound_host: str
    public_host: str | None = None        # host name of ADSB_PUBLIC_URL
    public_origin: str | None = None      # its host[:port], as an Origin header names it
    # Key of the CSRF proofs and of the token cookie; new on every start, so a form left open
    # across a restart asks for a reload instead of writing.
    secret: bytes = b""

    @classmethod
    def from_settings(cls, settings: Settings, bound_host: str | None = None) -> "WritePolicy":
        public = urlsplit(settings.public_url) if settings.public_url else None
        return cls(configured_token(settings), bound_host or settings.web_host,
                   public.hostname if public else None,
                   public.netloc.lower() if public else None, secrets.token_bytes(32))

    @property
    def loopback(self) -> bool:
        return is_loopback(self.bound_host)

    @property
    def writes_enabled(self) -> bool:
        return self.token is not None or self.loopback

    @property
    def needs_token(self) -> bool:
        return self.token is not None

    def disabled_reason(self) -> str:
        return (f"Verdicts cannot be saved: the web pages listen on {self.bound_host}, beyond "
                "this machine, and no token is configured. Set ADSB_WEB_TOKEN (or "
                "ADSB_WEB_TOKEN_FILE) and restart to allow writes with that token, or set "
                "ADSB_WEB_HOST=127.0.0.1.")

    # ---- token ----------------------------------------------------------------------------
    def token_cookie_value(self) -> str:
        assert self.token is not None
        return hmac.new(self.secret, b"write:" + self.token.encode(), hashlib.sha256).hexdigest()

    def token_ok(self, typed: str | None, cookie: str | None) -> bool:
        if self.token is None:
            return False
        if typed and hmac.compare_digest(typed.strip().encode(), self.token.encode()):
            return True
        return bool(cookie) and hmac.compare_digest(str(cookie), self.token_cookie_value())

    # ---- CSRF -----------------------------------------------------------------------------
    @staticmethod
    def new_nonce() -> str:
        return secrets.token_urlsafe(24)

    def csrf_proof(self, nonce: str) -> str:
        return hmac.new(self.secret, b"csrf:" + nonce.encode(), hashlib.sha256).hexdigest()

    def csrf_ok(self, nonce: str | None, proof: str | None) -> bool:
        return bool(nonce) and bool(proof) and hmac.compare_digest(
            self.csrf_proof(str(nonce)), str(proof))

    # ---- the decision ---------------------------------------------------------------------
    def refusal(self, *, host_header: str, origin: str | None, referer: str | None,
                fetch_site: str | None, csrf_cookie: str | None, csrf_form: str | None,
                typed_token: str | None, token_cookie: str | None) -> str | None:
        """Why this write is refused (a sentence for the user), or None to accept it."""
        if not self.writes_enabled:
            return self.disabled_reason()
        if fetch_site is not None and fetch_site not in ("same-origin", "none"):
            return "Refused: this form was sent from another site (cross-site request)."
        # Behind a reverse proxy the Host header may name this server while the browser's
        # Origin names the proxy: ADSB_PUBLIC_URL says which that is.
        ours = {host_header.lower()} | ({self.public_origin} if self.public_origin else set())
        for header in (origin, referer if origin is None else None):
            if header and header != "null" and (urlsplit(header).netloc or "").lower() \
                    not in ours:
                return "Refused: this form was sent from another site (its Origin is " \
                       f"{urlsplit(header).netloc or header!r}, not {host_header!r})."
        if not self.csrf_ok(csrf_cookie, csrf_form):
            return ("Refused: the form's security check failed (the page is older than the "
                    "server's last start, or cookies are blocked). Reload the page and try again.")
        if self.token is not None:
            if not self.token_ok(typed_token, token_cookie):
                return "Refused: wrong or missing token (ADSB_WEB_TOKEN)."
            return None
        # No token: only a loopback server gets here; its Host must be a loopback name (or
        # the public address), else a rebound DNS name is talking to it.
        name = host_name(host_header)
        if not (is_loopback(name) or (self.public_host and name == self.public_host.lower())):
            return (f"Refused: this server listens on loopback without a token and the page "
                    f"was opened as {name!r}; open it as http://127.0.0.1 or http://localhost, "
                    "or configure ADSB_WEB_TOKEN.")
        return None
