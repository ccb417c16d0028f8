"""Hostile input: every malformed request (bodies, JSON, content types, field types, query
parameters, path ids, headers) is a 4xx envelope that writes nothing and shows no internals."""
from __future__ import annotations

import asyncio
import base64
import io
import json

import pytest
import pytest_asyncio

from service.web import schemas
from service.web.app import RESOURCE_ROUTES as ALL_ROUTES
from tests.helpers import body_for, check_error, counts, send, world
from tests.module_app import api, client, config, db, token  # noqa: F401 (one app per module)

pytestmark = pytest.mark.asyncio(loop_scope="module")

SQL = "'; DROP TABLE run_events; --"
SQL_OR = "' OR '1'='1"
# The run resources' routes: webhooks (their ids, webhooks:manage) and the never-ending
# stream are held to the same rules in tests/test_webhooks.py and tests/test_stream.py.
RESOURCE_ROUTES = [r for r in ALL_ROUTES if not r[1].startswith(("/webhooks/", "/events/stream/"))]
BODY_ROUTES = [(m, p) for m, p, _ in RESOURCE_ROUTES if m in ("POST", "PUT")]
MIB = 1024 * 1024


@pytest_asyncio.fixture(loop_scope="module")
async def hostile(api, db, enterprise):
    """Ids to aim at, and a checker: 4xx envelope, no internals, nothing written."""
    real = await world(api)

    async def expect_4xx(method: str, path: str, expected: int | tuple | None = None, **kw):
        before = await counts(db, enterprise)
        status, text, resp = await send(api, method, path, **kw)
        check_error(status, text, resp, (method, path[:120], str(kw)[:200]))
        if expected is not None:
            allowed = expected if isinstance(expected, tuple) else (expected,)
            assert status in allowed, (method, path[:120], str(kw)[:200], status, text[:300])
        assert await counts(db, enterprise) == before, (method, path[:120], str(kw)[:200])
        return json.loads(text)["content"]

    expect_4xx.ids = real
    expect_4xx.api = api
    return expect_4xx


@pytest.mark.parametrize("method,template", BODY_ROUTES, ids=[f"{m} {p}" for m, p in BODY_ROUTES])
async def test_a_body_over_1_mib_is_413(hostile, method, template):
    path = template.format(**hostile.ids)
    big = json.dumps({"name": "x", "description": "d" * MIB}).encode()
    await hostile(method, path, 413, data=io.BytesIO(big),
                  headers={"Content-Type": "application/json"})

    async def chunks():  # no Content-Length: the limit holds for chunked bodies too
        for _ in range(3):
            yield b" " * (MIB // 2)
    await hostile(method, path, 413, data=chunks(), headers={"Content-Type": "application/json"})


MALFORMED_JSON = [b"{", b'{"name": }', b"{'name': 'x'}", b"nul", b'{"name": "x"} trailing',
                  b'\xff\xfe{"name": "x"}', b'{"name": "\xff"}', b"[" * 100_000 + b"]" * 100_000,
                  b'{"name": "x", "timeout_seconds": ' + b"9" * 5000 + b"}",
                  b'{"status": ' + b"[" * 50_000 + b"]" * 50_000 + b"}", b"{" * 3 + b"}" * 3,
                  b'{"name": "x", "description": "\\x"}', b'{"name": NaN}']


@pytest.mark.parametrize("method,template", BODY_ROUTES, ids=[f"{m} {p}" for m, p in BODY_ROUTES])
async def test_malformed_json_is_400(hostile, method, template):
    path = template.format(**hostile.ids)
    for raw in MALFORMED_JSON:
        await hostile(method, path, 400, data=raw, headers={"Content-Type": "application/json"})
    # Gzip that is not, and an unknown charset.
    await hostile(method, path, 400, data=b"not gzip",
                  headers={"Content-Type": "application/json", "Content-Encoding": "gzip"})
    await hostile(method, path, 415, data=b'{"name": "x"}',
                  headers={"Content-Type": "application/json; charset=x-unknown"})


NOT_JSON = ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x",
            "application/xml", "application/octet-stream", "text/html"]


@pytest.mark.parametrize("method,template", BODY_ROUTES, ids=[f"{m} {p}" for m, p in BODY_ROUTES])
async def test_a_body_that_is_not_json_is_415(hostile, method, template):
    path = template.format(**hostile.ids)
    for content_type in NOT_JSON:
        await hostile(method, path, 415, data=b'{"name": "x", "status": "running"}',
                      headers={"Content-Type": content_type})


