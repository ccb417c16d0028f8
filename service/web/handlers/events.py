"""Audit reads: a run's history and the enterprise change feed (with long-poll)."""
from __future__ import annotations

import time

from aiohttp import web

from service.web.envelope import envelope
from service.web.keys import CONFIG, FEED_WAITERS, WAIT_CAP
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
                       "request waits up to N seconds for new events when there are none "
                       "(at most MAX_WAITS_PER_TOKEN such requests open per token: the next "
                       "is a 429). A filtered read examines at most FEED_SCAN_CAP events "
                       "after `after`: it answers what matched among them and a next_after "
                       "past them, so fewer results than `limit` (even none) do not mean "
                       "the end; `caught_up` says whether the whole feed was examined.",
           query=s.FeedQuery, response=s.FeedEnvelope, errors=(429,))
async def feed(request: web.Request) -> web.Response:
    q = query(request)
    caller = principal(request)
    if q["wait"] > 0:
        with request.app[WAIT_CAP].hold(caller.token_id):
            page = await _long_poll(request, q, caller.enterprise_id)
    else:
        page = await _read(request, q, caller.enterprise_id, q["after"])
    next_url = str(request.url.update_query(after=page.next_after))
    return envelope({"results": page.events, "next_after": page.next_after, "next": next_url,
                     "caught_up": page.exhausted})


async def _long_poll(request: web.Request, q: dict, enterprise_id: str) -> store.FeedPage:
    """Re-reads only when woken for the enterprise (infra/feedwait.py), from where the
    previous read stopped: a filter matching nothing never rescans what it examined."""
    deadline = time.monotonic() + q["wait"]
    waiters = request.app[FEED_WAITERS]
    after = q["after"]
    while True:
        # Subscribe before reading, so a commit landing between read and wait wakes us.
        with waiters.subscribe(enterprise_id) as woken:
            page = await _read(request, q, enterprise_id, after)
            remaining = deadline - time.monotonic()
            # Not caught up: a filtered read hit its scan cap; the caller resumes from there.
            if page.events or not page.exhausted or remaining <= 0 or waiters.closing:
                return page
            after = page.next_after
            await waiters.wait(woken, remaining)


async def _read(request: web.Request, q: dict, enterprise_id: str,
                after: int) -> store.FeedPage:
    async with connection(request) as conn:
        return await store.feed(
            conn, enterprise_id, after=after, limit=q["limit"],
            scan_cap=request.app[CONFIG].feed_scan_cap, pipeline_id=q.get("pipeline_id"),
            run_id=q.get("run_id"), type_=q.get("type"), actor=q.get("actor"),
            since=q.get("since"), until=q.get("until"))


routes = [
    ("GET", "/pipelines/{pipeline_id}/runs/{pipeline_run_id}/events/", run_events),
    ("GET", "/events/", feed),
]
