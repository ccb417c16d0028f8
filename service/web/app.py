"""create_app(config): middlewares, the routes of every mount, OpenAPI, the pool's lifecycle."""
from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import warnings
from typing import AsyncIterator

from aiohttp import web
from aiohttp_apispec import AiohttpApiSpec

from service.infra import db
from service.web.handlers import (
    audit_chain, events, exports, health, insights, pipelines, root, runs, stage_runs, stream,
    webhooks,
)
from service.infra.signing import load_signer
from service.config import Config
from service.web import pages
from service.web.auth import SECURITY_SCHEMES
from service.web.pages.session import ui_sessions
from service.infra.replicas import ReplicaSet
from service.app import database, positions
from service.app import runs as run_cases
from service.app.groupcommit import GroupCommit
from service.web.keys import (
    CONFIG,
    DISPATCHER,
    FEED_WAITERS,
    GROUP_COMMIT,
    METRICS,
    METRICS_RUNNER,
    POOL,
    POOL_SLOTS,
    RATE_LIMITER,
    READINESS,
    REPLICAS,
    SIGNER,
    TOKEN_CACHE,
    WEBHOOK_SENDER,
    WAIT_CAP,
)
from service.web.handlers.health import Readiness
from service.web.limits import RateLimiter, WaitCap
from service.web.slots import FairSlots
from service.web.tokencache import TokenCache
from service.web.observe import observe_middleware
from service.web.schemas import document_empty_values
from service.infra import tracing
from service.infra.metrics import Metrics, metrics_app
from service.infra.metrics import handler as metrics_handler
from service.app.statistics import run_forever as keep_statistics
from service.app.sweeper import run_forever
from service.app.dispatcher import Dispatcher
from service.app.webhook_http import Sender, Targets

log = logging.getLogger(__name__)

# `/pipelines/v0` is canonical (the seed's paths, documented in OpenAPI); Esper clients call
# `/api/pipelines/v0` (their server URL ends in /api); the seed also writes `/v0/runs`.
CANONICAL_MOUNT = "/pipelines/v0"
MOUNTS = (CANONICAL_MOUNT, "/api/pipelines/v0", "/v0")
RESOURCE_ROUTES = (*pipelines.routes, *runs.routes, *stage_runs.routes, *events.routes,
                   *exports.routes, *stream.routes, *webhooks.routes, *insights.routes,
                   *audit_chain.routes)

API_DESCRIPTION = """Esper pipelines-v0 Pipeline Runs API on an event-sourced store.

Every route is also served under `/api/pipelines/v0` and `/v0`, and with or without the
trailing slash. Every response is an envelope `{code, message, content}`."""


class _CanonicalApiSpec(AiohttpApiSpec):
    """Documents each operation once: the canonical mount, with the trailing slash."""

    def _register_route(self, route, method, view):
        path = route.resource.canonical if route.resource else ""
        canonical = path.startswith(CANONICAL_MOUNT + "/") and path.endswith("/")
        documented = canonical or path.startswith("/health/") or path in root.PATHS
        if documented and hasattr(view, "__apispec__"):
            # The library pops and extends the handler's own declaration; hand it a copy so
            # every app built in this process (tests build many) documents the same thing.
            data = view.__apispec__
            declared = {**data, "schemas": list(data["schemas"]),
                        "parameters": list(data["parameters"]), "responses": dict(data["responses"])}
            self._update_paths(declared, method, self.prefix + path)


