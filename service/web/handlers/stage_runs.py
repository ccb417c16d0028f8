"""Stage runs: Esper's /runs/{pipeline_run_id}/stageruns/ resources."""
from __future__ import annotations

from aiohttp import web

from service.web.envelope import envelope
from service.app import stage_runs as use
from service.web import schemas as s
from service.web.handlers.common import (
    actor, body, connection, db, operation, page, path, principal, query,
)

TAG = "Stage Runs"


@operation(scope="runs:read", tag=TAG, summary="Get the stage runs of a pipeline run, in stage order",
           path=s.StageRunListPath, query=s.StageRunListQuery, response=s.StageRunListEnvelope)
async def list_stage_runs(request: web.Request) -> web.Response:
    q = query(request)
    async with connection(request) as conn:
        total, items = await use.list_stage_runs(
            conn, principal(request).enterprise_id, path(request)["pipeline_run_id"],
            q.get("status"), q["limit"], q["offset"])
    return page(request, total, items, q["limit"], q["offset"])


@operation(scope="runs:read", tag=TAG, summary="Get a stage run", path=s.StageRunPath,
           response=s.StageRunEnvelope)
async def get_stage_run(request: web.Request) -> web.Response:
    p = path(request)
    async with connection(request) as conn:
        stage_run = await use.get(conn, principal(request).enterprise_id,
                                              p["pipeline_run_id"], p["stage_run_id"])
    return envelope(stage_run)


@operation(scope="runs:write", tag=TAG, summary="Change a stage run's status",
           description="Legal moves as for runs, without waiting. When the last open stage run "
                       "finishes, the run moves to complete, then success or failure.",
           path=s.StageRunPath, body=s.StageRunPut, response=s.StageRunEnvelope, errors=(409,))
async def update_stage_run(request: web.Request) -> web.Response:
    p = path(request)
    stage_run = await use.change_status(db(request), actor(request), p["pipeline_run_id"],
                                        p["stage_run_id"], body(request)["status"])
    return envelope(stage_run, message="Updated Stage Run")


routes = [
    ("GET", "/runs/{pipeline_run_id}/stageruns/", list_stage_runs),
    ("GET", "/runs/{pipeline_run_id}/stageruns/{stage_run_id}/", get_stage_run),
    ("PUT", "/runs/{pipeline_run_id}/stageruns/{stage_run_id}/", update_stage_run),
]
