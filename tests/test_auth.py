"""Authentication (401 on every route), scopes (403), enterprise isolation (404, never listed)."""
from __future__ import annotations

import pytest
import pytest_asyncio

from tests.helpers import CORE_ROUTES, body_for, events_of, ids, make_token
from tests.module_app import api, client, config, db, token  # noqa: F401 (one app per module)

pytestmark = pytest.mark.asyncio(loop_scope="module")


BAD_AUTH = {
    "no header": None,
    "unknown token": "Bearer pr_not-a-real-token",
    "empty bearer": "Bearer ",
    "wrong scheme": "Basic{token}",
    "basic": "Basic {token}",
    "bare token": "{token}",
    "bearer without space": "Bearer{token}",
}


@pytest.mark.parametrize("header", list(BAD_AUTH.values()), ids=list(BAD_AUTH))
async def test_every_route_refuses_bad_credentials_with_401(api, db, header):
    real = await ids(api)
    events = await events_of(db, real["pipeline_run_id"])
    anonymous = api.with_token(None)
    for method, template in CORE_ROUTES:
        headers = {} if header is None else {"Authorization": header.format(token=api.token)}
        path = template.format(**real)
        content = await anonymous.call(method, path, 401, headers=headers,
                                       json=body_for(method, template))
        assert content == {}, (method, path)
        # the same request with a malformed id is still a 401: nothing leaks before auth
        await anonymous.call(method, path.replace(real["pipeline_id"], "nope"), 401,
                             headers=headers, json=body_for(method, template))
    assert await events_of(db, real["pipeline_run_id"]) == events
    pipelines = (await api.get("/pipelines/"))["results"]
    assert [p["name"] for p in pipelines] == ["deploy"]
    assert (await api.get(f"/pipelines/{real['pipeline_id']}/stages/"))["count"] == 2


async def test_a_lower_case_bearer_scheme_is_accepted(api):
    lower = api.with_token(None)
    await lower.get("/pipelines/", headers={"Authorization": f"bearer {api.token}"})


async def test_a_revoked_token_is_refused(api, db, enterprise):
    token = await make_token(db, enterprise, "temporary")
    await db.execute("UPDATE api_tokens SET revoked_at = now() WHERE enterprise_id = $1 "
                     "AND name = 'temporary'", enterprise)
    await api.with_token(token).get("/pipelines/", status=401)


async def test_a_read_only_token_reads_but_cannot_write(api, db, enterprise):
    real = await ids(api)
    reader = api.with_token(await make_token(db, enterprise, "reader", ["runs:read"]))
    for method, template in CORE_ROUTES:
        path = template.format(**real)
        if method == "GET":
            assert await reader.get(path) is not None, path
        else:
            content = await reader.call(method, path, 403, json=body_for(method, template))
            assert content == {}, (method, path)
    assert (await api.get("/pipelines/"))["count"] == 1


# --- enterprise isolation ---------------------------------------------------------------

@pytest_asyncio.fixture(loop_scope="module")
async def intruder(api, db):
    """A caller from another enterprise, with full scopes and a pipeline of its own."""
    other = api.with_token(await make_token(db, "ent-intruder-" + api.token[-8:], "tester"))
    await other.run((await other.pipeline("theirs"))["id"])
    return other


async def test_another_enterprises_resources_are_404_on_every_route(api, db, intruder):
    real = await ids(api)
    run_path = "/pipelines/{pipeline_id}/runs/{pipeline_run_id}/".format(**real)
    run = await api.get(run_path)
    pipeline = await api.get(f"/pipelines/{real['pipeline_id']}/")
    events = await events_of(db, run["id"])
    for method, template in CORE_ROUTES:
        if "{" not in template:
            continue
        path = template.format(**real)
        content = await intruder.call(method, path, 404, json=body_for(method, template))
        assert content == {}, (method, path)
    await intruder.put(run_path, {"status": "CANCELLED"}, status=404)
    assert await api.get(run_path) == run
    assert await api.get(f"/pipelines/{real['pipeline_id']}/") == pipeline
    assert await events_of(db, run["id"]) == events
    assert (await api.get(f"/pipelines/{real['pipeline_id']}/runs/"))["results"] == [run]


async def test_lists_never_include_another_enterprises_resources(api, intruder):
    mine = await api.pipeline("theirs")  # the same name as the intruder's pipeline
    run = await api.run(mine["id"])
    for caller, own_pipeline, own_run in ((api, mine, run), (intruder, None, None)):
        pipelines = (await caller.get("/pipelines/?limit=1000"))["results"]
        runs = (await caller.get("/runs/?limit=1000"))["results"]
        assert len(pipelines) == 1 and len(runs) == 1
        for query in ("name=theirs", "default=false", "ordering=name"):
            assert (await caller.get(f"/pipelines/?{query}"))["count"] == 1
        for query in ("pipeline_name=theirs", "status=pending", "ordering=pipeline__name"):
            assert (await caller.get(f"/runs/?{query}"))["count"] == 1
        if own_pipeline is not None:
            assert pipelines[0]["id"] == own_pipeline["id"] and runs[0] == own_run
        else:
            assert pipelines[0]["id"] != mine["id"] and runs[0]["id"] != run["id"]
    assert {p["enterprise_id"] for p in (await api.get("/pipelines/"))["results"]} == {
        mine["enterprise_id"]}