async def _pool_ctx(app: web.Application) -> AsyncIterator[None]:
    config = app[CONFIG]
    log.info("connecting to %s", db.redact_dsn(config.database_url))
    pool = await db.create_pool(config, config.database_url)
    try:
        async with pool.acquire() as conn:
            await database.ping(conn)
            unprotected = await database.unprotected_because(conn)  # readiness reports it
        app[POOL] = pool
        app[POOL_SLOTS] = FairSlots(config.pool_max, functools.partial(db.release_later, pool))
        app[READINESS] = Readiness(pool, config.pool_acquire_timeout, unprotected)
        app[METRICS].pool = pool
        # Lanes: a quarter of the pool. 100 enterprises writing at once (bench, pool of 10):
        # 1, 2, 3, 5, 8 lanes made 904, 1034, 894, 887, 729 status changes/s: fewer, larger
        # groups do as well as more statements at once, and leave the pool to the reads.
        app[GROUP_COMMIT] = (GroupCommit(pool, config.pool_acquire_timeout,
                                         run_cases.grouped, positions.announced_position,
                                         lanes=config.pool_max // 4,
                                         depth=config.group_commit_depth)
                             if config.group_commit else None)
        replicas = await _start_replicas(app)
        waiters = positions.feed_waiters(config, pool, track_position=replicas is not None)
        await waiters.start()
        app[FEED_WAITERS] = waiters
        tasks = [asyncio.create_task(run_forever(pool, config.timeout_sweep_seconds,
                                                 app[METRICS], waiters.notify))]
        if config.analyze_check_seconds > 0:
            tasks.append(asyncio.create_task(
                keep_statistics(pool, config.analyze_check_seconds)))
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            await waiters.stop()
            if replicas is not None:
                await replicas.stop()
    finally:
        await db.close_pool(pool, config.pool_acquire_timeout)


async def _webhooks_ctx(app: web.Application) -> AsyncIterator[None]:
    """The webhook sender (pings use it too) and, with WEBHOOKS=on, the dispatcher task."""
    config = app[CONFIG]
    sender = Sender(Targets(config.webhook_allowed_hosts, config.webhook_allowed_networks or ()),
                    config.webhook_timeout_seconds)
    await sender.start()
    app[WEBHOOK_SENDER] = sender
    dispatcher = task = None
    if config.webhooks:
        dispatcher = Dispatcher(app[POOL], sender, config.webhook_retry_schedule,
                                config.webhook_concurrency, app[METRICS], app[FEED_WAITERS],
                                config.webhook_concurrency_per_enterprise)
        task = asyncio.create_task(dispatcher.run_forever())
    app[DISPATCHER] = dispatcher
    try:
        yield
    finally:
        if task is not None:
            await dispatcher.stop()
            try:  # its current pass ends; sends in flight are dropped (their leases run out)
                await asyncio.wait_for(asyncio.shield(task), config.shutdown_timeout)
            except asyncio.TimeoutError:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        await sender.close()


async def _start_replicas(app: web.Application) -> ReplicaSet | None:
    """READ_DATABASE_URLS: the standbys reads may go to (infra/replicas.py)."""
    config = app[CONFIG]
    if not config.read_database_urls:
        return None
    replicas = positions.replica_set(config)
    await replicas.start()
    for replica in replicas.replicas:
        log.info("read replica %s: %s", replica.name,
                 "in rotation" if replica.healthy else replica.reason)
    app[REPLICAS] = replicas
    app[METRICS].replicas = replicas
    return replicas


async def _wake_long_polls(app: web.Application) -> None:
    """on_shutdown (after the listening sockets closed): long-polls answer now, not at wait."""
    waiters = app.get(FEED_WAITERS)
    if waiters is not None:
        waiters.wake_all()


async def _metrics_server_ctx(app: web.Application) -> AsyncIterator[None]:
    """METRICS_PORT set: /metrics is served there, on METRICS_HOST (loopback by default)."""
    config = app[CONFIG]
    runner = web.AppRunner(metrics_app(app[METRICS]), access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, config.metrics_host, config.metrics_port).start()
        app[METRICS_RUNNER] = runner
        log.info("metrics on http://%s:%d/metrics", config.metrics_host, runner.addresses[0][1])
        yield
    finally:
        await runner.cleanup()


