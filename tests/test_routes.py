"""Routes on every mount; 404/405/413/415/400 envelopes; health; OpenAPI."""
from __future__ import annotations

import io
import re

import jsonschema_rs
import pytest
import pytest_asyncio
from aiohttp.test_utils import TestClient, TestServer

from service.web.app import RESOURCE_ROUTES, create_app
from service.web.middleware import MAX_URL_BYTES
from service.infra.runtime import PARSER_LIMITS
from tests.helpers import Api, CORE_ROUTES, ID_ROUTES, MOUNTS, body_for, ids
from tests.module_app import api, client, config, db, token  # noqa: F401 (one app per module)

pytestmark = pytest.mark.asyncio(loop_scope="module")

MIB = 1024 * 1024
async def test_the_app_serves_every_core_route():  # async: the module is on one loop
    served = {(method, path) for method, path, _ in RESOURCE_ROUTES}
    assert set(CORE_ROUTES) <= served


@pytest.mark.parametrize("slash", ["/", ""], ids=["slash", "no-slash"])
@pytest.mark.parametrize("mount", MOUNTS)
async def test_every_route_on_every_mount(api, mount, slash):
    at = api.at(mount)

    def u(path: str) -> str:
        return path.rstrip("/") + slash

    pipeline = await at.post(u("/pipelines/"), {"name": "mounted"})
    p = f"/pipelines/{pipeline['id']}/"
    assert [x["id"] for x in (await at.get(u("/pipelines/")))["results"]] == [pipeline["id"]]
    assert await at.get(u(p)) == pipeline
    assert await api.get(p) == pipeline  # one store behind every mount
    renamed = await at.put(u(p), {"name": "renamed"})
    assert renamed["name"] == "renamed"
    stage = await at.post(u(p + "stages/"), {"name": "build"})
    assert (await at.get(u(p + "stages/")))["results"] == [stage]
    s = f"{p}stages/{stage['id']}/"
    assert await at.get(u(s)) == stage
    stage = await at.put(u(s), {"description": "compile"})
    assert stage["description"] == "compile"
    run = await at.post(u(p + "runs/"), {})
    assert run["pipeline_name"] == "renamed"
    assert (await at.get(u(p + "runs/")))["results"] == [run]
    assert (await at.get(u("/runs/")))["results"] == [run]
    r = f"{p}runs/{run['id']}/"
    assert await at.get(u(r)) == run
    running = await at.put(u(r), {"status": "running"})
    assert running["status"] == "running"
    assert await at.delete(u(r)) == running
    await at.get(u(r), status=404)
    assert await at.delete(u(s)) == stage
    await at.get(u(s), status=404)
    assert (await at.delete(u(p)))["id"] == pipeline["id"]
    await at.get(u(p), status=404)
    assert (await at.get(u("/pipelines/")))["count"] == 0


@pytest.mark.parametrize("path", ["/nope", "/pipelines/v0/nope/", "/pipelines/v1/runs/",
                                  "/v0/pipelines/x/y/z/w/", "/api/pipelines/v0", "/health"])
async def test_unknown_paths_are_404_envelopes(api, path):
    for caller in (api, api.with_token(None)):
        assert await caller.call("GET", str(api.client.make_url(path)), 404) == {}


@pytest.mark.parametrize("method,template,allowed", [
    ("PATCH", "/pipelines/", {"GET", "POST"}),
    ("DELETE", "/runs/", {"GET"}),
    ("POST", "/runs", {"GET"}),
    ("POST", "/pipelines/{pipeline_id}/", {"GET", "PUT", "DELETE"}),
    ("PUT", "/pipelines/{pipeline_id}/runs/", {"GET", "POST"}),
    ("PATCH", "/pipelines/{pipeline_id}/runs/{pipeline_run_id}/", {"GET", "PUT", "DELETE"}),
    ("POST", "/pipelines/{pipeline_id}/stages/{stage_id}", {"GET", "PUT", "DELETE"}),
])
async def test_wrong_method_is_405_with_allow(api, method, template, allowed):
    path = template.format(**await ids(api))
    for mount in MOUNTS:
        caller = api.at(mount)
        assert await caller.call(method, path, 405, json={}) == {}
        assert set(caller.last.headers["Allow"].split(",")) == allowed


