"""Liveness and readiness probes (no token needed)."""
from __future__ import annotations

import asyncio
import time

import asyncpg

from aiohttp import web
from aiohttp_apispec import docs
from marshmallow import Schema, fields

from service.web.envelope import envelope
from service.web.keys import FEED_WAITERS, READINESS, REPLICAS
from service.app import database
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
    event_log = fields.String(metadata={
        "description": "protected: the service's database role cannot change or delete "
                       "events; unprotected: it can (a superuser or the tables' owner: "
                       "docs/security.md); readiness does not depend on it"})
    event_log_unprotected_because = fields.String(metadata={
        "description": "When unprotected: superuser, owner, or granted UPDATE, DELETE or "
                       "TRUNCATE"})
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


class Readiness:
    """The database's answer to SELECT 1, asked at most once per `fresh` seconds.

    Probes (and a flood of them) share one check in flight and its answer for a moment,
    so readiness takes a pool connection about twice a second, not once per call. The
    answer is not reused once the feed listener's connection is lost: that is how an
    outage usually shows first, and the probe then asks at once.
    """

    def __init__(self, pool: asyncpg.Pool, timeout: float, unprotected: str | None = None,
                 fresh: float = 0.5):
        self._pool, self._timeout, self._fresh = pool, timeout, fresh
        self.unprotected = unprotected  # why the event log is not protected (at start)
        self._answer: tuple[bool, float] = (False, float("-inf"))  # (ready, asked at)
        self._asking: asyncio.Future | None = None

    async def ready(self, listening: bool = True) -> bool:
        ready, asked = self._answer
        if listening and time.monotonic() - asked < self._fresh:
            return ready
        if self._asking is None:
            self._asking = asyncio.ensure_future(self._ask())
        return await asyncio.shield(self._asking)

    async def _ask(self) -> bool:
        try:
            async with asyncio.timeout(self._timeout):
                async with self._pool.acquire() as conn:
                    ready = await database.ping(conn)
        except Exception:  # any failure to answer SELECT 1 means "not ready"
            ready = False
        self._answer, self._asking = (ready, time.monotonic()), None
        return ready


@_documented("Readiness: 200 when the database answers SELECT 1 (asked at most twice a "
             "second), else 503")
async def ready(request: web.Request) -> web.Response:
    if not await request.app[READINESS].ready(request.app[FEED_WAITERS].listening):
        return envelope(_with_replicas(request, {"status": "unavailable"}), 503,
                        "database unavailable")
    return envelope(_with_replicas(request, {"status": "ready"}))


def _with_replicas(request: web.Request, content: dict) -> dict:
    unprotected = request.app[READINESS].unprotected
    content["event_log"] = "protected" if unprotected is None else "unprotected"
    if unprotected is not None:
        content["event_log_unprotected_because"] = unprotected
    replicas = request.app.get(REPLICAS)
    if replicas is not None:
        content["replicas"] = [replica.report() for replica in replicas.replicas]
    return content


routes = [("GET", "/health/live", live), ("GET", "/health/ready", ready)]
