"""Pipeline runs: the seed's /runs/ and /pipelines/{id}/runs/ resources."""
from __future__ import annotations

from aiohttp import web

from ..errors import BadRequest
from ..http.envelope import envelope
from ..http.auth import require_scope
from ..store import events as event_store
from ..store import runs as store
from . import schemas as s
from .common import body, connection, operation, page, path, principal, query, request_id

READ, WRITE = "runs:read", "runs:write"
TAG = "Pipeline Runs"
IF_MATCH = [{"in": "header", "name": "If-Match", "required": False, "schema": {"type": "string"},
             "description": 'Only act if the run is still at this version (its ETag, e.g. "3")'}]


def _with_etag(run: dict, message: str = "OK") -> web.Response:
    return envelope(run, message=message, headers={"ETag": f'"{run["version"]}"'})


def _if_match(request: web.Request) -> int | None:
    raw = request.headers.get("If-Match")
    if raw is None or raw.strip() == "*":
        return None
    value = raw.strip().removeprefix("W/").strip('"')
    if not value.isdigit() or len(value) > 9:
        raise BadRequest("If-Match must be a run version ETag such as \"3\"")
    return int(value)


@operation(scope=READ, tag=TAG, summary="Get all runs of the pipelines in the enterprise",
           query=s.RunListQuery, response=s.PipelineRunListEnvelope)
async def list_enterprise_runs(request: web.Request) -> web.Response:
    q = query(request)
    async with connection(request) as conn:
        total, items = await store.list_runs(
            conn, principal(request).enterprise_id, pipeline_id=None, status=q.get("status"),
            pipeline_name=q.get("pipeline_name"), ordering=q.get("ordering"),
            limit=q["limit"], offset=q["offset"])
    return page(request, total, items, q["limit"], q["offset"])


@operation(scope=READ, tag=TAG, summary="Get all runs of a pipeline",
           path=s.PipelinePath, query=s.PipelineRunListQuery, response=s.PipelineRunListEnvelope)
async def list_pipeline_runs(request: web.Request) -> web.Response:
    q = query(request)
    async with connection(request) as conn:
        total, items = await store.list_runs(
            conn, principal(request).enterprise_id, pipeline_id=path(request)["pipeline_id"],
            status=q.get("status"), pipeline_name=None, ordering=q.get("ordering"),
            limit=q["limit"], offset=q["offset"])
    return page(request, total, items, q["limit"], q["offset"])


@operation(scope=WRITE, tag=TAG, summary="Create a pipeline run (status pending)",
           path=s.PipelinePath, body=s.PipelineRunPost, response=s.PipelineRunEnvelope)
async def create_run(request: web.Request) -> web.Response:
    who = principal(request)
    async with connection(request) as conn:
        run = await store.create_run(conn, who.enterprise_id, path(request)["pipeline_id"],
                                     who.name, who.token_id, request_id(request))
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
            run = await event_store.run_as_of(conn, enterprise_id, p["pipeline_id"],
                                              p["pipeline_run_id"], as_of)
        return envelope(run)
    async with connection(request) as conn:
        run = await store.get_run(conn, enterprise_id, p["pipeline_id"], p["pipeline_run_id"])
    return _with_etag(run)


@operation(scope=WRITE, tag=TAG, summary="Change a pipeline run's status",
           description="Legal moves only (see the lifecycle); setting the current status again "
                       "is a 200 without a new event. Status in any letter case.",
           path=s.RunPath, body=s.PipelineRunPut, response=s.PipelineRunEnvelope,
           errors=(409, 412), headers=IF_MATCH)
async def update_run(request: web.Request) -> web.Response:
    who, p = principal(request), path(request)
    expected = _if_match(request)
    async with connection(request) as conn:
        run = await store.change_status(
            conn, who.enterprise_id, p["pipeline_id"], p["pipeline_run_id"], body(request)["status"],
            who.name, who.token_id, request_id=request_id(request), expected_version=expected)
    return _with_etag(run, "Updated Pipeline Run")


@operation(scope=WRITE, tag=TAG, summary="Delete a pipeline run (its events are kept)",
           path=s.RunPath, response=s.PipelineRunEnvelope, errors=(412,), headers=IF_MATCH)
async def delete_run(request: web.Request) -> web.Response:
    who, p = principal(request), path(request)
    expected = _if_match(request)
    async with connection(request) as conn:
        run = await store.delete_run(
            conn, who.enterprise_id, p["pipeline_id"], p["pipeline_run_id"], who.name,
            who.token_id, request_id=request_id(request), expected_version=expected)
    return envelope(run, message="Deleted Pipeline Run")


routes = [
    ("GET", "/runs/", list_enterprise_runs),
    ("GET", "/pipelines/{pipeline_id}/runs/", list_pipeline_runs),
    ("POST", "/pipelines/{pipeline_id}/runs/", create_run),
    ("GET", "/pipelines/{pipeline_id}/runs/{pipeline_run_id}/", get_run),
    ("PUT", "/pipelines/{pipeline_id}/runs/{pipeline_run_id}/", update_run),
    ("DELETE", "/pipelines/{pipeline_id}/runs/{pipeline_run_id}/", delete_run),
]
