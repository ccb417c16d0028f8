"""Stages: added in order, listed in insertion order, partial updates, deletion, 404s."""
from __future__ import annotations

import pytest
from yarl import URL

from tests.helpers import make_token, ts, walk
from tests.module_app import api, client, config, db, token  # noqa: F401 (one app per module)

pytestmark = pytest.mark.asyncio(loop_scope="module")


STAGE_FIELDS = {"id", "enterprise_id", "pipeline_id", "name", "description", "timeout_seconds",
                "ordinal", "created_by", "updated_by", "created_at", "updated_at"}


def stages_of(pipeline: dict) -> str:
    return f"/pipelines/{pipeline['id']}/stages/"


async def test_add_stages_keeps_insertion_order(api, enterprise):
    pipeline = await api.pipeline(stages=())
    assert pipeline["is_valid"] is False
    names = ["zulu", "alpha", "mike", "bravo"]
    added = [await api.post(stages_of(pipeline), {"name": n}) for n in names]
    assert all(set(s) == STAGE_FIELDS for s in added)
    assert [s["ordinal"] for s in added] == [1, 2, 3, 4]
    assert all(s["pipeline_id"] == pipeline["id"] and s["enterprise_id"] == enterprise
               for s in added)
    listed = await api.get(stages_of(pipeline))
    assert listed["results"] == added and listed["count"] == 4
    got = await api.get(f"/pipelines/{pipeline['id']}/")
    assert got["stages"] == added and got["is_valid"] is True


async def test_stage_fields_and_get(api):
    pipeline = await api.pipeline(stages=())
    stage = await api.post(stages_of(pipeline), {"name": "deploy", "description": "to prod",
                                                 "timeout_seconds": 90})
    assert (stage["name"], stage["description"], stage["timeout_seconds"]) == (
        "deploy", "to prod", 90)
    assert stage["created_at"] == stage["updated_at"]
    assert stage["created_by"] == stage["updated_by"] is not None
    assert await api.get(f"{stages_of(pipeline)}{stage['id']}/") == stage


async def test_stages_continue_after_the_pipeline_post_extension(api):
    pipeline = await api.pipeline(stages=("one", "two"))
    three = await api.post(stages_of(pipeline), {"name": "three"})
    assert three["ordinal"] > max(s["ordinal"] for s in pipeline["stages"])
    names = [s["name"] for s in (await api.get(stages_of(pipeline)))["results"]]
    assert names == ["one", "two", "three"]


async def test_stage_list_pages(api):
    pipeline = await api.pipeline(stages=[f"s{i}" for i in range(5)])
    pages, items = await walk(api, stages_of(pipeline) + "?limit=2")
    assert [s["name"] for s in items] == ["s0", "s1", "s2", "s3", "s4"]
    assert [len(p["results"]) for p in pages] == [2, 2, 1]
    assert pages[0]["previous"] is None and pages[-1]["next"] is None
    assert URL(pages[2]["previous"]).query["offset"] == "2"
    content = await api.get(stages_of(pipeline) + "?limit=1001", status=400)
    assert "limit" in content["errors"]


@pytest.mark.parametrize("body,field", [
    ({}, "name"), ({"name": ""}, "name"), ({"name": None}, "name"),
    ({"name": "s", "timeout_seconds": 0}, "timeout_seconds"),
    ({"name": "s", "description": 5}, "description"),
])
async def test_invalid_stage_is_400_and_adds_nothing(api, body, field):
    pipeline = await api.pipeline(stages=())
    content = await api.post(stages_of(pipeline), body, status=400)
    assert field in content["errors"]
    assert (await api.get(stages_of(pipeline)))["count"] == 0


async def test_put_changes_only_the_fields_given(api, db, enterprise):
    pipeline = await api.pipeline(stages=())
    stage = await api.post(stages_of(pipeline), {"name": "build", "description": "compile",
                                                 "timeout_seconds": 30})
    path = f"{stages_of(pipeline)}{stage['id']}/"
    editor = api.with_token(await make_token(db, enterprise, "editor"))
    renamed = await editor.put(path, {"name": "compile"})
    unchanged = STAGE_FIELDS - {"name", "updated_at", "updated_by"}
    assert renamed["name"] == "compile"
    assert {k: renamed[k] for k in unchanged} == {k: stage[k] for k in unchanged}
    assert ts(renamed["updated_at"]) > ts(stage["updated_at"])
    assert renamed["updated_by"] != stage["updated_by"]
    cleared = await api.put(path, {"timeout_seconds": None, "description": ""})
    assert (cleared["name"], cleared["description"], cleared["timeout_seconds"]) == (
        "compile", "", None)
    assert await api.get(path) == cleared
    content = await api.put(path, {"name": ""}, status=400)
    assert "name" in content["errors"]
    assert await api.get(path) == cleared


async def test_delete_stage(api):
    pipeline = await api.pipeline(stages=("a", "b", "c"))
    a, b, c = pipeline["stages"]
    path = f"{stages_of(pipeline)}{b['id']}/"
    assert await api.delete(path) == b
    await api.get(path, status=404)
    await api.put(path, {"name": "again"}, status=404)
    await api.delete(path, status=404)
    assert (await api.get(stages_of(pipeline)))["results"] == [a, c]
    d = await api.post(stages_of(pipeline), {"name": "d"})
    assert [s["id"] for s in (await api.get(f"/pipelines/{pipeline['id']}/"))["stages"]] == [
        a["id"], c["id"], d["id"]]


async def test_deleting_the_last_stage_makes_the_pipeline_invalid(api):
    pipeline = await api.pipeline(stages=("only",))
    assert pipeline["is_valid"] is True
    await api.delete(f"{stages_of(pipeline)}{pipeline['stages'][0]['id']}/")
    got = await api.get(f"/pipelines/{pipeline['id']}/")
    assert got["is_valid"] is False and got["stages"] == []


async def test_a_stage_is_only_found_under_its_own_pipeline(api):
    one, two = await api.pipeline("one"), await api.pipeline("two")
    stage = one["stages"][0]
    wrong = f"{stages_of(two)}{stage['id']}/"
    await api.get(wrong, status=404)
    await api.put(wrong, {"name": "moved"}, status=404)
    await api.delete(wrong, status=404)
    await api.get(f"{stages_of(one)}{two['id']}/", status=404)
    assert await api.get(f"{stages_of(one)}{stage['id']}/") == stage


async def test_stages_of_unknown_or_deleted_pipelines_are_404(api):
    pipeline = await api.pipeline()
    stage = pipeline["stages"][0]
    await api.get(f"/pipelines/{stage['id']}/stages/", status=404)
    await api.post(f"/pipelines/{stage['id']}/stages/", {"name": "x"}, status=404)
    await api.delete(f"/pipelines/{pipeline['id']}/")
    await api.get(stages_of(pipeline), status=404)
    await api.post(stages_of(pipeline), {"name": "x"}, status=404)
    for method in ("GET", "PUT", "DELETE"):
        await api.call(method, f"{stages_of(pipeline)}{stage['id']}/", 404,
                       json={"name": "x"} if method == "PUT" else None)
