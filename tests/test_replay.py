"""Replay and verify: the fold of the events equals the live projection, and repairs it."""
from __future__ import annotations

import asyncio
import subprocess
import sys
import uuid

import asyncpg
import pytest

from service.app import scan_parts
from tests.helpers import as_runtime
from service.infra.db import init_connection
from service.app.replay import replay, verify
from service.store import pipelines as pipeline_store
from service.app import runs as run_cases
from service.app.context import Actor, OnConnection


@pytest.fixture
def db_dsn(own_db):
    return own_db


PROJECTION = "SELECT * FROM pipeline_runs ORDER BY enterprise_id, id"


async def _connect(dsn: str) -> asyncpg.Connection:
    conn = await asyncpg.connect(dsn)
    await init_connection(conn)
    return conn


# The property (replay equals the live projection of concurrent writes) is
# tests/test_replay_property.py.


async def test_tampered_row_fails_verify_and_replay_repairs_it(api, db):
    pipeline = await api.pipeline()
    run = await api.run(pipeline["id"])
    await api.move(run, "running")
    ghost = await api.run(pipeline["id"])
    live = await db.fetch(PROJECTION)
    await db.execute("UPDATE pipeline_runs SET status = 'success', ended_at = now() WHERE id = $1",
                     uuid.UUID(run["id"]))
    await db.execute("DELETE FROM pipeline_runs WHERE id = $1", uuid.UUID(ghost["id"]))

    result = await verify(db)
    drifted = {str(d.run_key[1]): d.fields for d in result.drifts}
    assert drifted == {run["id"]: ["status", "ended_at"], ghost["id"]: ["<row missing>"]}

    report = await replay(db)
    assert report.repaired == 2
    assert await db.fetch(PROJECTION) == live
    assert (await verify(db)).drifts == []
    assert (await api.get(f"/pipelines/{pipeline['id']}/runs/{run['id']}/"))["status"] == "running"


async def test_row_without_events_is_removed(api, db, enterprise):
    pipeline = await api.pipeline()
    await db.execute(
        "INSERT INTO pipeline_runs (enterprise_id, id, pipeline_id, run_number, status, "
        "created_at, updated_at, version, deadline) "
        "VALUES ($1, $2, $3, 99, 'running', now(), now(), 1, now())",
        enterprise, uuid.uuid4(), uuid.UUID(pipeline["id"]))
    assert [d.fields for d in (await verify(db)).drifts] == [["<row not explained by events>"]]
    await replay(db)
    assert (await verify(db)).drifts == []
    assert (await api.get(f"/pipelines/{pipeline['id']}/runs/"))["count"] == 0


@pytest.mark.parametrize("split", [False, True], ids=["one process", "two processes"])
async def test_replay_while_writes_go_on(api, db, db_dsn, split, monkeypatch):
    if split:
        monkeypatch.setattr(scan_parts, "parts_for", lambda events, cpus: 2)
    pipeline = await api.pipeline()
    failures: list[str] = []

    async def writer():
        for _ in range(25):
            run = await api.run(pipeline["id"])
            await api.move(run, "running", "waiting", "running", "complete", "failure")

    async def replays():
        conn = await _connect(db_dsn)
        try:
            for _ in range(4):
                await replay(conn, db_dsn if split else None)
        finally:
            await conn.close()

    try:
        await asyncio.gather(writer(), writer(), replays())
    except AssertionError as exc:  # a request that failed during replay
        failures.append(str(exc))
    assert failures == []
    assert (await verify(db)).drifts == []
    listed = await api.get(f"/pipelines/{pipeline['id']}/runs/?limit=100")
    assert listed["count"] == 50 and {r["status"] for r in listed["results"]} == {"failure"}


