"""The service's guarantees under pressure, each with a test that fails without its mechanism.

- concurrency: racing changes of one run are each checked against its current state;
  run numbers stay 1..n under many concurrent creates (row locks, own database);
- ETag / If-Match: stale versions are refused with 412 and change nothing;
- scopes: every route (read from the app, so new ones are covered) needs its scope;
- tokens: the CLI lists tokens without secrets and revokes them; revocation wins over the
  app's token cache within seconds; tokens are stored only as sha256 hashes;
- hostile input: every malformed request is a 4xx envelope that writes nothing and shows
  no internals.
"""
from __future__ import annotations

import asyncio
import hashlib
import io
import json
import os
import sys
import time
import uuid
from pathlib import Path

import pytest

from conftest import make_token
from service.domain import lifecycle as lc
from service.web import schemas
from service.web.app import RESOURCE_ROUTES as ALL_ROUTES
from service.config import Config
from test_runs import assert_projection, events_of, run_path

# The run resources' routes: webhooks (their ids, webhooks:manage) and the never-ending
# stream are held to the same rules in tests/test_webhooks.py and tests/test_stream.py.
RESOURCE_ROUTES = [r for r in ALL_ROUTES if not r[1].startswith(("/webhooks/", "/events/stream/"))]

REPO = Path(__file__).resolve().parent.parent
SQL = "'; DROP TABLE run_events; --"
SQL_OR = "' OR '1'='1"
INTERNALS = ("traceback", "asyncpg", "psycopg", "postgres", "sqlstate", 'file "', "exception",
             "relation \"", "syntax error")


async def world(api) -> dict[str, str]:
    """A pipeline with two stages and a run: ids for every path parameter."""
    pipeline = await api.pipeline()
    run = await api.run(pipeline["id"])
    stage_runs = await api.get(f"/runs/{run['id']}/stageruns/")
    return {"pipeline_id": pipeline["id"], "stage_id": pipeline["stages"][0]["id"],
            "pipeline_run_id": run["id"], "stage_run_id": stage_runs["results"][0]["id"]}


async def counts(db, enterprise: str) -> dict[str, int]:
    return {table: await db.fetchval(f"SELECT count(*) FROM {table} WHERE enterprise_id = $1",
                                     enterprise)
            for table in ("pipelines", "stages", "pipeline_runs", "run_events", "stage_runs",
                          "idempotency_keys")}


def body_for(method: str, template: str):
    if method == "PUT" and template.endswith("_run_id}/"):
        return {"status": "running"}
    return {"name": "x"} if method in ("POST", "PUT") else None


async def send(api, method: str, path: str, **kwargs):
    """(status, text, parsed body) of a raw request with the api's token."""
    headers = {"Authorization": f"Bearer {api.token}", **kwargs.pop("headers", {})}
    resp = await api.client.request(method, api.url(path), headers=headers, **kwargs)
    text = await resp.text()
    return resp.status, text, resp


def check_error(status: int, text: str, resp, where) -> None:
    """A 4xx envelope with no internals in it."""
    assert 400 <= status < 500, (where, status, text[:300])
    assert resp.content_type == "application/json", (where, text[:300])
    body = json.loads(text)
    assert set(body) == {"code", "message", "content"} and body["code"] == status, (where, body)
    lowered = text.lower()
    assert not any(word in lowered for word in INTERNALS), (where, text[:300])


# --- concurrency -----------------------------------------------------------------------

def status_after(events: list[dict]) -> dict[int, str]:
    """The run's status once each version is applied."""
    result, status = {}, None
    for event in events:
        if event["type"].startswith("run.") and event["to_status"] is not None:
            status = event["to_status"]
        result[event["version"]] = status
    return result


def caller_changes(events: list[dict]) -> list[tuple[str, int]]:
    """Each caller's change: (its target, the version once its automatic follow-ups are in)."""
    changes: list[list] = []
    for event in events[1:]:
        if event["actor"] != lc.SYSTEM:
            changes.append([event["to_status"], event["version"]])
        elif changes:
            changes[-1][1] = event["version"]
    return [tuple(c) for c in changes]


