"""Every kind of response the API gives, validated against Esper's schemas and our own.

Esper's OpenAPI 3.1 document (tests/reference/, a copy of shared/reference/) declares, per
operation, a 200 body and some 400 and 401 bodies. Each response is validated against
Esper's schema for its operation and status where Esper declares one; an error status
Esper does not list is held to Esper's error shape (its Error_4xx schemas are one shape:
`code`, `message` and `content`, an object). Every response is also validated against
the response our served document declares for it (so it must declare it).
"""
from __future__ import annotations

import copy
import io
import json
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from openapi_schema_validator import (OAS30Validator, OAS31Validator, oas30_format_checker,
                                      oas31_format_checker)

from tests.helpers import MOUNTS, Api, make_token, as_runtime
from service.config import Config
from service.infra.runtime import PARSER_LIMITS
from service.web.app import create_app
from service.web.keys import POOL
from service.web.middleware import MAX_URL_BYTES

REFERENCE = Path(__file__).with_name("reference") / "esper-pipelines-v0-subset.json"
SHARED = Path(__file__).resolve().parents[2] / "shared" / "reference" / REFERENCE.name
ESPER = json.loads(REFERENCE.read_text())
MOUNT = MOUNTS[0]
ESPER_ERROR = {"$ref": "#/components/schemas/Error_400_Bad_Data"}
OUR_ERROR = {"$ref": "#/components/schemas/ErrorEnvelope"}
# Fields Esper's document types without null that a Django REST framework serializer (and
# so Esper's server) answers null, as we do: a run not started or not ended yet, the paging
# links at either end of a list, an object made by a token (no user), an unset timeout.
NULLABLE = {"started_at", "ended_at", "next", "previous", "created_by", "updated_by",
            "timeout_seconds"}


def _nullable(node: Any) -> Any:
    """Esper's document with null allowed on exactly the NULLABLE properties."""
    if isinstance(node, dict):
        for name, prop in node.get("properties", {}).items():
            if name in NULLABLE and isinstance(prop.get("type"), str):
                prop["type"] = [prop["type"], "null"]
        for value in node.values():
            _nullable(value)
    elif isinstance(node, list):
        for value in node:
            _nullable(value)
    return node


def _schema_of(operation: dict | None, status: int) -> dict | None:
    response = (operation or {}).get("responses", {}).get(str(status))
    return None if response is None else response["content"]["application/json"]["schema"]


def _validate(validator: type, checker, schema: dict, document: dict, body: Any) -> None:
    # The schema's $refs point into the document's components: validate with them beside it.
    root = {**schema, "components": document["components"]}
    validator(root, format_checker=checker).validate(body)


class Contract:
    """Validates responses and remembers what it validated."""

    def __init__(self, ours: dict):
        self.esper = _nullable(copy.deepcopy(ESPER))
        self.ours = ours
        self.esper_checked: set[tuple[str, str, int]] = set()
        self.statuses: set[int] = set()

    def check(self, method: str, template: str | None, status: int, body: Any) -> None:
        self.statuses.add(status)
        path = None if template is None else MOUNT + template
        method = method.lower()
        esper = _schema_of(self.esper["paths"].get(path, {}).get(method), status)
        if esper is not None:
            self.esper_checked.add((method, path, status))
        elif status >= 400:
            esper = ESPER_ERROR
        if esper is not None:
            _validate(OAS31Validator, oas31_format_checker, esper, self.esper, body)
        operation = self.ours["paths"].get(path, {}).get(method)
        ours = _schema_of(operation, status) if operation is not None else OUR_ERROR
        assert ours is not None, f"{method} {path} answered {status}: not in our document"
        _validate(OAS30Validator, oas30_format_checker, ours, self.ours, body)

    async def call(self, caller: Api, method: str, template: str | None, status: int,
                   ids: dict | None = None, path: str | None = None, **kwargs) -> Any:
        content = await caller.call(method, path or template.format(**(ids or {})), status,
                                    **kwargs)
        self.check(method, template, status, await caller.last.json())
        return content


