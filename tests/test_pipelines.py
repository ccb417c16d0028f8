"""Pipelines: create (with `stages`), get, list filters/orderings/paging, update, delete."""
from __future__ import annotations

import pytest
from yarl import URL

from service.store import tokens as token_store
from tests.helpers import make_token, run_path, ts, walk
from tests.module_app import api, client, config, db, token  # noqa: F401 (one app per module)

pytestmark = pytest.mark.asyncio(loop_scope="module")

PIPELINE_FIELDS = {"id", "enterprise_id", "name", "description", "timeout_seconds", "is_active",
                   "is_default", "is_valid", "created_by", "updated_by", "created_at",
                   "updated_at", "stages"}


async def test_create_with_defaults(api, db, enterprise, token):
    pipeline = await api.post("/pipelines/", {"name": "deploy"})
    assert set(pipeline) == PIPELINE_FIELDS
    actor_id = (await token_store.find_token(db, token))["id"]
    assert pipeline["enterprise_id"] == enterprise
    assert (pipeline["name"], pipeline["description"], pipeline["timeout_seconds"]) == (
        "deploy", "", None)
    assert (pipeline["is_active"], pipeline["is_default"], pipeline["is_valid"]) == (
        True, False, False)
    assert pipeline["stages"] == []
    assert pipeline["created_by"] == pipeline["updated_by"] == actor_id
    assert await api.get(f"/pipelines/{pipeline['id']}/") == pipeline


async def test_create_with_every_field_and_stages(api):
    body = {"name": "release", "description": "ships it", "timeout_seconds": 3600,
            "is_active": False, "is_default": True,
            "stages": [{"name": "zeta"}, {"name": "alpha", "description": "second",
                                          "timeout_seconds": 60}, {"name": "mu"}]}
    pipeline = await api.post("/pipelines/", body)
    for key in ("name", "description", "timeout_seconds", "is_active", "is_default"):
        assert pipeline[key] == body[key], key
    assert pipeline["is_valid"] is True
    stages = pipeline["stages"]
    assert [s["name"] for s in stages] == ["zeta", "alpha", "mu"]  # as given, not sorted
    assert [s["ordinal"] for s in stages] == sorted(s["ordinal"] for s in stages)
    assert len({s["ordinal"] for s in stages}) == 3
    assert (stages[1]["description"], stages[1]["timeout_seconds"]) == ("second", 60)
    assert all(s["pipeline_id"] == pipeline["id"] for s in stages)
    assert await api.get(f"/pipelines/{pipeline['id']}/") == pipeline
    listed = await api.get(f"/pipelines/{pipeline['id']}/stages/")
    assert listed["results"] == stages and listed["count"] == 3


@pytest.mark.parametrize("body,field", [
    ({}, "name"), ({"name": ""}, "name"), ({"name": "x" * 256}, "name"), ({"name": 3}, "name"),
    ({"name": "a\x00b"}, "name"), ({"name": "p", "is_active": "true"}, "is_active"),
    ({"name": "p", "is_default": 1}, "is_default"), ({"name": "p", "timeout_seconds": 0},
                                                     "timeout_seconds"),
    ({"name": "p", "timeout_seconds": "60"}, "timeout_seconds"),
    ({"name": "p", "stages": [{"description": "no name"}]}, "stages"),
    ({"name": "p", "stages": [{"name": "s"}] * 101}, "stages"),
    ({"name": "p", "stages": "build"}, "stages"),
])
async def test_invalid_create_is_400_and_creates_nothing(api, body, field):
    content = await api.post("/pipelines/", body, status=400)
    assert field in content["errors"], content
    assert (await api.get("/pipelines/"))["count"] == 0


async def test_stage_errors_name_the_stage(api):
    content = await api.post("/pipelines/", {"name": "p", "stages": [{"name": "ok"}, {}]},
                             status=400)
    assert content["errors"] == {"stages": {"1": {"name": ["Missing data for required field."]}}}


async def test_a_stage_may_be_given_by_its_name_alone(api):
    # Our extension: "build" is {"name": "build"}, as the Python client sends it.
    pipeline = await api.post("/pipelines/", {"name": "p", "stages": ["build", {"name": "test"}]})
    assert [s["name"] for s in pipeline["stages"]] == ["build", "test"]


