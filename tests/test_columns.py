"""A run's answered columns are defined once (store/columns.py) and are what every answer has."""
from __future__ import annotations

import uuid

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


def test_statements_answered_by_position_start_with_the_answered_columns():
    # run_of_row takes a row's first columns as RUN_FIELDS, in order: each statement it
    # answers must select run_select()'s list first (a column moved would answer a value
    # under another field's name, which the key-order test above cannot see).
    from service.store import runs as run_store
    from service.store.columns import run_select
    assert run_store.SELECT_RUN.lstrip().startswith(f"SELECT {run_select()}, ")
    assert f"SELECT {run_select('r', 'p.name')}, (SELECT count(*)" in run_store.CREATE_RUN
    assert f"cur AS (\n    SELECT {run_select()}, clock_timestamp() AS at" in run_store.DELETE_RUN
    assert run_store.DELETE_RUN.rstrip().endswith("SELECT cur.*, EXISTS (SELECT FROM "
                                                  "appended_events) AS deleted FROM cur")


async def test_a_run_read_by_position_equals_the_run_read_by_name(api, db, enterprise):
    from service.store import runs as run_store
    from service.store.columns import answered_run, run_of_row
    pipeline = await api.pipeline()
    run = await api.run(pipeline["id"])
    row = await db.fetchrow(run_store.SELECT_RUN, enterprise, uuid.UUID(pipeline["id"]),
                            uuid.UUID(run["id"]))
    assert run_of_row(row) == answered_run(row)
    assert tuple(run_of_row(row)) == RUN_FIELDS
