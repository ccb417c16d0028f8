"""The pages' session: an encrypted cookie holding the signed-in token, on /ui/ only.

The cookie is HttpOnly (no script reads it) and SameSite=Strict (no other site's page
sends it along); it is read by the pages alone: the API authenticates by bearer token only
(web/auth.py never looks at cookies).
"""
from __future__ import annotations

import hashlib
import os
import warnings

from aiohttp import web
from aiohttp_session import session_middleware
from aiohttp_session.cookie_storage import EncryptedCookieStorage

from service.config import Config

# aiohttp-session keeps its state under plain string request keys: that is its API (as
# aiohttp-apispec's app keys are, web/app.py), not ours to change.
warnings.filterwarnings("ignore", category=web.NotAppKeyWarning, module="aiohttp_session")

PREFIX = "/ui/"
COOKIE = "pipeline_runs_session"
MAX_AGE = 12 * 3600  # a working day; sign in again after


def _key(config: Config) -> bytes:
    # Fernet wants 32 bytes: any SESSION_SECRET is stretched to them; unset, a random key
    # per start (every sign-in then ends with the process).
    if config.session_secret:
        return hashlib.sha256(config.session_secret.encode()).digest()
    return os.urandom(32)


def ui_sessions(config: Config):
    """A middleware giving /ui/ requests their session; every other path passes through."""
    storage = EncryptedCookieStorage(_key(config), cookie_name=COOKIE, path=PREFIX,
                                     max_age=MAX_AGE, httponly=True, samesite="Strict")
    inner = session_middleware(storage)

    @web.middleware
    async def sessions(request: web.Request, handler) -> web.StreamResponse:
        if not request.path.startswith(PREFIX):
            return await handler(request)
        return await inner(request, handler)

    return sessions