def test_the_reference_is_a_copy_of_the_shared_one(missing_tool):
    if not SHARED.exists():
        missing_tool(f"no {SHARED} beside this checkout")
    assert json.loads(SHARED.read_text()) == ESPER


@pytest.fixture
async def served(aiohttp_server, aiohttp_client, config, token) -> Api:
    """Behind the parser limits it is served with (runtime.run), so a long URL is a 414."""
    server = await aiohttp_server(create_app(config), **PARSER_LIMITS)
    return Api(await aiohttp_client(server), token)


@pytest.fixture
async def contract(served) -> Contract:
    return Contract(await (await served.client.get("/api/docs/swagger.json")).json())


P, STAGES, STAGE = "/pipelines/", "/pipelines/{pipeline_id}/stages/", \
    "/pipelines/{pipeline_id}/stages/{stage_id}/"
ONE_PIPELINE, RUNS, PIPELINE_RUNS = "/pipelines/{pipeline_id}/", "/runs/", \
    "/pipelines/{pipeline_id}/runs/"
RUN = "/pipelines/{pipeline_id}/runs/{pipeline_run_id}/"
STAGE_RUNS, STAGE_RUN = "/runs/{pipeline_run_id}/stageruns/", \
    "/runs/{pipeline_run_id}/stageruns/{stage_run_id}/"
EVENTS, FEED = "/pipelines/{pipeline_id}/runs/{pipeline_run_id}/events/", "/events/"


async def successes(c: Contract, api: Api) -> dict[str, str]:
    """Every operation's 200: objects, lists (first, middle and last pages), audit reads."""
    first = await c.call(api, "POST", P, 200, json={"name": "deploy", "stages": [
        {"name": "build"}, {"name": "test"}]})
    await c.call(api, "POST", P, 200, json={"name": "spare", "timeout_seconds": 60})
    ids = {"pipeline_id": first["id"], "stage_id": first["stages"][0]["id"]}
    for query in ("", "?limit=1", "?limit=1&offset=1"):
        await c.call(api, "GET", P, 200, path=P + query)
    await c.call(api, "GET", ONE_PIPELINE, 200, ids)
    await c.call(api, "PUT", ONE_PIPELINE, 200, ids, json={"description": "ships it"})
    await c.call(api, "GET", STAGES, 200, ids)
    extra = await c.call(api, "POST", STAGES, 200, ids, json={"name": "extra"})
    await c.call(api, "GET", STAGE, 200, ids)
    await c.call(api, "PUT", STAGE, 200, ids, json={"timeout_seconds": 30})
    await c.call(api, "DELETE", STAGE, 200, {**ids, "stage_id": extra["id"]})
    run = await c.call(api, "POST", PIPELINE_RUNS, 200, ids)
    ended = await c.call(api, "POST", PIPELINE_RUNS, 200, ids)
    ids["pipeline_run_id"] = run["id"]
    await c.call(api, "PUT", RUN, 200, ids, json={"status": "running"})  # started_at set
    await c.call(api, "PUT", RUN, 200, {**ids, "pipeline_run_id": ended["id"]},
                 json={"status": "cancelled"})  # ended_at set
    await c.call(api, "GET", RUN, 200, ids)
    for template in (RUNS, PIPELINE_RUNS):
        for query in ("", "?limit=1", "?status=running", "?cursor=&limit=1"):
            await c.call(api, "GET", template, 200, ids, path=template.format(**ids) + query)
    stage_runs = await c.call(api, "GET", STAGE_RUNS, 200, ids)
    ids["stage_run_id"] = stage_runs["results"][0]["id"]
    await c.call(api, "GET", STAGE_RUN, 200, ids)
    await c.call(api, "PUT", STAGE_RUN, 200, ids, json={"status": "running"})
    await c.call(api, "GET", EVENTS, 200, ids)
    await c.call(api, "GET", FEED, 200)
    await c.call(api, "DELETE", RUN, 200, {**ids, "pipeline_run_id": ended["id"]})
    spare = (await api.get(P + "?name=spare"))["results"][0]
    await c.call(api, "DELETE", ONE_PIPELINE, 200, {"pipeline_id": spare["id"]})
    return ids


