"""The insights' write path, kept by the writing statements themselves (store/append.py
INSIGHTS): many runs of a pipeline changed by one statement (of one or two
enterprises), by a group commit, in a transaction with a rolled-back savepoint, and deletes
reaching back over many periods leave run_insights, the running totals and the recoveries
equal to a computation over the runs table; replay rebuilds them byte for byte; a change
that moves no key, or moves keys of the open hours only and no outcome, calls none of the
upkeep's functions (the trigger, the rest, the running totals; the watermark's read aside)."""
from __future__ import annotations

import asyncio
import struct
from collections import Counter, defaultdict
from datetime import datetime, timedelta

import pytest

from service.app import runs as app_runs
from service.app.context import Actor, OnConnection
from service.app.replay import replay, verify
from service.domain import lifecycle
from service.domain.insights import ALL_PIPELINES
from service.store import moves, pipelines, runs as store_runs
from service.web.keys import GROUP_COMMIT
from tests.test_insights import db_dsn, seeded  # noqa: F401 (fixtures)

COLUMNS = ("created", "success", "failure", "timeout", "invalid", "cancelled")
# The hourly keys recomputed from the runs as they are (not from the projection).
KEYS_FROM_RUNS = """
SELECT r.pipeline_id, k.hour, k.metric, k.bin, count(*) AS n
FROM pipeline_runs r,
     LATERAL run_insight_keys(r.created_at, r.started_at, r.ended_at, r.status) AS k
WHERE r.enterprise_id = $1 GROUP BY 1, 2, 3, 4
"""
STORED_KEYS = """
SELECT pipeline_id, hour, metric, bin, n FROM run_insights WHERE enterprise_id = $1 AND n <> 0
"""
TOTALS = """
SELECT pipeline_id, at, created, success, failure, timeout, invalid, cancelled, recovered,
       recovered_micros, duration, queue
FROM run_insights_totals WHERE enterprise_id = $1
"""
# The recoveries recomputed whole from the runs (a success ending a failure streak).
RECOVERIES_FROM_RUNS = """
SELECT pipeline_id, recovered_at, failed_at FROM (
    SELECT pipeline_id, min(ended_at) FILTER (WHERE status <> 'success') AS failed_at,
           min(ended_at) FILTER (WHERE status = 'success') AS recovered_at
    FROM (SELECT r.*, count(*) FILTER (WHERE r.status = 'success') OVER (
                 PARTITION BY r.pipeline_id ORDER BY r.ended_at, r.id
                 ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING) AS streak
          FROM pipeline_runs r
          WHERE r.enterprise_id = $1 AND r.status IN ('success', 'failure', 'timeout')) t
    GROUP BY pipeline_id, streak) g
WHERE failed_at IS NOT NULL AND recovered_at IS NOT NULL
"""


def _period(at: datetime) -> datetime:
    """The 6-hour period (UTC, from midnight) holding `at` (insights_period)."""
    return at.replace(hour=at.hour - at.hour % 6, minute=0, second=0, microsecond=0)


async def _closed_ahead(db, *enterprises) -> None:
    """Every period counts as closed for these enterprises (their watermark a year ahead):
    each change then moves the running totals, as one reaching back before the watermark
    does, which is the path these tests exercise."""
    await db.execute("INSERT INTO run_insights_closed SELECT e, insights_period(now()) "
                     "+ interval '366 days' FROM unnest($1::text[]) AS e", list(enterprises))


async def _expected_totals(db, enterprise) -> dict:
    """Running totals per (pipeline or rollup, period) folded here from the runs' keys and
    recoveries before the watermark (closed hours): only periods with something of their
    own."""
    through = await db.fetchval("SELECT through FROM run_insights_closed "
                                "WHERE enterprise_id = $1", enterprise)
    if through is None:
        return {}
    own: dict = defaultdict(lambda: defaultdict(int))
    for r in await db.fetch(KEYS_FROM_RUNS, enterprise):
        if r["hour"] >= through:
            continue
        for p in (r["pipeline_id"], ALL_PIPELINES):
            own[(p, _period(r["hour"]))][(r["metric"], r["bin"])] += r["n"]
    for r in await db.fetch(RECOVERIES_FROM_RUNS, enterprise):
        micros = (r["recovered_at"] - r["failed_at"]) // timedelta(microseconds=1)
        if r["recovered_at"] >= through:
            continue
        for p in (r["pipeline_id"], ALL_PIPELINES):
            own[(p, _period(r["recovered_at"]))][("recovered", 0)] += 1
            own[(p, _period(r["recovered_at"]))][("recovered_micros", 0)] += micros
    totals, running = {}, defaultdict(lambda: defaultdict(int))
    for (p, at) in sorted(own, key=lambda k: (str(k[0]), k[1])):
        for key, n in own[(p, at)].items():
            running[p][key] += n
        totals[(p, at)] = {k: v for k, v in running[p].items() if v}
    return totals


