"""Exports of the audit trail, streamed as CSV or NDJSON in constant memory.

Rows come in keyset chunks, each read on a pool connection given back before the chunk is
written (app/audit.py, store/events.py): a client reading slowly holds no connection and no
transaction. Exports count against the token's cap of open waits (MAX_WAITS_PER_TOKEN).
"""
from __future__ import annotations

import contextlib
import csv
import io
import logging
from typing import AsyncIterator

from aiohttp import web

from service.app import audit
from service.domain.errors import NotFound
from service.web import consistency
from service.web import schemas as s
from service.web.envelope import dumps, dumps_bytes
from service.web.handlers.common import connection, operation, path, principal, query
from service.web.keys import CLIENT_GONE, CONSISTENCY, REQUEST_ID, WAIT_CAP, stream_headers

log = logging.getLogger(__name__)

AUDIT = "audit:read"
TAG = "Audit"
MEDIA = {"csv": "text/csv", "ndjson": "application/x-ndjson"}
CSV_COLUMNS = ("position", "id", "pipeline_id", "run_id", "version", "type", "from_status",
               "to_status", "actor", "occurred_at", "request_id", "reason", "data")
# The 200 answers of exports, for the OpenAPI document (web/app.py documents them).
PRODUCES = {media: {"schema": {"type": "string"}} for media in MEDIA.values()}
# Cells a spreadsheet would run as a formula (OWASP "CSV Injection"): quoted as text.
_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def safe_cell(value):
    """A CSV cell no spreadsheet executes: text starting like a formula gets a leading '."""
    if isinstance(value, str) and value.startswith(_FORMULA_STARTS):
        return "'" + value
    return value


def _csv_rows(events: list[dict], header: bool) -> bytes:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    if header:
        writer.writerow(CSV_COLUMNS)
    for e in events:
        writer.writerow([safe_cell(cell) for cell in (
            e["position"], e["id"], e["pipeline_id"], e["run_id"], e["version"], e["type"],
            e["from_status"] or "", e["to_status"] or "", e["actor"],
            e["occurred_at"].isoformat(), e["request_id"] or "",
            (e["data"] or {}).get("reason") or "", dumps(e["data"] or {}),
        )])
    return out.getvalue().encode()


def _ndjson_rows(events: list[dict]) -> bytes:
    return b"".join(dumps_bytes(e) + b"\n" for e in events)


async def stream(request: web.Request, fmt: str, filename: str,
                 batches: AsyncIterator[list[dict]], *, empty_is_404: bool) -> web.StreamResponse:
    """Write the batches as they come; nothing is answered before the first is read.

    Counted among the token's open waits: a token's slow downloads cost its own cap only.
    """
    with request.app[WAIT_CAP].hold(principal(request).token_id):
        async with contextlib.aclosing(batches):
            return await _answer(request, fmt, filename, batches, empty_is_404)


async def _answer(request: web.Request, fmt: str, filename: str,
                  batches: AsyncIterator[list[dict]], empty_is_404: bool):
    first = await anext(batches, None)
    if first is None and empty_is_404:
        raise NotFound("pipeline run not found")
    if request.get(CONSISTENCY) is not None:
        # Later chunks from a server at least as new as the first one's (a standby
        # behind it could lack events up to the cut).
        consistency.require(request, request[CONSISTENCY].seen)
    response = web.StreamResponse(headers={
        "Content-Type": f"{MEDIA[fmt]}; charset=utf-8",
        "Content-Disposition": f'attachment; filename="{filename}.{fmt}"',
        **consistency.headers(request), **stream_headers(request)})
    await response.prepare(request)
    return await _write(request, response, fmt, first, batches)


async def _write(request: web.Request, response: web.StreamResponse, fmt: str,
                 first: list[dict] | None, batches: AsyncIterator[list[dict]]):
    rows, header = 0, True
    try:
        async for batch in _chain(first, batches):
            await _send(response, _csv_rows(batch, header) if fmt == "csv"
                        else _ndjson_rows(batch))
            rows, header = rows + len(batch), False
        if header and fmt == "csv":  # no event: the header alone
            await _send(response, _csv_rows([], True))
        await _send(response, None)
    except _ClientGone:
        # The client went away: nothing is held (no connection, no transaction), so there
        # is nothing to undo; the access log and metrics record 499.
        request[CLIENT_GONE] = True
        log.info("export abandoned by the client after %d events", rows,
                 extra={"request_id": request.get(REQUEST_ID)})
    except Exception:
        # The 200 is on its way: no error envelope can follow. Cut the connection before
        # the end of the chunked body, so the client sees an incomplete download rather
        # than a complete-looking, truncated export.
        log.exception("export failed after it started",
                      extra={"request_id": request.get(REQUEST_ID)})
        if request.transport is not None:
            request.transport.abort()
    return response


class _ClientGone(Exception):
    """The client closed the connection while its export was being written."""


async def _send(response: web.StreamResponse, data: bytes | None) -> None:
    """Write (None: the end); a closed connection is the client's doing, not a failure."""
    try:
        await (response.write(data) if data is not None else response.write_eof())
    except ConnectionError as exc:  # reset, broken pipe, or lost while waiting to drain
        raise _ClientGone() from exc


async def _chain(first: list[dict] | None, rest: AsyncIterator[list[dict]]):
    if first is not None:
        yield first
        async for batch in rest:
            yield batch


async def run_history(request: web.Request) -> web.StreamResponse:
    """GET …/runs/{id}/events/?format=: the run's whole history (handlers/events.py)."""
    p = path(request)
    return await run_history_of(request, principal(request).enterprise_id, p["pipeline_id"],
                                p["pipeline_run_id"], query(request)["format"])


async def run_history_of(request: web.Request, enterprise_id: str, pipeline_id, run_id,
                         fmt: str) -> web.StreamResponse:
    """A run's history export (the API's, and the pages' behind a session)."""
    batches = audit.export_run(lambda: connection(request), enterprise_id, pipeline_id, run_id)
    return await stream(request, fmt, f"run-{run_id}-events", batches, empty_is_404=True)


async def feed_of(request: web.Request, enterprise_id: str, since, until,
                  fmt: str) -> web.StreamResponse:
    """The feed export of [since, until) (the API's, and the pages' behind a session)."""
    batches = audit.export_feed(lambda: connection(request), enterprise_id, since=since,
                                until=until)
    return await stream(request, fmt, "events", batches, empty_is_404=False)


@operation(scope=AUDIT, tag=TAG, summary="Export the enterprise's events of a time range",
           description="All events with since <= occurred_at < until (either may be left "
                       "out), in position order, streamed as CSV (text/csv, a header row; "
                       "`data` as JSON) or NDJSON (application/x-ndjson, one event per line "
                       "as the feed answers it). The export is the feed as it stood when "
                       "the download started: events appended during it are not included. "
                       "Counts against the token's open waits (429 beyond them).",
           query=s.EventExportQuery, response=s.FeedEnvelope)
async def feed_export(request: web.Request) -> web.StreamResponse:
    q = query(request)
    return await feed_of(request, principal(request).enterprise_id, q.get("since"),
                         q.get("until"), q["format"])


feed_export.__produces__ = (PRODUCES, True)  # (media, replacing JSON): web/app.py

routes = [
    ("GET", "/events/export/", feed_export),
]
