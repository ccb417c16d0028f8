"""Pipelines and stages: Esper's /pipelines/ and /pipelines/{id}/stages/ resources."""
from __future__ import annotations

from aiohttp import web

from service.web.envelope import envelope
from service.app import pipelines as use
from service.web import schemas as s
from service.web.handlers.common import (
    body,
    connection,
    operation,
    page,
    path,
    principal,
    query,
)

READ, WRITE = "runs:read", "runs:write"
PIPELINES, STAGES = "Pipelines", "Stages"


@operation(scope=READ, tag=PIPELINES, summary="List the enterprise's pipelines",
           query=s.PipelineListQuery, response=s.PipelineListEnvelope)
async def list_pipelines(request: web.Request) -> web.Response:
    q = query(request)
    async with connection(request) as conn:
        total, items = await use.list_pipelines(
            conn, principal(request).enterprise_id, name=q.get("name"), default=q.get("default"),
            ordering=q.get("ordering"), limit=q["limit"], offset=q["offset"])
    return page(request, total, items, q["limit"], q["offset"])


@operation(scope=WRITE, tag=PIPELINES, summary="Create a pipeline (optionally with its stages)",
           body=s.PipelinePost, response=s.PipelineEnvelope, idempotent=True)
async def create_pipeline(request: web.Request) -> web.Response:
    who = principal(request)
    async with connection(request) as conn:
        pipeline = await use.create_pipeline(conn, who.enterprise_id, who.token_id, body(request))
    return envelope(pipeline, message="Created Pipeline")


@operation(scope=READ, tag=PIPELINES, summary="Get a pipeline with its stages",
           path=s.PipelinePath, response=s.PipelineEnvelope)
async def get_pipeline(request: web.Request) -> web.Response:
    async with connection(request) as conn:
        pipeline = await use.get_pipeline(conn, principal(request).enterprise_id,
                                            path(request)["pipeline_id"])
    return envelope(pipeline)


@operation(scope=WRITE, tag=PIPELINES, summary="Update a pipeline",
           path=s.PipelinePath, body=s.PipelinePut, response=s.PipelineEnvelope)
async def update_pipeline(request: web.Request) -> web.Response:
    who = principal(request)
    async with connection(request) as conn:
        pipeline = await use.update_pipeline(conn, who.enterprise_id, path(request)["pipeline_id"],
                                               who.token_id, body(request))
    return envelope(pipeline, message="Updated Pipeline")


@operation(scope=WRITE, tag=PIPELINES, summary="Delete a pipeline (its run history is kept)",
           path=s.PipelinePath, response=s.PipelineEnvelope)
async def delete_pipeline(request: web.Request) -> web.Response:
    who = principal(request)
    async with connection(request) as conn:
        pipeline = await use.delete_pipeline(conn, who.enterprise_id, path(request)["pipeline_id"],
                                               who.token_id)
    return envelope(pipeline, message="Deleted Pipeline")


@operation(scope=READ, tag=STAGES, summary="List a pipeline's stages in order",
           path=s.PipelinePath, query=s.PageQuery, response=s.StageListEnvelope)
async def list_stages(request: web.Request) -> web.Response:
    q = query(request)
    async with connection(request) as conn:
        total, items = await use.list_stages(conn, principal(request).enterprise_id,
                                               path(request)["pipeline_id"], q["limit"], q["offset"])
    return page(request, total, items, q["limit"], q["offset"])


@operation(scope=WRITE, tag=STAGES, summary="Add a stage at the end of a pipeline",
           path=s.PipelinePath, body=s.StagePost, response=s.StageEnvelope, idempotent=True)
async def create_stage(request: web.Request) -> web.Response:
    who = principal(request)
    async with connection(request) as conn:
        stage = await use.add_stage(conn, who.enterprise_id, path(request)["pipeline_id"],
                                      who.token_id, body(request))
    return envelope(stage, message="Created Stage")


@operation(scope=READ, tag=STAGES, summary="Get a stage", path=s.StagePath, response=s.StageEnvelope)
async def get_stage(request: web.Request) -> web.Response:
    p = path(request)
    async with connection(request) as conn:
        stage = await use.get_stage(conn, principal(request).enterprise_id, p["pipeline_id"],
                                      p["stage_id"])
    return envelope(stage)


@operation(scope=WRITE, tag=STAGES, summary="Update a stage",
           path=s.StagePath, body=s.StagePut, response=s.StageEnvelope)
async def update_stage(request: web.Request) -> web.Response:
    who, p = principal(request), path(request)
    async with connection(request) as conn:
        stage = await use.update_stage(conn, who.enterprise_id, p["pipeline_id"], p["stage_id"],
                                         who.token_id, body(request))
    return envelope(stage, message="Updated Stage")


@operation(scope=WRITE, tag=STAGES, summary="Delete a stage (existing stage runs keep a snapshot)",
           path=s.StagePath, response=s.StageEnvelope)
async def delete_stage(request: web.Request) -> web.Response:
    p = path(request)
    async with connection(request) as conn:
        stage = await use.delete_stage(conn, principal(request).enterprise_id, p["pipeline_id"],
                                         p["stage_id"])
    return envelope(stage, message="Deleted Stage")


routes = [
    ("GET", "/pipelines/", list_pipelines),
    ("POST", "/pipelines/", create_pipeline),
    ("GET", "/pipelines/{pipeline_id}/", get_pipeline),
    ("PUT", "/pipelines/{pipeline_id}/", update_pipeline),
    ("DELETE", "/pipelines/{pipeline_id}/", delete_pipeline),
    ("GET", "/pipelines/{pipeline_id}/stages/", list_stages),
    ("POST", "/pipelines/{pipeline_id}/stages/", create_stage),
    ("GET", "/pipelines/{pipeline_id}/stages/{stage_id}/", get_stage),
    ("PUT", "/pipelines/{pipeline_id}/stages/{stage_id}/", update_stage),
    ("DELETE", "/pipelines/{pipeline_id}/stages/{stage_id}/", delete_stage),
]
