"""GET /events/stream: the change feed as Server-Sent Events, caught up then live."""
from __future__ import annotations

import logging
import re

from aiohttp import web
from aiohttp_sse import sse_response

from service.app import feed as feed_app
from service.domain.errors import BadRequest
from service.web import consistency, gone
from service.web import schemas as s
from service.web.envelope import dumps
from service.web.handlers.common import connection, operation, principal, query
from service.web.keys import CONFIG, FEED_WAITERS, WAIT_CAP, stream_headers

log = logging.getLogger(__name__)

BATCH = 500  # events read per query while catching up
LAST_EVENT_ID = "Last-Event-ID"
_POSITION = re.compile(r"[0-9]{1,19}", re.ASCII)
MAX_POSITION = 2**63 - 1  # a bigint, as positions are stored
HEADER_DOC = {
    "in": "header", "name": LAST_EVENT_ID, "required": False,
    "schema": {"type": "string", "pattern": "^[0-9]{1,19}$"},
    "description": "Resume after this position (what EventSource sends on reconnect); "
                   "takes precedence over `after`",
}
MESSAGE_DOC = {
    "type": "object",
    "description": "One Server-Sent Event per feed event; between them a comment line "
                   "(`: ping`) every STREAM_HEARTBEAT_SECONDS",
    "required": ["id", "event", "data"],
    "properties": {
        "id": {"type": "string", "pattern": "^[0-9]+$",
               "description": "The event's position: send it back as Last-Event-ID"},
        "event": {"type": "string", "description": "The event's type"},
        "data": {"type": "string", "contentMediaType": "application/json",
                 "description": "The event JSON, exactly as /events/ answers it"},
    },
    "example": {"id": "42", "event": "run.created", "data": '{"id": "…", "position": 42}'},
}


def _resume_point(request: web.Request, after: int | None) -> int:
    raw = request.headers.get(LAST_EVENT_ID)
    if raw is None:
        return after or 0
    # ASCII digits only (str.isdigit() passes "²", which int() refuses) and within a bigint.
    value = raw.strip()
    if not _POSITION.fullmatch(value) or int(value) > MAX_POSITION:
        raise BadRequest("invalid input", {"errors": {LAST_EVENT_ID: [
            "must be an event position (a non-negative integer)"]}})
    return int(value)


def _held(request: web.Request):
    """The per-token cap of open waits (long-polls and streams): MAX_WAITS_PER_TOKEN."""
    return request.app[WAIT_CAP].hold(principal(request).token_id)


async def _read(request: web.Request, enterprise_id: str, after: int, q) -> feed_app.FeedPage:
    """A batch after `after` (a filtered read examines at most FEED_SCAN_CAP events)."""
    return await feed_app.read(
        lambda: connection(request), enterprise_id, after=after, limit=BATCH,
        scan_cap=request.app[CONFIG].feed_scan_cap, pipeline_id=q.get("pipeline_id"),
        run_id=q.get("run_id"), type_=q.get("type"), actor=q.get("actor"),
        since=q.get("since"), until=q.get("until"))


@operation(scope="audit:read", tag="Audit", summary="The change feed as a live stream (SSE)",
           description="Catches up from Last-Event-ID (or `after`), then follows new events "
                       "as they commit, in position order, never skipping one. Reconnect "
                       "with the last id you saw to resume exactly once. Ends cleanly when "
                       "the service shuts down.",
           query=s.StreamQuery, response=MESSAGE_DOC, headers=[HEADER_DOC],
           media_type="text/event-stream")
async def stream(request: web.Request) -> web.StreamResponse:
    q = query(request)
    after = _resume_point(request, q.get("after"))
    enterprise_id = principal(request).enterprise_id
    heartbeat = request.app[CONFIG].stream_heartbeat_seconds
    with _held(request):
        first = await _read(request, enterprise_id, after, q)  # a failure: still an envelope
        # Its headers go out now: the token is what the first read reflects.
        async with sse_response(request, ping_interval=heartbeat,
                                headers={**consistency.headers(request),
                                         **stream_headers(request)}) as resp:
            await _follow(request, resp, enterprise_id, after, first, q)
    return resp


async def _follow(request, resp, enterprise_id: str, after: int,
                  page: feed_app.FeedPage, q) -> None:
    waiters = request.app[FEED_WAITERS]
    try:
        while resp.is_connected() and not waiters.closing and not gone.is_gone(request):
            for event in page.events:
                await resp.send(dumps(event), id=str(event["position"]), event=event["type"])
            after = page.next_after  # past what a filtered read examined, too
            # Subscribe before reading, so a commit between read and wait wakes us.
            with waiters.subscribe(enterprise_id) as woken:
                page = await _read(request, enterprise_id, after, q)
                if not page.events and page.exhausted:
                    # A closed stream frees its wait slot now, not at the next heartbeat.
                    if await gone.wait_or_gone(request, waiters.wait(woken, 60.0)):
                        return
    except (ConnectionResetError, TimeoutError):
        pass  # the caller went away (or stopped reading): it reconnects with its last id
    except Exception:  # after the headers no envelope is possible: end; the caller resumes
        log.exception("event stream ended by a failure")


routes = [
    ("GET", "/events/stream/", stream),
]