class TestConcurrency:
    """Real commits on a database of the module's own, through a pool with many connections."""

    POOL_MAX = 50

    @pytest.fixture
    def db_dsn(self, own_db):
        return own_db

    @pytest.fixture
    def config(self, db_dsn) -> Config:
        return Config(database_url=db_dsn, pool_min=1, pool_max=self.POOL_MAX,
                      token_cache_seconds=0.5)

    async def test_racing_changes_are_each_checked_against_the_current_state(self, api, db):
        pipeline = await api.pipeline(stages=("build", "test"))
        run = await api.move(await api.run(pipeline["id"]), "running")
        start = run["version"]
        targets = ["waiting", "running", "waiting", "complete", "running", "waiting",
                   "cancelled", "running", "success", "waiting"] * 2
        answers = await asyncio.gather(*(send(api, "PUT", run_path(run), json={"status": t})
                                         for t in targets))
        final = await api.get(run_path(run))
        events = await assert_projection(db, final)  # versions 1..n, no gap; projection = fold
        after = status_after(events)
        run_events = [e for e in events if e["type"].startswith("run.")]
        for before, event in zip(run_events, run_events[1:]):  # one legal chain
            assert event["from_status"] == before["to_status"]
            assert lc.is_legal(event["from_status"], event["to_status"])
        # Some serial order explains every answer: each change was made by one 200 whose
        # answer is the run right after it; every other 200 was a no-op on the state it
        # saw, every 409 refused a move that was illegal from a state the run really had.
        unexplained = [c for c in caller_changes(events) if c[1] > start]
        for target, (status, text, _) in zip(targets, answers):
            assert status in (200, 409), text
            content = json.loads(text)["content"]
            if status == 409:
                assert content["current_status"] in after.values()
                assert not lc.is_legal(content["current_status"], target)
                continue
            assert content["status"] == after[content["version"]], (target, content)
            if (target, content["version"]) in unexplained:
                unexplained.remove((target, content["version"]))
            else:
                assert content["status"] == target  # a no-op: the run was already there
        assert unexplained == []

    async def test_racing_changes_with_one_if_match_let_exactly_one_through(self, api, db):
        run = await api.move(await api.run((await api.pipeline())["id"]), "running")
        targets = ["waiting", "complete", "cancelled", "timeout"] * 5
        answers = await asyncio.gather(*(
            send(api, "PUT", run_path(run), json={"status": t},
                 headers={"If-Match": f'"{run["version"]}"'}) for t in targets))
        statuses = [status for status, _, _ in answers]
        assert sorted(statuses) == [200] + [412] * (len(targets) - 1)
        winner = json.loads(answers[statuses.index(200)][1])["content"]
        final = await api.get(run_path(run))
        events = await assert_projection(db, final)
        assert [e["to_status"] for e in events
                if e["version"] > run["version"] and e["actor"] != lc.SYSTEM] == [winner["status"]]
        assert final["version"] == winner["version"]

    async def test_120_concurrent_creates_number_runs_1_to_120(self, api, db):
        pipeline = await api.pipeline()
        n = 120
        runs = await asyncio.gather(*(api.run(pipeline["id"]) for _ in range(n)))
        assert sorted(r["run_number"] for r in runs) == list(range(1, n + 1))
        assert len({r["id"] for r in runs}) == n
        pid = uuid.UUID(pipeline["id"])
        stored = await db.fetch("SELECT run_number FROM pipeline_runs WHERE pipeline_id = $1 "
                                "ORDER BY run_number", pid)
        assert [r["run_number"] for r in stored] == list(range(1, n + 1))
        created = await db.fetch("SELECT run_id, data FROM run_events WHERE pipeline_id = $1 "
                                 "AND type = $2", pid, lc.RUN_CREATED)
        numbers = {str(e["run_id"]): e["data"]["run_number"] for e in created}
        assert numbers == {r["id"]: r["run_number"] for r in runs}
        assert await db.fetchval("SELECT last_run_number FROM pipelines WHERE id = $1", pid) == n