def _stored(row) -> dict:
    got = {(c, 0): row[c] for c in COLUMNS + ("recovered", "recovered_micros")}
    for metric in ("duration", "queue"):  # bytes: the first bin, then big-endian int4 counts
        stored = row[metric]
        if stored:
            lo, *hist = struct.unpack(f">{len(stored) // 4}i", stored)
            got.update({(metric, lo + i): n for i, n in enumerate(hist)})
    return {k: v for k, v in got.items() if v}


async def _assert_exact(db, enterprise) -> None:
    keys = {tuple(r.values())[:4]: r["n"] for r in map(dict, await db.fetch(
        KEYS_FROM_RUNS, enterprise))}
    assert {tuple(r.values())[:4]: r["n"] for r in map(dict, await db.fetch(
        STORED_KEYS, enterprise))} == keys
    stored = {(r["pipeline_id"], r["at"]): _stored(r)
              for r in await db.fetch(TOTALS, enterprise)}
    expected = await _expected_totals(db, enterprise)
    assert stored == expected
    assert sorted(tuple(r) for r in await db.fetch(
        "SELECT pipeline_id, recovered_at, failed_at FROM run_recoveries "
        "WHERE enterprise_id = $1", enterprise)) == sorted(
        tuple(r) for r in await db.fetch(RECOVERIES_FROM_RUNS, enterprise))
    assert (await verify(db)).clean


async def _replay_is_byte_for_byte(db, enterprise) -> None:
    before = await db.fetch("SELECT * FROM run_insights_totals ORDER BY 1, 2, 3")
    await db.execute("DELETE FROM run_insights_totals WHERE enterprise_id = $1", enterprise)
    await replay(db)
    assert await db.fetch("SELECT * FROM run_insights_totals ORDER BY 1, 2, 3") == before


async def _create(db, enterprise, pipeline_id, n: int) -> list:
    made = []
    for _ in range(n):
        run, _ = await store_runs.create_run(db, enterprise, pipeline_id, "pending", "t", None,
                                             lifecycle.RUN_CREATED, {}, 3600, 3600)
        made.append(run["id"])
    return made


def _changes(enterprise, pipeline_id, ids, targets) -> list:
    return [moves.StatusChange(enterprise, pipeline_id, i, t, "t", None, {})
            for i, t in zip(ids, targets)]


ENDS = ("failure", "timeout", "success", "failure", "success", "success", "timeout")


async def _end(db, enterprise, pipeline_id, ids, targets) -> None:
    """The general path (terminal statuses are not simple moves), in the caller's
    transaction when it has one."""
    actor = Actor(enterprise, "t", None)
    for run_id, target in zip(ids, targets):
        for step in (("complete", target) if target in ("success", "failure") else (target,)):
            await app_runs.change_status(OnConnection(db), actor, pipeline_id, run_id, step)


async def test_many_runs_of_a_pipeline_in_one_statement_and_one_transaction(db, enterprise):
    await _closed_ahead(db, enterprise)
    pipeline = await pipelines.create_pipeline(db, enterprise, 1, {"name": "many"})
    other = await pipelines.create_pipeline(db, enterprise, 1, {"name": "other"})
    async with db.transaction():  # 25 creates of two pipelines: one pass at commit
        ids = await _create(db, enterprise, pipeline["id"], 20)
        others = await _create(db, enterprise, other["id"], 5)
    # one statement starts 25 runs of two pipelines (each a queue key)
    done = await moves.change_statuses(
        db, _changes(enterprise, pipeline["id"], ids, ["running"] * len(ids))
        + _changes(enterprise, other["id"], others, ["running"] * len(others)))
    assert all(r["changed"] for r in done)
    await _assert_exact(db, enterprise)
    async with db.transaction():  # one transaction ends 20: failures, timeouts, successes
        await _end(db, enterprise, pipeline["id"], ids,
                   [ENDS[i % len(ENDS)] for i in range(len(ids))])
    assert await db.fetchval("SELECT count(*) FROM run_recoveries WHERE enterprise_id = $1",
                             enterprise) >= 3
    await _assert_exact(db, enterprise)
    async with db.transaction():  # deletes (recoveries recomputed) and the other's ends
        for run_id in ids[1:4]:
            await app_runs.delete(OnConnection(db), Actor(enterprise, "t", None),
                                  pipeline["id"], run_id)
        await _end(db, enterprise, other["id"], others, ["success", "failure"] * 3)
    await _assert_exact(db, enterprise)
    await _replay_is_byte_for_byte(db, enterprise)


