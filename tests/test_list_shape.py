"""One list shape everywhere, and each resource's fields in one order in every response
(the order its schema in the served OpenAPI document declares)."""
from __future__ import annotations

PAGE = ["count", "count_exact", "next", "previous", "next_cursor", "previous_cursor",
        "results"]


async def _schema_order(api) -> dict[str, list[str]]:
    resp = await api.client.get("/api/docs/swagger.json")
    schemas = (await resp.json())["components"]["schemas"]
    return {name: list(schemas[name]["properties"])
            for name in ("Pipeline", "Stage", "PipelineRun", "StageRun", "Event")}


async def test_every_list_has_the_run_lists_shape(api):
    pipeline = await api.pipeline(stages=("build", "test", "ship"))
    run = await api.run(pipeline["id"])
    pid, rid = pipeline["id"], run["id"]
    lists = [
        "/pipelines/", f"/pipelines/{pid}/stages/", "/runs/", f"/pipelines/{pid}/runs/",
        f"/runs/{rid}/stageruns/", f"/pipelines/{pid}/runs/{rid}/events/",
    ]
    for path in lists:
        page = await api.get(path)
        assert list(page) == PAGE, path
        assert page["count_exact"] is True and page["next_cursor"] is None, path
        assert page["previous_cursor"] is None, path

    # The stage-run list pages like the others: count of all pages, next link, exact.
    first = await api.get(f"/runs/{rid}/stageruns/?limit=2")
    assert first["count"] == 3 and len(first["results"]) == 2 and first["next"]
    second = await api.get(first["next"])
    assert [s["stage_meta"]["name"] for s in second["results"]] == ["ship"]
    assert second["next"] is None and second["previous"]


async def test_the_openapi_page_schemas_have_that_shape(api):
    resp = await api.client.get("/api/docs/swagger.json")
    schemas = (await resp.json())["components"]["schemas"]
    for name in ("PipelinePage", "StagePage", "PipelineRunPage", "StageRunPage", "EventPage"):
        assert list(schemas[name]["properties"]) == PAGE, name


async def test_each_resource_answers_its_fields_in_one_order(api):
    order = await _schema_order(api)
    pipeline = await api.pipeline(stages=("build", "test"))
    pid = pipeline["id"]
    pipelines = [pipeline, await api.get(f"/pipelines/{pid}/"),
                 (await api.get("/pipelines/"))["results"][0],
                 await api.put(f"/pipelines/{pid}/", {"description": "d"})]
    stage = pipeline["stages"][0]
    stages = [stage, (await api.get(f"/pipelines/{pid}/stages/"))["results"][0],
              await api.get(f"/pipelines/{pid}/stages/{stage['id']}/"),
              await api.put(f"/pipelines/{pid}/stages/{stage['id']}/", {"description": "d"}),
              await api.post(f"/pipelines/{pid}/stages/", {"name": "ship"})]

    run = await api.run(pid)
    rid = run["id"]
    runs = [run, await api.get(f"/pipelines/{pid}/runs/{rid}/"),
            (await api.get("/runs/"))["results"][0],
            (await api.get(f"/pipelines/{pid}/runs/"))["results"][0],
            await api.put(f"/pipelines/{pid}/runs/{rid}/", {"status": "running"})]  # one statement
    history = (await api.get(f"/pipelines/{pid}/runs/{rid}/events/"))["results"]
    runs.append(await api.get(f"/pipelines/{pid}/runs/{rid}/",
                              params={"as_of": history[-1]["occurred_at"]}))  # the fold
    stage_runs = (await api.get(f"/runs/{rid}/stageruns/"))["results"]
    sid = stage_runs[0]["id"]
    stage_runs += [await api.get(f"/runs/{rid}/stageruns/{sid}/"),
                   await api.put(f"/runs/{rid}/stageruns/{sid}/", {"status": "running"})]
    runs.append(await api.put(f"/pipelines/{pid}/runs/{rid}/", {"status": "cancelled"}))  # cascade
    runs.append(await api.delete(f"/pipelines/{pid}/runs/{rid}/"))
    events = (await api.get(f"/pipelines/{pid}/runs/{rid}/events/"))["results"]
    events += (await api.get("/events/", params={"after": 0}))["results"]
    pipelines.append(await api.delete(f"/pipelines/{pid}/"))

    for name, answers in (("Pipeline", pipelines), ("Stage", stages), ("PipelineRun", runs),
                          ("StageRun", stage_runs), ("Event", events)):
        for answer in answers:
            keys = [k for k in answer if k != "stages"] if name == "Pipeline" else list(answer)
            expected = [k for k in order[name] if k != "stages"] if name == "Pipeline" \
                else order[name]
            assert keys == expected, (name, answer)
