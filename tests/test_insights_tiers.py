"""Insights' faster projections: the per-day rollup (the running totals of pipeline 0…0)
leaves out the runs of soft-deleted pipelines like the hourly rows do; run_recoveries follows live
writes (streaks opened, closed, a closing success deleted); verify names a tampered row of
either and replay puts it back."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from service.app.replay import replay, verify
from service.domain.insights import ALL_PIPELINES
from tests.helpers import iso
from tests.test_insights import (  # noqa: F401 (fixtures)
    NOW, _compare, _expected, _states_now, db_dsn, seeded)


@pytest.mark.parametrize("days,granularity", [(30, "day"), (45, "week"), (100, None)])
async def test_the_rollup_leaves_out_soft_deleted_pipelines(seeded, db, days, granularity):
    runs = await _states_now(db)
    gone = runs[0]["pipeline_id"]
    await seeded.delete(f"/pipelines/{gone}/")
    frm, to = NOW - timedelta(days=days, hours=5), NOW  # ragged at both ends
    query = f"from={iso(frm)}&to={iso(to)}" + (f"&granularity={granularity}"
                                               if granularity else "")
    await _compare(seeded, [r for r in runs if r["pipeline_id"] != gone], query, frm, to,
                   granularity, False)


DAY = NOW.replace(hour=0)


@pytest.mark.parametrize("frm,to,granularity", [
    (DAY - timedelta(days=10, hours=-3), DAY - timedelta(days=1, hours=4), "day"),
    (DAY - timedelta(days=10, hours=-21), DAY - timedelta(days=1, hours=22), None),
    (DAY - timedelta(days=5, hours=-3), DAY - timedelta(days=5, hours=-20), "day"),
    (DAY - timedelta(days=40, hours=-1), DAY - timedelta(days=2, hours=1), "week"),
    (DAY - timedelta(days=60, hours=-23), NOW, "month")])
async def test_ragged_days_from_the_rollup_or_the_hours(seeded, db, frm, to, granularity):
    """Each end either way: its period from the rollup less the hours outside the window, or
    the hours inside from the hourly rows; a soft-deleted pipeline's runs left out."""
    runs = await _states_now(db)
    gone = runs[-1]["pipeline_id"]
    await seeded.delete(f"/pipelines/{gone}/")
    query = f"from={iso(frm)}&to={iso(to)}" + (f"&granularity={granularity}"
                                               if granularity else "")
    await _compare(seeded, [r for r in runs if r["pipeline_id"] != gone], query, frm, to,
                   granularity, False)


async def test_verify_names_a_tampered_rollup_row_and_replay_restores_it(seeded, db):
    row = await db.fetchrow("SELECT * FROM run_insights_totals WHERE pipeline_id = $1 "
                            "AND created > 1 ORDER BY at DESC LIMIT 1", ALL_PIPELINES)
    key = tuple(row)[:3]
    await db.execute("UPDATE run_insights_totals SET created = created - 1 WHERE (enterprise_id, "
                     "pipeline_id, at) = ($1, $2, $3)", *key)
    drifts = (await verify(db)).total_drifts
    assert [(d.key, d.fields, d.expected[0], d.actual[0]) for d in drifts] == [
        (key, ["created"], row["created"], row["created"] - 1)]
    await replay(db)
    assert await db.fetchrow("SELECT * FROM run_insights_totals WHERE (enterprise_id, "
                             "pipeline_id, at) = ($1, $2, $3)", *key) == row
    assert (await verify(db)).clean


async def test_recoveries_follow_live_writes(seeded, db):
    pipeline = await seeded.pipeline("flaky")
    runs = []
    for outcome in ("success", "failure", "timeout", "success", "failure", "success",
                    "failure"):
        run = await seeded.run(pipeline["id"])
        path = {"timeout": ("queued", "timeout"),
                "failure": ("queued", "running", "complete", "failure"),
                "success": ("queued", "running", "complete", "success")}[outcome]
        runs.append(await seeded.move(run, *path))
    # the window ends after the writes just made: NOW was taken when the module was
    # imported, and an hour may have turned since
    to = datetime.now(timezone.utc).replace(minute=0, second=0, microsecond=0) + timedelta(
        hours=1)
    frm = to - timedelta(days=2)
    query = f"from={iso(frm)}&to={iso(to)}&group_by=pipeline&pipeline_id={pipeline['id']}"
    states = [r for r in await _states_now(db) if str(r["pipeline_id"]) == pipeline["id"]]
    want = _expected(states, frm, to, None, True)
    assert [len(w["recoveries"]) for w in want.values()] == [2]
    await _compare(seeded, states, query, frm, to, None, True)
    # the success that closed the first streak goes: its streak runs on to the next success
    await seeded.delete(f"/pipelines/{pipeline['id']}/runs/{runs[3]['id']}/")
    states = [r for r in await _states_now(db) if str(r["pipeline_id"]) == pipeline["id"]]
    assert [len(w["recoveries"]) for w in _expected(states, frm, to, None, True).values()] == [1]
    await _compare(seeded, states, query, frm, to, None, True)
    assert (await verify(db)).clean


async def test_verify_names_a_tampered_recovery_and_replay_restores_it(seeded, db):
    before = await db.fetch("SELECT * FROM run_recoveries ORDER BY 1, 2, 3, 4")
    assert before
    await db.execute("UPDATE run_recoveries SET failed_at = failed_at - interval '1 second' "
                     "WHERE run_id = $1", before[0]["run_id"])
    await db.execute("DELETE FROM run_recoveries WHERE run_id = $1", before[-1]["run_id"])
    drifts = (await verify(db)).recovery_drifts
    first, last = before[0], before[-1]
    assert sorted((d.key, d.expected, d.actual) for d in drifts) == sorted([
        ((first["enterprise_id"], first["pipeline_id"], first["run_id"]),
         (first["recovered_at"], first["failed_at"]),
         (first["recovered_at"], first["failed_at"] - timedelta(seconds=1))),
        ((last["enterprise_id"], last["pipeline_id"], last["run_id"]),
         (last["recovered_at"], last["failed_at"]), None)])
    report = await replay(db)
    assert report.recoveries_repaired == 2
    assert await db.fetch("SELECT * FROM run_recoveries ORDER BY 1, 2, 3, 4") == before
    assert (await verify(db)).clean


async def test_a_grouped_answer_as_of_names_pipelines_deleted_since(seeded, db):
    """As of before a pipeline's deletion, a grouped answer has its row and its name (the
    names of the live pipelines come with their count; those deleted since, apart)."""
    runs = await _states_now(db)
    gone = runs[0]["pipeline_id"]
    names = {r["id"]: r["name"] for r in await db.fetch(
        "SELECT id, name FROM pipelines WHERE enterprise_id = 'ins'")}
    as_of = datetime.now(timezone.utc)
    await seeded.delete(f"/pipelines/{gone}/")
    query = f"from={iso(NOW - timedelta(days=90))}&to={iso(NOW)}&group_by=pipeline"
    past = await seeded.get(f"/insights/runs/?{query}&as_of={iso(as_of)}")
    now = await seeded.get(f"/insights/runs/?{query}")
    assert {(r["pipeline_id"], r["pipeline_name"]) for r in past["rows"]} == {
        (str(p), n) for p, n in names.items() if any(r["pipeline_id"] == p for r in runs)}
    assert str(gone) in {r["pipeline_id"] for r in past["rows"]}
    assert str(gone) not in {r["pipeline_id"] for r in now["rows"]}
