"""Scopes: every route (read from the app, so new ones are covered) needs its scope, and
that scope alone is enough; as_of needs audit:read."""
from __future__ import annotations

import pytest

from service.web.app import RESOURCE_ROUTES as ALL_ROUTES

# Webhooks (webhooks:manage) and the never-ending stream: tests/test_webhooks.py and
# tests/test_stream.py check their scopes.
RESOURCE_ROUTES = [r for r in ALL_ROUTES if not r[1].startswith(("/webhooks/", "/events/stream/"))]
from tests.helpers import body_for, counts, make_token, world
from tests.module_app import api, client, config, db, token  # noqa: F401 (one app per module)

pytestmark = pytest.mark.asyncio(loop_scope="module")


ALL_SCOPES = ("runs:read", "runs:write", "audit:read")


def required_scope(method: str, template: str) -> str:
    if "/events/" in template or template.startswith("/audit/"):
        return "audit:read"
    return "runs:read" if method == "GET" else "runs:write"


def route_id(route) -> str:
    return f"{route[0]} {route[1]}"


@pytest.mark.parametrize("route", RESOURCE_ROUTES, ids=route_id)
async def test_every_route_needs_its_scope(api, db, enterprise, route):
    method, template, handler = route
    scope = handler.__scope__
    assert scope == required_scope(method, template)
    real = await world(api)
    path = template.format(**real)
    before = await counts(db, enterprise)
    without = api.with_token(await make_token(
        db, enterprise, "without", [s for s in ALL_SCOPES if s != scope]))
    content = await without.call(method, path, 403, json=body_for(method, template))
    assert content == {}
    assert await counts(db, enterprise) == before
    # That scope alone is enough.
    only = api.with_token(await make_token(db, enterprise, "only", [scope]))
    if getattr(handler, "__produces__", ({}, False))[1]:  # answers CSV/NDJSON (exports)
        resp = await only.client.get(only.url(path),
                                     headers={"Authorization": f"Bearer {only.token}"})
        assert resp.status == 200, await resp.text()
        return
    await only.call(method, path, 200, json=body_for(method, template))


async def test_as_of_needs_audit_read_besides_runs_read(api, db, enterprise):
    real = await world(api)
    path = "/pipelines/{pipeline_id}/runs/{pipeline_run_id}/".format(**real)
    as_of = "?as_of=2999-01-01T00:00:00Z"
    reader = api.with_token(await make_token(db, enterprise, "reader", ["runs:read"]))
    await reader.get(path)  # the run itself, now: runs:read is enough
    assert await reader.get(path + as_of, status=403) == {}
    auditor = api.with_token(await make_token(db, enterprise, "auditor", ["audit:read"]))
    await auditor.get(path + as_of, status=403)  # runs:read is still needed for the route
    both = api.with_token(await make_token(db, enterprise, "both", ["runs:read", "audit:read"]))
    assert (await both.get(path + as_of))["id"] == real["pipeline_run_id"]


async def test_a_token_without_scopes_is_refused_everywhere(api, db, enterprise):
    real = await world(api)
    before = await counts(db, enterprise)
    nobody = api.with_token(await make_token(db, enterprise, "nobody", []))
    for method, template, _ in RESOURCE_ROUTES:
        await nobody.call(method, template.format(**real), 403, json=body_for(method, template))
    assert await counts(db, enterprise) == before