@pytest.mark.parametrize("stage,errors", [
    ("", {"name": ["Length must be between 1 and 255."]}),
    (3, ['A stage is an object {"name": ...} or a name (a string).']),
    ([], ['A stage is an object {"name": ...} or a name (a string).']),
    (None, ["Field may not be null."]),
])
async def test_a_bad_stage_says_what_shape_is_expected(api, stage, errors):
    content = await api.post("/pipelines/", {"name": "p", "stages": ["ok", stage]}, status=400)
    assert content["errors"] == {"stages": {"1": errors}}
    assert (await api.get("/pipelines/"))["count"] == 0


async def test_unknown_pipeline_is_404(api):
    pipeline = await api.pipeline()
    for method in ("GET", "PUT", "DELETE"):
        content = await api.call(method, f"/pipelines/{pipeline['stages'][0]['id']}/",
                                 status=404, json={"name": "x"} if method == "PUT" else None)
        assert content == {}


# --- list ----------------------------------------------------------------------------------

async def _some(api) -> list[dict]:
    specs = [("beta", False), ("alpha", True), ("gamma", False), ("alpha", False), ("delta", True)]
    return [await api.pipeline(name, is_default=default) for name, default in specs]


async def test_default_list_order_is_newest_first(api):
    created = await _some(api)
    listed = await api.get("/pipelines/")
    assert listed["count"] == 5 and listed["next"] is None and listed["previous"] is None
    assert [p["id"] for p in listed["results"]] == [p["id"] for p in reversed(created)]
    assert listed["results"][0] == {k: v for k, v in created[-1].items() if k != "stages"}


@pytest.mark.parametrize("ordering", ["name", "-name"])
async def test_ordering_by_name(api, ordering):
    created = await _some(api)
    listed = (await api.get(f"/pipelines/?ordering={ordering}"))["results"]
    names = [p["name"] for p in listed]
    assert names == sorted((p["name"] for p in created), reverse=ordering == "-name")
    _, paged = await walk(api, f"/pipelines/?ordering={ordering}&limit=2")  # ties: two alphas
    assert [p["id"] for p in paged] == [p["id"] for p in listed]


@pytest.mark.parametrize("query,expected", [
    ("name=alpha", lambda p: p["name"] == "alpha"),
    ("name=ALPHA", lambda p: False),
    ("name=nothing", lambda p: False),
    ("default=true", lambda p: p["is_default"]),
    ("default=false", lambda p: not p["is_default"]),
    ("name=alpha&default=true", lambda p: p["name"] == "alpha" and p["is_default"]),
])
async def test_filters(api, query, expected):
    created = await _some(api)
    listed = await api.get(f"/pipelines/?{query}")
    wanted = [p["id"] for p in reversed(created) if expected(p)]
    assert [p["id"] for p in listed["results"]] == wanted and listed["count"] == len(wanted)


@pytest.mark.parametrize("query,field", [
    ("ordering=created_at", "ordering"), ("ordering=name,-name", "ordering"),
    ("default=maybe", "default"), ("limit=0", "limit"), ("offset=x", "offset"),
])
async def test_bad_list_parameters_are_400(api, query, field):
    content = await api.get(f"/pipelines/?{query}", status=400)
    assert list(content["errors"]) == [field]


async def test_list_pages_end_to_end(api):
    created = [await api.pipeline(f"p{i}", is_default=i % 2 == 0) for i in range(7)]
    pages, items = await walk(api, "/pipelines/?default=true&ordering=-name&limit=2")
    assert [p["name"] for p in items] == ["p6", "p4", "p2", "p0"]
    assert [len(p["results"]) for p in pages] == [2, 2]
    assert pages[0]["previous"] is None and pages[-1]["next"] is None
    url = URL(pages[0]["next"])
    assert url.is_absolute() and url.path == "/pipelines/v0/pipelines/"
    assert dict(url.query) == {"default": "true", "ordering": "-name", "limit": "2", "offset": "2"}
    assert dict(URL(pages[1]["previous"]).query)["offset"] == "0"
    _, everything = await walk(api, "/pipelines/?limit=3")
    assert sorted(p["id"] for p in everything) == sorted(p["id"] for p in created)


# --- update --------------------------------------------------------------------------------