# Body fields by kind, from the schemas; each hostile value with what the field must answer.
KINDS = {
    schemas.PipelinePost: {"name": "name", "description": "text", "timeout_seconds": "int",
                           "is_active": "bool", "is_default": "bool", "stages": "list"},
    schemas.PipelinePut: {"name": "name", "description": "text", "timeout_seconds": "int",
                          "is_active": "bool", "is_default": "bool"},
    schemas.StagePost: {"name": "name", "description": "text", "timeout_seconds": "int"},
    schemas.StagePut: {"name": "name", "description": "text", "timeout_seconds": "int"},
    schemas.PipelineRunPut: {"status": "status"},
    schemas.StageRunPut: {"status": "status"},
}
VALID = {"name": "ok", "status": "running"}


def accepted(kind: str, value) -> bool:
    """Whether a field of this kind takes the value (else the answer must be a 400)."""
    if kind in ("name", "text"):
        limit = 255 if kind == "name" else 10_000
        return (isinstance(value, str) and "\x00" not in value and 0 < len(value) <= limit
                and not any("\ud800" <= c <= "\udfff" for c in value)) or (
            kind == "text" and value == "")
    if kind == "int":
        return value is None or (type(value) is int and 1 <= value <= 2**31 - 1)
    if kind == "bool":
        return type(value) is bool
    if kind == "list":  # of stages; a stage may be its name alone (our extension)
        return isinstance(value, list) and all(accepted("name", v) for v in value)
    return False  # status: no hostile value is a status


HOSTILE_VALUES = [None, [], {}, [SQL], {"$ne": 1}, 1, 1.5, -1, 0, 2**31, 2**63, -(2**63) - 1,
                  10**30, True, "", "1", "true", "a\x00b", "\x00", "\ud800", "x" * 10_000,
                  "x" * 10_001, SQL, SQL_OR, "running\x00", "RUNNING; DROP"]


def hostile_cases():
    for method, template, handler in RESOURCE_ROUTES:
        body_schema = next((s["schema"] for s in getattr(handler, "__schemas__", ())
                            if s["location"] == "json"), None)
        if body_schema is None or not body_schema.fields:
            continue
        kinds = KINDS[type(body_schema)]
        assert set(kinds) == set(body_schema.fields), f"new field in {type(body_schema)}"
        yield pytest.param(method, template, kinds, id=f"{method} {template}")


@pytest.mark.parametrize("method,template,kinds", list(hostile_cases()))
async def test_every_body_field_refuses_wrong_types_and_takes_text_verbatim(
        api, hostile, method, template, kinds):
    path = template.format(**hostile.ids)
    base = {k: v for k, v in VALID.items() if k in kinds}
    for field, kind in kinds.items():
        for value in HOSTILE_VALUES:
            body = {**base, field: value}
            # json.dumps keeps a lone surrogate as the escape "\ud800", as a hostile client would.
            data = json.dumps(body)
            headers = {"Content-Type": "application/json"}
            if not accepted(kind, value):
                content = await hostile(method, path, 400, data=data, headers=headers)
                assert field in content["errors"] or "_schema" in content["errors"], (field, value)
                continue
            status, text, resp = await send(api, method, path, data=data, headers=headers)
            assert status == 200, (method, path, field, repr(value)[:50], text[:300])
            stored = json.loads(text)["content"]
            if kind in ("name", "text"):
                assert stored[field] == value  # text is data, never SQL
            if kind == "list":
                assert [stage["name"] for stage in stored[field]] == value
    # The tables are all still there.
    await api.get(f"/pipelines/{hostile.ids['pipeline_id']}/runs/{hostile.ids['pipeline_run_id']}/events/")


async def test_stage_fields_nested_in_a_pipeline_refuse_wrong_types(hostile):
    for value in (None, 1, [], {"name": None}, {"name": "a\x00"}, {"name": "x" * 256},
                  {"name": "x", "timeout_seconds": -1}, {"name": SQL * 10}, "", "a\x00",
                  "x" * 256, SQL * 10, True):
        await hostile("POST", "/pipelines/", 400, json={"name": "p", "stages": [value]})
    await hostile("POST", "/pipelines/", 400, json={"name": "p", "stages": [{"name": "s"}] * 101})


def query_params(handler) -> dict:
    schema = next((s["schema"] for s in getattr(handler, "__schemas__", ())
                   if s["location"] == "querystring"), None)
    return {} if schema is None else dict(schema.fields)