# --- ETag / If-Match -------------------------------------------------------------------

async def test_run_responses_carry_the_version_as_etag(api):
    pipeline = await api.pipeline()
    run = await api.run(pipeline["id"])
    assert api.last.headers["ETag"] == '"1"'
    fetched = await api.get(run_path(run))
    assert api.last.headers["ETag"] == f'"{fetched["version"]}"'
    moved = await api.move(run, "running")
    assert api.last.headers["ETag"] == f'"{moved["version"]}"' and moved["version"] == 2


@pytest.mark.parametrize("target", ["running", "cancelled"], ids=["simple", "cascading"])
async def test_put_with_a_stale_if_match_is_412_and_changes_nothing(api, db, target):
    run = await api.move(await api.run((await api.pipeline())["id"]), "queued")
    events = await events_of(db, run["id"])
    content = await api.put(run_path(run), {"status": target}, status=412,
                            headers={"If-Match": '"1"'})
    assert content == {"current_version": run["version"]}
    assert await api.get(run_path(run)) == run
    assert await events_of(db, run["id"]) == events
    # A stale version is refused even for the status the run already has.
    await api.put(run_path(run), {"status": "queued"}, status=412, headers={"If-Match": '"1"'})


async def test_delete_with_a_stale_if_match_is_412_and_keeps_the_run(api, db):
    run = await api.move(await api.run((await api.pipeline())["id"]), "running")
    events = await events_of(db, run["id"])
    await api.delete(run_path(run), status=412, headers={"If-Match": '"1"'})
    assert await api.get(run_path(run)) == run
    assert await events_of(db, run["id"]) == events


@pytest.mark.parametrize("form", ['"{v}"', 'W/"{v}"', "{v}", "*"])
async def test_a_matching_if_match_succeeds(api, db, form):
    run = await api.run((await api.pipeline())["id"])
    moved = await api.put(run_path(run), {"status": "running"},
                          headers={"If-Match": form.format(v=run["version"])})
    assert moved["version"] == run["version"] + 1
    assert api.last.headers["ETag"] == f'"{moved["version"]}"'
    deleted = await api.delete(run_path(moved), headers={"If-Match": form.format(v=moved["version"])})
    assert deleted["id"] == run["id"]
    await api.get(run_path(run), status=404)
    assert [e["type"] for e in await events_of(db, run["id"])][-1] == lc.RUN_DELETED


@pytest.mark.parametrize("value", ['"abc"', "abc", '"-1"', '"1.0"', '"1234567890"', '""',
                                   '"1", "2"', '"\u0661"', '"1 OR 1=1"', '" 1"'])
async def test_a_malformed_if_match_is_400_and_changes_nothing(api, db, value):
    run = await api.run((await api.pipeline())["id"])
    events = await events_of(db, run["id"])
    for method, body in (("PUT", {"status": "running"}), ("DELETE", None)):
        status, text, resp = await send(api, method, run_path(run), json=body,
                                        headers={"If-Match": value})
        assert status == 400, (method, text)
        check_error(status, text, resp, (method, value))
    assert await api.get(run_path(run)) == run
    assert await events_of(db, run["id"]) == events


# --- scopes ----------------------------------------------------------------------------

ALL_SCOPES = ("runs:read", "runs:write", "audit:read")


def required_scope(method: str, template: str) -> str:
    if "/events/" in template:
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


# --- tokens ----------------------------------------------------------------------------

async def cli(db_dsn: str, *args: str) -> tuple[int, str, str]:
    env = {**os.environ, "DATABASE_URL": db_dsn, "LOG_FORMAT": "text"}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "service", *args, cwd=REPO, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    return proc.returncode, out.decode(), err.decode()


