"""Pipeline runs: create/get/list/delete, filters, orderings, pagination and the event store."""
from __future__ import annotations

import pytest
from yarl import URL

from service.domain import lifecycle as lc
from service.web.schemas import ENTERPRISE_RUN_ORDERINGS, PIPELINE_RUN_ORDERINGS
from tests.helpers import (RUN_FIELDS, TIMESTAMPS, assert_projection, events_of, make_token,
                           run_in, run_level, run_path, token_id, ts, walk)
from tests.module_app import api, client, config, db, token  # noqa: F401 (one app per module)

pytestmark = pytest.mark.asyncio(loop_scope="module")

# Two pipelines, runs in every kind of state: started or not, ended or not.
SEED = [("alpha", "pending"), ("beta", "running"), ("alpha", "success"), ("beta", "queued"),
        ("alpha", "waiting"), ("beta", "cancelled"), ("alpha", "running"), ("beta", "failure"),
        ("alpha", "timeout"), ("beta", "pending"), ("alpha", "complete")]


async def seed(api) -> tuple[dict, list[dict]]:
    pipelines = {name: await api.pipeline(name) for name in ("alpha", "beta")}
    return pipelines, [await run_in(api, pipelines[name], status) for name, status in SEED]


# --- create / get ------------------------------------------------------------------------

async def test_create_answers_a_pending_run_and_appends_one_event(api, db, token):
    pipeline = await api.pipeline("deploy")
    run = await api.run(pipeline["id"])
    assert set(run) == RUN_FIELDS
    actor_id = await token_id(db, token)
    assert run["status"] == "pending" and run["run_number"] == 1 and run["version"] == 1
    assert (run["pipeline_id"], run["pipeline_name"]) == (pipeline["id"], "deploy")
    assert run["created_by"] == run["updated_by"] == actor_id
    assert run["started_at"] is None and run["ended_at"] is None and run["status_meta"] == {}
    assert run["created_at"] == run["updated_at"]
    assert api.last.headers["ETag"] == '"1"'
    [created] = await assert_projection(db, run)
    assert (created["type"], created["from_status"], created["to_status"]) == (
        "run.created", None, "pending")
    assert (created["actor"], created["actor_id"], created["version"]) == ("tester", actor_id, 1)
    assert created["data"]["run_number"] == 1
    assert str(created["pipeline_id"]) == pipeline["id"]
    assert await api.get(run_path(run)) == run


async def test_the_actor_is_the_tokens_name(api, db, enterprise):
    deployer = api.with_token(await make_token(db, enterprise, "deployer"))
    run = await deployer.run((await api.pipeline())["id"])
    [created] = await events_of(db, run["id"])
    assert created["actor"] == "deployer" and created["actor_id"] == run["created_by"]


async def test_run_numbers_count_per_pipeline(api):
    first, second = await api.pipeline("first"), await api.pipeline("second")
    numbers = [(await api.run(p["id"]))["run_number"] for p in (first, first, second, first)]
    assert numbers == [1, 2, 1, 3]


async def test_create_ignores_body_fields_and_accepts_no_body(api):
    pipeline = await api.pipeline()
    run = await api.post(f"/pipelines/{pipeline['id']}/runs/",
                         {"status": "running", "run_number": 99})
    assert run["status"] == "pending" and run["run_number"] == 1
    bare = await api.call("POST", f"/pipelines/{pipeline['id']}/runs/")
    assert bare["run_number"] == 2


async def test_unknown_runs_and_wrong_pipelines_are_404(api):
    pipeline, other = await api.pipeline("one"), await api.pipeline("two")
    run = await api.run(pipeline["id"])
    await api.get(f"/pipelines/{other['id']}/runs/{run['id']}/", status=404)
    await api.put(f"/pipelines/{other['id']}/runs/{run['id']}/", {"status": "queued"}, status=404)
    await api.delete(f"/pipelines/{other['id']}/runs/{run['id']}/", status=404)
    await api.get(f"/pipelines/{pipeline['id']}/runs/{other['id']}/", status=404)
    await api.post(f"/pipelines/{run['id']}/runs/", {}, status=404)
    await api.get(f"/pipelines/{run['id']}/runs/", status=404)
    assert await api.get(run_path(run)) == run