def test_cli_verify_and_replay(db_dsn):
    async def tamper():
        conn = await _connect(db_dsn)
        try:
            pipeline = await pipeline_store.create_pipeline(conn, "cli", 1, {"name": "p"})
            run = await run_cases.create(OnConnection(conn), Actor("cli", "cli", 1), pipeline["id"])
            await conn.execute("UPDATE pipeline_runs SET run_number = 42 WHERE id = $1", run["id"])
            return run["id"]
        finally:
            await conn.close()

    run_id = asyncio.run(tamper())
    env = {"DATABASE_URL": as_runtime(db_dsn), "PATH": "/usr/bin:/bin"}
    cli = [sys.executable, "-m", "service"]
    bad = subprocess.run([*cli, "verify"], env=env, capture_output=True, text=True, timeout=60)
    assert bad.returncode == 1, bad.stderr
    assert f"DRIFT run {run_id} (enterprise cli): run_number" in bad.stdout
    fixed = subprocess.run([*cli, "replay"], env=env, capture_output=True, text=True, timeout=60)
    assert fixed.returncode == 0, fixed.stderr
    assert "replayed 2 events of 1 runs" in fixed.stdout  # created, then invalid: no stages and "events/s" in fixed.stdout
    good = subprocess.run([*cli, "verify"], env=env, capture_output=True, text=True, timeout=60)
    assert good.returncode == 0 and "0 drifted" in good.stdout


def test_parts_cover_every_run_id_once():
    assert scan_parts.bounds(1) == [(uuid.UUID(int=0), uuid.UUID(int=2**128 - 1))]
    (low, mid), (above, high) = scan_parts.bounds(2)
    assert (low.int, mid.int + 1, above.int, high.int) == (0, 2**127, 2**127, 2**128 - 1)
    assert scan_parts.parts_for(10, 2) == 1 and scan_parts.parts_for(10**7, 2) == 2
    assert scan_parts.parts_for(10**7, 1) == 1


async def test_split_scan_sees_every_run_in_one_snapshot(api, db, db_dsn, monkeypatch):
    """Two processes, one exported snapshot: every run is folded once, drifts in either
    half are found and repaired, and the result is the one-process scan's."""
    pipeline = await api.pipeline(stages=("build", "test"))
    runs = []
    while len({uuid.UUID(r["id"]).int >> 127 for r in runs}) < 2 or len(runs) < 6:
        run = await api.run(pipeline["id"])
        stage_runs = (await api.get(f"/runs/{run['id']}/stageruns/"))["results"]
        await api.put(f"/runs/{run['id']}/stageruns/{stage_runs[0]['id']}/",
                      {"status": "running"})
        runs.append(run)
    lower = next(r for r in runs if uuid.UUID(r["id"]).int >> 127 == 0)
    upper = next(r for r in runs if uuid.UUID(r["id"]).int >> 127 == 1)
    await db.execute("UPDATE pipeline_runs SET run_number = 99 WHERE id = $1",
                     uuid.UUID(lower["id"]))
    await db.execute("UPDATE stage_runs SET status = 'success' WHERE run_id = $1",
                     uuid.UUID(upper["id"]))
    one = await verify(db)
    monkeypatch.setattr(scan_parts, "parts_for", lambda events, cpus: 2)
    two = await verify(db, db_dsn)

    assert (one.parts, two.parts) == (1, 2)
    drifted = {str(d.run_key[1]): d.fields for d in two.drifts}
    assert drifted == {lower["id"]: ["run_number"], upper["id"]: ["stage_runs"]}
    assert (two.events, two.runs, two.heads) == (one.events, one.runs, one.heads)
    assert two.events == await db.fetchval("SELECT count(*) FROM run_events")
    assert sorted(d.run_key for d in two.drifts) == sorted(d.run_key for d in one.drifts)
    assert two.counter_drifts == one.counter_drifts == []

    report = await replay(db, db_dsn)
    assert report.repaired == 2
    assert (await verify(db, db_dsn)).clean
    assert (await api.get(f"/pipelines/{pipeline['id']}/runs/{lower['id']}/"))["run_number"] \
        == lower["run_number"]


def test_scan_lines_up_stage_run_arrays_in_ordinal_order_whatever_order_they_came_in():
    # The scan's stage-run arrays are aggregated without a sort of their own: rows that came
    # out of ordinal order are sorted, each row's columns staying together.
    from service.app import replay as replay_module
    from service.store import replay as replay_sql

    columns = replay_sql.STAGE_RUN_ARRAY_COLUMNS
    rows = [tuple(f"{c}-{n}" if c != "ordinal" else n for c in columns) for n in (3, 1, 2)]
    record = (None,) * replay_sql.STAGE_RUNS_AT + tuple(list(col) for col in zip(*rows))
    by_ordinal = sorted(rows, key=lambda row: row[columns.index("ordinal")])
    assert replay_module._stage_rows(record) == by_ordinal
    none = (None,) * (replay_sql.STAGE_RUNS_AT + len(columns))  # a run without stage runs
    assert replay_module._stage_rows(none) == []
