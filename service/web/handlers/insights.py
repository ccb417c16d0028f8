"""Insights: aggregate figures of an enterprise's runs (our extension of pipelines-v0)."""
from __future__ import annotations

from aiohttp import web

from service.app import insights as use
from service.web import insights_schemas as s
from service.web import schemas
from service.web.envelope import envelope
from service.web.handlers.common import connection, operation, path, principal, query

READ = "runs:read"
TAG = "Insights"
_DESCRIPTION = (
    "Runs created, finished by outcome, success rate, duration and queue-time percentiles, "
    "throughput and mean time to recovery, per time bucket and pipeline, answered from a "
    "projection kept in the write path (see docs/insights.md).")


@operation(scope=READ, tag=TAG, summary="Insights over the enterprise's runs",
           description=_DESCRIPTION, query=s.InsightsQuery, response=s.InsightsEnvelope)
async def enterprise_insights(request: web.Request) -> web.Response:
    q = query(request)
    async with connection(request) as conn:
        answer = await use.insights(
            conn, principal(request).enterprise_id, start=q.get("from_"), end=q.get("to"),
            granularity=q.get("granularity"), group_by=q.get("group_by"),
            pipeline_ids=q.get("pipeline_id"), pipeline_name=q.get("pipeline_name"),
            as_of=q.get("as_of"))
    return envelope(answer)


@operation(scope=READ, tag=TAG, summary="Insights over one pipeline's runs",
           description=_DESCRIPTION, path=schemas.PipelinePath, query=s.PipelineInsightsQuery,
           response=s.InsightsEnvelope)
async def pipeline_insights(request: web.Request) -> web.Response:
    q = query(request)
    async with connection(request) as conn:
        answer = await use.insights(
            conn, principal(request).enterprise_id, start=q.get("from_"), end=q.get("to"),
            granularity=q.get("granularity"), group_by=q.get("group_by"),
            pipeline_ids=[path(request)["pipeline_id"]], as_of=q.get("as_of"),
            pipeline_route=True)
    return envelope(answer)


routes = [
    ("GET", "/insights/runs/", enterprise_insights),
    ("GET", "/pipelines/{pipeline_id}/insights/", pipeline_insights),
]