# --- delete ------------------------------------------------------------------------------

async def test_delete_answers_the_run_then_it_is_gone_but_its_events_stay(api, db, token):
    pipeline = await api.pipeline()
    keep = await api.run(pipeline["id"])
    run = await run_in(api, pipeline, "running")
    before = await api.get(run_path(run))
    assert await api.delete(run_path(run)) == before
    await api.get(run_path(run), status=404)
    await api.put(run_path(run), {"status": "cancelled"}, status=404)
    await api.delete(run_path(run), status=404)
    for listing in (f"/pipelines/{pipeline['id']}/runs/", "/runs/", "/runs/?status=running"):
        assert run["id"] not in [r["id"] for r in (await api.get(listing))["results"]]
    assert (await api.get("/runs/"))["results"] == [keep]
    assert await db.fetchrow("SELECT 1 FROM pipeline_runs WHERE id = $1", run["id"]) is None
    events = await events_of(db, run["id"])
    assert [e["version"] for e in events] == [1, 2, 3]
    deleted = events[-1]
    assert (deleted["type"], deleted["from_status"], deleted["to_status"]) == (
        "run.deleted", "running", None)
    assert (deleted["actor"], deleted["actor_id"]) == ("tester", await token_id(db, token))
    assert lc.fold(events) is None
    assert (await api.run(pipeline["id"]))["run_number"] == 3  # numbers are never reused


# --- lists: filters ----------------------------------------------------------------------

async def test_lists_hold_exactly_the_enterprises_runs(api, db):
    other = api.with_token(await make_token(db, "runs-other-enterprise"))
    foreign = await other.run((await other.pipeline("alpha"))["id"])
    pipelines, runs = await seed(api)
    everything = (await api.get("/runs/?limit=1000"))["results"]
    assert sorted(r["id"] for r in everything) == sorted(r["id"] for r in runs)
    assert foreign["id"] not in [r["id"] for r in everything]
    alpha = (await api.get(f"/pipelines/{pipelines['alpha']['id']}/runs/?limit=1000"))["results"]
    assert sorted(r["id"] for r in alpha) == sorted(
        r["id"] for r in runs if r["pipeline_name"] == "alpha")
    by_id = {r["id"]: r for r in runs}
    assert all(r == by_id[r["id"]] for r in everything)


@pytest.mark.parametrize("given", ["running", "RUNNING", "Running", "pending", "SUCCESS",
                                   "invalid"])
async def test_status_filter_in_any_case(api, given):
    pipelines, runs = await seed(api)
    wanted = sorted(r["id"] for r in runs if r["status"] == given.lower())
    listed = await api.get(f"/runs/?status={given}")
    assert sorted(r["id"] for r in listed["results"]) == wanted and listed["count"] == len(wanted)
    alpha = pipelines["alpha"]
    listed = await api.get(f"/pipelines/{alpha['id']}/runs/?status={given}")
    assert sorted(r["id"] for r in listed["results"]) == sorted(
        r["id"] for r in runs if r["status"] == given.lower() and r["pipeline_id"] == alpha["id"])


async def test_pipeline_name_filter_and_combined_filters(api):
    _, runs = await seed(api)
    beta = await api.get("/runs/?pipeline_name=beta&limit=1000")
    assert sorted(r["id"] for r in beta["results"]) == sorted(
        r["id"] for r in runs if r["pipeline_name"] == "beta")
    both = await api.get("/runs/?pipeline_name=alpha&status=RUNNING")
    assert [r["id"] for r in both["results"]] == [
        r["id"] for r in runs if (r["pipeline_name"], r["status"]) == ("alpha", "running")]
    none = await api.get("/runs/?pipeline_name=gamma")
    assert none == {"count": 0, "count_exact": True, "next": None, "previous": None,
                    "next_cursor": None, "previous_cursor": None, "results": []}


@pytest.mark.parametrize("query,field", [
    ("status=bogus", "status"), ("ordering=created_at", "ordering"),
    ("ordering=-bogus", "ordering"), ("limit=0", "limit"), ("limit=1001", "limit"),
    ("limit=ten", "limit"), ("offset=-1", "offset"),
])
async def test_bad_list_parameters_are_400_on_both_lists(api, query, field):
    pipeline = await api.pipeline()
    for path in ("/runs/", f"/pipelines/{pipeline['id']}/runs/"):
        content = await api.get(f"{path}?{query}", status=400)
        assert list(content["errors"]) == [field]


