"""Every write on every run state, with live and deleted pipelines and runs: 2xx or 4xx.

A run of a deleted pipeline, or a deleted run, is not found (404) for every write; on a
live run a status change is 200 when the lifecycle allows it (or it changes nothing),
else 409. Never a 5xx.
"""
from __future__ import annotations

import asyncio

import pytest

from service.domain import lifecycle

# How a caller brings a run (of a two-stage pipeline) into each status.
PATHS = {
    "pending": (), "queued": ("queued",), "processing": ("processing",),
    "running": ("running",), "waiting": ("running", "waiting"),
    "cancelled": ("cancelled",), "timeout": ("timeout",), "invalid": ("invalid",),
}
VARIANTS = ("live", "pipeline deleted", "run deleted")


async def _runs_in(api, status: str, variant: str, n: int) -> list[dict]:
    """n runs of one pipeline in `status`, then the pipeline or the runs deleted."""
    pipeline = await api.pipeline(name=f"m-{status}")

    async def one():
        run = await api.move(await api.run(pipeline["id"]), *PATHS[status])
        stage_runs = (await api.get(f"/runs/{run['id']}/stageruns/"))["results"]
        return {**run, "stage_run_id": stage_runs[0]["id"]}

    runs = await asyncio.gather(*(one() for _ in range(n)))
    if variant == "pipeline deleted":
        await api.delete(f"/pipelines/{pipeline['id']}/")
    elif variant == "run deleted":
        await asyncio.gather(*(api.delete(f"/pipelines/{pipeline['id']}/runs/{r['id']}/")
                               for r in runs))
    return runs


def _expected_put(status: str, target: str, variant: str) -> int:
    if variant != "live":
        return 404
    return 200 if target == status or lifecycle.is_legal(status, target) else 409


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("status", list(PATHS))
async def test_every_run_write(api, status, variant):
    *runs, last = await _runs_in(api, status, variant, len(lifecycle.RUN_STATUSES) + 1)
    await asyncio.gather(*(
        api.put(f"/pipelines/{run['pipeline_id']}/runs/{run['id']}/", {"status": target},
                status=_expected_put(status, target, variant))
        for run, target in zip(runs, lifecycle.RUN_STATUSES)))
    await api.delete(f"/pipelines/{last['pipeline_id']}/runs/{last['id']}/",
                     status=200 if variant == "live" else 404)
    await api.post(f"/pipelines/{last['pipeline_id']}/runs/", {},
                   status=404 if variant == "pipeline deleted" else 200)


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("status", ["pending", "running", "waiting", "cancelled"])
async def test_every_stage_run_write(api, status, variant):
    runs = await _runs_in(api, status, variant, len(lifecycle.STAGE_RUN_STATUSES))
    await asyncio.gather(*(
        api.put(f"/runs/{run['id']}/stageruns/{run['stage_run_id']}/", {"status": target},
                status=(200, 409) if variant == "live" else 404)
        for run, target in zip(runs, lifecycle.STAGE_RUN_STATUSES)))
