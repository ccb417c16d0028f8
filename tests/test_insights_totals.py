"""Insights' running totals per 6-hour period (run_insights_totals): grouped, filtered and
whole-enterprise answers that read them match the runs table for windows ragged at either
end; they follow writes that reach back (an old run deleted, a period left empty); verify
names a
tampered row and replay puts it back byte for byte; migrations 0007 and 0008 fill what the
triggers keep; a histogram's bytes are its first bin and dense counts."""
from __future__ import annotations

import struct
from datetime import timedelta
from pathlib import Path

import pytest

from service.app.replay import replay, verify
from service.domain.insights import ALL_PIPELINES, histogram_of
from tests.helpers import iso
from tests.test_insights import (  # noqa: F401 (fixtures)
    NOW, _compare, _states_now, db_dsn, seeded)

DAY = NOW.replace(hour=0)
ROOT = Path(__file__).resolve().parent.parent
MIGRATION = ROOT / "migrations" / "0007_insights_totals.sql"
BYTES_MIGRATION = ROOT / "migrations" / "0008_insights_totals_bytes.sql"
CLOSED_MIGRATION = ROOT / "migrations" / "0010_insights_closed.sql"
SCHEMA = ROOT / "schema.sql"
ROWS = "SELECT * FROM run_insights_totals ORDER BY 1, 2, 3"


@pytest.mark.parametrize("frm,to,granularity,group", [
    (DAY - timedelta(days=90, hours=-7), NOW, None, True),
    (DAY - timedelta(days=30, hours=-20), DAY - timedelta(days=2, hours=3), "day", True),
    (DAY - timedelta(days=61, hours=-2), DAY - timedelta(days=1, hours=-13), "week", True),
    (DAY - timedelta(days=80, hours=-11), NOW, "month", False),
    (DAY - timedelta(days=12), DAY - timedelta(days=3), "day", False)])
async def test_answers_from_the_running_totals_match_the_runs_table(seeded, db, frm, to,
                                                               granularity, group):
    """Ragged periods at either end (hours from run_insights added or taken out), or whole
    ones; a soft-deleted pipeline's runs left out."""
    runs = await _states_now(db)
    gone = runs[1]["pipeline_id"]
    await seeded.delete(f"/pipelines/{gone}/")
    live = [r for r in runs if r["pipeline_id"] != gone]
    query = f"from={iso(frm)}&to={iso(to)}" + (f"&granularity={granularity}"
                                               if granularity else "")
    await _compare(seeded, live, query + ("&group_by=pipeline" if group else ""), frm, to,
                   granularity, group)
    one = live[0]["pipeline_id"]
    await _compare(seeded, [r for r in live if r["pipeline_id"] == one],
                   f"{query}&pipeline_id={one}", frm, to, granularity, False)


async def test_a_quarter_per_pipeline_reads_the_running_totals(seeded, db):
    """Not an answer that could come from the hourly rows alone: a total made up shows."""
    frm, to = DAY - timedelta(days=90), DAY
    query = f"/insights/runs/?from={iso(frm)}&to={iso(to)}&group_by=pipeline"
    before = {r["pipeline_id"]: r["created"] for r in (await seeded.get(query))["rows"]}
    row = await db.fetchrow("SELECT pipeline_id, at FROM run_insights_totals "
                            "WHERE pipeline_id <> $1 AND at < $2 ORDER BY at DESC LIMIT 1",
                            ALL_PIPELINES, to)
    await db.execute("UPDATE run_insights_totals SET created = created + 1000 "
                     "WHERE pipeline_id = $1 AND at = $2", row["pipeline_id"], row["at"])
    after = {r["pipeline_id"]: r["created"] for r in (await seeded.get(query))["rows"]}
    assert after == {**before, str(row["pipeline_id"]): before[str(row["pipeline_id"])] + 1000}