@pytest.mark.parametrize("bad", ["not-a-uuid", "123", "0" * 33])
@pytest.mark.parametrize("method,template,param", ID_ROUTES,
                         ids=[f"{m} {p} {x}" for m, p, x in ID_ROUTES])
async def test_malformed_uuid_in_the_path_is_404(api, db, method, template, param, bad):
    real = await ids(api)
    events = await db.fetchval("SELECT count(*) FROM run_events WHERE run_id = $1",
                               real["pipeline_run_id"])
    path = template.format(**{**real, param: bad})
    assert await api.call(method, path, 404, json=body_for(method, template)) == {}
    run = await api.get("/pipelines/{pipeline_id}/runs/{pipeline_run_id}/".format(**real))
    assert run["status"] == "pending"
    assert await db.fetchval("SELECT count(*) FROM run_events WHERE run_id = $1",
                             real["pipeline_run_id"]) == events


# --- request bodies ----------------------------------------------------------------------

def raw(api, content_type: str | None) -> dict:
    headers = {"Authorization": f"Bearer {api.token}"}
    if content_type:
        headers["Content-Type"] = content_type
    return headers


async def body_routes(api) -> list[tuple[str, str]]:
    real = await ids(api)
    return [(m, p.format(**real)) for m, p in CORE_ROUTES if m in ("POST", "PUT")]


async def test_body_over_one_mib_is_413(api):
    for method, path in await body_routes(api):
        big = io.BytesIO(b'{"name": "' + b"x" * MIB + b'"}')
        assert await api.call(method, path, 413, data=big,
                              headers=raw(api, "application/json")) == {}
    assert (await api.get("/pipelines/"))["count"] == 1


@pytest_asyncio.fixture(loop_scope="module")
async def served(config, token):
    """The app behind the parser limits it is served with (runtime.run), not the defaults."""
    server = TestServer(create_app(config))
    await server.start_server(**PARSER_LIMITS)
    async with TestClient(server) as started:
        yield Api(started, token)


async def test_url_over_8190_bytes_is_a_414_envelope(served):
    base = "/runs/?pad="  # an unknown parameter: ignored, so only the length matters
    pad = MAX_URL_BYTES - len(served.url(base))
    assert (await served.get(base + "x" * pad))["count"] == 0  # exactly 8190 bytes
    for extra in (1, 30_000):
        assert await served.get(base + "x" * (pad + extra), status=414) == {}
        assert served.last.headers["X-Request-ID"]
    # Before the token is looked at, like the parser's own limit was.
    assert await served.with_token(None).get(base + "x" * MAX_URL_BYTES, status=414) == {}
    # Past the parser's raised limit the parser still answers, plain text, before the app.
    resp = await served.client.get("/pipelines/v0" + base + "x" * PARSER_LIMITS["max_line_size"])
    assert resp.status == 400 and resp.content_type == "text/plain"


async def test_body_just_under_one_mib_is_read_and_validated(api):
    near = io.BytesIO(b'{"name": "p", "description": "' + b"x" * (MIB - 100) + b'"}')
    content = await api.call("POST", "/pipelines/", 400, data=near,
                             headers=raw(api, "application/json"))
    assert list(content["errors"]) == ["description"]


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded",
                                          "application/xml"])
async def test_non_json_body_is_415(api, content_type):
    for method, path in await body_routes(api):
        assert await api.call(method, path, 415, data=b'{"name": "x", "status": "running"}',
                              headers=raw(api, content_type)) == {}
    assert (await api.get("/pipelines/"))["count"] == 1
    assert (await api.get("/runs/"))["results"][0]["status"] == "pending"


@pytest.mark.parametrize("payload", [b'{"name": ', b"{'name': 'x'}", b"nul\x00l", b"{}}"])
async def test_malformed_json_is_400(api, payload):
    for method, path in await body_routes(api):
        await api.call(method, path, 400, data=payload, headers=raw(api, "application/json"))
    assert (await api.get("/pipelines/"))["count"] == 1


@pytest.mark.parametrize("payload", [b"[]", b'["name"]', b'"name"', b"3", b"null"])
async def test_json_that_is_not_an_object_is_400_with_errors(api, payload):
    for method, path in await body_routes(api):
        if path.endswith("/runs/") and method == "POST":
            continue  # the run POST body is ignored
        content = await api.call(method, path, 400, data=payload,
                                 headers=raw(api, "application/json"))
        assert content["errors"], (method, path)


