"""TIMEOUT: the sweeper times out overdue runs and stage runs, in real time."""
from __future__ import annotations

import asyncio
import contextlib

import asyncpg

import pytest

from service.config import Config
from service.infra.db import create_pool
from service.web.keys import POOL
from service.store import timeouts
from service.infra.metrics import Metrics
from service.app.sweeper import run_forever, sweep_once
from tests.helpers import wait_until, as_runtime


@pytest.fixture
def db_dsn(own_db):
    return own_db


@pytest.fixture
def config(db_dsn) -> Config:
    return Config(database_url=as_runtime(db_dsn), pool_min=1, pool_max=10, timeout_sweep_seconds=1)


async def _wait_for(api, path: str, status: str, seconds: float = 30) -> dict:
    """The item at `path` once it has `status`; fails after `seconds` (the sweeper is dead)."""
    async def reached():
        item = await api.get(path)
        return item if item["status"] == status else None

    return await wait_until(reached, seconds, what=f"{path} to reach {status}")


async def test_overdue_run_times_out_with_its_stage_runs(api):
    pipeline = await api.pipeline(stages=("a", "b"), timeout_seconds=2)
    run = await api.run(pipeline["id"])
    await api.move(run, "running")
    path = f"/pipelines/{pipeline['id']}/runs/{run['id']}/"
    timed_out = await _wait_for(api, path, "timeout")
    assert timed_out["status"] == "timeout" and timed_out["ended_at"] is not None
    assert timed_out["status_meta"] == {"reason": "timed out"}
    assert timed_out["updated_by"] is None  # the service did it, not a token
    stage_runs = (await api.get(f"/runs/{run['id']}/stageruns/"))["results"]
    assert [s["status"] for s in stage_runs] == ["timeout", "timeout"]
    events = (await api.get(path + "events/"))["results"]
    assert [(e["type"], e["to_status"], e["actor"]) for e in events[2:]] == [
        ("run.status_changed", "timeout", "system"),
        ("stage_run.status_changed", "timeout", "system"),
        ("stage_run.status_changed", "timeout", "system"),
    ]


async def test_runs_within_their_timeout_and_finished_runs_are_left_alone(api):
    slow = await api.pipeline("slow", timeout_seconds=3600)
    fast = await api.pipeline("fast", timeout_seconds=1)
    kept = await api.run(slow["id"])
    done = await api.run(fast["id"])
    await api.move(done, "running", "complete")  # complete is not swept
    overdue = await api.run(fast["id"])
    await _wait_for(api, f"/pipelines/{fast['id']}/runs/{overdue['id']}/", "timeout")
    assert (await api.get(f"/pipelines/{slow['id']}/runs/{kept['id']}/"))["status"] == "pending"
    assert (await api.get(f"/pipelines/{fast['id']}/runs/{done['id']}/"))["status"] == "complete"


async def test_overdue_stage_run_times_out_and_the_run_fails(api):
    pipeline = await api.post("/pipelines/", {"name": "p", "stages": [
        {"name": "quick", "timeout_seconds": 1}]})
    run = await api.run(pipeline["id"])
    (stage_run,) = (await api.get(f"/runs/{run['id']}/stageruns/"))["results"]
    await api.put(f"/runs/{run['id']}/stageruns/{stage_run['id']}/", {"status": "running"})
    path = f"/pipelines/{pipeline['id']}/runs/{run['id']}/"
    final = await _wait_for(api, path, "failure")
    assert final["status"] == "failure"
    got = await api.get(f"/runs/{run['id']}/stageruns/{stage_run['id']}/")
    assert got["status"] == "timeout"


async def test_only_one_process_sweeps_at_a_time(db, db_dsn):
    # No app here, so no background sweeper: `db` plays the other process.
    pool = await create_pool(Config(database_url=as_runtime(db_dsn), pool_min=1, pool_max=2),
                             as_runtime(db_dsn))
    try:
        assert await timeouts.try_lock(db)
        try:
            assert await sweep_once(pool) is None  # another process holds the sweep lock
        finally:
            await timeouts.unlock(db)
        assert await sweep_once(pool) == 0
    finally:
        await pool.close()


async def test_sweep_is_idempotent_and_races_callers_safely(api, client, db, enterprise):
    pipeline = await api.pipeline(stages=("a",), timeout_seconds=1)
    runs = [await api.run(pipeline["id"]) for _ in range(6)]

    async def all_overdue() -> bool:
        return await db.fetchval("SELECT count(*) FROM pipeline_runs WHERE enterprise_id = $1"
                                 " AND deadline < now()", enterprise) == 6

    await wait_until(all_overdue, what="the runs to be overdue")
    pool = client.app[POOL]
    # Callers cancel half of the overdue runs while two sweeps run.
    results = await asyncio.gather(
        sweep_once(pool), sweep_once(pool),
        *(api.put(f"/pipelines/{pipeline['id']}/runs/{r['id']}/", {"status": "cancelled"},
                  status=(200, 409)) for r in runs[:3]),
        return_exceptions=True)
    assert not [r for r in results if isinstance(r, Exception)], results

    # Both sweeps here may find the app's own sweeper holding the lock (it sweeps every
    # second); then that sweeper times the rest out on its next pass.
    async def all_ended():
        statuses = {r["id"]: (await api.get(f"/pipelines/{pipeline['id']}/runs/{r['id']}/"))["status"]
                    for r in runs}
        return set(statuses.values()) <= {"timeout", "cancelled"}

    await wait_until(all_ended, what="every run to be timed out or cancelled")
    counts = await db.fetch(
        "SELECT run_id, count(*) FILTER (WHERE type = 'run.status_changed') AS moves "
        "FROM run_events WHERE enterprise_id = $1 GROUP BY run_id", enterprise)
    assert len(counts) == 6 and all(c["moves"] == 1 for c in counts), [dict(c) for c in counts]


async def test_an_outage_logs_one_line_a_tick_not_a_traceback(caplog, unused_tcp_port):
    # Nothing listens on the port: every sweep fails to connect, as in a database outage.
    pool = await asyncpg.create_pool(f"postgresql://postgres@127.0.0.1:{unused_tcp_port}/x",
                                     min_size=0, max_size=1, timeout=2)
    metrics = Metrics()
    sweeper = asyncio.create_task(run_forever(pool, 0.05, metrics))
    try:
        await wait_until(lambda: metrics.sweep_failures >= 2, what="two failed sweeps")
    finally:
        sweeper.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sweeper
        await pool.close()
    failures = [r for r in caplog.records if r.name == "service.app.sweeper"]
    assert len(failures) >= 2 and metrics.sweep_failures == len(failures)
    assert {r.levelname for r in failures} == {"WARNING"}
    assert not [r for r in failures if r.exc_info]
    assert "database unavailable" in failures[0].getMessage()
