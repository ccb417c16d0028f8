"""run_counts: counters stay exact under concurrent writes and replay; verify reports a
tampered counter and replay repairs it; list counts come from the counters."""
from __future__ import annotations

import asyncio
import random
import subprocess
import sys
import uuid

import asyncpg
import pytest

from service.app.replay import replay, verify
from service.domain.errors import Conflict, NotFound, PreconditionFailed
from service.infra.db import init_connection
from service.store import pipelines as pipeline_store
from service.app import runs as run_cases
from service.app import stage_runs as stage_run_cases
from service.app.context import Actor, OnConnection
from tests.helpers import run_in, as_runtime

COUNTER_MISMATCHES = """
SELECT coalesce(c.enterprise_id, r.enterprise_id) AS enterprise_id,
       coalesce(c.pipeline_id, r.pipeline_id) AS pipeline_id,
       coalesce(c.status, r.status) AS status, coalesce(c.n, 0) AS counted, coalesce(r.n, 0) AS rows
FROM run_counts c
FULL JOIN (SELECT enterprise_id, pipeline_id, status, count(*) AS n FROM pipeline_runs
           GROUP BY enterprise_id, pipeline_id, status) r
  ON (r.enterprise_id, r.pipeline_id, r.status) = (c.enterprise_id, c.pipeline_id, c.status)
WHERE coalesce(c.n, 0) <> coalesce(r.n, 0)
"""


async def _connect(dsn: str) -> asyncpg.Connection:
    conn = await asyncpg.connect(dsn)
    await init_connection(conn)
    return conn


# --- run_counts ----------------------------------------------------------------------------

async def test_counters_stay_exact_under_concurrent_writes_and_replay(own_db):
    """Writers race on the same runs and pipelines through every write path; the counters
    equal the projection afterwards, verify is clean, and replay leaves them exact."""
    enterprise = "counters"
    setup = await _connect(own_db)
    try:
        staged = await pipeline_store.create_pipeline(
            setup, enterprise, 1, {"name": "staged", "stages": [{"name": "a"}, {"name": "b"}]})
        bare = await pipeline_store.create_pipeline(setup, enterprise, 1, {"name": "bare"})
        pipelines = [staged["id"], staged["id"], bare["id"]]
        run_ids: list[tuple] = []

        async def writer(seed: int) -> None:
            rng = random.Random(seed)
            conn = await _connect(own_db)
            try:
                for _ in range(40):
                    action = rng.random()
                    try:
                        if action < 0.3 or not run_ids:
                            pipeline_id = rng.choice(pipelines)
                            run = await run_cases.create(OnConnection(conn),
                                                         Actor(enterprise, "w", 1), pipeline_id)
                            run_ids.append((pipeline_id, run["id"]))
                        elif action < 0.75:  # one-statement moves and cascading ones
                            pipeline_id, run_id = rng.choice(run_ids)
                            target = rng.choice(("queued", "running", "waiting", "running",
                                                 "complete", "cancelled", "timeout"))
                            await run_cases.change_status(OnConnection(conn),
                                                          Actor(enterprise, "w", 1),
                                                          pipeline_id, run_id, target)
                        elif action < 0.93:  # stage runs: derived outcomes of the run
                            pipeline_id, run_id = rng.choice(run_ids)
                            run = await conn.fetchrow(
                                "SELECT id FROM stage_runs WHERE run_id = $1 ORDER BY ordinal "
                                "LIMIT 1 OFFSET $2", run_id, rng.randrange(2))
                            if run is not None:
                                await stage_run_cases.change_status(
                                    OnConnection(conn), Actor(enterprise, "w", 1), run_id,
                                    run["id"],
                                    rng.choice(("running", "complete", "success", "failure")))
                        else:
                            pipeline_id, run_id = rng.choice(run_ids)
                            await run_cases.delete(OnConnection(conn), Actor(enterprise, "w", 1),
                                                   pipeline_id, run_id)
                    except (Conflict, NotFound, PreconditionFailed):
                        pass
            finally:
                await conn.close()

        await asyncio.gather(*(writer(seed) for seed in range(8)))
        assert await setup.fetch(COUNTER_MISMATCHES) == []
        total = await setup.fetchval("SELECT sum(n) FROM run_counts WHERE enterprise_id = $1",
                                     enterprise)
        assert total == await setup.fetchval(
            "SELECT count(*) FROM pipeline_runs WHERE enterprise_id = $1", enterprise) > 0
        scan = await verify(setup)
        assert scan.clean, (scan.drifts, scan.counter_drifts, scan.version_drifts)
        report = await replay(setup)
        assert (report.repaired, report.counters_repaired) == (0, 0)
        assert await setup.fetch(COUNTER_MISMATCHES) == []
    finally:
        await setup.close()


