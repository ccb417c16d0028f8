"""Bearer-token authentication and scope checks, with a short-lived token cache."""
from __future__ import annotations

import asyncio
import time
from typing import Callable

from aiohttp import web

from service.domain.errors import Forbidden, Unauthorized
from service.store import tokens as token_store
from service.store.errors import translated
from service.web.keys import CONFIG, POOL, PRINCIPAL, TOKEN_CACHE, Principal

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
    hit = cache.get(key)
    if hit is not None and hit[1] > now:
        return hit[0]
    timeout = request.app[CONFIG].pool_acquire_timeout  # bounds connecting too: 503, no hang
    with translated():
        async with request.app[POOL].acquire(timeout=timeout) as conn:
            try:
                row = await token_store.find_token(conn, token)
            except asyncio.TimeoutError:  # not answering: drop it (see api/common.connection)
                conn.terminate()
                raise
    principal = None if row is None else Principal(
        row["id"], row["name"], row["enterprise_id"], frozenset(row["scopes"]))
    if len(cache) > 10_000:
        cache.clear()
    cache[key] = (principal, now + request.app[CONFIG].token_cache_seconds)
    return principal


async def principal_for(request: web.Request, token: str) -> Principal | None:
    """Who a token is (None: unknown or revoked); the pages resolve their session's token."""
    return await _principal(request, token)


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
    if scope not in principal.scopes:
        raise Forbidden(f"this operation needs the scope {scope}")
    request[PRINCIPAL] = principal
    return await handler(request)


def require_scope(request: web.Request, scope: str) -> None:
    """For operations whose scope depends on their parameters (e.g. GET with as_of)."""
    if scope not in request[PRINCIPAL].scopes:
        raise Forbidden(f"this operation needs the scope {scope}")
