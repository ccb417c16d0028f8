"""The replay scan reads the log in written order: any order of a run's events folds the same,
and a scan split into more run-id ranges (memory) finds what the one-range scan finds."""
from __future__ import annotations

import random
import uuid
from datetime import datetime, timedelta, timezone

import pytest

from service.app import replay as replay_module
from service.app import scan_parts
from service.app.replay import replay, verify
from service.domain import insights, lifecycle
from service.domain.insights import ALL_PIPELINES
from service.store import replay as sql

ALL_IDS = (uuid.UUID(int=0), uuid.UUID(int=2**128 - 1))


@pytest.fixture
def db_dsn(own_db):
    return own_db


async def _busy_runs(api, n: int) -> list[dict]:
    """Runs with stage-run moves and run moves, so each has several events."""
    pipeline = await api.pipeline(stages=("build", "test", "ship"))
    runs = []
    for k in range(n):
        run = await api.run(pipeline["id"])
        stage_runs = (await api.get(f"/runs/{run['id']}/stageruns/"))["results"]
        await api.put(f"/runs/{run['id']}/stageruns/{stage_runs[0]['id']}/",
                      {"status": "running"})
        if k % 2:  # cancels the run's other stage runs: a cascade of events
            await api.put(f"/runs/{run['id']}/stageruns/{stage_runs[1]['id']}/",
                          {"status": "cancelled"})
        runs.append(run)
    return runs


async def _log_rows(db) -> list[tuple]:
    async with db.transaction(isolation="repeatable_read", readonly=True):
        return [tuple(r) for r in await db.fetch(sql.EVENTS_IN_LOG_ORDER, *ALL_IDS)]


def _in_version_order(rows: list[tuple]) -> dict:
    runs: dict = {}
    for row in sorted(rows, key=lambda r: (r[0], r[1], r[2])):
        key = (row[0], row[1])
        runs[key] = lifecycle.step(runs.get(key), row[3], row[2], row[4], row[5], row[6],
                                   row[8], row[0], row[1], row[7])
    return runs


async def test_events_out_of_order_fold_as_in_version_order(api, db):
    await _busy_runs(api, 4)
    rows = await _log_rows(db)
    expected = _in_version_order(rows)
    assert len(rows) > 3 * len(expected)  # several events a run
    for seed in range(20):
        shuffled = rows[:]
        random.Random(seed).shuffle(shuffled)
        folds, early, irregular = {}, {}, set()
        for n in range(0, len(shuffled), 7):  # in batches, as the cursor hands them over
            replay_module._fold_events(shuffled[n:n + 7], folds, early, irregular)
        assert (early, irregular) == ({}, set())
        assert {key: run for key, (_, run) in folds.items()} == expected


async def test_a_repeated_or_missing_version_is_left_for_the_refold(api, db):
    await _busy_runs(api, 2)
    rows = await _log_rows(db)
    first, second = sorted({(r[0], r[1]) for r in rows}, key=str)
    repeated = [r for r in rows if (r[0], r[1]) == first and r[2] == 2]
    gap = [r for r in rows if not ((r[0], r[1]) == second and r[2] == 2)]
    folds, early, irregular = {}, {}, set()
    replay_module._fold_events(gap + repeated, folds, early, irregular)
    assert irregular == {first} and set(early) == {first, second}


async def test_verify_reports_a_missing_version_as_before(api, db, enterprise):
    """A gap in a run's versions: verify names the run (the fold is by sorted versions)."""
    pipeline = await api.pipeline()
    run = await api.move(await api.run(pipeline["id"]), "running")
    await db.execute("SET session_replication_role = replica")  # past run_heads' guard
    try:
        await db.execute(
            "INSERT INTO run_events (enterprise_id, pipeline_id, run_id, version, type,"
            " from_status, to_status, actor, occurred_at) VALUES ($1, $2, $3, 9,"
            " 'run.status_changed', 'running', 'waiting', 'mallory', now())",
            enterprise, uuid.UUID(pipeline["id"]), uuid.UUID(run["id"]))
    finally:
        await db.execute("RESET session_replication_role")
    scan = await verify(db)
    assert [str(k[1]) for k in scan.version_drifts] == [run["id"]]
    assert [(str(d.run_key[1]), d.fields) for d in scan.drifts] == [
        (run["id"], ["status", "updated_by", "updated_at", "version"])]


