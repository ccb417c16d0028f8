"""Pipeline runs: the seed's /runs/ and /pipelines/{id}/runs/ resources."""
from __future__ import annotations

import re

from aiohttp import web

from service.app import runs as use
from service.domain.errors import BadRequest
from service.web import links
from service.web import schemas as s
from service.web.auth import require_scope
from service.web.envelope import envelope
from service.web.handlers.common import (
    actor, body, connection, db, operation, path, principal, query,
)

READ, WRITE = "runs:read", "runs:write"
TAG = "Pipeline Runs"
IF_MATCH_PATTERN = r'^\s*(\*|(W/)?"?[0-9]{1,9}"?)\s*$'
_IF_MATCH = re.compile(IF_MATCH_PATTERN, re.ASCII)
IF_MATCH = [{"in": "header", "name": "If-Match", "required": False,
             "schema": {"type": "string", "pattern": IF_MATCH_PATTERN},
             "description": 'Only act if the run is still at this version (its ETag, e.g. "3")'}]


def _with_etag(run: dict, message: str = "OK") -> web.Response:
    return envelope(run, message=message, headers={"ETag": f'"{run["version"]}"'})


def _if_match(request: web.Request) -> int | None:
    """The version an If-Match header names; None when absent or `*`."""
    raw = request.headers.get("If-Match")
    if raw is None:
        return None
    if not _IF_MATCH.match(raw):
        raise BadRequest("If-Match must be a run version ETag such as \"3\"")
    value = raw.strip().removeprefix("W/").strip('"')
    return None if value == "*" else int(value)


LIST_DESCRIPTION = (
    "Pages by offset (limit/offset, `next`/`previous` links) or by keyset: pass a page's "
    "`next_cursor` as `cursor` for the page after it, or its `previous_cursor` for the page "
    "before it, in constant time at any depth (with the same ordering; `next` and "
    "`previous` then carry the cursors). Every ordering reads index ranges "
    "only, and `count` comes from maintained counters, except with created_/updated_ "
    "ranges: then it is counted up to 10000 (`count_exact`). Ranges are half-open: "
    "*_after is inclusive, *_before exclusive. An offset page reads offset + limit rows "
    "per index range it merges: past a few thousand runs, page by cursor.")
_DATES = ("created_after", "created_before", "updated_after", "updated_before")


def _run_page(request: web.Request, result, q: dict) -> web.Response:
    """The list envelope of run lists: offset links, or cursor links on cursor pages."""
    limit, offset, url = q["limit"], q["offset"], links.here(request)
    if q.get("cursor"):
        keyset = url.without_query_params("offset")
        following = (str(keyset.update_query(cursor=result.next_cursor))
                     if result.next_cursor else None)
        previous = (str(keyset.update_query(cursor=result.previous_cursor))
                    if result.previous_cursor else None)
    else:
        following = (str(url.update_query(limit=limit, offset=offset + limit))
                     if result.has_more else None)
        previous = (str(url.update_query(limit=limit, offset=max(offset - limit, 0)))
                    if offset > 0 else None)
    return envelope({"count": result.count, "count_exact": result.count_exact,
                     "next": following, "previous": previous,
                     "next_cursor": result.next_cursor,
                     "previous_cursor": result.previous_cursor, "results": result.items})


@operation(scope=READ, tag=TAG, summary="Get all runs of the pipelines in the enterprise",
           description=LIST_DESCRIPTION, query=s.RunListQuery,
           response=s.PipelineRunListEnvelope)
async def list_enterprise_runs(request: web.Request) -> web.Response:
    q = query(request)
    async with connection(request) as conn:
        result = await use.list_runs(
            conn, principal(request).enterprise_id, pipeline_id=None, status=q.get("status"),
            pipeline_name=q.get("pipeline_name"), ordering=q.get("ordering"),
            limit=q["limit"], offset=q["offset"], cursor=q.get("cursor") or None,
            **{d: q.get(d) for d in _DATES})
    return _run_page(request, result, q)


@operation(scope=READ, tag=TAG, summary="Get all runs of a pipeline",
           description=LIST_DESCRIPTION, path=s.PipelinePath, query=s.PipelineRunListQuery,
           response=s.PipelineRunListEnvelope)
async def list_pipeline_runs(request: web.Request) -> web.Response:
    q = query(request)
    async with connection(request) as conn:
        result = await use.list_runs(
            conn, principal(request).enterprise_id, pipeline_id=path(request)["pipeline_id"],
            status=q.get("status"), pipeline_name=None, ordering=q.get("ordering"),
            limit=q["limit"], offset=q["offset"], cursor=q.get("cursor") or None,
            **{d: q.get(d) for d in _DATES})
    return _run_page(request, result, q)


@operation(scope=WRITE, tag=TAG, summary="Create a pipeline run (status pending)",
           path=s.PipelinePath, body=s.PipelineRunPost, response=s.PipelineRunEnvelope,
           idempotent=True)
async def create_run(request: web.Request) -> web.Response:
    run = await use.create(db(request), actor(request), path(request)["pipeline_id"])
    return _with_etag(run, "Created Pipeline Run")


@operation(scope=READ, tag=TAG, summary="Get a pipeline run, now or as of a past instant",
           description="With as_of (needs audit:read) the run is folded from its events up to "
                       "that instant; 404 if it did not exist then.",
           path=s.RunPath, query=s.RunGetQuery, response=s.PipelineRunEnvelope)
async def get_run(request: web.Request) -> web.Response:
    p, as_of = path(request), query(request).get("as_of")
    enterprise_id = principal(request).enterprise_id
    if as_of is not None:
        require_scope(request, "audit:read")
        async with connection(request) as conn:
            run = await use.get_as_of(conn, enterprise_id, p["pipeline_id"],
                                      p["pipeline_run_id"], as_of)
        return envelope(run)
    async with connection(request) as conn:
        run = await use.get(conn, enterprise_id, p["pipeline_id"], p["pipeline_run_id"])
    return _with_etag(run)


@operation(scope=WRITE, tag=TAG, summary="Change a pipeline run's status",
           description="Legal moves only (see the lifecycle); setting the current status again "
                       "is a 200 without a new event. Status in any letter case.",
           path=s.RunPath, body=s.PipelineRunPut, response=s.PipelineRunEnvelope,
           errors=(409, 412), headers=IF_MATCH)
async def update_run(request: web.Request) -> web.Response:
    p = path(request)
    run = await use.change_status(db(request), actor(request), p["pipeline_id"],
                                  p["pipeline_run_id"], body(request)["status"],
                                  expected_version=_if_match(request))
    return _with_etag(run, "Updated Pipeline Run")


@operation(scope=WRITE, tag=TAG, summary="Delete a pipeline run (its events are kept)",
           path=s.RunPath, response=s.PipelineRunEnvelope, errors=(412,), headers=IF_MATCH)
async def delete_run(request: web.Request) -> web.Response:
    p = path(request)
    run = await use.delete(db(request), actor(request), p["pipeline_id"], p["pipeline_run_id"],
                           expected_version=_if_match(request))
    return envelope(run, message="Deleted Pipeline Run")


RUN_PATH = "/pipelines/{pipeline_id}/runs/{pipeline_run_id}/"
routes = [
    ("GET", "/runs/", list_enterprise_runs),
    ("GET", "/pipelines/{pipeline_id}/runs/", list_pipeline_runs),
    ("POST", "/pipelines/{pipeline_id}/runs/", create_run),
    ("GET", RUN_PATH, get_run),
    ("PUT", RUN_PATH, update_run),
    ("DELETE", RUN_PATH, delete_run),
]
