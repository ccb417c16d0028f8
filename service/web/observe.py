"""The outermost middleware: request id, metrics and the one access log line per request."""
from __future__ import annotations

import asyncio
import logging
from time import perf_counter

from aiohttp import web

from service.infra import logs
from service.infra.metrics import UNMATCHED, Metrics
from service.infra.appended import APPENDED
from service.web.keys import CLIENT_GONE, FEED_WAITERS, PRINCIPAL, REQUEST_ID
from service.web.middleware import request_id_of

CLIENT_CLOSED = 499  # the status recorded when the caller went away mid-request
READS = frozenset(("GET", "HEAD", "OPTIONS"))


def _committed(request: web.Request) -> None:
    """A write answered (so committed): wake its enterprise's feed readers (feedwait.py).

    Every successful write, not only those that appended: a spurious wake-up costs a
    waiting reader one query, a missed one would cost it its whole wait.
    """
    principal, waiters = request.get(PRINCIPAL), request.app.get(FEED_WAITERS)
    if principal is not None and waiters is not None:
        waiters.notify(principal.enterprise_id)


def observe_middleware(metrics: Metrics):
    """Bound to one app's metrics, so the hot path looks nothing up on the app."""
    observe = metrics.observe_request
    count_appended = metrics.count_appended

    @web.middleware
    async def observe_requests(request: web.Request, handler) -> web.StreamResponse:
        started = perf_counter()
        request_id = request_id_of(request)
        request[REQUEST_ID] = request_id
        id_token = logs.REQUEST_ID.set(request_id)
        pending: list = []
        appended_token = APPENDED.set(pending)
        status = 500
        metrics.in_flight += 1
        try:
            response = await handler(request)
            status = CLIENT_CLOSED if request.get(CLIENT_GONE) else response.status
            if request.method not in READS and status < 400:
                _committed(request)
            return response
        except web.HTTPException as exc:  # redirects (errors became envelopes inside)
            status = exc.status
            raise
        except asyncio.CancelledError:
            status = CLIENT_CLOSED
            raise
        finally:
            metrics.in_flight -= 1
            seconds = perf_counter() - started
            resource = request.match_info.route.resource
            route = UNMATCHED if resource is None else resource.canonical
            observe(request.method, route, status, seconds)
            if pending and status < 400:  # >= 400: the transaction rolled back
                count_appended(pending)
            if logs.ACCESS.isEnabledFor(logging.INFO):
                principal = request.get(PRINCIPAL)
                logs.log_access({
                    "method": request.method, "route": route, "path": request.path,
                    "status": status, "duration_ms": round(seconds * 1000, 3),
                    "enterprise": principal.enterprise_id if principal else None,
                    "actor": principal.name if principal else None,
                })
            APPENDED.reset(appended_token)
            logs.REQUEST_ID.reset(id_token)

    return observe_requests
