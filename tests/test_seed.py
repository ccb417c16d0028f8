"""`python -m service seed`: legal, consistent histories straight into the store, at small scale."""
from __future__ import annotations

import subprocess
import sys
from collections import Counter

import pytest

from service.domain import lifecycle
from service.app.replay import verify
from service.app.seed import seed
from tests.helpers import make_token, as_runtime


@pytest.fixture
def db_dsn(own_db):
    return own_db


async def test_seed_counts_verify_and_api(db, api_for_enterprise):
    report = await seed(db, "seeded", pipelines=5, runs=200, batch=64, seed=7)
    assert (report.pipelines, report.runs) == (5, 200)

    # Every run has one stream, versions 1..n, starting with run.created.
    streams = await db.fetch("""
        SELECT run_id, array_agg(version ORDER BY version) AS versions,
               array_agg(type ORDER BY version) AS types,
               bool_and(occurred_at IS NOT NULL) AS timed
        FROM run_events WHERE enterprise_id = 'seeded' GROUP BY run_id""")
    assert len(streams) == 200
    for s in streams:
        assert s["versions"] == list(range(1, len(s["versions"]) + 1))
        assert s["types"][0] == lifecycle.RUN_CREATED
    assert sum(len(s["versions"]) for s in streams) == report.events
    # Within a run, time never goes back as versions go up.
    assert await db.fetchval("""
        SELECT count(*) FROM (
            SELECT occurred_at < lag(occurred_at) OVER (PARTITION BY run_id ORDER BY version) AS back
            FROM run_events WHERE enterprise_id = 'seeded') t WHERE back""") == 0

    deleted = sum(1 for s in streams if s["types"][-1] == lifecycle.RUN_DELETED)
    live = await db.fetchval("SELECT count(*) FROM pipeline_runs WHERE enterprise_id = 'seeded'")
    assert live == report.live_runs == 200 - deleted
    assert await db.fetchval(
        "SELECT count(*) FROM stage_runs WHERE enterprise_id = 'seeded'") == report.stage_runs

    # A mix of lifecycles, every status reached through legal moves only.
    statuses = Counter(r["status"] for r in await db.fetch(
        "SELECT status FROM pipeline_runs WHERE enterprise_id = 'seeded'"))
    assert {"success", "failure", "cancelled", "invalid"} <= set(statuses)
    moves = await db.fetch("""
        SELECT type, from_status, to_status FROM run_events
        WHERE enterprise_id = 'seeded' AND type <> 'run.created' AND type <> 'run.deleted'""")
    for m in moves:
        table = (lifecycle.RUN_TRANSITIONS if m["type"] == lifecycle.RUN_STATUS_CHANGED
                 else lifecycle.STAGE_RUN_TRANSITIONS)
        assert lifecycle.is_legal(m["from_status"], m["to_status"], table), dict(m)
    assert await db.fetchval("""
        SELECT count(*) FROM run_events WHERE enterprise_id = 'seeded' AND actor = 'system'""") > 0

    # Run numbers are 1..n per pipeline, and the pipeline knows its last one.
    numbering = await db.fetch("""
        SELECT p.last_run_number, count(*) AS runs, max((e.data->>'run_number')::int) AS top
        FROM pipelines p JOIN run_events e
          ON e.enterprise_id = p.enterprise_id AND e.pipeline_id = p.id AND e.version = 1
        WHERE p.enterprise_id = 'seeded' GROUP BY p.id, p.last_run_number""")
    assert all(r["last_run_number"] == r["runs"] == r["top"] for r in numbering)

    # The projection is the fold of the events: verify finds nothing to repair.
    result = await verify(db)
    assert result.drifts == []

    # And the API serves them.
    api = await api_for_enterprise("seeded")
    listed = await api.get("/runs/?limit=1000")
    assert listed["count"] == live
    one = listed["results"][0]
    got = await api.get(f"/pipelines/{one['pipeline_id']}/runs/{one['id']}/")
    assert got["version"] == one["version"]
    history = await api.get(f"/pipelines/{one['pipeline_id']}/runs/{one['id']}/events/")
    assert history["count"] == one["version"]


