"""A run's answered columns are defined once (store/columns.py) and are what every answer has."""
from __future__ import annotations

from service.store.columns import RUN_FIELDS
from service.web.schemas import PipelineRun


def test_answered_columns_are_the_response_schema():
    assert tuple(PipelineRun().fields) == RUN_FIELDS


async def test_every_run_answer_has_the_columns_in_one_order(api):
    pipeline = await api.pipeline()
    base = f"/pipelines/{pipeline['id']}/runs/"
    created = await api.post(base, {})
    path = f"{base}{created['id']}/"
    answers = {
        "create": created,
        "get": await api.get(path),
        "simple move": await api.put(path, {"status": "running"}),
        "no-op": await api.put(path, {"status": "running"}),
        "general move": await api.put(path, {"status": "cancelled"}),
        "list": (await api.get(base))["results"][0],
        "enterprise list": (await api.get("/runs/"))["results"][0],
        "as_of": await api.get(path, params={"as_of": created["updated_at"]}),
        "delete": await api.delete(path),
    }
    for what, run in answers.items():
        assert tuple(run) == RUN_FIELDS, what
    assert answers["as_of"] == created


async def test_a_run_of_a_pipeline_without_stages_answers_the_columns(api):
    pipeline = await api.pipeline(name="empty", stages=())
    run = await api.run(pipeline["id"])
    assert tuple(run) == RUN_FIELDS
    assert (run["status"], run["pipeline_name"], run["version"]) == ("invalid", "empty", 2)