async def test_pipeline__name_ordering_is_only_for_the_enterprise_list(api):
    pipeline = await api.pipeline()
    content = await api.get(f"/pipelines/{pipeline['id']}/runs/?ordering=pipeline__name",
                            status=400)
    assert "ordering" in content["errors"]
    await api.get(f"/pipelines/{pipeline['id']}/runs/?ordering=-pipeline__name", status=400)
    await api.get("/runs/?ordering=pipeline__name")


# --- lists: orderings --------------------------------------------------------------------

def _key(field: str, run: dict):
    if field == "status":
        return lc.STATUS_RANK[run["status"]]
    if field in TIMESTAMPS:
        return ts(run[field])
    return run[field]


def assert_ordered(runs: list[dict], ordering: str) -> None:
    field, descending = ordering.lstrip("-"), ordering.startswith("-")
    if field == "pipeline__name":
        field = "pipeline_name"
    keys = [_key(field, r) for r in runs]
    present = [k for k in keys if k is not None]
    assert keys == present + [None] * (len(keys) - len(present)), f"{ordering}: NULLs not last"
    assert present == sorted(present, reverse=descending), ordering


async def test_default_order_is_newest_first(api):
    pipelines, runs = await seed(api)
    listed = (await api.get("/runs/?limit=1000"))["results"]
    assert [r["id"] for r in listed] == [r["id"] for r in reversed(runs)]
    alpha = (await api.get(f"/pipelines/{pipelines['alpha']['id']}/runs/"))["results"]
    assert [r["id"] for r in alpha] == [r["id"] for r in reversed(runs)
                                        if r["pipeline_name"] == "alpha"]


@pytest.mark.parametrize("ordering", ENTERPRISE_RUN_ORDERINGS)
async def test_enterprise_list_orderings(api, ordering):
    _, runs = await seed(api)
    full = (await api.get(f"/runs/?ordering={ordering}&limit=1000"))["results"]
    assert sorted(r["id"] for r in full) == sorted(r["id"] for r in runs)
    assert_ordered(full, ordering)
    _, paged = await walk(api, f"/runs/?ordering={ordering}&limit=2")
    assert [r["id"] for r in paged] == [r["id"] for r in full]  # ties broken the same way


@pytest.mark.parametrize("ordering", PIPELINE_RUN_ORDERINGS)
async def test_pipeline_list_orderings(api, ordering):
    pipelines, runs = await seed(api)
    path = f"/pipelines/{pipelines['alpha']['id']}/runs/?ordering={ordering}"
    full = (await api.get(path + "&limit=1000"))["results"]
    assert sorted(r["id"] for r in full) == sorted(
        r["id"] for r in runs if r["pipeline_name"] == "alpha")
    assert_ordered(full, ordering)
    _, paged = await walk(api, path + "&limit=3")
    assert [r["id"] for r in paged] == [r["id"] for r in full]


async def test_status_ordering_follows_the_lifecycle_not_the_alphabet(api):
    pipeline = await api.pipeline()
    for status in ("waiting", "cancelled", "pending", "success", "complete"):
        await run_in(api, pipeline, status)
    listed = (await api.get("/runs/?ordering=status"))["results"]
    assert [r["status"] for r in listed] == [
        "pending", "waiting", "complete", "success", "cancelled"]
    listed = (await api.get("/runs/?ordering=-status"))["results"]
    assert [r["status"] for r in listed] == [
        "cancelled", "success", "complete", "waiting", "pending"]


async def test_started_and_ended_orderings_put_nulls_last_both_ways(api):
    pipeline = await api.pipeline()
    never = await api.run(pipeline["id"])
    first = await run_in(api, pipeline, "running")
    second = await run_in(api, pipeline, "success")
    for ordering, expected in [("started_at", [first, second, never]),
                               ("-started_at", [second, first, never])]:
        listed = (await api.get(f"/runs/?ordering={ordering}"))["results"]
        assert [r["id"] for r in listed] == [r["id"] for r in expected], ordering
    for ordering in ("ended_at", "-ended_at"):
        listed = (await api.get(f"/runs/?ordering={ordering}"))["results"]
        assert listed[0]["id"] == second["id"] and listed[0]["ended_at"] is not None
        assert [r["ended_at"] for r in listed[1:]] == [None, None]


