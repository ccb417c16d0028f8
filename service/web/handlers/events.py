"""Audit reads: a run's history and the enterprise change feed (with long-poll)."""
from __future__ import annotations

import time

from aiohttp import web

from service.web.consistency import require
from service.web.envelope import envelope
from service.web.keys import FEED_WAITERS
from service.store import events as store
from service.web import schemas as s
from service.web.handlers.common import connection, operation, page, path, principal, query

AUDIT = "audit:read"
TAG = "Audit"


@operation(scope=AUDIT, tag=TAG, summary="A run's events in version order (kept after delete)",
           path=s.RunPath, query=s.PageQuery, response=s.EventListEnvelope)
async def run_events(request: web.Request) -> web.Response:
    p, q = path(request), query(request)
    async with connection(request) as conn:
        total, items = await store.run_history(
            conn, principal(request).enterprise_id, p["pipeline_id"], p["pipeline_run_id"],
            q["limit"], q["offset"])
    return page(request, total, items, q["limit"], q["offset"])


@operation(scope=AUDIT, tag=TAG, summary="The enterprise's change feed in position order",
           description="Never skips an event: resume with after=next_after. With wait=N the "
                       "request waits up to N seconds for new events when there are none.",
           query=s.FeedQuery, response=s.FeedEnvelope)
async def feed(request: web.Request) -> web.Response:
    q = query(request)
    enterprise_id = principal(request).enterprise_id
    deadline = time.monotonic() + q["wait"]
    waiters = request.app[FEED_WAITERS]
    while True:
        # Subscribe before reading, so a commit landing between read and wait wakes us.
        with waiters.subscribe(enterprise_id) as woken:
            async with connection(request) as conn:
                results = await store.feed(
                    conn, enterprise_id, after=q["after"], limit=q["limit"],
                    pipeline_id=q.get("pipeline_id"), run_id=q.get("run_id"), type_=q.get("type"),
                    actor=q.get("actor"), since=q.get("since"), until=q.get("until"))
            remaining = deadline - time.monotonic()
            if results or remaining <= 0 or waiters.closing:  # closing: shutting down
                break
            await waiters.wait(woken, remaining)
            if woken.is_set():  # by a commit: read at least up to it (infra/feedwait.py)
                require(request, waiters.position)
    next_after = results[-1]["position"] if results else q["after"]
    next_url = str(request.url.update_query(after=next_after))
    return envelope({"results": results, "next_after": next_after, "next": next_url})


routes = [
    ("GET", "/pipelines/{pipeline_id}/runs/{pipeline_run_id}/events/", run_events),
    ("GET", "/events/", feed),
]
