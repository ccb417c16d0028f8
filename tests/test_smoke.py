"""Smoke: the Esper client flow end to end on the mount Esper clients call."""


async def test_esper_client_flow(api):
    esper = api.at("/api/pipelines/v0")
    pipeline = await esper.post("/pipelines/", {"name": "rollout"})
    stage = await esper.post(f"/pipelines/{pipeline['id']}/stages/", {"name": "canary"})
    assert stage["name"] == "canary" and stage["pipeline_id"] == pipeline["id"]
    run = await esper.post(f"/pipelines/{pipeline['id']}/runs/", {})
    assert run["status"] == "pending" and run["run_number"] == 1
    listed = await esper.get(f"/pipelines/{pipeline['id']}/runs/")
    assert [r["id"] for r in listed["results"]] == [run["id"]]
    got = await esper.get(f"/pipelines/{pipeline['id']}/runs/{run['id']}/")
    assert got == run
    cancelled = await esper.put(f"/pipelines/{pipeline['id']}/runs/{run['id']}/",
                                {"status": "CANCELLED"})
    assert cancelled["status"] == "cancelled" and cancelled["ended_at"] is not None
    assert cancelled["version"] == 3  # the cancel, then its cascade to the stage run