@pytest.mark.own_db
async def test_verify_reports_a_tampered_counter_and_replay_repairs_it(api, db, db_dsn):
    pipeline = await api.pipeline()
    run = await api.run(pipeline["id"])
    await api.move(run, "running")
    await api.run(pipeline["id"])
    await db.execute(
        "UPDATE run_counts SET n = n + 5 WHERE pipeline_id = $1 AND status = 'running'",
        uuid.UUID(pipeline["id"]))
    await db.execute("DELETE FROM run_counts WHERE pipeline_id = $1 AND status = 'pending'",
                     uuid.UUID(pipeline["id"]))
    assert (await api.get(f"/pipelines/{pipeline['id']}/runs/"))["count"] == 6  # what it says

    scan = await verify(db)
    assert scan.drifts == [] and not scan.clean
    assert sorted((c.key[2], c.expected, c.actual) for c in scan.counter_drifts) == [
        ("pending", 1, 0), ("running", 1, 6)]
    env = {"DATABASE_URL": as_runtime(db_dsn), "PATH": "/usr/bin:/bin"}
    cli = [sys.executable, "-m", "service"]
    bad = subprocess.run([*cli, "verify"], env=env, capture_output=True, text=True, timeout=60)
    assert bad.returncode == 1 and "DRIFT run_counts" in bad.stdout, bad.stdout + bad.stderr

    # Writes between the scan and the repair keep the counters' error as it was.
    await api.move(run, "waiting")
    report = await replay(db)
    assert (report.repaired, report.counters_repaired) == (0, 2)
    assert (await verify(db)).clean
    assert await db.fetch(COUNTER_MISMATCHES) == []
    assert (await api.get(f"/pipelines/{pipeline['id']}/runs/"))["count"] == 2


@pytest.mark.own_db
async def test_replay_rebuilds_counters_and_projection_from_events_alone(api, db):
    pipeline = await api.pipeline()
    for status in ("pending", "running", "cancelled", "success"):
        await run_in(api, pipeline, status)
    before = await db.fetch("SELECT * FROM run_counts WHERE n <> 0 ORDER BY status")
    await db.execute("DELETE FROM stage_runs; DELETE FROM pipeline_runs; DELETE FROM run_counts")
    report = await replay(db)
    assert report.repaired == 4 and report.counters_repaired == 0  # deltas came with the rows
    assert await db.fetch("SELECT * FROM run_counts WHERE n <> 0 ORDER BY status") == before
    assert (await verify(db)).clean


@pytest.mark.own_db
async def test_verify_flags_a_repeated_event_version(api, db, enterprise):
    pipeline = await api.pipeline()
    run = await api.move(await api.run(pipeline["id"]), "running")
    # The append trigger refuses a repeated version (tests/test_run_versions.py); a restore
    # or a replica applies rows without triggers, and verify still catches what that let in.
    await db.execute("SET session_replication_role = replica")
    await db.execute(
        "INSERT INTO run_events (enterprise_id, pipeline_id, run_id, version, type, from_status,"
        " to_status, actor, occurred_at) VALUES ($1, $2, $3, 2, 'run.status_changed', "
        "'pending', 'running', 'mallory', now())",
        enterprise, uuid.UUID(pipeline["id"]), uuid.UUID(run["id"]))
    await db.execute("RESET session_replication_role")
    scan = await verify(db)
    assert [str(k[1]) for k in scan.version_drifts] == [run["id"]]
    assert (await replay(db)).version_drifts == 1


async def test_counts_come_from_counters_and_hide_deleted_pipelines(api, db):
    kept = await api.pipeline("kept")
    doomed = await api.pipeline("doomed")
    for _ in range(3):
        await api.run(kept["id"])
    await run_in(api, kept, "running")
    await api.run(doomed["id"])
    await api.delete(f"/pipelines/{doomed['id']}/")
    assert (await api.get("/runs/"))["count"] == 4
    assert (await api.get("/runs/?status=running"))["count"] == 1
    assert (await api.get("/runs/?pipeline_name=kept&status=pending"))["count"] == 3
    assert (await api.get("/runs/?pipeline_name=doomed"))["count"] == 0
    listed = await api.get("/runs/?limit=1000")
    assert {r["pipeline_name"] for r in listed["results"]} == {"kept"}
    await api.get(f"/pipelines/{doomed['id']}/runs/", status=404)