async def test_the_running_totals_follow_writes_that_reach_back(seeded, db):
    runs = sorted(await _states_now(db), key=lambda r: r["created_at"])
    old = next(r for r in runs if r["created_at"] < NOW - timedelta(days=40)
               and r["status"] == "success")
    await seeded.delete(f"/pipelines/{old['pipeline_id']}/runs/{old['id']}/")
    # the open period's keys are hourly rows only; a run backdated into a closed period has
    # a row there, and when its only keys go the row leaves (it would equal the one before)
    pipeline = await seeded.pipeline("lonely")
    run = await seeded.run(pipeline["id"])
    count = "SELECT count(*) FROM run_insights_totals WHERE pipeline_id = $1"
    assert await db.fetchval(count, pipeline["id"]) == 0
    async with db.transaction():  # by hand: the row trigger keeps the insights (by_trigger)
        await db.execute("SET LOCAL insights.by_trigger = 'on'")
        await db.execute("UPDATE pipeline_runs SET created_at = created_at - interval '10 days' "
                         "WHERE id = $1", run["id"])
    assert await db.fetchval(count, pipeline["id"]) == 1
    await seeded.delete(f"/pipelines/{pipeline['id']}/runs/{run['id']}/")
    assert await db.fetchval(count, pipeline["id"]) == 0
    assert (await verify(db)).clean  # byte for byte the running totals of the fold's keys
    frm, to = DAY - timedelta(days=60), NOW
    await _compare(seeded, [r for r in await _states_now(db)],
                   f"from={iso(frm)}&to={iso(to)}&granularity=week&group_by=pipeline", frm,
                   to, "week", True)


async def test_verify_names_a_tampered_running_total_and_replay_restores_it(seeded, db):
    before = await db.fetch(ROWS)
    bent, gone = before[len(before) // 2], before[-1]
    assert len(bent["duration"]) >= 12  # its first bin and two counts at least
    await db.execute("UPDATE run_insights_totals SET duration = set_byte(duration, 11, "
                     "(get_byte(duration, 11) + 1) % 256), recovered = recovered + 1 "
                     "WHERE (enterprise_id, pipeline_id, at) = ($1, $2, $3)", *bent[:3])
    await db.execute("DELETE FROM run_insights_totals WHERE (enterprise_id, pipeline_id, at) "
                     "= ($1, $2, $3)", *gone[:3])
    result = await verify(db)
    assert not result.clean
    assert sorted((d.key, d.fields) for d in result.total_drifts) == sorted([
        (tuple(bent[:3]), ["recovered", "duration"]),
        (tuple(gone[:3]), ["created", "success", "failure", "timeout", "invalid",
                           "cancelled", "recovered", "recovered_micros", "duration",
                           "queue"])])
    await replay(db)
    assert await db.fetch(ROWS) == before
    assert (await verify(db)).clean


async def test_migrations_0007_and_0008_fill_what_the_triggers_keep(seeded, db):
    """0007 makes and fills the running totals with int4[] histograms (every period's),
    0008 turns them into bytes, 0010 drops the rows of periods not closed, and schema.sql
    then keeps them: byte for byte what the triggers and the closing kept."""
    before = await db.fetch(ROWS)
    assert {r["pipeline_id"] for r in before} >= {ALL_PIPELINES}
    async with db.transaction():
        await db.execute("DROP TABLE run_insights_totals")
        await db.execute(MIGRATION.read_text())
        assert await db.fetchval("SELECT atttypid::regtype::text FROM pg_attribute WHERE "
                                 "attrelid = 'run_insights_totals'::regclass AND "
                                 "attname = 'duration'") == "integer[]"
        await db.execute(BYTES_MIGRATION.read_text())
        await db.execute(CLOSED_MIGRATION.read_text())  # the open period's rows go
        await db.execute(SCHEMA.read_text())
    assert await db.fetch(ROWS) == before


@pytest.mark.parametrize("steps", [
    [([5], [3])],  # a first count: the first bin, then the count
    [([5], [3]), ([2, 9], [1, 4])],  # widened at both ends
    [([5, 6, 7], [1, 2, 3]), ([5], [-1]), ([7], [-3])],  # trimmed at both ends
    [([5, 6], [1, 2]), ([6, 5], [-2, -1])],  # nothing left: no bytes
    [([40], [70000]), ([1], [1]), ([40], [-69999])],  # counts past 2 bytes, wide gaps
])
async def test_a_histograms_bytes_are_its_first_bin_and_counts(db, steps):
    """insights_hist_add against the plain model: the dense counts from the first nonzero
    bin to the last, after each step; replay's reading (histogram_of) gives them back."""
    stored, model = b"", {}
    for bins, ns in steps:
        stored = await db.fetchval("SELECT insights_hist_add($1, $2, $3)", stored, bins, ns)
        for b, n in zip(bins, ns):
            model[b] = model.get(b, 0) + n
        nonzero = sorted(b for b, n in model.items() if n)
        counts = tuple(model.get(b, 0) for b in range(nonzero[0], nonzero[-1] + 1)) \
            if nonzero else ()
        assert stored == (struct.pack(f">{len(counts) + 1}i", nonzero[0], *counts)
                          if nonzero else b"")
        assert histogram_of(stored) == ((nonzero[0], counts) if nonzero else (None, ()))