async def token_row(db, token: str):
    return await db.fetchrow("SELECT * FROM api_tokens WHERE token_hash = $1",
                             hashlib.sha256(token.encode()).digest())


async def test_list_tokens_never_prints_a_secret(api, db, db_dsn, enterprise):
    other = await make_token(db, enterprise, "second", ["runs:read"])
    code, out, err = await cli(db_dsn, "list-tokens")
    assert code == 0, err
    for secret in (api.token, other):
        row = await token_row(db, secret)
        assert secret not in out and secret not in err
        assert secret[3:] not in out  # not even without its prefix
        assert bytes(row["token_hash"]).hex() not in out
        line = next(x for x in out.splitlines() if x.split("\t")[0] == str(row["id"]))
        assert line.split("\t")[1:3] == [enterprise, row["name"]]


async def test_a_revoked_token_is_refused_within_seconds_despite_the_cache(api, db, db_dsn,
                                                                        client, config,
                                                                        enterprise):
    doomed = api.with_token(await make_token(db, enterprise, "doomed"))
    await doomed.get("/pipelines/")  # now in the app's token cache
    row = await token_row(db, doomed.token)
    code, out, err = await cli(db_dsn, "revoke-token", str(row["id"]))
    assert code == 0 and "revoked" in out, (out, err)
    revoked_at = time.monotonic()
    while True:
        resp = await client.get("/pipelines/v0/pipelines/",
                                headers={"Authorization": f"Bearer {doomed.token}"})
        if resp.status == 401:
            break
        assert resp.status == 200
        assert time.monotonic() - revoked_at < config.token_cache_seconds + 2, "still accepted"
        await asyncio.sleep(0.05)
    body = await resp.json()
    assert body == {"code": 401, "message": body["message"], "content": {}}
    assert (await token_row(db, doomed.token))["revoked_at"] is not None
    await api.get("/pipelines/")  # the enterprise's other token is untouched
    code, out, _ = await cli(db_dsn, "revoke-token", str(row["id"]))  # twice: nothing to do
    assert code == 1 and "not found or already revoked" in out


async def test_revoking_an_unknown_token_fails(db_dsn):
    code, out, _ = await cli(db_dsn, "revoke-token", "987654321")
    assert code == 1 and "not found" in out


async def test_tokens_are_stored_only_as_sha256_hashes(api, db):
    await api.run((await api.pipeline())["id"])  # the token at work: events, runs, keys
    row = await token_row(db, api.token)
    assert bytes(row["token_hash"]) == hashlib.sha256(api.token.encode()).digest()
    tables = await db.fetch("SELECT table_name FROM information_schema.tables "
                            "WHERE table_schema = 'public' AND table_type = 'BASE TABLE'")
    assert "api_tokens" in {t["table_name"] for t in tables}
    for table in tables:
        name = table["table_name"]
        found = await db.fetchval(f'SELECT count(*) FROM "{name}" t WHERE strpos(t::text, $1) > 0',
                                  api.token[3:])
        assert found == 0, f"the plain token is stored in {name}"


# --- hostile input ---------------------------------------------------------------------

BODY_ROUTES = [(m, p) for m, p, _ in RESOURCE_ROUTES if m in ("POST", "PUT")]
MIB = 1024 * 1024


@pytest.fixture
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
    if kind == "list":
        return value == []
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
        if template.startswith("/webhooks/"):
            continue  # their bodies: tests/test_webhooks.py (hostile values there)
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
    # The tables are all still there.
    await api.get(f"/pipelines/{hostile.ids['pipeline_id']}/runs/{hostile.ids['pipeline_run_id']}/events/")


async def test_stage_fields_nested_in_a_pipeline_refuse_wrong_types(hostile):
    for value in (None, 1, [], {"name": None}, {"name": "a\x00"}, {"name": "x" * 256},
                  {"name": "x", "timeout_seconds": -1}, {"name": SQL * 10}, SQL):
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
