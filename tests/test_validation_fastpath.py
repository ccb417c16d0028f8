"""The validation fast path gives exactly what webargs gives: same values, same errors."""
from __future__ import annotations

import json
import uuid

import pytest
from aiohttp import web

from service.web import schemas as s
from service.domain.errors import DomainError
from service.web import validation

# Fixed, not uuid4(): xdist's workers must collect the same parameters.
RUN_ID = uuid.UUID("6602ba26-10ed-4477-a577-137b6980bf80")
PIPELINE_ID = uuid.UUID("c46492f7-237f-4304-ae99-b29ffb324067")


def _outcome(result_or_error):
    if isinstance(result_or_error, DomainError):
        e = result_or_error
        return ["error", type(e).__name__, e.status, e.message, e.content]
    if isinstance(result_or_error, web.HTTPException):
        return ["http", result_or_error.status, result_or_error.text]
    return ["ok", {k: str(v) for k, v in result_or_error.items()}]


async def _both(request: web.Request, schema, location: str):
    outcomes = []
    for load in (lambda: validation._load(request, schema, location),
                 lambda: validation._PARSER.parse(schema, request, location=location,
                                                  unknown=None)):
        try:
            outcomes.append(_outcome(await load()))
        except (DomainError, web.HTTPException) as exc:
            outcomes.append(_outcome(exc))
    return outcomes


def _fast_used(schema, location: str) -> bool:
    return validation._fast_loader(schema, location) is not None


@pytest.fixture
async def probe(aiohttp_client):
    """POST /{a}/{b}?... with a body: the fast and the webargs outcome of each schema."""
    schemas = {"path": (s.RunPath(), "match_info"), "query": (s.RunGetQuery(), "querystring"),
               "page": (s.PageQuery(), "querystring"), "body": (s.PipelineRunPut(), "json"),
               "stage": (s.StageRunPut(), "json")}
    for schema, location in schemas.values():
        assert _fast_used(schema, location)

    async def handler(request: web.Request) -> web.Response:
        out = {name: await _both(request, schema, location)
               for name, (schema, location) in schemas.items()}
        return web.json_response(out)

    app = web.Application()
    app.router.add_route("PUT", "/{pipeline_id}/{pipeline_run_id}", handler)
    client = await aiohttp_client(app)

    async def call(path=f"/{PIPELINE_ID}/{RUN_ID}", query="", body=None, data=None,
                   content_type="application/json"):
        headers = {"Content-Type": content_type} if content_type else {}
        if body is not None:
            data = json.dumps(body)
        resp = await client.put(path + query, data=data, headers=headers)
        assert resp.status == 200, await resp.text()
        return await resp.json()

    return call


def _same(out: dict, *names: str) -> None:
    for name in names or out:
        fast, slow = out[name]
        assert fast == slow, (name, fast, slow)


@pytest.mark.parametrize("run_id", [
    str(RUN_ID), str(RUN_ID).upper(), RUN_ID.hex, f"urn:uuid:{RUN_ID}", f" {RUN_ID}",
    "not-a-uuid", "0" * 31, str(RUN_ID) + "0",
])
async def test_path_ids(probe, run_id):
    _same(await probe(path=f"/{PIPELINE_ID}/{run_id}", body={"status": "running"}), "path")


@pytest.mark.parametrize("query", [
    "", "?", "?as_of=2024-01-01T00:00:00Z", "?as_of=yesterday", "?as_of=", "?foo=bar",
    "?limit=5", "?limit=0", "?offset=-1&limit=abc",
])
async def test_query_strings(probe, query):
    _same(await probe(query=query, body={"status": "running"}), "query", "page")


@pytest.mark.parametrize("body,data,content_type", [
    ({"status": "waiting"}, None, "application/json"),
    ({"status": "WAITING"}, None, "application/json"),
    ({"status": "Running"}, None, "application/json; charset=utf-8"),
    ({"status": "waiting"}, None, "application/merge-patch+json"),
    ({"status": "nope"}, None, "application/json"),
    ({"status": ""}, None, "application/json"),
    ({"status": 1}, None, "application/json"),
    ({"status": None}, None, "application/json"),
    ({"status": ["running"]}, None, "application/json"),
    ({}, None, "application/json"),
    ({"status": "running", "extra": 1}, None, "application/json"),
    ({"Status": "running"}, None, "application/json"),
    ([], None, "application/json"),
    (None, '"running"', "application/json"),
    (None, "{not json", "application/json"),
    (None, "", "application/json"),
    (None, '{"status": "running"}', "text/plain"),
    (None, '{"status": "running"}', None),
    (None, b'{"status": "\xff"}', "application/json"),
    (None, '{"status": "running", "status": "waiting"}', "application/json"),
    (None, '{"status": NaN}', "application/json"),
    (None, '{"status": NaN, "status": "running"}', "application/json"),
    (None, '{"status": "running", "status": Infinity}', "application/json"),
    (None, '{"status": "running", "extra": -Infinity}', "application/json"),
    (None, '{"status": "running"}', "application/json; charset=latin-1"),
    (None, '{"status": "running"}', "application/json; charset=nope"),
    (None, "[" * 100000 + "]" * 100000, "application/json"),
    (None, '{"status": "queued"}', "application/json"),
])
async def test_status_bodies(probe, body, data, content_type):
    _same(await probe(body=body, data=data, content_type=content_type), "body", "stage")


def test_fast_paths_only_for_plain_schemas():
    # Anything with validators, renames or non-UUID path fields stays with webargs.
    assert not _fast_used(s.PipelinePost(), "json")
    assert not _fast_used(s.StagePut(), "json")
    assert not _fast_used(s.RunListQuery(), "json")
