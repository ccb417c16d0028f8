"""Typed keys shared by the app, the middlewares and the handlers."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import asyncpg
from aiohttp import web

from service.config import Config
from service.web.limits import RateLimiter, WaitCap
from service.web.slots import FairSlots
from service.web.tokencache import TokenCache


@dataclass(frozen=True)
class Principal:
    """Who is calling: the token's id, name, enterprise and scopes."""

    token_id: int
    name: str
    enterprise_id: str
    scopes: frozenset[str]
    rate_limit: int | None = None  # requests/s of this token (create-token --rate-limit)


CONFIG = web.AppKey("config", Config)
POOL = web.AppKey("pool", asyncpg.Pool)
# Request handlers take a pool connection through this, round-robin across enterprises
# (web/slots.py, web/handlers/common.py).
POOL_SLOTS = web.AppKey("pool_slots", FairSlots)
TOKEN_CACHE = web.AppKey("token_cache", TokenCache)
RATE_LIMITER = web.AppKey("rate_limiter", RateLimiter)
WAIT_CAP = web.AppKey("wait_cap", WaitCap)  # long-polls / streams open per token
READINESS = web.AppKey("readiness", object)  # web.handlers.health.Readiness
FEED_WAITERS = web.AppKey("feed_waiters", object)  # service.infra.feedwait.FeedWaiters
GROUP_COMMIT = web.AppKey("group_commit", object)  # service.app.groupcommit.GroupCommit or None
METRICS = web.AppKey("metrics", object)  # service.infra.metrics.Metrics
WEBHOOK_SENDER = web.AppKey("webhook_sender", object)  # service.app.webhook_http.Sender
DISPATCHER = web.AppKey("dispatcher", object)  # service.app.dispatcher.Dispatcher or None
REPLICAS = web.AppKey("replicas", object)  # service.infra.replicas.ReplicaSet (or None)
METRICS_RUNNER = web.AppKey("metrics_runner", web.AppRunner)  # the METRICS_PORT server
SIGNER = web.AppKey("signer", object)  # service.infra.signing.Signer: signs checkpoints

PRINCIPAL = web.RequestKey("principal", Principal)
# (quota, window, remaining, reset) of the caller's rate limit, for the response headers.
RATE_STATE = web.RequestKey("rate_state", tuple)
REQUEST_ID = web.RequestKey("request_id", str)
# The caller went away before its answer was complete (an abandoned export): logged as 499.
CLIENT_GONE = web.RequestKey("client_gone", bool)
# Validated input by location ("match_info", "querystring", "json").
PARSED = web.RequestKey("parsed", dict)
# The request's read/write routing and consistency-token state (web/consistency.py).
CONSISTENCY = web.RequestKey("consistency", object)
# Set when the request's writes so far were announced to the feed's readers in every process
# after their commit (a group commit's wake-up: app/groupcommit.py); cleared by any later
# write connection. web/observe.py then sends no wake-up (infra/feedwait.py notify).
FEED_ANNOUNCED = web.RequestKey("feed_announced", bool)
# A /ui/ request's answer headers (pages/session.py PAGE_HEADERS), set by web/observe.py.
PAGE_POLICY = web.RequestKey("page_policy", dict)


def item(request: web.Request, key: web.RequestKey) -> Any:
    """request.get(key) in one dict lookup. A request's Mapping.get raises and catches a
    KeyError for a key it lacks, and every request lacks some the hot path asks for (an
    Idempotency-Key's connection, CLIENT_GONE)."""
    try:
        return request._state.get(key)
    except AttributeError:  # not aiohttp's Request (a stand-in): its own mapping
        return request.get(key)


def stream_headers(request: web.Request) -> dict[str, str]:
    """What web/observe.py adds to every answer it returns, for an answer whose headers go
    out before its handler returns (a stream, an export): where the token's rate limit
    stands, a page's policy."""
    state = item(request, RATE_STATE)
    headers = {} if state is None else {"RateLimit-Policy": state[0], "RateLimit": state[1]}
    policy = item(request, PAGE_POLICY)
    if policy:
        headers.update(policy)
    return headers
