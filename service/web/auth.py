"""Token authentication (Bearer or DRF-style Token), scope checks, a short-lived token cache.

Refusals follow RFC 6750: a 401 carries `WWW-Authenticate: Bearer realm="pipeline-runs"`,
with `error="invalid_token"` only when a token was presented and is not valid (RFC 6750
3.1: no error code when the request had no credentials or used another scheme); a 403
names the scope it lacks (`error="insufficient_scope"`).
"""
from __future__ import annotations

import asyncio
import time
from typing import Callable

from aiohttp import web

from service.domain.errors import Forbidden, Unauthorized
from service.app import tokens
from service.app.outages import translated
from service.web.keys import (CONFIG, POOL, PRINCIPAL, RATE_LIMITER, RATE_STATE, TOKEN_CACHE,
                              Principal)
from service.web.tokencache import MISS

# Paths that never ask for a token, even where a handler declares a scope (web/observe.py).
PUBLIC_PREFIXES = ("/health/", "/api/docs", "/static/swagger")

# `Bearer <key>` (RFC 6750) and `Token <key>` (Django REST framework, which Esper's own
# clients send); the scheme in any letter case (RFC 7235: schemes are case-insensitive).
SCHEMES = ("bearer", "token")
REALM = "pipeline-runs"
CHALLENGE = f'Bearer realm="{REALM}"'

# The OpenAPI security schemes: Esper's own (unchanged, for clients generated from either)
# and the DRF keyword, an API key in the Authorization header (OpenAPI has no other way to
# declare a custom scheme). An operation accepts either (common.py SECURITY).
SECURITY_SCHEMES = {
    "SCAPIAuthToken": {"type": "http", "scheme": "bearer"},  # as Esper declares it, exactly
    "TokenAuth": {
        "type": "apiKey", "in": "header", "name": "Authorization",
        "description": "`Authorization: Token <token>` (Django REST framework style, as Esper's "
                       "clients send it; `Token` in any letter case): the same tokens as "
                       "SCAPIAuthToken. Enter the value with its `Token ` prefix."},
}
SECURITY = [{"SCAPIAuthToken": []}, {"TokenAuth": []}]  # either one

# One message per case. Unknown and revoked tokens share theirs (and the same query, so
# the same path): a caller cannot tell whether a token ever existed.
NO_CREDENTIALS = "authentication credentials were not provided: send Authorization: Bearer <token>"
UNSUPPORTED_SCHEME = ("unsupported authorization scheme: send Authorization: Bearer <token> "
                      "(or Token <token>)")
INVALID_TOKEN = "invalid token: unknown or revoked"


def _refused(message: str, error: str | None = None) -> Unauthorized:
    challenge = CHALLENGE if error is None else f'{CHALLENGE}, error="{error}"'
    return Unauthorized(message, headers={"WWW-Authenticate": challenge})


def _lacks(scope: str) -> Forbidden:
    challenge = f'{CHALLENGE}, error="insufficient_scope", scope="{scope}"'
    return Forbidden(f"this operation needs the scope {scope}",
                     headers={"WWW-Authenticate": challenge})


def credentials(header: str) -> str:
    """The token of an Authorization header value, or the Unauthorized to raise."""
    parts = header.split(None, 1)
    if not parts:
        raise _refused(NO_CREDENTIALS)
    if parts[0].lower() not in SCHEMES:
        raise _refused(UNSUPPORTED_SCHEME)
    if len(parts) == 1:  # "Bearer " alone: no credentials either (RFC 6750 3.1, no error code)
        raise _refused(NO_CREDENTIALS)
    return parts[1].strip()


def requires(scope: str) -> Callable:
    """Mark a handler with the scope its caller's token must carry."""

    def mark(handler):
        handler.__scope__ = scope
        return handler

    return mark


async def _principal(request: web.Request, token: str) -> Principal | None:
    # Cached briefly (TOKEN_CACHE_SECONDS) so a revoked token is refused within seconds.
    cache = request.app[TOKEN_CACHE]
    key = tokens.hash_token(token)
    hit = cache.get(key, time.monotonic())
    return hit if hit is not MISS else await _looked_up(request, cache, key, token)


async def _looked_up(request: web.Request, cache, key: bytes, token: str) -> Principal | None:
    timeout = request.app[CONFIG].pool_acquire_timeout  # bounds connecting too: 503, no hang
    with translated():
        async with asyncio.timeout(timeout):
            if cache.known(key):
                row = await _lookup(request, token)
            else:  # never seen valid: queue with the other unknown tokens (tokencache.py)
                async with cache.gate:
                    row = await _lookup(request, token)
    principal = None if row is None else Principal(
        row["id"], row["name"], row["enterprise_id"], frozenset(row["scopes"]),
        row["rate_limit"])
    cache.put(key, principal, time.monotonic())
    return principal


async def principal_for(request: web.Request, token: str) -> Principal | None:
    """Who a token is (None: unknown or revoked); the pages resolve their session's token."""
    return await _principal(request, token)


async def _lookup(request: web.Request, token: str):
    async with request.app[POOL].acquire() as conn:
        try:
            return await tokens.find(conn, token)
        except asyncio.TimeoutError:  # not answering: drop it (see handlers/common.connection)
            conn.terminate()
            raise


async def authenticate(request: web.Request, scope: str) -> None:
    """The caller of an operation needing `scope` (web/observe.py): who it is (else 401),
    its rate spent (else 429, or a wait for its turn), the scope it holds (else 403)."""
    token = credentials(request.headers.get("Authorization", ""))
    app = request.app
    # The cached case without a coroutine of its own: it is every request but the first.
    cache = app[TOKEN_CACHE]
    key = tokens.hash_token(token)
    principal = cache.get(key, time.monotonic())
    if principal is MISS:
        principal = await _looked_up(request, cache, key, token)
    if principal is None:
        raise _refused(INVALID_TOKEN, "invalid_token")
    request[PRINCIPAL] = principal
    delay = _spend(request, app, principal)
    if delay:  # over the rate, within RATE_LIMIT_DELAY_MS: its turn comes then
        await asyncio.sleep(delay)
    if scope not in principal.scopes:
        raise _lacks(scope)


def _spend(request: web.Request, app: web.Application, principal: Principal) -> float:
    state = app[RATE_LIMITER].take(principal.token_id, principal.rate_limit)
    if state is None:
        return 0.0
    request[RATE_STATE] = state[:2]  # the answer's headers (web/observe.py)
    return state[2]


async def charge(request: web.Request, principal: Principal) -> None:
    """Count a request against its token's rate (the API's and the pages' alike): over it,
    TooManyRequests; within RATE_LIMIT_DELAY_MS of its turn, it waits for it."""
    delay = _spend(request, request.app, principal)
    if delay:
        await asyncio.sleep(delay)


def require_scope(request: web.Request, scope: str) -> None:
    """For operations whose scope depends on their parameters (e.g. GET with as_of)."""
    if scope not in request[PRINCIPAL].scopes:
        raise _lacks(scope)
