"""The pages' session: an encrypted cookie holding a session id, on /ui/ only.

The session itself lives on the server (store/ui_sessions.py): sign-out deletes it, so a
cookie copied before sign-out signs nobody in; revoking the token ends it too. The cookie
is HttpOnly, SameSite=Strict and, by default, Secure (SESSION_COOKIE_SECURE); it is read by
the pages alone: the API authenticates by bearer token only (web/auth.py never looks at
cookies). Every state-changing page request must come from our own origin (Origin, else
Referer), and every page carries headers that keep it out of frames and other sites' reach.
"""
from __future__ import annotations

import os
import warnings
from urllib.parse import urlsplit

import aiohttp_jinja2
from aiohttp import web
from aiohttp_session import session_middleware
from aiohttp_session.cookie_storage import EncryptedCookieStorage
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from service.config import Config
from service.web.keys import CONFIG

# aiohttp-session keeps its state under plain string request keys: that is its API (as
# aiohttp-apispec's app keys are, web/app.py), not ours to change.
warnings.filterwarnings("ignore", category=web.NotAppKeyWarning, module="aiohttp_session")

PREFIX = "/ui/"
COOKIE = "pipeline_runs_session"
MAX_AGE = 12 * 3600  # a working day; sign in again after
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
# Scripts, styles and fetches from here only; no frames, plugins or foreign form targets.
# Style attributes stay allowed (the runs page sizes its status bar with one), <style> not.
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; "
       "style-src-attr 'unsafe-inline'; img-src 'self'; connect-src 'self'; "
       "form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
PAGE_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",  # our own posts keep a Referer; other sites get none
}


def _key(config: Config) -> bytes:
    # Fernet wants 32 bytes: derived from SESSION_SECRET by HKDF (a KDF, not a bare hash,
    # and bound to this use); unset, a random key per start (sign-ins then end with it).
    if config.session_secret:
        return HKDF(algorithm=hashes.SHA256(), length=32, salt=b"pipeline-runs",
                    info=b"/ui/ session cookie").derive(config.session_secret.encode())
    return os.urandom(32)


DEFAULT_PORTS = {"http": ":80", "https": ":443"}


def _origin(url: str) -> str | None:
    """scheme://host[:port] of a URL, lower case, without its scheme's default port."""
    try:
        parts = urlsplit(url)
    except ValueError:  # "http://[::1" and the like: no origin at all
        return None
    if not (parts.scheme and parts.netloc):
        return None
    scheme, netloc = parts.scheme.lower(), parts.netloc.lower()
    default = DEFAULT_PORTS.get(scheme)
    return f"{scheme}://{netloc.removesuffix(default) if default else netloc}"


def _same_origin(request: web.Request) -> bool:
    """Whether a state-changing request comes from our own pages (Origin, else Referer)."""
    public = request.app[CONFIG].public_url
    ours = _origin(public or f"{request.scheme}://{request.host}")
    origin = request.headers.get("Origin")
    if origin is None:  # older browsers omit Origin on same-origin posts; Referer then
        referer = request.headers.get("Referer")
        origin = _origin(referer) if referer else None
    return origin is not None and ours is not None and _origin(origin) == ours


def _refused(request: web.Request) -> web.Response:
    return aiohttp_jinja2.render_template("error.html", request, {
        "status": 403, "who": None, "path": request.path, "can_audit": False, "errors": None,
        "message": "This form was not sent from this site's own pages."}, status=403)


def page_headers(response: web.StreamResponse) -> None:
    """Every /ui/ answer's (pages, redirects, errors, static files): web/observe.py adds them."""
    headers = response.headers
    for name, value in PAGE_HEADERS.items():
        headers.setdefault(name, value)


def ui_sessions(config: Config):
    """A middleware giving /ui/ requests their session; every other path passes through."""
    storage = EncryptedCookieStorage(_key(config), cookie_name=COOKIE, path=PREFIX,
                                     max_age=MAX_AGE, httponly=True, samesite="Strict")
    inner = session_middleware(storage)

    @web.middleware
    async def sessions(request: web.Request, handler) -> web.StreamResponse:
        if not request.path.startswith(PREFIX):
            return await handler(request)
        if request.method not in SAFE_METHODS and not _same_origin(request):
            return _refused(request)  # a cross-site form: no sign-in, no sign-out
        try:
            response = await inner(request, handler)
        except web.HTTPException as exc:  # redirects (sign-in, sign-out) carry the cookie
            _mark_secure(request, exc, config)
            raise
        _mark_secure(request, response, config)
        return response

    return sessions


def _mark_secure(request: web.Request, response: web.StreamResponse, config: Config) -> None:
    """The Secure flag per SESSION_COOKIE_SECURE (unset: when this request is HTTPS)."""
    wanted = config.session_cookie_secure
    if wanted is None:
        wanted = request.secure or (config.public_url or "").startswith("https:")
    if wanted and COOKIE in response.cookies:
        response.cookies[COOKIE]["secure"] = True
