"""The statistics keeper: tables autovacuum leaves alone are analyzed by the service, so a
run is read by its key, not by scanning its pipeline (app/statistics.py)."""
from __future__ import annotations

import asyncio
import dataclasses
import json
import uuid

import asyncpg
import pytest

from service.store import runs, statistics
from service.web.app import create_app
from tests.helpers import Api, as_runtime

RUNS = 2000
LAST_ANALYZED = "SELECT last_analyze FROM pg_stat_user_tables WHERE relname = 'pipeline_runs'"


async def _pages_read(db, enterprise: str, pipeline_id, run_id) -> list[int]:
    """Pages of pipeline_runs and its indexes a read of one run by the GET's statement
    touches, planned for its values (a statement's first five executions) and generic (a
    prepared statement's plan from the sixth on, as the service's connections keep it)."""
    await db.execute(f"PREPARE get_run(text, uuid, uuid) AS {runs.SELECT_RUN}")
    pages = []
    try:
        for mode in ("force_custom_plan", "force_generic_plan"):
            await db.execute(f"SET plan_cache_mode = {mode}")
            plan = json.loads(await db.fetchval(
                "EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) EXECUTE get_run("
                f"'{enterprise}', '{pipeline_id}', '{run_id}')"))[0]["Plan"]
            pages.append(sum(node["Shared Hit Blocks"] + node["Shared Read Blocks"]
                             for node in _nodes(plan)
                             if node.get("Relation Name") == "pipeline_runs"))
    finally:
        await db.execute("RESET plan_cache_mode")
        await db.execute("DEALLOCATE get_run")
    return pages


def _nodes(plan: dict):
    yield plan
    for child in plan.get("Plans", ()):
        yield from _nodes(child)


@pytest.mark.own_db
async def test_a_run_is_read_by_its_key_once_the_keeper_has_analyzed(
        db, aiohttp_client, config, token, enterprise):
    # Whatever the cluster's autovacuum setting (this machine's is off), autovacuum leaves
    # this table alone, as it would every table with autovacuum = off.
    await db.execute("ALTER TABLE pipeline_runs SET (autovacuum_enabled = false)")
    api = Api(await aiohttp_client(create_app(
        dataclasses.replace(config, analyze_check_seconds=0))), token)
    pipeline = await api.pipeline(stages=("build",))
    run = await api.run(pipeline["id"])
    # The pipeline's other runs, written straight into the projection (the insights
    # triggers standing aside, as for any bulk load): the plans are what this is about.
    async with db.transaction():
        await db.execute("SET LOCAL insights.bulk_load = 'on'")
        await db.execute("""
            INSERT INTO pipeline_runs (enterprise_id, id, pipeline_id, run_number, status,
                                       created_at, updated_at, version, deadline)
            SELECT $1, gen_random_uuid(), $2, 1 + g, 'running', now(), now(), 1, now()
            FROM generate_series(1, $3) g""", enterprise, uuid.UUID(pipeline["id"]), RUNS)
    one = (enterprise, uuid.UUID(pipeline["id"]), uuid.UUID(run["id"]))
    assert await db.fetchval(LAST_ANALYZED) is None

    # Never analyzed: the planner has no rows per pipeline and reads the run through an
    # index of its pipeline's runs, all of them (~100 entries a page).
    assert min(await _pages_read(db, *one)) >= RUNS / 200

    # A second process of the service, with the keeper: it analyzes the table, and plans
    # cached before are made again (an ANALYZE invalidates them), by the key.
    await aiohttp_client(create_app(dataclasses.replace(config, analyze_check_seconds=0.1)))
    async with asyncio.timeout(20):
        while await db.fetchval(LAST_ANALYZED) is None:
            await asyncio.sleep(0.05)
    assert max(await _pages_read(db, *one)) <= 3  # the key's root and leaf, the row's page


@pytest.mark.own_db
async def test_the_keeper_analyzes_by_autovacuums_rule_and_one_process_at_a_time(db, db_dsn):
    await db.execute("ALTER TABLE pipeline_runs SET (autovacuum_enabled = false)")
    await db.execute("ALTER TABLE pipelines SET (autovacuum_enabled = false)")
    await db.execute("INSERT INTO pipelines (enterprise_id, id, name) "
                     "SELECT 'keeper', gen_random_uuid(), 'p' || g FROM generate_series(1, 60) g")
    await db.execute("SELECT pg_stat_force_next_flush()")
    runtime = await asyncpg.connect(as_runtime(db_dsn))  # what the service logs in as
    try:
        # Another process at it: this one leaves it (advisory lock 1706), nothing analyzed.
        async with db.transaction():
            await db.execute("SELECT pg_advisory_xact_lock(1706)")
            assert await statistics.analyze_stale(runtime) == []
        assert "pipelines" in await statistics.analyze_stale(runtime)
        analyzed = await db.fetchval(
            "SELECT last_analyze FROM pg_stat_user_tables WHERE relname = 'pipelines'")
        assert analyzed is not None
        # 60 rows analyzed: autovacuum's rule (50 + 10 % of the rows, by default) wants more
        # changes than the 5 below before the next analysis.
        await db.execute("UPDATE pipelines SET description = 'x' WHERE id IN "
                         "(SELECT id FROM pipelines WHERE enterprise_id = 'keeper' LIMIT 5)")
        await db.execute("SELECT pg_stat_force_next_flush()")
        assert "pipelines" not in await statistics.analyze_stale(runtime)
        assert await db.fetchval("SELECT last_analyze FROM pg_stat_user_tables "
                                 "WHERE relname = 'pipelines'") == analyzed
        # Due again, but analyzed less than autovacuum_naptime ago (a minute, by default):
        # no more often than autovacuum would.
        await db.execute("UPDATE pipelines SET description = 'y' WHERE enterprise_id = 'keeper'")
        await db.execute("SELECT pg_stat_force_next_flush()")
        assert "pipelines" not in await statistics.analyze_stale(runtime)
        assert await db.fetchval("SELECT n_mod_since_analyze FROM pg_stat_user_tables "
                                 "WHERE relname = 'pipelines'") >= 60
    finally:
        await runtime.close()
