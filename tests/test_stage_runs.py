"""Stage runs and the lifecycle's automatic moves: derived outcomes, cascades, INVALID."""
from __future__ import annotations

import pytest

from tests.helpers import MOUNTS, make_token
from tests.module_app import api, client, config, db, token  # noqa: F401 (one app per module)

pytestmark = pytest.mark.asyncio(loop_scope="module")


ESPER = "/api/pipelines/v0"


def _stage_path(run: dict, stage_run: dict | None = None) -> str:
    path = f"/runs/{run['id']}/stageruns/"
    return path + f"{stage_run['id']}/" if stage_run else path


async def _stage_runs(api, run) -> list[dict]:
    return (await api.get(_stage_path(run)))["results"]


async def _run(api, run) -> dict:
    return await api.get(f"/pipelines/{run['pipeline_id']}/runs/{run['id']}/")


async def _history(api, run) -> list[tuple]:
    events = (await api.get(f"/pipelines/{run['pipeline_id']}/runs/{run['id']}/events/"))["results"]
    return [(e["type"], e["from_status"], e["to_status"], e["actor"]) for e in events]


async def test_stage_runs_snapshot_the_stages_in_order(api):
    pipeline = await api.pipeline(stages=("build", "test", "deploy"))
    run = await api.run(pipeline["id"])
    stage_runs = await _stage_runs(api, run)
    assert [s["stage_meta"]["name"] for s in stage_runs] == ["build", "test", "deploy"]
    assert [s["stage_id"] for s in stage_runs] == [s["id"] for s in pipeline["stages"]]
    first = stage_runs[0]
    assert set(first) == {"id", "enterprise_id", "pipeline_id", "pipeline_run_id", "stage_id",
                          "stage_meta", "status", "created_by", "updated_by", "created_at",
                          "updated_at", "started_at", "ended_at"}
    assert first["status"] == "pending" and first["pipeline_run_id"] == run["id"]
    assert first["stage_meta"] == {"name": "build", "description": "",
                                   "created_by": pipeline["created_by"]}
    assert first["created_at"] == run["created_at"]
    # Later stage edits do not change existing runs.
    stage = pipeline["stages"][0]
    await api.put(f"/pipelines/{pipeline['id']}/stages/{stage['id']}/", {"name": "compile"})
    await api.delete(f"/pipelines/{pipeline['id']}/stages/{pipeline['stages'][2]['id']}/")
    assert [s["stage_meta"]["name"] for s in await _stage_runs(api, run)] == [
        "build", "test", "deploy"]
    newer = await api.run(pipeline["id"])
    assert [s["stage_meta"]["name"] for s in await _stage_runs(api, newer)] == ["compile", "test"]


@pytest.mark.parametrize("mount", MOUNTS)
@pytest.mark.parametrize("slash", ["/", ""])
async def test_stage_run_routes_on_every_mount(api, mount, slash):
    pipeline = await api.pipeline()
    run = await api.run(pipeline["id"])
    at = api.at(mount)
    listed = await at.get(_stage_path(run).rstrip("/") + slash)
    assert listed["count"] == 2
    one = listed["results"][1]
    got = await at.get(_stage_path(run, one).rstrip("/") + slash)
    assert got == one
    moved = await at.put(_stage_path(run, one).rstrip("/") + slash, {"status": "Queued"})
    assert moved["status"] == "queued"


async def test_esper_flow_list_stage_runs_and_cancel_one(api):
    esper = api.at(ESPER)
    pipeline = await esper.pipeline(stages=("build", "test"))
    run = await esper.run(pipeline["id"])
    stage_runs = (await esper.get(_stage_path(run)))["results"]
    cancelled = await esper.put(_stage_path(run, stage_runs[0]), {"status": "CANCELLED"})
    assert cancelled["status"] == "cancelled" and cancelled["ended_at"] is not None
    assert cancelled["updated_by"] == pipeline["created_by"]
    assert (await _run(esper, run))["status"] == "pending"  # one stage still open


async def test_stage_run_filter_pagination_and_errors(api):
    pipeline = await api.pipeline(stages=("a", "b", "c"))
    run = await api.run(pipeline["id"])
    stage_runs = await _stage_runs(api, run)
    await api.put(_stage_path(run, stage_runs[1]), {"status": "running"})
    running = await api.get(_stage_path(run) + "?status=RUNNING")
    assert [s["id"] for s in running["results"]] == [stage_runs[1]["id"]]
    page = await api.get(_stage_path(run) + "?limit=2")
    assert page["count"] == 3 and page["next"] and len(page["results"]) == 2
    assert (await api.get(page["next"]))["results"][0]["id"] == stage_runs[2]["id"]
    await api.get(_stage_path(run) + "?status=waiting", status=400)  # no waiting for stages
    content = await api.put(_stage_path(run, stage_runs[1]), {"status": "waiting"}, status=400)
    assert "status" in content["errors"]
    conflict = await api.put(_stage_path(run, stage_runs[1]), {"status": "queued"}, status=409)
    assert conflict == {"current_status": "running", "requested_status": "queued"}
    await api.get(f"/runs/{pipeline['id']}/stageruns/", status=404)
    await api.get(f"/runs/{run['id']}/stageruns/{run['id']}/", status=404)
    await api.get(f"/runs/{run['id']}/stageruns/nope/", status=404)