def test_ranges_grow_when_the_folds_do_not_fit():
    per_run = scan_parts.BYTES_PER_RUN
    assert scan_parts.ranges_for(1000, 2, 8192) == 2  # fits: one range a process
    runs = 3 * 2**20 // per_run  # 3 MB of folds
    assert scan_parts.ranges_for(runs, 1, 1) == 3
    assert scan_parts.ranges_for(runs, 2, 1) == 6  # each process has half of the memory
    assert scan_parts.ranges_for(10**9, 2, 1) == scan_parts.MAX_RANGES
    assert scan_parts.ranges_for(0, 1, 1) == 1


async def test_a_log_never_analyzed_is_still_split(api, db, db_dsn, monkeypatch):
    """Right after a bulk load (seed) the tables have no statistics yet (reltuples -1, which
    the estimate read as 0: one process and one range for a million runs); the planner's
    estimate sees the relation's size, so the scan is still split."""
    await _busy_runs(api, 3)
    assert await db.fetchval("""
        SELECT bool_and(c.reltuples < 0) FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
        WHERE i.inhparent = 'run_events'::regclass AND pg_relation_size(c.oid) > 0""")
    monkeypatch.setattr(scan_parts, "MIN_EVENTS_PER_PART", 1)
    monkeypatch.setattr(scan_parts.os, "cpu_count", lambda: 2)
    assert await scan_parts.count_parts(db, db_dsn) == 2
    assert await sql.estimated_rows(db, sql.ESTIMATED_RUNS) >= 3


async def test_a_scan_in_many_ranges_is_the_scan_in_one(api, db, db_dsn, monkeypatch):
    runs = await _busy_runs(api, 8)
    await db.execute("UPDATE pipeline_runs SET run_number = 77 WHERE id = $1",
                     uuid.UUID(runs[3]["id"]))
    await db.execute("ANALYZE pipeline_runs")  # the estimate the plan reads
    whole = await verify(db)
    monkeypatch.setattr(scan_parts, "BYTES_PER_RUN", 2**20)  # 8 runs: 8 MB of folds
    monkeypatch.setattr(scan_parts, "parts_for", lambda events, cpus: 2)
    split = await verify(db, db_dsn, memory_mb=2)
    assert (whole.parts, whole.ranges) == (1, 1) and split.parts == 2 and split.ranges >= 4
    assert (split.events, split.runs, split.heads) == (whole.events, whole.runs, whole.heads)
    assert [(str(d.run_key[1]), d.fields) for d in split.drifts] == \
        [(str(d.run_key[1]), d.fields) for d in whole.drifts] == [(runs[3]["id"], ["run_number"])]
    assert (await replay(db, db_dsn, memory_mb=2)).repaired == 1
    assert (await verify(db, db_dsn, memory_mb=2)).clean