async def test_put_changes_only_the_fields_given(api, db, enterprise):
    pipeline = await api.pipeline("deploy", description="old", timeout_seconds=600)
    editor = api.with_token(await make_token(db, enterprise, "editor"))
    updated = await editor.put(f"/pipelines/{pipeline['id']}/", {"description": "new"})
    assert updated["description"] == "new"
    unchanged = PIPELINE_FIELDS - {"description", "updated_at", "updated_by"}
    assert {k: updated[k] for k in unchanged} == {k: pipeline[k] for k in unchanged}
    assert ts(updated["updated_at"]) > ts(pipeline["updated_at"])
    assert updated["updated_by"] != pipeline["updated_by"] and updated["updated_by"] is not None
    again = await api.put(f"/pipelines/{pipeline['id']}/",
                          {"name": "ship", "is_default": True, "is_active": False})
    assert (again["name"], again["is_default"], again["is_active"], again["description"]) == (
        "ship", True, False, "new")
    assert await api.get(f"/pipelines/{pipeline['id']}/") == again


async def test_put_timeout_null_clears_it_and_absent_keeps_it(api):
    pipeline = await api.pipeline(timeout_seconds=600)
    kept = await api.put(f"/pipelines/{pipeline['id']}/", {"name": "renamed"})
    assert kept["timeout_seconds"] == 600
    cleared = await api.put(f"/pipelines/{pipeline['id']}/", {"timeout_seconds": None})
    assert cleared["timeout_seconds"] is None and cleared["name"] == "renamed"


@pytest.mark.parametrize("body,field", [
    ({"name": ""}, "name"), ({"is_default": "yes"}, "is_default"),
    ({"timeout_seconds": -1}, "timeout_seconds"), ({"description": "x" * 10_001}, "description"),
])
async def test_invalid_put_is_400_and_changes_nothing(api, body, field):
    pipeline = await api.pipeline()
    content = await api.put(f"/pipelines/{pipeline['id']}/", body, status=400)
    assert field in content["errors"]
    assert await api.get(f"/pipelines/{pipeline['id']}/") == pipeline


async def test_put_renames_the_pipeline_of_its_runs(api):
    pipeline = await api.pipeline("before")
    run = await api.run(pipeline["id"])
    await api.put(f"/pipelines/{pipeline['id']}/", {"name": "after"})
    assert (await api.get(run_path(run)))["pipeline_name"] == "after"
    listed = await api.get("/runs/?pipeline_name=after")
    assert [r["id"] for r in listed["results"]] == [run["id"]]


# --- delete --------------------------------------------------------------------------------

async def test_delete_then_404_and_its_runs_vanish(api, db):
    pipeline, kept = await api.pipeline("doomed"), await api.pipeline("kept")
    run = await api.run(pipeline["id"])
    other_run = await api.run(kept["id"])
    events_before = await db.fetchval("SELECT count(*) FROM run_events WHERE run_id = $1",
                                      run["id"])
    current = await api.get(f"/pipelines/{pipeline['id']}/")
    assert await api.delete(f"/pipelines/{pipeline['id']}/") == current
    base = f"/pipelines/{pipeline['id']}/"
    for method, path in [("GET", base), ("PUT", base), ("DELETE", base), ("GET", base + "stages/"),
                         ("POST", base + "stages/"), ("GET", base + "runs/"),
                         ("POST", base + "runs/"), ("GET", run_path(run)), ("PUT", run_path(run)),
                         ("DELETE", run_path(run)),
                         ("GET", f"{base}stages/{pipeline['stages'][0]['id']}/")]:
        body = {"status": "cancelled"} if "runs/" in path else {"name": "x"}
        await api.call(method, path, 404, json=body if method in ("PUT", "POST") else None)
    listed = await api.get("/pipelines/")
    assert [p["id"] for p in listed["results"]] == [kept["id"]] and listed["count"] == 1
    assert (await api.get("/runs/"))["results"] == [other_run]
    assert (await api.get("/runs/?pipeline_name=doomed"))["count"] == 0
    # The run history is kept for the audit trail.
    assert await db.fetchval("SELECT count(*) FROM run_events WHERE run_id = $1",
                             run["id"]) == events_before


async def test_a_new_pipeline_with_a_deleted_ones_name_starts_afresh(api):
    old = await api.pipeline("same")
    await api.run(old["id"])
    await api.delete(f"/pipelines/{old['id']}/")
    new = await api.pipeline("same")
    assert (await api.run(new["id"]))["run_number"] == 1
    assert [r["pipeline_id"] for r in (await api.get("/runs/?pipeline_name=same"))["results"]] == [
        new["id"]]