GET_ROUTES = [(m, p, h) for m, p, h in RESOURCE_ROUTES if m == "GET" and query_params(h)]
HOSTILE_QUERY = ["%00", "a%00b", SQL, SQL_OR, "-1", "0", "99999999999999999999", "1e3", "nan",
                 "inf", "-inf", "[]", "null", "%ED%A0%80", "%FF%FE", "x" * 4000, "1;2",
                 "2020-13-45", "2020-01-01T12:99:00Z"]
TEXT_FILTERS = {"name", "pipeline_name", "type", "actor"}


@pytest.mark.parametrize("method,template,handler", GET_ROUTES,
                         ids=[f"{m} {p}" for m, p, _ in GET_ROUTES])
async def test_every_query_parameter_refuses_garbage_and_never_fails(api, hostile, method,
                                                                    template, handler):
    path = template.format(**hostile.ids)
    for name in query_params(handler):
        for value in HOSTILE_QUERY:
            url = f"{path}?{name}={value.replace('+', '%2B').replace(' ', '%20')}"
            status, text, resp = await send(api, "GET", url)
            if status == 200:
                content = json.loads(text)["content"]
                if name in TEXT_FILTERS:  # a filter that matches nothing, not SQL
                    assert content.get("count", len(content.get("results", ()))) == 0, (url, text[:300])
                continue
            check_error(status, text, resp, url)
            assert status == 400, (url, status, text[:300])


@pytest.mark.parametrize("name,values", [
    ("limit", ["-1", "0", "1001", str(2**31), str(2**63), str(10**30), "1.5", "1e3", "x"]),
    ("offset", ["-1", str(2**31), str(2**63), str(10**30), "1.5", "x"]),
])
async def test_negative_and_huge_paging_is_400_on_every_list(hostile, name, values):
    lists = [p for m, p, h in RESOURCE_ROUTES if m == "GET" and name in query_params(h)]
    assert len(lists) >= 6
    for template in lists:
        for value in values:
            content = await hostile("GET", f"{template.format(**hostile.ids)}?{name}={value}", 400)
            assert name in content["errors"]


async def test_feed_cursor_and_wait_bounds_are_400(hostile):
    for query in ("after=-1", f"after={2**63}", "wait=-1", "wait=31", "wait=nan", "wait=inf",
                  "since=2020-01-01T00:00:00", "until=infinity", "pipeline_id=nope",
                  f"run_id={SQL}", "type=" + "t" * 101, "actor=" + "a" * 256):
        await hostile("GET", f"/events/?{query}", 400)


async def test_as_of_that_is_not_an_rfc3339_instant_is_400(hostile):
    run = "/pipelines/{pipeline_id}/runs/{pipeline_run_id}/".format(**hostile.ids)
    for value in ("%00", SQL, "2020-01-01T00:00:00", "2020-01-01T12:99:00Z"):
        await hostile("GET", f"{run}?as_of={value}", 400)


MALFORMED_IDS = ["nope", "1", "%00", "%27%3B%20DROP%20TABLE%20run_events%3B%20--", "x" * 1000,
                 "00000000-0000-0000-0000-00000000000g", "00000000-0000-0000-0000-0000000000000",
                 "%ED%A0%80", "-1", "..."]


@pytest.mark.parametrize("method,template", [(m, p) for m, p, _ in RESOURCE_ROUTES if "{" in p],
                         ids=[f"{m} {p}" for m, p, _ in RESOURCE_ROUTES if "{" in p])
async def test_malformed_ids_in_the_path_are_404(hostile, method, template):
    params = [p.strip("{}") for p in template.split("/") if p.startswith("{")]
    for param in params:
        for bad in MALFORMED_IDS:
            path = template.format(**{**hostile.ids, param: bad})
            await hostile(method, path, 404, json=body_for(method, template))


async def test_hostile_headers_are_refused_or_ignored(api, hostile):
    run = "/pipelines/{pipeline_id}/runs/{pipeline_run_id}/".format(**hostile.ids)
    anonymous = api.with_token(None)
    for auth in (f"Bearer {SQL}", f"Bearer {api.token}{SQL}", "Bearer " + "x" * 8000,
                 f"Bearer {api.token}\u00e9"):
        status, text, resp = await send(anonymous, "GET", run, headers={"Authorization": auth})
        assert status == 401, (auth[:40], text)
        check_error(status, text, resp, auth[:40])
    # A request id that is not sane is replaced, not echoed.
    status, _, resp = await send(api, "GET", run, headers={"X-Request-ID": SQL})
    assert status == 200 and resp.headers["X-Request-ID"] != SQL