async def test_validation_errors_name_every_bad_field(api):
    content = await api.post("/pipelines/", {"name": "", "is_active": "no", "timeout_seconds": 0},
                             status=400)
    assert set(content["errors"]) == {"name", "is_active", "timeout_seconds"}
    assert all(isinstance(m, list) and m for m in content["errors"].values())


# --- health and docs ---------------------------------------------------------------------

@pytest.mark.parametrize("token", [None, "wrong"])
async def test_health_needs_no_token(api, token):
    anonymous = api.with_token(token)
    assert await anonymous.get("/health/live") == {"status": "live"}
    assert await anonymous.get("/health/ready") == {"status": "ready", "event_log": "protected"}


async def test_openapi_documents_every_operation_of_the_canonical_mount(client):
    resp = await client.get("/api/docs/swagger.json")
    assert resp.status == 200
    spec = await resp.json()
    documented = {(method.upper(), path) for path, ops in spec["paths"].items() for method in ops}
    health = {("GET", "/health/live"), ("GET", "/health/ready")}
    site = {("GET", "/"), ("GET", "/favicon.ico")}
    assert health | site <= documented
    assert all(spec["paths"][p]["get"]["security"] == [] for _, p in health | site)  # no token
    documented -= health | site
    assert documented == {(m, "/pipelines/v0" + p) for m, p, _ in RESOURCE_ROUTES}
    assert {(m, "/pipelines/v0" + p) for m, p in CORE_ROUTES} <= documented
    assert spec["components"]["securitySchemes"]["SCAPIAuthToken"] == {
        "type": "http", "scheme": "bearer"}
    for method, path in documented:
        operation = spec["paths"][path][method.lower()]
        assert operation["security"] == [{"SCAPIAuthToken": []}, {"TokenAuth": []}], (method, path)
        assert {"200", "401"} <= set(operation["responses"]), (method, path)
        in_path = {p["name"] for p in operation.get("parameters", []) if p["in"] == "path"}
        assert in_path == set(re.findall(r"{(\w+)}", path)), (method, path)


async def test_openapi_describes_what_request_bodies_and_statuses_accept(client):
    """What schemathesis holds the service to: the document's "valid" is the service's."""
    spec = await (await client.get("/api/docs/swagger.json")).json()
    schemas = spec["components"]["schemas"]
    bodies = [(path, method, operation["requestBody"])
              for path, operations in spec["paths"].items()
              for method, operation in operations.items() if "requestBody" in operation]
    assert len(bodies) == 9  # 7, and the webhook subscription POST and PUT
    for path, method, body in bodies:
        name = body["content"]["application/json"]["schema"]["$ref"].rsplit("/", 1)[-1]
        assert schemas[name]["additionalProperties"] is True, name  # unknown fields: ignored
        responses = spec["paths"][path][method]["responses"]
        assert {"400", "413", "415"} <= set(responses), (path, method)
    # A status in any letter case (the seed writes PENDING); nothing else.
    status = jsonschema_rs.validator_for(schemas["PipelineRunPut"]["properties"]["status"])
    assert all(status.is_valid(s) for s in ("pending", "PENDING", "Running", "cancelled"))
    assert not any(status.is_valid(s) for s in ("pend", " pending", "pending\n", "done", ""))
    stage_status = jsonschema_rs.validator_for(schemas["StageRunPut"]["properties"]["status"])
    assert stage_status.is_valid("Success") and not stage_status.is_valid("waiting")


@pytest.mark.parametrize("token", [None, "wrong"])
async def test_the_bare_address_leads_to_the_pages_and_the_icon_is_no_404(client, token):
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    resp = await client.get("/", allow_redirects=False, headers=headers)
    assert resp.status == 302 and resp.headers["Location"] == "/ui/"
    resp = await client.get("/", headers=headers)  # followed: the pages' sign-in
    assert resp.status == 200 and resp.content_type == "text/html"
    icon = await client.get("/favicon.ico", headers=headers)
    assert icon.status == 204 and await icon.read() == b""
    assert "max-age" in icon.headers["Cache-Control"]


async def test_swagger_ui_is_served_as_html(client):
    resp = await client.get("/api/docs")
    assert resp.status == 200 and resp.content_type == "text/html"
    text = await resp.text()
    assert "swagger-ui" in text and "swagger.json" in text