async def test_seed_is_deterministic_and_keeps_the_feed_in_time_order(db):
    first = await seed(db, "det-a", pipelines=3, runs=50, batch=50, seed=3)
    second = await seed(db, "det-b", pipelines=3, runs=50, batch=50, seed=3)
    assert first.outcomes == second.outcomes and first.events == second.events
    # One batch: positions follow event time.
    assert await db.fetchval("""
        SELECT count(*) FROM (
            SELECT occurred_at < lag(occurred_at) OVER (ORDER BY position) AS back
            FROM run_events WHERE enterprise_id = 'det-a') t WHERE back""") == 0


def test_cli_seed_then_verify(db_dsn):
    env = {"DATABASE_URL": as_runtime(db_dsn), "PATH": "/usr/bin:/bin"}
    cli = [sys.executable, "-m", "service"]
    done = subprocess.run([*cli, "seed", "--enterprise", "cli", "--pipelines", "2", "--runs", "30"],
                          env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "seeded enterprise cli: 2 pipelines, 30 runs" in done.stdout
    checked = subprocess.run([*cli, "verify"], env=env, capture_output=True, text=True, timeout=120)
    assert checked.returncode == 0 and "0 drifted" in checked.stdout, checked.stdout


@pytest.fixture
def api_for_enterprise(client, db):
    from tests.helpers import Api

    async def make(enterprise: str) -> Api:
        return Api(client, await make_token(db, enterprise))

    return make


async def test_the_seed_analyzes_the_tables_it_loads_as_they_grow(db):
    # A bulk load outruns autovacuum (or runs where it is off, as on CI machines): without
    # row estimates a batch's statements took minutes at 320,000 runs.
    before = await db.fetchval("SELECT last_analyze FROM pg_stat_user_tables"
                               " WHERE relname = 'pipeline_runs'")
    await seed(db, "analyzed", pipelines=2, runs=120, batch=40, seed=5)
    rows = await db.fetch("SELECT relname, last_analyze FROM pg_stat_user_tables"
                          " WHERE relname = ANY($1)",
                          ["pipeline_runs", "run_insights", "run_recoveries"])
    assert len(rows) == 3 and all(r["last_analyze"] is not None for r in rows), rows
    assert before is None or min(r["last_analyze"] for r in rows) > before


def test_cli_seed_as_the_runtime_role_analyzes_through_the_owner(db_dsn):
    # The runtime role may not ANALYZE the tables it loads (PostgreSQL skips them with a
    # warning): the seed asks MIGRATE_DATABASE_URL's owner, so later batches plan on
    # estimates of the tables as they are.
    env = {"DATABASE_URL": as_runtime(db_dsn), "MIGRATE_DATABASE_URL": db_dsn,
           "PATH": "/usr/bin:/bin"}
    done = subprocess.run([sys.executable, "-m", "service", "seed", "--enterprise", "owned",
                           "--pipelines", "2", "--runs", "60", "--batch", "20"],
                          env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "skipping" not in done.stderr, done.stderr
    rows = subprocess.run(
        ["psql", db_dsn, "-Atc", "SELECT count(*) FROM pg_stat_user_tables WHERE relname IN "
         "('pipeline_runs', 'run_insights', 'run_recoveries') AND last_analyze IS NOT NULL"],
        capture_output=True, text=True, timeout=30)
    assert rows.stdout.strip() == "3", rows


async def test_a_seed_behind_the_watermark_rebuilds_the_running_totals(db):
    # The seeder closes hours only up to its batch's last creation, so its batches never
    # reach back by themselves; when something else has closed them (the service's
    # sweeper, here up to the current hour), every batch lands in closed hours and must
    # rebuild the running totals it reaches, its recoveries included.
    await db.execute("INSERT INTO run_insights_closed VALUES ('behind', insights_hour(now()))")
    report = await seed(db, "behind", pipelines=3, runs=240, batch=60, seed=11)
    assert report.outcomes["failure"] > 0 and report.outcomes["success"] > 0
    assert await db.fetchval("SELECT count(*) FROM run_recoveries "
                             "WHERE enterprise_id = 'behind'") > 0
    assert await db.fetchval("SELECT count(*) FROM run_insights_totals "
                             "WHERE enterprise_id = 'behind'") > 0
    result = await verify(db)
    assert result.drifts == []
