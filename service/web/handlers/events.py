"""Audit reads: a run's history and the enterprise change feed (with long-poll)."""
from __future__ import annotations

from aiohttp import web

from service.app import audit
from service.app import feed as feed_cases
from service.web import links
from service.web.consistency import require
from service.web.envelope import envelope
from service.web.keys import CONFIG, FEED_WAITERS, WAIT_CAP
from service.web import schemas as s
from service.web.handlers import exports
from service.web.handlers.common import connection, operation, page, path, principal, query

AUDIT = "audit:read"
TAG = "Audit"


@operation(scope=AUDIT, tag=TAG, summary="A run's events in version order (kept after delete)",
           description="A page of events; with format=csv|ndjson the whole history as it "
                       "stood when the download started, streamed (handlers/exports.py; "
                       "counts against the token's open waits, 429 beyond them).",
           path=s.RunPath, query=s.RunEventsQuery, response=s.EventListEnvelope)
async def run_events(request: web.Request) -> web.StreamResponse:
    p, q = path(request), query(request)
    if q.get("format"):
        return await exports.run_history(request)
    async with connection(request) as conn:
        total, items = await audit.run_history(
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
    read = dict(after=q["after"], limit=q["limit"], scan_cap=request.app[CONFIG].feed_scan_cap,
                pipeline_id=q.get("pipeline_id"), run_id=q.get("run_id"), type_=q.get("type"),
                actor=q.get("actor"), since=q.get("since"), until=q.get("until"))
    if q["wait"] > 0:
        with request.app[WAIT_CAP].hold(caller.token_id):
            waiters = request.app[FEED_WAITERS]
            # Woken by a commit: read at least up to it (infra/feedwait.py), on a replica too.
            found = await feed_cases.wait(lambda: connection(request), waiters,
                                         caller.enterprise_id, wait=q["wait"],
                                         on_woken=lambda: require(request, waiters.position),
                                         **read)
    else:
        found = await feed_cases.read(lambda: connection(request), caller.enterprise_id, **read)
    next_url = str(links.here(request).update_query(after=found.next_after))
    return envelope({"results": found.events, "next_after": found.next_after, "next": next_url,
                     "caught_up": found.exhausted})


run_events.__produces__ = (exports.PRODUCES, False)

routes = [
    ("GET", "/pipelines/{pipeline_id}/runs/{pipeline_run_id}/events/", run_events),
    ("GET", "/events/", feed),
]
