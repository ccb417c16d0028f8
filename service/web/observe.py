"""The one middleware: request id, auth and rate limit, validation, errors as envelopes,
metrics and the access line.

One middleware rather than five because each layer of aiohttp's chain is a call and a
coroutine of its own on every request; what a route needs (its template, scope, schemas
and their fast loaders) is resolved once, at its first request, not looked up per request.
"""
from __future__ import annotations

import asyncio
from dataclasses import dataclass
from time import perf_counter

from aiohttp import web

from service.domain.errors import DomainError
from service.infra import logs
from service.infra.metrics import UNMATCHED, Metrics
from service.infra.appended import APPENDED
from service.web import validation
from service.web.auth import PUBLIC_PREFIXES, authenticate
from service.web.keys import (CLIENT_GONE, FEED_ANNOUNCED, FEED_WAITERS, PAGE_POLICY, PARSED,
                              PRINCIPAL, RATE_STATE, REQUEST_ID, item)
from service.web.middleware import (check_url_length, domain_error, http_error, request_id_of,
                                    unknown_error)
from service.web.pages.session import PREFIX as PAGES_PREFIX
from service.web.pages.session import PAGE_HEADERS, page_headers

CLIENT_CLOSED = 499  # the status recorded when the caller went away mid-request
READS = frozenset(("GET", "HEAD", "OPTIONS"))


@dataclass(frozen=True, slots=True)
class RoutePlan:
    """What the middleware does for one route."""

    label: str  # the route template: the metrics' label and the access line's route
    scope: str | None  # the scope its token must hold; None: no token asked for
    loaders: tuple[validation.Loader, ...]  # its declared input
    pages: bool  # a /ui/ page: through the pages' session middleware


def plan_of(route, path: str) -> RoutePlan:
    resource = route.resource
    label = UNMATCHED if resource is None else resource.canonical
    scope = getattr(route.handler, "__scope__", None)
    if label.startswith(PUBLIC_PREFIXES):
        scope = None
    pages = (label if resource is not None else path).startswith(PAGES_PREFIX)
    return RoutePlan(label, scope, validation.loaders_of(route.handler), pages)


def _committed(request: web.Request) -> None:
    """A write answered (so committed): wake its enterprise's feed readers (feedwait.py).

    Every successful write, not only those that appended: a spurious wake-up costs a
    waiting reader one query, a missed one would cost it its whole wait.
    """
    principal, waiters = request.get(PRINCIPAL), request.app.get(FEED_WAITERS)
    if principal is not None and waiters is not None:
        waiters.notify(principal.enterprise_id, request.get(FEED_ANNOUNCED, False))


async def _guarded(request: web.Request, handler, plan: RoutePlan) -> web.StreamResponse:
    """Authenticate, validate, handle: the part of a page request inside its session."""
    if plan.scope is not None:
        await authenticate(request, plan.scope)
    request[PARSED] = await validation.parse(request, plan.loaders) if plan.loaders else {}
    return await handler(request)


def _answer_headers(request: web.Request, response: web.StreamResponse, plan: RoutePlan,
                    request_id: str) -> None:
    """The headers every answer carries: its request id, where its token's rate limit
    stands, and a /ui/ answer's page headers (pages/session.py). Added here, not as an
    on_response_prepare signal, which costs every response a few µs; a stream, whose
    headers go out before its handler returns, takes them itself (keys.stream_headers)."""
    headers = response.headers
    headers["X-Request-ID"] = request_id
    if response.prepared:
        return
    state = item(request, RATE_STATE)
    if state is not None:
        headers["RateLimit-Policy"], headers["RateLimit"] = state
    if plan.pages:
        page_headers(response)


def observe_middleware(metrics: Metrics, pages=None):
    """Bound to one app's metrics (the hot path looks nothing up on the app); `pages`: the
    middleware /ui/ requests go through (their session, web/pages/session.py)."""
    observe = metrics.observe_request
    count_appended = metrics.count_appended
    plans: dict = {}  # route -> RoutePlan, for the app's own routes (not 404 / 405's)

    @web.middleware
    async def serve(request: web.Request, handler) -> web.StreamResponse:
        started = perf_counter()
        request_id = request_id_of(request)
        request[REQUEST_ID] = request_id
        id_token = logs.REQUEST_ID.set(request_id)
        pending: list = []
        appended_token = APPENDED.set(pending)
        route = request.match_info.route
        plan = plans.get(route)
        if plan is None:
            plan = plan_of(route, request.path)
            if route.resource is not None:  # aiohttp makes a new route per 404 / 405
                plans[route] = plan
        status = 500
        metrics.in_flight += 1
        try:
            try:
                check_url_length(request.raw_path)
                if plan.pages and pages is not None:
                    request[PAGE_POLICY] = PAGE_HEADERS  # for its streams (keys.stream_headers)
                    response = await pages(request, lambda r: _guarded(r, handler, plan))
                else:
                    if plan.scope is not None:
                        await authenticate(request, plan.scope)
                    request[PARSED] = (await validation.parse(request, plan.loaders)
                                       if plan.loaders else {})
                    response = await handler(request)
            except DomainError as exc:
                response = domain_error(exc)
            except web.HTTPException as exc:
                if exc.status < 400:  # redirects: aiohttp answers them
                    status = exc.status
                    _answer_headers(request, exc, plan, request_id)
                    raise
                response = http_error(exc)
            except asyncio.CancelledError:
                status = CLIENT_CLOSED
                raise
            except Exception:
                response = unknown_error(request_id)
            _answer_headers(request, response, plan, request_id)
            status = CLIENT_CLOSED if item(request, CLIENT_GONE) else response.status
            if request.method not in READS and status < 400:
                _committed(request)
            return response
        finally:
            metrics.in_flight -= 1
            seconds = perf_counter() - started
            observe(request.method, plan.label, status, seconds)
            if pending and status < 400:  # >= 400: the transaction rolled back
                count_appended(pending)
            principal = item(request, PRINCIPAL)
            logs.log_request(request.method, plan.label, request.path, status,
                             round(seconds * 1000, 3),
                             principal.enterprise_id if principal else None,
                             principal.name if principal else None)
            APPENDED.reset(appended_token)
            logs.REQUEST_ID.reset(id_token)

    return serve
