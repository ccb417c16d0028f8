"""Bearer-token authentication and scope checks, with a short-lived token cache."""
from __future__ import annotations

import asyncio
import time
from typing import Callable

from aiohttp import web

from service.domain.errors import Forbidden, Unauthorized
from service.store import tokens as token_store
from service.store.errors import translated
from service.web.keys import (CONFIG, POOL, PRINCIPAL, RATE_LIMITER, RATE_STATE, TOKEN_CACHE,
                              Principal)
from service.web.tokencache import MISS

PUBLIC_PREFIXES = ("/health/", "/api/docs", "/static/swagger")


def requires(scope: str) -> Callable:
    """Mark a handler with the scope its caller's token must carry."""

    def mark(handler):
        handler.__scope__ = scope
        return handler

    return mark


async def _principal(request: web.Request, token: str) -> Principal | None:
    # Cached briefly (TOKEN_CACHE_SECONDS) so a revoked token is refused within seconds.
    cache = request.app[TOKEN_CACHE]
    key = token_store.hash_token(token)
    now = time.monotonic()
    hit = cache.get(key, now)
    if hit is not MISS:
        return hit
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


async def _lookup(request: web.Request, token: str):
    async with request.app[POOL].acquire() as conn:
        try:
            return await token_store.find_token(conn, token)
        except asyncio.TimeoutError:  # not answering: drop it (see handlers/common.connection)
            conn.terminate()
            raise


@web.middleware
async def auth_middleware(request: web.Request, handler) -> web.StreamResponse:
    scope = getattr(request.match_info.handler, "__scope__", None)
    if scope is None or request.path.startswith(PUBLIC_PREFIXES):
        return await handler(request)
    header = request.headers.get("Authorization", "")
    kind, _, token = header.partition(" ")
    if kind.lower() != "bearer" or not token.strip():
        raise Unauthorized()
    principal = await _principal(request, token.strip())
    if principal is None:
        raise Unauthorized()
    request[PRINCIPAL] = principal
    state = request.app[RATE_LIMITER].take(principal.token_id, principal.rate_limit)
    if state is not None:
        request[RATE_STATE] = state  # headers added as the response is sent (web/app.py)
    if scope not in principal.scopes:
        raise Forbidden(f"this operation needs the scope {scope}")
    return await handler(request)


def require_scope(request: web.Request, scope: str) -> None:
    """For operations whose scope depends on their parameters (e.g. GET with as_of)."""
    if scope not in request[PRINCIPAL].scopes:
        raise Forbidden(f"this operation needs the scope {scope}")