async def test_a_rolled_back_savepoint_takes_its_changes_out_of_the_pass(db, enterprise):
    await _closed_ahead(db, enterprise)
    pipeline = await pipelines.create_pipeline(db, enterprise, 1, {"name": "sp"})
    async with db.transaction():
        ids = await _create(db, enterprise, pipeline["id"], 12)
        await moves.change_statuses(db, _changes(enterprise, pipeline["id"], ids,
                                                 ["running"] * 12))
        with pytest.raises(RuntimeError):
            async with db.transaction():  # a savepoint: its changes and notes go back
                await _end(db, enterprise, pipeline["id"], ids[:6], ["failure", "success"] * 3)
                await _create(db, enterprise, pipeline["id"], 4)
                raise RuntimeError("rolled back")
        async with db.transaction():  # a released savepoint: its notes stay
            await _end(db, enterprise, pipeline["id"], ids[6:], ["timeout", "success"] * 3)
    assert await db.fetchval("SELECT count(*) FROM pipeline_runs WHERE enterprise_id = $1",
                             enterprise) == 12
    assert await db.fetchval("SELECT sum(created) FROM run_insights_totals "
                             "WHERE enterprise_id = $1 AND pipeline_id = $2",
                             enterprise, ALL_PIPELINES) == 12
    await _assert_exact(db, enterprise)
    # a transaction rolled back whole leaves nothing behind either
    with pytest.raises(RuntimeError):
        async with db.transaction():
            await _end(db, enterprise, pipeline["id"], ids[:6], ["success"] * 6)
            raise RuntimeError("rolled back")
    await _assert_exact(db, enterprise)
    await _replay_is_byte_for_byte(db, enterprise)


async def test_a_group_commit_of_starts_stays_exact(api, client, db, enterprise):
    """Group commit takes the simple moves: pending -> running stamps started_at (a queue
    key) for many runs of one pipeline in one statement."""
    await _closed_ahead(db, enterprise)
    pipeline = await api.pipeline()
    runs = [await api.run(pipeline["id"]) for _ in range(30)]
    group = client.server.app[GROUP_COMMIT]
    before = group.groups
    moved = await asyncio.gather(*(
        api.put(f"/pipelines/{r['pipeline_id']}/runs/{r['id']}/", {"status": "running"})
        for r in runs))
    assert {m["status"] for m in moved} == {"running"}
    assert group.groups > before  # some of them were committed together
    await asyncio.gather(*(api.move(r, "complete", "success" if i % 3 else "failure")
                           for i, r in enumerate(runs)))
    await _assert_exact(db, enterprise)
    await _replay_is_byte_for_byte(db, enterprise)


async def test_each_run_moves_its_rows_once_and_a_flip_fires_nothing(db, enterprise):
    """The upkeep is the statement's: 25 runs of two pipelines started by one statement
    reaching back (the watermark ahead) are one call of run_insights_rest, which moves each
    pipeline's running total and the rollup's in one run_insights_totals_add per pipeline,
    and the row trigger stays out; flipping them running -> waiting moves no key and calls
    nothing."""
    await _closed_ahead(db, enterprise)
    many = await pipelines.create_pipeline(db, enterprise, 1, {"name": "many"})
    few = await pipelines.create_pipeline(db, enterprise, 1, {"name": "few"})
    async with db.transaction():
        ids = await _create(db, enterprise, many["id"], 20)
        others = await _create(db, enterprise, few["id"], 5)
    async with db.transaction():
        await db.execute("SET LOCAL track_functions = 'all'")
        before = await _calls(db)
        await moves.change_statuses(
            db, _changes(enterprise, many["id"], ids, ["running"] * len(ids))
            + _changes(enterprise, few["id"], others, ["running"] * len(others)))
        assert await _calls(db) - before == Counter({"run_insights_rest": 1,
                                                     "run_insights_totals_add": 2})
    await _assert_exact(db, enterprise)
    async with db.transaction():
        await db.execute("SET LOCAL track_functions = 'all'")
        before = await _calls(db)
        done = await moves.change_statuses(
            db, _changes(enterprise, many["id"], ids, ["waiting"] * len(ids)))
        assert all(r["changed"] for r in done)
        assert await _calls(db) - before == Counter()
    await _assert_exact(db, enterprise)