# --- pagination --------------------------------------------------------------------------

async def test_pagination_end_to_end(api):
    pipeline = await api.pipeline()
    runs = [await api.run(pipeline["id"]) for _ in range(7)]
    query = "status=PENDING&ordering=run_number&limit=3"
    pages, items = await walk(api, f"/runs/?{query}")
    assert [r["run_number"] for r in items] == list(range(1, 8))
    assert sorted(r["id"] for r in items) == sorted(r["id"] for r in runs)
    assert [len(p["results"]) for p in pages] == [3, 3, 1]
    assert pages[0]["previous"] is None and pages[-1]["next"] is None
    for number, page in enumerate(pages):
        for link, offset in (("next", 3 * number + 3), ("previous", 3 * number - 3)):
            if page[link] is None:
                continue
            url = URL(page[link])
            assert url.is_absolute() and url.path == "/pipelines/v0/runs/"
            assert dict(url.query) == {"status": "PENDING", "ordering": "run_number",
                                       "limit": "3", "offset": str(offset)}
    back = await api.get(pages[2]["previous"])
    assert back == pages[1]


async def test_pages_past_the_end_and_in_the_middle(api):
    pipeline = await api.pipeline()
    for _ in range(5):
        await api.run(pipeline["id"])
    path = f"/pipelines/{pipeline['id']}/runs/"
    beyond = await api.get(f"{path}?limit=2&offset=10")
    assert beyond["count"] == 5 and beyond["results"] == [] and beyond["next"] is None
    assert URL(beyond["previous"]).query["offset"] == "8"
    middle = await api.get(f"{path}?limit=2&offset=1")
    assert URL(middle["previous"]).query["offset"] == "0"
    assert URL(middle["next"]).query["offset"] == "3"
    single = await api.get(f"{path}?limit=5")
    assert single["next"] is None and single["previous"] is None and len(single["results"]) == 5


async def test_pagination_keeps_the_mount_of_the_request(api):
    pipeline = await api.pipeline()
    for _ in range(3):
        await api.run(pipeline["id"])
    esper = api.at("/api/pipelines/v0")
    page = await esper.get(f"/pipelines/{pipeline['id']}/runs?limit=2")
    assert URL(page["next"]).path == f"/api/pipelines/v0/pipelines/{pipeline['id']}/runs"
    _, items = await walk(esper, f"/pipelines/{pipeline['id']}/runs?limit=2")
    assert len({r["id"] for r in items}) == 3


# --- the Esper client flow ---------------------------------------------------------------

async def test_esper_client_flow(api, db):
    esper = api.at("/api/pipelines/v0")
    pipeline = await esper.post("/pipelines/", {"name": "release"})
    for name in ("build", "deploy"):
        await esper.post(f"/pipelines/{pipeline['id']}/stages/", {"name": name})
    stages = (await esper.get(f"/pipelines/{pipeline['id']}/"))["stages"]
    assert [s["name"] for s in stages] == ["build", "deploy"]
    run = await esper.post(f"/pipelines/{pipeline['id']}/runs/", {})
    assert (run["status"], run["run_number"], run["pipeline_name"]) == ("pending", 1, "release")
    assert [r["id"] for r in (await esper.get("/runs/"))["results"]] == [run["id"]]
    assert (await esper.get(f"/pipelines/{pipeline['id']}/runs/"))["results"] == [run]
    assert await esper.get(run_path(run)) == run
    cancelled = await esper.put(run_path(run), {"status": "CANCELLED"})
    assert cancelled["status"] == "cancelled" and cancelled["version"] > run["version"]
    assert ts(cancelled["ended_at"]) == ts(cancelled["updated_at"])
    assert cancelled["started_at"] is None
    assert await esper.get(run_path(run)) == cancelled
    events = run_level(await assert_projection(db, cancelled))
    assert [(e["type"], e["to_status"]) for e in events] == [
        ("run.created", "pending"), ("run.status_changed", "cancelled")]