async def test_counter_tables_compare_alike_in_one_process_and_split(api, db, db_dsn,
                                                                     monkeypatch, enterprise):
    """A row changed behind the log's back with the insights' row trigger on (as replay's
    patches write) moves the counter tables with it: verify names the counters the events disagree with, the same whole or split
    across processes and ranges; replay puts all back. (The enterprise's insights periods
    count as closed, its watermark ahead, so its changes move the running totals too.)"""
    await db.execute("INSERT INTO run_insights_closed VALUES "
                     "($1, insights_period(now()) + interval '366 days')", enterprise)
    runs = await _busy_runs(api, 6)
    async with db.transaction():  # as replay's patches write: the row trigger on
        await db.execute("SET LOCAL insights.by_trigger = 'on'")
        await db.execute("UPDATE pipeline_runs SET status = 'timeout', ended_at = now() "
                         "WHERE id = $1", uuid.UUID(runs[2]["id"]))
    await db.execute("UPDATE run_insights SET n = n + 2 WHERE ctid = "
                     "(SELECT min(ctid) FROM run_insights)")
    await db.execute("ANALYZE pipeline_runs")
    whole = await verify(db)
    monkeypatch.setattr(scan_parts, "BYTES_PER_RUN", 2**20)
    monkeypatch.setattr(scan_parts, "parts_for", lambda events, cpus: 2)
    split = await verify(db, db_dsn, memory_mb=2)
    assert split.parts == 2 and split.ranges >= 4

    def counters(scan):
        return ([(d.key, d.expected, d.actual) for d in scan.counter_drifts],
                [(d.table, d.key, d.expected, d.actual) for d in scan.insight_drifts],
                scan.counter_errors, scan.insight_errors)

    assert counters(split) == counters(whole)
    # The changed run's keys under its pipeline, and the running totals of its pipeline and
    # of the rollup; the row set by hand is an error of the table itself (the projection
    # rows do not explain it).
    assert {str(d.key[2]) for d in whole.insight_drifts} >= {runs[2]["pipeline_id"]}
    assert [(d.key, d.fields) for d in split.total_drifts] == [
        (d.key, d.fields) for d in whole.total_drifts]
    assert {str(d.key[1]) for d in whole.total_drifts} >= {runs[2]["pipeline_id"],
                                                           str(ALL_PIPELINES)}
    assert list(whole.insight_errors["run_insights"].values()) == [2]
    assert [str(d.run_key[1]) for d in whole.drifts] == [runs[2]["id"]]
    report = await replay(db, db_dsn, memory_mb=2)
    assert report.repaired == 1 and report.insights_repaired >= 1
    assert (await verify(db, db_dsn, memory_mb=2)).clean


async def test_a_runs_insight_cells_are_sqls_run_insight_keys(db):
    """The Python twin replay counts with (hours as numbers) against the SQL the trigger
    counts with (a run's keys under its pipeline: run_insight_deltas): times on and just
    off the hour and the day, in other time zones."""
    pipeline = uuid.uuid4()
    rng = random.Random(7)
    base = datetime(2026, 3, 1, tzinfo=timezone.utc)
    cases = []
    for n in range(300):
        created = base + timedelta(hours=rng.randrange(0, 2000),
                                   microseconds=rng.choice((0, 1, 3_599_999_999,
                                                            rng.randrange(3_600_000_000))))
        if n % 3 == 0:
            created = created.astimezone(timezone(timedelta(hours=rng.randint(-11, 12))))
        started = (None if n % 5 == 0 else
                   created + timedelta(microseconds=rng.choice((0, 1, rng.randrange(10**11)))))
        status = rng.choice(("running", "success", "failure", "cancelled", "invalid", "timeout"))
        ended = (None if status == "running" else
                 (started or created) + timedelta(microseconds=rng.randrange(10**10)))
        cases.append((created, started, ended, status))
    for created, started, ended, status in cases:
        want = sorted(tuple(r) for r in await db.fetch(
            "SELECT hour, $1::uuid, metric, bin FROM run_insight_keys($2, $3, $4, $5)",
            pipeline, created, started, ended, status))
        got = sorted((insights.hour_at(h), group, metric, bin_)
                     for group, cells in insights.run_groups(pipeline, created, started, ended,
                                                             status)
                     for h, metric, bin_ in cells)
        assert got == want, (created, started, ended, status)


def test_the_folds_counts_are_the_unchanged_runs_and_the_others_folds_together():
    counts = replay_module._Counts()
    pipeline, other = uuid.uuid4(), uuid.uuid4()
    at = datetime(2026, 5, 4, 3, 2, 1, tzinfo=timezone.utc)
    counts.both.add("e", pipeline, "success", at, at, at + timedelta(hours=1))
    assert counts.folded(0) is counts.both.tables[0]  # nothing apart: no copy
    counts.expected.add("e", pipeline, "success", at, None, at)
    counts.expected.add("e", other, "failure", at, None, at)
    counts.projected.add("e", pipeline, "running", at, at, None)  # not the fold's
    assert counts.folded(0) == {("e", pipeline): {("success",): 2},
                                ("e", other): {("failure",): 1}}
    assert counts.both.tables[0] == {("e", pipeline): {("success",): 1}}  # left as it was