def test_a_simple_move_moves_a_key_only_by_stamping_a_start_or_an_end():
    """What moves.py's run_states relies on: no simple move leaves an outcome, entering one
    stamps ended_at, and only starts and ends stamp (KEY_TARGETS: the statement that keeps
    the keys)."""
    assert not [m for m in moves.LEGAL_MOVES if m.split(">")[0] in lifecycle.TERMINAL]
    assert all(lifecycle.stamps_ended(t) for t in lifecycle.TERMINAL)
    assert moves.KEY_TARGETS == {t for t in lifecycle.SIMPLE_RUN_TARGETS
                                 if lifecycle.stamps_started(t) or lifecycle.stamps_ended(t)}


async def _calls(db) -> Counter:
    """The insights functions' calls this backend counted and has not reported yet
    (pg_stat_xact_user_functions: they may include earlier transactions'; compare two)."""
    return Counter(dict(await db.fetch(
        "SELECT funcname, calls FROM pg_stat_xact_user_functions WHERE funcname IN "
        "('run_insights_row', 'run_insights_rest', 'run_insights_totals_add')")))


async def test_one_statement_of_two_enterprises_keeps_each_exact(db, enterprise):
    """A group commit's statement may carry several enterprises' changes (lanes): the pass
    keeps each enterprise's keys, rows and rollup apart."""
    other = enterprise + "-b"
    await _closed_ahead(db, enterprise, other)
    made = []
    for ent in (enterprise, other):
        pipeline = await pipelines.create_pipeline(db, ent, 1, {"name": "lane"})
        async with db.transaction():
            made.append((ent, pipeline["id"], await _create(db, ent, pipeline["id"], 8)))
    done = await moves.change_statuses(db, [c for ent, p, ids in made
                                            for c in _changes(ent, p, ids, ["running"] * 8)])
    assert len(done) == 16 and all(r["changed"] for r in done)
    for ent, _, _ in made:
        await _assert_exact(db, ent)
        assert await db.fetchval("SELECT created FROM run_insights_totals WHERE "
                                 "enterprise_id = $1 AND pipeline_id = $2", ent,
                                 ALL_PIPELINES) == 8


async def test_one_transaction_reaching_back_over_many_periods(seeded, db):
    """Deletes of old runs of several pipelines and periods in one transaction: one pass
    moves every later row of each pipeline and of the rollup (the reach-back)."""
    old = (await db.fetch("SELECT pipeline_id, id FROM pipeline_runs WHERE enterprise_id = "
                          "'ins' AND status IN ('success', 'failure', 'timeout') "
                          "ORDER BY created_at LIMIT 40"))[::5]
    assert len({r["pipeline_id"] for r in old}) > 1
    async with db.transaction():
        for r in old:
            await app_runs.delete(OnConnection(db), Actor("ins", "t", None), r["pipeline_id"],
                                  r["id"])
    await _assert_exact(db, "ins")


async def test_a_change_in_the_open_period_writes_no_running_total(db, enterprise):
    """The usual change (keys of the current period, at or after the watermark) moves the
    hourly rows only: no run_insights_totals_add, no row; a start calls nothing, an end
    one run_insights_rest (its recoveries); closing the period later (the
    sweeper) brings them in, as the fold gives them."""
    pipeline = await pipelines.create_pipeline(db, enterprise, 1, {"name": "open"})
    await db.execute("INSERT INTO run_insights_closed VALUES ($1, insights_hour(now()))",
                     enterprise)
    async with db.transaction():
        ids = await _create(db, enterprise, pipeline["id"], 6)
    async with db.transaction():
        await db.execute("SET LOCAL track_functions = 'all'")
        before = await _calls(db)
        await moves.change_statuses(db, _changes(enterprise, pipeline["id"], ids,
                                                 ["running"] * 6))
        await _end(db, enterprise, pipeline["id"], ids, ["failure", "success"] * 3)
        assert await _calls(db) - before == Counter({"run_insights_rest": 6})
    assert await db.fetchval("SELECT count(*) FROM run_insights_totals "
                             "WHERE enterprise_id = $1", enterprise) == 0
    assert await db.fetchval("SELECT count(*) FROM run_recoveries "
                             "WHERE enterprise_id = $1", enterprise) == 3
    await _assert_exact(db, enterprise)
    # a period that has not ended is never closed, whatever `upto` says
    assert await db.fetchval("SELECT run_insights_close($1, now() + interval '1 day')",
                             enterprise) == 0
    await _assert_exact(db, enterprise)
