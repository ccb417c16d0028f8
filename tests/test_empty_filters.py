"""An empty query value is no filter (Esper's server is DRF, django-filter ignores them)."""
from __future__ import annotations

import re
from typing import Any

import pytest
import pytest_asyncio
from yarl import URL

from tests.helpers import make_token
from tests.module_app import api, client, config, db, token  # noqa: F401 (one app per module)

pytestmark = pytest.mark.asyncio(loop_scope="module")


@pytest_asyncio.fixture(loop_scope="module")
async def world(api, db, enterprise) -> dict[str, str]:
    """Two pipelines, runs in two statuses, a stage run moved: every filter would narrow."""
    api = api.with_token(await make_token(db, enterprise, "tester-2"))  # two actors
    deploy = await api.pipeline("deploy", stages=("build", "test"))
    other = await api.pipeline("other", stages=("lint",), is_default=True)
    first = await api.run(deploy["id"])
    await api.move(first, "running")
    await api.run(other["id"])
    stage_runs = await api.get(f"/runs/{first['id']}/stageruns/")
    await api.put(f"/runs/{first['id']}/stageruns/{stage_runs['results'][0]['id']}/",
                  {"status": "running"})
    return {"pipeline_id": deploy["id"], "pipeline_run_id": first["id"],
            "stage_id": deploy["stages"][0]["id"]}


def _without_empty_values(value: Any) -> Any:
    """Links answered keep the caller's query string: compare them less its empty values."""
    if isinstance(value, dict):
        return {k: _without_empty_values(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_without_empty_values(v) for v in value]
    if isinstance(value, str) and value.startswith("http"):
        url = URL(value)
        return str(url.with_query(sorted((k, v) for k, v in url.query.items() if v)))
    return value


async def query_operations(api) -> list[tuple[str, list[str]]]:
    """Every GET of the served document with query parameters: (path template, names)."""
    spec = await (await api.client.get("/api/docs/swagger.json")).json()
    found = []
    for path, operations in spec["paths"].items():
        answers = operations.get("get", {}).get("responses", {}).get("200", {})
        if "application/json" not in answers.get("content", {}):
            continue  # exports (CSV/NDJSON): tests/test_exports.py
        params = [p["name"] for p in operations.get("get", {}).get("parameters", [])
                  if p["in"] == "query"]
        path = path.removeprefix("/pipelines/v0")
        if path.startswith(("/webhooks/", "/events/stream/")):
            continue  # not run resources (and a stream never ends): test_webhooks, test_stream
        if params:
            found.append((path, params))
    return found


async def test_every_query_parameter_given_empty_answers_as_if_absent(api, world):
    operations = await query_operations(api)
    # The lists (runs, pipeline runs, pipelines, stages, stage runs, history, feed), the
    # one GET with a parameter (as_of), the two insights and the audit chain's proof.
    assert len(operations) == 11, operations
    for template, names in operations:
        path = template.format(**world)
        plain = _without_empty_values(await api.get(path))
        assert plain, path
        for name in names:
            assert _without_empty_values(await api.get(f"{path}?{name}=")) == plain, (path, name)
        every = "&".join(f"{name}=" for name in names)
        assert _without_empty_values(await api.get(f"{path}?{every}")) == plain, path


@pytest.mark.parametrize("list_path,query,field,expected", [
    ("/runs/", "status=&pipeline_name=&ordering=", "status", {"running", "pending"}),
    ("/runs/", "status=&status=running", "status", {"running"}),
    ("/runs/", "pipeline_name=&pipeline_name=other", "pipeline_name", {"other"}),
    ("/pipelines/", "name=&default=&ordering=", "name", {"deploy", "other"}),
    ("/pipelines/", "default=&default=true", "name", {"other"}),
])
async def test_empty_values_are_dropped_and_the_others_kept(api, world, list_path, query,
                                                            field, expected):
    results = (await api.get(f"{list_path}?{query}"))["results"]
    assert {r[field] for r in results} == expected


async def test_paging_and_ordering_given_empty_take_their_defaults(api, world):
    """limit 20 and offset 0 (as DRF's LimitOffsetPagination), the default ordering."""
    pipeline_runs = f"/pipelines/{world['pipeline_id']}/runs/"
    for _ in range(21):
        await api.run(world["pipeline_id"])
    plain = _without_empty_values(await api.get(pipeline_runs))
    assert len(plain["results"]) == 20 and plain["next"] is not None
    for query in ("limit=", "offset=", "limit=&offset=", "ordering=", "cursor=",
                  "limit=&offset=&ordering=&cursor="):
        page = await api.get(f"{pipeline_runs}?{query}")
        assert _without_empty_values(page) == plain, query


async def test_a_non_empty_bad_value_is_still_a_400(api, world):
    for query, field in (("status=bogus", "status"), ("limit=0", "limit"),
                         ("ordering=bogus", "ordering"), ("pipeline_name=" + "x" * 256,
                                                          "pipeline_name")):
        content = await api.get(f"/runs/?{query}", status=400)
        assert list(content["errors"]) == [field]


async def test_openapi_says_so_on_every_query_parameter(client):
    spec = await (await client.get("/api/docs/swagger.json")).json()
    params = [p for operations in spec["paths"].values() for op in operations.values()
              for p in op.get("parameters", []) if p["in"] == "query"]
    assert len(params) > 20
    for param in params:
        assert param["allowEmptyValue"] is True, param
        assert re.search(rf"Empty \(`{param['name']}=`\) is the same as leaving it out",
                         param["description"]), param
