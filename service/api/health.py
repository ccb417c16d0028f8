"""Liveness and readiness probes (no token needed)."""
from __future__ import annotations

import asyncio

from aiohttp import web

from ..http.envelope import envelope
from ..http.keys import CONFIG, POOL
from ..store import meta


async def live(request: web.Request) -> web.Response:
    return envelope({"status": "live"})


async def ready(request: web.Request) -> web.Response:
    timeout = request.app[CONFIG].pool_acquire_timeout
    try:
        async with asyncio.timeout(timeout):
            async with request.app[POOL].acquire() as conn:
                await meta.ping(conn)
    except Exception:  # any failure to answer SELECT 1 means "not ready"
        return envelope({"status": "unavailable"}, 503, "database unavailable")
    return envelope({"status": "ready"})


routes = [("GET", "/health/live", live), ("GET", "/health/ready", ready)]