async def test_non_utf8_authorization_bytes_are_401(api, client):
    # aiohttp's client refuses such headers: write the request by hand.
    reader, writer = await asyncio.open_connection(client.host, client.port)
    writer.write(b"GET /pipelines/v0/pipelines/ HTTP/1.1\r\nHost: x\r\n"
                 b"Authorization: Bearer \xff\xfe\x80\r\nConnection: close\r\n\r\n")
    await writer.drain()
    answer = await reader.read()
    writer.close()
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 401"), answer[:300]
    assert json.loads(body)["code"] == 401


# --- cursors, resume points and forms that used to reach a 500 ---------------------------

def cursor_of(data) -> str:
    """A cursor as the service writes them (base64url JSON, unpadded), around any content."""
    raw = data if isinstance(data, bytes) else json.dumps(data).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


NIL = "00000000-0000-0000-0000-000000000000"
HOSTILE_CURSORS = [
    cursor_of(b'{"o":"","k":' + b"[" * 1500 + b"]" * 1500 + b"}"),  # RecursionError
    cursor_of({"o": "", "k": ["2020-01-01T00:00:00+00:00", 5]}),  # uuid.UUID(5): AttributeError
    cursor_of({"o": "", "k": [5, NIL]}),
    cursor_of({"o": "", "k": [["2020"], {"a": 1}]}),
    cursor_of({"o": "", "k": ["0001-01-01T00:00:00+14:00", NIL]}),  # year 0 in UTC: DataError
    cursor_of({"o": "", "k": ["9999-12-31T23:59:59-14:00", NIL]}),  # year 10000 in UTC
    cursor_of({"o": "", "k": ["0001-01-01T00:00:00+00:00", NIL]}),
]


async def test_hostile_cursors_are_400_on_the_api(hostile):
    lists = ("/runs/", "/pipelines/{pipeline_id}/runs/".format(**hostile.ids))
    for path in lists:
        for cursor in HOSTILE_CURSORS[:-1]:
            content = await hostile("GET", f"{path}?cursor={cursor}", 400)
            assert content["errors"] == {"cursor": ["malformed cursor"]}, cursor
        # The first instant Python has is a fine (empty) place to start after.
        status, text, _ = await send(hostile.api, "GET", f"{path}?cursor={HOSTILE_CURSORS[-1]}")
        assert status == 200, text[:300]


async def ui_client(client, token: str):
    """The test client signed in to the pages."""
    resp = await client.post("/ui/login", data={"token": token, "next": "/ui/runs"},
                             headers={"Origin": str(client.make_url("")).rstrip("/")},
                             allow_redirects=False)
    assert resp.status == 303, await resp.text()
    return client


async def test_hostile_cursors_are_400_on_the_runs_page(client, api):
    await ui_client(client, api.token)
    for cursor in HOSTILE_CURSORS[:-1]:
        resp = await client.get(f"/ui/runs?cursor={cursor}", allow_redirects=False)
        text = await resp.text()
        assert resp.status == 400 and "malformed cursor" in text, (cursor[:40], text[:300])


async def test_last_event_ids_that_are_not_ascii_positions_are_400(api, client):
    for value in ("²", "١٢", "9999999999999999999", "9223372036854775808", "-1", "1 2", "0x10"):
        resp = await client.get("/pipelines/v0/events/stream/", headers={
            "Authorization": f"Bearer {api.token}", "Last-Event-ID": value})
        body = await resp.json()
        assert resp.status == 400, (value, body)
        assert body["content"]["errors"] == {"Last-Event-ID": [
            "must be an event position (a non-negative integer)"]}, value


UNREADABLE_FORMS = [
    ("application/x-www-form-urlencoded; charset=bogus", b"token=x"),
    ("application/x-www-form-urlencoded; charset=ascii", b"token=\xff"),
    ("application/x-www-form-urlencoded", b"token=\xff\xfe"),
    ("multipart/form-data", b"token=x"),
    ("multipart/form-data; boundary=zz", b"not multipart at all"),
]


async def test_sign_in_forms_that_cannot_be_read_get_the_sign_in_page_with_an_error(client):
    origin = str(client.make_url("")).rstrip("/")
    for content_type, body in UNREADABLE_FORMS:
        resp = await client.post("/ui/login", data=body, allow_redirects=False,
                                 headers={"Content-Type": content_type, "Origin": origin})
        text = await resp.text()
        assert resp.status == 400, (content_type, text[:300])
        assert "The form could not be read" in text and "Traceback" not in text