async def test_other_enterprises_cannot_see_or_move_stage_runs(api, db):
    pipeline = await api.pipeline()
    run = await api.run(pipeline["id"])
    stage_run = (await _stage_runs(api, run))[0]
    other = api.with_token(await make_token(db, "stage-other"))
    await other.get(_stage_path(run), status=404)
    await other.get(_stage_path(run, stage_run), status=404)
    await other.put(_stage_path(run, stage_run), {"status": "cancelled"}, status=404)
    assert (await _stage_runs(api, run))[0]["status"] == "pending"


async def test_all_stages_succeed_derives_complete_then_success(api):
    pipeline = await api.pipeline(stages=("build", "test"))
    run = await api.run(pipeline["id"])
    build, test = await _stage_runs(api, run)
    await api.put(_stage_path(run, build), {"status": "running"})
    assert (await _run(api, run))["status"] == "running"  # a stage started, so did the run
    for stage_run in (build, test):
        for status in ("running", "complete", "success"):
            await api.put(_stage_path(run, stage_run), {"status": status})
    final = await _run(api, run)
    assert final["status"] == "success" and final["ended_at"] is not None
    assert (await _history(api, run))[-2:] == [
        ("run.status_changed", "running", "complete", "system"),
        ("run.status_changed", "complete", "success", "system"),
    ]


async def test_any_stage_not_successful_derives_failure(api):
    pipeline = await api.pipeline(stages=("build", "test"))
    run = await api.run(pipeline["id"])
    await api.move(run, "running", "waiting")
    build, test = await _stage_runs(api, run)
    await api.put(_stage_path(run, build), {"status": "cancelled"})
    for status in ("running", "complete", "success"):
        await api.put(_stage_path(run, test), {"status": status})
    assert (await _run(api, run))["status"] == "failure"
    assert (await _history(api, run))[-2:] == [
        ("run.status_changed", "waiting", "complete", "system"),
        ("run.status_changed", "complete", "failure", "system"),
    ]


async def test_stages_finishing_while_run_pending_walk_the_legal_path(api):
    pipeline = await api.pipeline(stages=("only",))
    run = await api.run(pipeline["id"])
    await api.move(run, "queued")
    (only,) = await _stage_runs(api, run)
    await api.put(_stage_path(run, only), {"status": "invalid"})  # queued -> invalid, no start
    assert (await _run(api, run))["status"] == "failure"
    assert (await _history(api, run))[-3:] == [
        ("run.status_changed", "queued", "running", "system"),
        ("run.status_changed", "running", "complete", "system"),
        ("run.status_changed", "complete", "failure", "system"),
    ]


async def test_run_waiting_in_complete_gets_its_outcome_when_stages_finish(api):
    pipeline = await api.pipeline(stages=("only",))
    run = await api.run(pipeline["id"])
    await api.move(run, "running", "complete")
    assert (await _run(api, run))["status"] == "complete"
    (only,) = await _stage_runs(api, run)
    for status in ("running", "complete", "success"):
        await api.put(_stage_path(run, only), {"status": status})
    assert (await _run(api, run))["status"] == "success"


@pytest.mark.parametrize("target,stage_status", [("cancelled", "cancelled"), ("timeout", "timeout"),
                                                 ("invalid", "invalid")])
async def test_finishing_a_run_closes_its_open_stage_runs(api, target, stage_status):
    pipeline = await api.pipeline(stages=("a", "b", "c"))
    run = await api.run(pipeline["id"])
    a, b, c = await _stage_runs(api, run)
    await api.put(_stage_path(run, a), {"status": "cancelled"})  # the run stays pending
    moved = await api.move(run, target)
    assert moved["status"] == target and moved["version"] == 1 + 1 + 1 + 2
    statuses = [s["status"] for s in await _stage_runs(api, run)]
    assert statuses == ["cancelled", stage_status, stage_status]
    cascade = (await _history(api, run))[-2:]
    assert cascade == [("stage_run.status_changed", "pending", stage_status, "system")] * 2
    await api.put(_stage_path(run, b), {"status": "running"}, status=409)


async def test_zero_stage_pipeline_runs_are_invalid_at_once(api):
    pipeline = await api.pipeline(stages=())
    assert pipeline["is_valid"] is False
    run = await api.run(pipeline["id"])
    assert run["status"] == "invalid" and run["version"] == 2 and run["ended_at"]
    assert run["status_meta"] == {"reason": "pipeline has no stages"}
    events = (await api.get(f"/pipelines/{pipeline['id']}/runs/{run['id']}/events/"))["results"]
    assert [(e["type"], e["to_status"], e["actor"]) for e in events] == [
        ("run.created", "pending", "tester"), ("run.status_changed", "invalid", "system")]
    assert events[1]["data"]["reason"] == "pipeline has no stages"
    assert (await _stage_runs(api, run)) == []


async def test_stage_run_change_is_one_event_in_the_runs_stream(api):
    pipeline = await api.pipeline(stages=("a", "b"))
    run = await api.run(pipeline["id"])
    a, _ = await _stage_runs(api, run)
    await api.put(_stage_path(run, a), {"status": "queued"}, headers={"X-Request-ID": "sr-1"})
    again = await api.put(_stage_path(run, a), {"status": "QUEUED"})  # same status: no event
    assert again["status"] == "queued"
    events = (await api.get(f"/pipelines/{pipeline['id']}/runs/{run['id']}/events/"))["results"]
    assert len(events) == 2
    assert events[1]["type"] == "stage_run.status_changed"
    assert events[1]["data"]["stage_run_id"] == a["id"] and events[1]["request_id"] == "sr-1"
    assert (await _run(api, run))["version"] == 2
