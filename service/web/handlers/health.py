"""Liveness and readiness probes (no token needed)."""
from __future__ import annotations

import asyncio

from aiohttp import web
from aiohttp_apispec import docs
from marshmallow import Schema, fields

from service.web.envelope import envelope
from service.web.keys import CONFIG, POOL, REPLICAS
from service.store import meta
from service.web.schemas import Envelope


class ReplicaHealth(Schema):
    name = fields.String(metadata={"description": "host:port/dbname of the standby"})
    healthy = fields.Boolean(metadata={"description": "in the read rotation"})
    reason = fields.String(allow_none=True, metadata={"description": "why it is out"})
    lag_seconds = fields.Float(allow_none=True, metadata={"description": "at the last probe"})
    replayed = fields.String(allow_none=True,
                             metadata={"description": "its replay position, as a token"})


class Health(Schema):
    status = fields.String()
    replicas = fields.List(fields.Nested(ReplicaHealth), metadata={
        "description": "With READ_DATABASE_URLS: each standby. Readiness depends on the "
                       "primary only: reads go to the primary while no standby is in rotation."})


HealthEnvelope = type("HealthEnvelope", (Envelope,), {"content": fields.Nested(Health)})


def _documented(summary: str):
    return docs(tags=["Health"], summary=summary, security=[], responses={
        200: {"schema": HealthEnvelope, "description": "OK"},
        503: {"schema": HealthEnvelope, "description": "Database unavailable"},
    })


@_documented("Liveness: 200 while the process runs")
async def live(request: web.Request) -> web.Response:
    return envelope({"status": "live"})


@_documented("Readiness: 200 when the database answers SELECT 1, else 503")
async def ready(request: web.Request) -> web.Response:
    timeout = request.app[CONFIG].pool_acquire_timeout
    try:
        async with asyncio.timeout(timeout):
            async with request.app[POOL].acquire() as conn:
                await meta.ping(conn)
    except Exception:  # any failure to answer SELECT 1 means "not ready"
        return envelope(_with_replicas(request, {"status": "unavailable"}), 503,
                        "database unavailable")
    return envelope(_with_replicas(request, {"status": "ready"}))


def _with_replicas(request: web.Request, content: dict) -> dict:
    replicas = request.app.get(REPLICAS)
    if replicas is not None:
        content["replicas"] = [replica.report() for replica in replicas.replicas]
    return content


routes = [("GET", "/health/live", live), ("GET", "/health/ready", ready)]
