"""create_app(config): middlewares, the routes of every mount, OpenAPI, the pool's lifecycle."""
from __future__ import annotations

import asyncio
import contextlib
import logging
import warnings
from typing import AsyncIterator

from aiohttp import web
from aiohttp_apispec import AiohttpApiSpec

from . import db
from .api import events, health, pipelines, runs, stage_runs
from .config import Config
from .http.auth import auth_middleware
from .feedwait import FeedWaiters
from .http.keys import CONFIG, FEED_WAITERS, POOL, TOKEN_CACHE
from .http.middleware import error_middleware
from .http.validation import validation_middleware
from .store import meta
from .sweeper import run_forever

log = logging.getLogger(__name__)

# `/pipelines/v0` is canonical (the seed's paths, documented in OpenAPI); Esper clients call
# `/api/pipelines/v0` (their server URL ends in /api); the seed also writes `/v0/runs`.
CANONICAL_MOUNT = "/pipelines/v0"
MOUNTS = (CANONICAL_MOUNT, "/api/pipelines/v0", "/v0")
RESOURCE_ROUTES = (*pipelines.routes, *runs.routes, *stage_runs.routes, *events.routes)

API_DESCRIPTION = """Esper pipelines-v0 Pipeline Runs API on an event-sourced store.

Every route is also served under `/api/pipelines/v0` and `/v0`, and with or without the
trailing slash. Every response is an envelope `{code, message, content}`."""


class _CanonicalApiSpec(AiohttpApiSpec):
    """Documents each operation once: the canonical mount, with the trailing slash."""

    def _register_route(self, route, method, view):
        path = route.resource.canonical if route.resource else ""
        if path.startswith(CANONICAL_MOUNT + "/") and path.endswith("/"):
            super()._register_route(route, method, view)


async def _pool_ctx(app: web.Application) -> AsyncIterator[None]:
    config = app[CONFIG]
    log.info("connecting to %s", db.redact_dsn(config.database_url))
    pool = await db.create_pool(config, config.database_url)
    try:
        async with pool.acquire() as conn:
            await meta.ping(conn)
        app[POOL] = pool
        waiters = FeedWaiters(config.database_url)
        await waiters.start()
        app[FEED_WAITERS] = waiters
        sweeper = asyncio.create_task(run_forever(pool, config.timeout_sweep_seconds))
        try:
            yield
        finally:
            sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sweeper
            await waiters.stop()
    finally:
        await pool.close()


def _add_routes(app: web.Application) -> None:
    for method, path, handler in health.routes:
        app.router.add_route(method, path, handler)
    for mount in MOUNTS:
        for method, path, handler in RESOURCE_ROUTES:
            full = mount + path
            app.router.add_route(method, full, handler)
            app.router.add_route(method, full.rstrip("/"), handler)


def _setup_openapi(app: web.Application) -> None:
    # aiohttp-apispec keeps its state under plain string app keys; that is its API, not ours.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", web.NotAppKeyWarning)
        _register_openapi(app)


def _register_openapi(app: web.Application) -> None:
    spec = _CanonicalApiSpec(
        url="/api/docs/swagger.json", app=app, swagger_path="/api/docs", in_place=True,
        title="pipeline-runs", version="0.1.0", openapi_version="3.0.3",
        info={"description": API_DESCRIPTION},
    )
    spec.spec.components.security_scheme("SCAPIAuthToken", {"type": "http", "scheme": "bearer"})
    app["swagger_dict"] = spec.swagger_dict()


def create_app(config: Config) -> web.Application:
    if not config.database_url:
        raise ValueError("config.database_url is required (the CLI starts embedded PostgreSQL)")
    app = web.Application(
        middlewares=[error_middleware, auth_middleware, validation_middleware],
        client_max_size=config.max_body_bytes,
    )
    app[CONFIG] = config
    app[TOKEN_CACHE] = {}
    _add_routes(app)
    _setup_openapi(app)
    app.cleanup_ctx.append(_pool_ctx)
    return app
