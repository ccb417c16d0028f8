"""OpenTelemetry tracing, installed only when OTEL_EXPORTER_OTLP_ENDPOINT is set.

`install(app, config)` (from create_app) adds, when tracing is on, the
opentelemetry-instrumentation-aiohttp-server middleware (a SERVER span per request that
continues the caller's W3C `traceparent`) and a cleanup_ctx that instruments asyncpg (a
CLIENT span per SQL statement) and exports spans over OTLP/HTTP. With tracing off nothing of
OpenTelemetry is imported, patched or called: the request path is the same as without it.

The current request's trace id goes to logs.TRACE_ID (the request id's neighbour), so every
log line and the `data` of every event the request appends carry it.

Global state, all of it forced by OpenTelemetry's API: the W3C propagator and the current
span live in OTel's global propagator and context (contextvars); the aiohttp-server
instrumentation keeps its settings in module globals that only its instrumentor fills; the
asyncpg instrumentation patches asyncpg's classes, so it covers every connection of the
process (a second traced app in one process shares the first one's instrumentation). Our
TracerProvider is not made the global one: it is handed to both instrumentations.
"""
from __future__ import annotations

import logging
import warnings
from typing import TYPE_CHECKING, AsyncIterator

from aiohttp import web

from service.config import Config
from service.infra import logs

if TYPE_CHECKING:  # imported only when tracing is on
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SpanExporter

log = logging.getLogger(__name__)


def install(app: web.Application, config: Config,
            exporter: "SpanExporter | None" = None) -> bool:
    """Trace `app` when OTEL_EXPORTER_OTLP_ENDPOINT is set (or `exporter` is given: tests
    hand an in-memory one); returns whether it does. Call before the app starts."""
    if not config.otel_endpoint and exporter is None:
        return False
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider

    provider = TracerProvider(resource=Resource.create({"service.name": config.otel_service_name}))
    app.middlewares.insert(0, _middleware(provider))
    app.cleanup_ctx.append(_tracing_ctx(provider, config, exporter))
    return True


def _middleware(provider: "TracerProvider"):
    """The instrumentation's span around the request; inside it, logs.TRACE_ID is set."""
    from opentelemetry import trace
    from opentelemetry.instrumentation import aiohttp_server

    # The instrumentation's middleware reads settings (excluded URLs, semantic-convention
    # mode, meters) that only its instrumentor's instrument() fills in. instrument() also
    # swaps web.Application for a subclass adding the middleware to every app made later;
    # we add it to this app only, so the swap is undone at once (aiohttp warns about the
    # subclass it defines).
    instrumentor = aiohttp_server.AioHttpServerInstrumentor()
    if not instrumentor.is_instrumented_by_opentelemetry:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", "Inheritance class", DeprecationWarning)
            instrumentor.instrument(tracer_provider=provider)
        instrumentor.uninstrument()
    traced = aiohttp_server.create_aiohttp_middleware(tracer_provider=provider)

    async def with_trace_id(request: web.Request, handler) -> web.StreamResponse:
        context = trace.get_current_span().get_span_context()
        token = logs.TRACE_ID.set(trace.format_trace_id(context.trace_id)
                                  if context.is_valid else None)
        try:
            return await handler(request)
        finally:
            logs.TRACE_ID.reset(token)

    @web.middleware
    async def trace_requests(request: web.Request, handler) -> web.StreamResponse:
        return await traced(request, lambda req: with_trace_id(req, handler))

    return trace_requests


def _tracing_ctx(provider: "TracerProvider", config: Config, exporter: "SpanExporter | None"):
    async def tracing(app: web.Application) -> AsyncIterator[None]:
        from opentelemetry.instrumentation.asyncpg import AsyncPGInstrumentor
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor

        if exporter is None:  # the batch processor's thread starts here: after a fork
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            endpoint = config.otel_endpoint.rstrip("/") + "/v1/traces"
            provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint)))
            log.info("tracing: spans to %s", endpoint)
        else:
            provider.add_span_processor(SimpleSpanProcessor(exporter))
        sql = AsyncPGInstrumentor()
        ours = not sql.is_instrumented_by_opentelemetry
        if ours:
            sql.instrument(tracer_provider=provider)
        try:
            yield
        finally:
            if ours:
                sql.uninstrument()
            provider.shutdown()  # exports what is still queued

    return tracing
