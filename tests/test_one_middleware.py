"""One middleware does what five did: what each route needs is resolved once."""
from __future__ import annotations

from service.web import observe
from service.web.app import create_app


def test_the_app_runs_one_middleware(config):
    app = create_app(config)
    assert len(app.middlewares) == 1  # tracing off: nothing else wraps a request


async def test_a_routes_plan_is_resolved_once(api, monkeypatch):
    resolved = []
    plan_of = observe.plan_of
    monkeypatch.setattr(observe, "plan_of", lambda *a: resolved.append(a) or plan_of(*a))
    for _ in range(3):
        page = await api.get("/runs/")
        assert page["results"] == [] and api.last.headers["X-Request-ID"]
        assert api.last.headers["RateLimit"].startswith('"token";r=')
    assert len(resolved) == 1  # at the route's first request (this test's app is new)
    for _ in range(2):  # a 404 (aiohttp makes a route of its own for each): its own plan
        await api.get(f"/no-such-{len(resolved)}/", status=404)
    assert len(resolved) == 3
