"""Liveness and readiness probes (no token needed)."""
from __future__ import annotations

import asyncio

from aiohttp import web
from aiohttp_apispec import docs
from marshmallow import Schema, fields

from service.web.envelope import envelope
from service.web.keys import CONFIG, POOL
from service.store import meta
from service.web.schemas import Envelope


class Health(Schema):
    status = fields.String()


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
        return envelope({"status": "unavailable"}, 503, "database unavailable")
    return envelope({"status": "ready"})


routes = [("GET", "/health/live", live), ("GET", "/health/ready", ready)]