def _add_routes(app: web.Application) -> None:
    for method, path, handler in (*health.routes, *root.routes):
        app.router.add_route(method, path, handler)
    # One resource per path with all its methods, and the run routes first, one run's
    # before the lists': the router tries a prefix's resources in order (a coroutine and a
    # regex each), so the hot paths (a run's GET and PUT) match first.
    methods: dict[str, list] = {}
    hot = sorted(runs.routes, key=lambda route: route[1] != runs.RUN_PATH)
    for method, path, handler in (*hot, *RESOURCE_ROUTES):
        if (method, handler) not in methods.setdefault(path, []):
            methods[path].append((method, handler))
    for mount in MOUNTS:
        for path, routes in methods.items():
            for variant in (mount + path, (mount + path).rstrip("/")):
                resource = app.router.add_resource(variant)
                for method, handler in routes:
                    resource.add_route(method, handler)


def _openapi3_only(document: dict) -> dict:
    """Turn the Swagger 2 leftovers of aiohttp-apispec into OpenAPI 3.

    It adds `produces` to every operation and documents JSON bodies as `in: body`
    parameters; OpenAPI 3 wants a requestBody instead. Bodies accept unknown fields (and
    ignore them), which apispec leaves unsaid for EXCLUDE schemas.
    """
    schemas = document.get("components", {}).get("schemas", {})
    for operations in document.get("paths", {}).values():
        for operation in operations.values():
            if not isinstance(operation, dict):
                continue
            operation.pop("produces", None)
            params = operation.get("parameters", [])
            for body in [p for p in params if p.get("in") == "body"]:
                params.remove(body)
                name = body["schema"].get("$ref", "").rsplit("/", 1)[-1]
                # Bodies ignore the fields they do not know (web/schemas.py Body): say so.
                schemas.get(name, {})["additionalProperties"] = True
                operation["requestBody"] = {
                    "required": bool(schemas.get(name, {}).get("required")),
                    "content": {"application/json": {"schema": body["schema"]}},
                }
    return document


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
    for name, scheme in SECURITY_SCHEMES.items():
        spec.spec.components.security_scheme(name, scheme)
    app["swagger_dict"] = _other_media(document_empty_values(_openapi3_only(spec.swagger_dict())))


def _other_media(document: dict) -> dict:
    """The 200 answers of handlers that stream other media (exports), as they declare."""
    for method, path, handler in RESOURCE_ROUTES:
        media, replacing = getattr(handler, "__produces__", ({}, False))
        if media:
            answer = document["paths"][CANONICAL_MOUNT + path][method.lower()]["responses"]["200"]
            answer["content"] = {**({} if replacing else answer.get("content", {})), **media}
    return document


def create_app(config: Config, *, span_exporter=None) -> web.Application:
    """The app; `span_exporter` (tests) receives its spans instead of an OTLP collector."""
    if not config.database_url:
        raise ValueError("config.database_url is required (the CLI starts embedded PostgreSQL)")
    metrics = Metrics()
    app = web.Application(
        middlewares=[observe_middleware(metrics, pages=ui_sessions(config))],
        client_max_size=config.max_body_bytes,
    )
    app[CONFIG] = config
    app[METRICS] = metrics
    app[TOKEN_CACHE] = TokenCache(config.token_cache_seconds)
    app[RATE_LIMITER] = RateLimiter(config.rate_limit_rps, config.rate_limit_burst,
                                    config.rate_limit_delay_ms / 1000)
    app[WAIT_CAP] = WaitCap(config.max_waits_per_token)
    app[SIGNER] = load_signer(config.audit_key_path)  # checkpoints' key (AUDIT_KEY_FILE)
    _add_routes(app)
    pages.setup(app)
    _setup_openapi(app)
    app.cleanup_ctx.append(_pool_ctx)
    app.cleanup_ctx.append(_webhooks_ctx)
    tracing.install(app, config, span_exporter)  # OTEL_EXPORTER_OTLP_ENDPOINT set: traced
    app.on_shutdown.append(_wake_long_polls)
    if config.metrics_on_api_port:  # the old way, only when asked for: anyone may read
        app.router.add_get("/metrics", metrics_handler(metrics))
    if config.metrics_port is not None:
        app.cleanup_ctx.append(_metrics_server_ctx)
    return app