def _raw(api: Api, content_type: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {api.token}", "Content-Type": content_type}


async def errors(c: Contract, api: Api, ids: dict[str, str], reader: Api) -> None:
    """Every 4xx the API answers, on the operations where Esper documents them and more."""
    for method, template, body in (("POST", P, {}), ("PUT", ONE_PIPELINE, {"name": ""}),
                                   ("POST", STAGES, {}), ("PUT", STAGE, {"name": ""}),
                                   ("PUT", RUN, {"status": "bogus"}),
                                   ("PUT", STAGE_RUN, {"status": "waiting"}),
                                   ("GET", RUNS + "?status=bogus", None)):
        await c.call(api, method, template, 400, ids, json=body)
    await c.call(api, "DELETE", RUN, 400, ids, headers={"If-Match": "not a version"})
    anonymous = api.with_token(None)
    for path, operations in c.esper["paths"].items():
        for method in operations:
            template = path.removeprefix(MOUNT)
            await c.call(anonymous, method.upper(), template, 401, ids,
                         json={} if method in ("post", "put") else None)
    await c.call(reader, "POST", P, 403, json={"name": "no"})
    await c.call(api, "GET", RUN, 404, {**ids, "pipeline_run_id": ids["stage_id"]})
    await c.call(api, "GET", None, 404, path="/nothing/here/")
    await c.call(api, "PATCH", None, 405, path=ONE_PIPELINE.format(**ids), json={})
    await c.call(api, "PUT", RUN, 409, ids, json={"status": "pending"})
    await c.call(api, "PUT", RUN, 412, ids, json={"status": "waiting"},
                 headers={"If-Match": '"999"'})
    await c.call(api, "POST", P, 413, data=io.BytesIO(b'{"name": "' + b"x" * 2**20 + b'"}'),
                 headers=_raw(api, "application/json"))
    long = RUNS + "?pad=" + "x" * MAX_URL_BYTES
    await c.call(api, "GET", RUNS, 414, path=long)
    await c.call(api, "POST", P, 415, data=b'{"name": "x"}', headers=_raw(api, "text/plain"))
    key = {"Idempotency-Key": "esper-schemas-1"}
    await c.call(api, "POST", P, 200, json={"name": "keyed"}, headers=key)
    await c.call(api, "POST", P, 422, json={"name": "other"}, headers=key)


async def test_every_response_kind_matches_the_schemas(contract, served, db, enterprise):
    reader = served.with_token(await make_token(db, enterprise, "reader", ["runs:read"]))
    ids = await successes(contract, served)
    await errors(contract, served, ids, reader)
    declared = {(method, path, int(status)) for path, ops in ESPER["paths"].items()
                for method, op in ops.items() for status in op["responses"]}
    assert contract.esper_checked == declared  # each response Esper documents, met
    assert contract.statuses == {200, 400, 401, 403, 404, 405, 409, 412, 413, 414, 415, 422}


async def test_a_500_matches_the_error_schemas(aiohttp_client, config, token):
    async def broken(request: web.Request) -> web.Response:
        raise RuntimeError("kaboom")

    app = create_app(config)
    app.router.add_get("/broken", broken)
    api = Api(await aiohttp_client(app), token)
    c = Contract(await (await api.client.get("/api/docs/swagger.json")).json())
    assert await c.call(api, "GET", None, 500, path=str(api.client.make_url("/broken"))) == {}


async def test_a_503_matches_the_error_schemas(aiohttp_client, db_dsn, token):
    config = Config(database_url=as_runtime(db_dsn), pool_min=1, pool_max=1,
                    pool_acquire_timeout=0.3,
                    token_cache_seconds=60)
    api = Api(await aiohttp_client(create_app(config)), token)
    c = Contract(await (await api.client.get("/api/docs/swagger.json")).json())
    await api.get(RUNS)  # the token is cached: the 503 is the handler's
    held = await api.client.app[POOL].acquire()
    try:
        assert await c.call(api, "GET", RUNS, 503) == {}
    finally:
        await api.client.app[POOL].release(held)
