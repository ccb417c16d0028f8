"""Every write on every run state, with live and deleted pipelines and runs: 2xx or 4xx.

A run of a deleted pipeline, or a deleted run, is not found (404) for every write; on a
live run or stage run a status change is 200 when the documented tables (tests/helpers.py)
allow it or it changes nothing, else 409. Every answer's body is checked, and a refused
write appends no event. Never a 5xx.
"""
from __future__ import annotations

import asyncio

import pytest

from tests.helpers import (STAGE_RUN_MOVES, STAGE_RUN_STATUSES, STATUSES, events_of,
                           expected_status, legal_path)
from tests.module_app import api, client, config, db, token  # noqa: F401 (one app per module)

pytestmark = pytest.mark.asyncio(loop_scope="module")

# How a caller brings a run (of a two-stage pipeline) into each status.
PATHS = {
    "pending": (), "queued": ("queued",), "processing": ("processing",),
    "running": ("running",), "waiting": ("running", "waiting"),
    "complete": ("running", "complete"), "success": ("running", "complete", "success"),
    "failure": ("running", "complete", "failure"),
    "cancelled": ("cancelled",), "timeout": ("timeout",), "invalid": ("invalid",),
}
VARIANTS = ("live", "pipeline deleted", "run deleted")
# The status of a run's first stage run after the run's own moves: they leave it pending
# until the run ends, which closes it (README's "Cascade"; a complete run keeps it open).
CASCADE = {"cancelled": "cancelled", "timeout": "timeout", "invalid": "invalid",
           "success": "cancelled", "failure": "cancelled"}


async def _runs_in(api, status: str, variant: str, n: int) -> list[dict]:
    """n runs of one pipeline in `status`, then the pipeline or the runs deleted."""
    pipeline = await api.pipeline(name=f"m-{status}")

    async def one():
        run = await api.move(await api.run(pipeline["id"]), *PATHS[status])
        stage_runs = (await api.get(f"/runs/{run['id']}/stageruns/"))["results"]
        return {**run, "stage_run_id": stage_runs[0]["id"]}

    runs = await asyncio.gather(*(one() for _ in range(n)))
    await _delete(api, pipeline, runs, variant)
    return runs


async def _delete(api, pipeline: dict, runs: list[dict], variant: str) -> None:
    if variant == "pipeline deleted":
        await api.delete(f"/pipelines/{pipeline['id']}/")
    elif variant == "run deleted":
        await asyncio.gather(*(api.delete(f"/pipelines/{pipeline['id']}/runs/{r['id']}/")
                               for r in runs))


async def _writes(api, db, writes: list[tuple[str, str, str, str, str, int]]) -> None:
    """Each (path, run id, item id, current, target, expected) PUT at once: the answer, its
    body, and the events it left (the one `db` connection reads before and after)."""
    before = [await events_of(db, run_id) for _, run_id, *_ in writes]

    async def put(path, target, expected):
        content = await api.put(path, {"status": target}, status=expected)
        return content, (await api.last.json())["message"]

    answers = await asyncio.gather(*(put(path, target, expected)
                                     for path, _, _, _, target, expected in writes))
    for (path, run_id, item_id, current, target, expected), (content, message), old in zip(
            writes, answers, before):
        after = await events_of(db, run_id)
        where = (path, current, target)
        if expected == 200:
            assert content["id"] == item_id and content["status"] == target, (where, content)
            assert (len(after) > len(old)) == (target != current), where  # same: no event
        elif expected == 409:
            assert content == {"current_status": current, "requested_status": target}, where
        else:
            assert content == {} and "not found" in message, (where, content, message)
        if expected != 200:
            assert after == old, where  # refused: nothing appended


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("status", list(PATHS))
async def test_every_run_write(api, db, status, variant):
    *runs, last = await _runs_in(api, status, variant, len(STATUSES) + 1)
    await _writes(api, db, [
        (f"/pipelines/{run['pipeline_id']}/runs/{run['id']}/", run["id"], run["id"], status,
         target, expected_status(status, target) if variant == "live" else 404)
        for run, target in zip(runs, STATUSES)])
    await api.delete(f"/pipelines/{last['pipeline_id']}/runs/{last['id']}/",
                     status=200 if variant == "live" else 404)
    await api.post(f"/pipelines/{last['pipeline_id']}/runs/", {},
                   status=404 if variant == "pipeline deleted" else 200)


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("status", ["pending", "running", "waiting", "complete", "cancelled",
                                    "success"])
async def test_every_stage_run_write(api, db, status, variant):
    """Stage-run writes on runs in each status: the stage run is pending or closed."""
    current = CASCADE.get(status, "pending")
    runs = await _runs_in(api, status, variant, len(STAGE_RUN_STATUSES))
    await _writes(api, db, [
        (f"/runs/{run['id']}/stageruns/{run['stage_run_id']}/", run["id"], run["stage_run_id"],
         current, target,
         expected_status(current, target, STAGE_RUN_MOVES) if variant == "live" else 404)
        for run, target in zip(runs, STAGE_RUN_STATUSES)])


@pytest.mark.parametrize("current", STAGE_RUN_STATUSES)
async def test_every_stage_run_move(api, db, current):
    """A stage run brought to `current` by the caller, then asked for every status."""
    pipeline = await api.pipeline(name=f"s-{current}")

    async def one() -> tuple[dict, str]:
        run = await api.run(pipeline["id"])
        (stage_run, _) = (await api.get(f"/runs/{run['id']}/stageruns/"))["results"]
        path = f"/runs/{run['id']}/stageruns/{stage_run['id']}/"
        for step in legal_path(current, moves=STAGE_RUN_MOVES):
            assert (await api.put(path, {"status": step}))["status"] == step
        return run, stage_run["id"]

    runs = await asyncio.gather(*(one() for _ in STAGE_RUN_STATUSES))
    await _writes(api, db, [
        (f"/runs/{run['id']}/stageruns/{stage_run_id}/", run["id"], stage_run_id, current,
         target, expected_status(current, target, STAGE_RUN_MOVES))
        for (run, stage_run_id), target in zip(runs, STAGE_RUN_STATUSES)])
    # `waiting` is not a stage run's status at all: a 400 naming the field.
    run, stage_run_id = runs[0]
    content = await api.put(f"/runs/{run['id']}/stageruns/{stage_run_id}/",
                            {"status": "waiting"}, status=400)
    assert "status" in content["errors"]
