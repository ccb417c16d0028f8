"""Typed keys shared by the app, the middlewares and the handlers."""
from __future__ import annotations

import asyncio
from dataclasses import dataclass

import asyncpg
from aiohttp import web

from service.config import Config


@dataclass(frozen=True)
class Principal:
    """Who is calling: the token's id, name, enterprise and scopes."""

    token_id: int
    name: str
    enterprise_id: str
    scopes: frozenset[str]


CONFIG = web.AppKey("config", Config)
POOL = web.AppKey("pool", asyncpg.Pool)
# Request handlers take a pool connection in arrival order through this (web/handlers/common.py).
POOL_SLOTS = web.AppKey("pool_slots", asyncio.Semaphore)
TOKEN_CACHE = web.AppKey("token_cache", dict)
FEED_WAITERS = web.AppKey("feed_waiters", object)  # service.infra.feedwait.FeedWaiters
GROUP_COMMIT = web.AppKey("group_commit", object)  # service.app.groupcommit.GroupCommit or None
METRICS = web.AppKey("metrics", object)  # service.infra.metrics.Metrics
WEBHOOK_SENDER = web.AppKey("webhook_sender", object)  # service.app.webhook_http.Sender
# Optional: an object whose hold(request) is a context manager counting a caller's open
# waits (long-polls and streams) and refusing one over its cap. Unset: no cap.
WAIT_GUARD = web.AppKey("wait_guard", object)
METRICS_RUNNER = web.AppKey("metrics_runner", web.AppRunner)  # the METRICS_PORT server

PRINCIPAL = web.RequestKey("principal", Principal)
REQUEST_ID = web.RequestKey("request_id", str)
# Validated input by location ("match_info", "querystring", "json").
PARSED = web.RequestKey("parsed", dict)
