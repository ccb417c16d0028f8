"""The insights' watermark (run_insights_closed: the running totals hold closed periods
only): answers are the same to the bit before and after periods are closed, and match the
runs table; a change reaching back before the watermark is in them; the sweeper closes
ended periods; verify names a wrong watermark and the rows it disagrees with, and replay
puts them back."""
from __future__ import annotations

from datetime import timedelta

import pytest

from service.app.replay import replay, verify
from service.app.sweeper import close_insights
from tests.helpers import iso
from tests.test_insights import (  # noqa: F401 (fixtures)
    NOW, _compare, _states_now, db_dsn, seeded)

DAY = NOW.replace(hour=0)
ROWS = "SELECT * FROM run_insights_totals WHERE enterprise_id = 'ins' ORDER BY 1, 2, 3"
THROUGH = "SELECT through FROM run_insights_closed WHERE enterprise_id = 'ins'"
WINDOWS = [(DAY - timedelta(days=90, hours=-7), NOW, None, True),
           (DAY - timedelta(days=30), NOW, "day", False),
           (DAY - timedelta(days=20, hours=-5), DAY - timedelta(days=2, hours=3), "week", True),
           (DAY - timedelta(days=5, hours=-1), NOW, None, False)]


def _query(frm, to, granularity, group) -> str:
    return (f"from={iso(frm)}&to={iso(to)}" + (f"&granularity={granularity}" if granularity
                                               else "")
            + ("&group_by=pipeline" if group else ""))


async def _answers(api) -> list:
    return [await api.get(f"/insights/runs/?{_query(*w)}") for w in WINDOWS]


async def _compare_all(api, db) -> None:
    runs = await _states_now(db)
    for frm, to, granularity, group in WINDOWS:
        await _compare(api, runs, _query(frm, to, granularity, group), frm, to, granularity,
                       group)


async def _lag(db, days: int):
    """The watermark `days` back and the running totals made as they are at it: as if
    closing had lagged. (The watermark is the current hour: inside its period unless the
    test runs in the period's first hour, so that period's row is rebuilt to hold only the
    hours before it, as _lag_hours does; deleting the rows from it on left that row whole,
    and the test failed in five hours of six.)"""
    return await _lag_hours(db, 24 * days)


async def test_answers_are_the_same_before_and_after_closing(seeded, db):
    current = await db.fetchval("SELECT insights_hour(now())")
    assert await db.fetchval(THROUGH) == current  # the seeder closed what had ended
    closed = await db.fetch(ROWS)
    await _lag(db, 12)
    assert (await verify(db)).clean  # a lagging watermark is no drift
    before = await _answers(seeded)
    await _compare_all(seeded, db)
    assert await db.fetchval("SELECT run_insights_close('ins', now())") > 0
    assert await db.fetchval(THROUGH) == current
    assert await db.fetch(ROWS) == closed  # byte for byte what the seeder's closing made
    assert await _answers(seeded) == before  # to the bit
    assert (await verify(db)).clean


async def test_a_change_reaching_back_before_the_watermark_is_in_the_answers(seeded, db):
    through = await db.fetchval(THROUGH)
    old = await db.fetchrow(
        "SELECT pipeline_id, id, created_at FROM pipeline_runs WHERE enterprise_id = 'ins' "
        "AND status = 'success' AND created_at < $1 ORDER BY created_at LIMIT 1",
        NOW - timedelta(days=80))
    assert old["created_at"] < through
    rollup = "SELECT created FROM run_insights_totals WHERE enterprise_id = 'ins' " \
             "AND pipeline_id = '00000000-0000-0000-0000-000000000000' ORDER BY at DESC LIMIT 1"
    last = await db.fetchval(rollup)
    await seeded.delete(f"/pipelines/{old['pipeline_id']}/runs/{old['id']}/")
    assert await db.fetchval(rollup) == last - 1  # every later row of the rollup moved
    await _compare_all(seeded, db)
    assert (await verify(db)).clean


async def test_the_sweeper_closes_ended_periods(seeded, db):
    closed = await db.fetch(ROWS)
    await _lag(db, 3)
    assert await close_insights(db) > 0
    assert await db.fetchval(THROUGH) == await db.fetchval("SELECT insights_hour(now())")
    assert await db.fetch(ROWS) == closed
    assert await close_insights(db) == 0  # nothing ended since


async def test_verify_names_a_wrong_watermark_and_replay_restores_it(seeded, db):
    closed, through = await db.fetch(ROWS), await db.fetchval(THROUGH)
    last = await db.fetchval("SELECT max(at) FROM run_insights_totals "
                             "WHERE enterprise_id = 'ins'")
    # moved back to the last row's period: the rows of it are surplus
    await db.execute("UPDATE run_insights_closed SET through = $1 WHERE enterprise_id = 'ins'",
                     last)
    result = await verify(db)
    assert not result.clean and not result.closed_drifts
    assert result.total_drifts and {(d.key[0], d.key[2], d.expected) for d in
                                    result.total_drifts} == {("ins", last, None)}
    await replay(db)  # the rows follow the watermark
    assert (await verify(db)).clean
    assert await db.fetch(ROWS) == [r for r in closed if r["at"] < last]
    # not an hour start
    await db.execute("UPDATE run_insights_closed SET through = $1 WHERE enterprise_id = 'ins'",
                     through - timedelta(minutes=30))
    result = await verify(db)
    assert [(c.enterprise_id, c.through, c.why) for c in result.closed_drifts] == [
        ("ins", through - timedelta(minutes=30), "not an hour start")]
    await replay(db)
    assert await db.fetchval(THROUGH) == through - timedelta(hours=1)
    assert (await verify(db)).clean
    await close_insights(db)
    assert await db.fetch(ROWS) == closed
    # moved forward over a period with keys (a run created now): its rows are missing
    pipeline = await seeded.pipeline("now")
    await seeded.run(pipeline["id"])
    await db.execute("UPDATE run_insights_closed SET through = through + interval '1 day' "
                     "WHERE enterprise_id = 'ins'")
    result = await verify(db)
    period = await db.fetchval("SELECT insights_period(now())")
    assert {(str(d.key[1]), d.key[2]) for d in result.total_drifts if d.actual is None} >= {
        (pipeline["id"], period)}
    await replay(db)  # a watermark ahead is kept (every change before it moves the totals)
    assert (await verify(db)).clean
    assert await db.fetchval("SELECT count(*) FROM run_insights_totals WHERE pipeline_id = $1",
                             pipeline["id"]) == 1


async def _lag_hours(db, hours: int):
    """The watermark `hours` back (so maybe inside a period) and the running totals rebuilt
    up to it: a period's row then holds its hours before the watermark only."""
    was = await db.fetchval(THROUGH)
    through = await db.fetchval(
        "UPDATE run_insights_closed SET through = through - make_interval(hours => $1) "
        "WHERE enterprise_id = 'ins' RETURNING through", hours)
    # Moved ahead, it may leave the period it was in (the last hour of a period): that
    # period's row was made up to the old watermark and now holds all its hours.
    for at in sorted({through, was} if hours < 0 else {through}):
        await db.execute(
            "SELECT run_insights_totals_rebuild('ins', p.id, insights_period($1)) FROM "
            "(SELECT id FROM pipelines WHERE enterprise_id = 'ins' UNION ALL "
            "SELECT '00000000-0000-0000-0000-000000000000') AS p", at)
    return through


@pytest.mark.parametrize("inside", [1, 3, 5])
async def test_a_watermark_inside_a_period_gives_the_same_answers(seeded, db, inside):
    """Windows ending before, at and after a watermark `inside` hours into its period, by
    day, week or none, grouped or not: the runs table's answers, to the bit what the
    closed watermark gives; closing again writes the rows as they were."""
    closed = await db.fetch(ROWS)
    through = await db.fetchval(THROUGH)
    lag = (through.hour - inside) % 6 + 6  # back to `inside` hours into a period
    moved = await _lag_hours(db, lag)
    assert moved.hour % 6 == inside
    assert (await verify(db)).clean
    windows = [(moved - timedelta(days=20, hours=5), moved - timedelta(hours=2), "day", True),
               (moved - timedelta(days=9, hours=1), moved, None, False),
               (moved - timedelta(days=30), moved + timedelta(hours=2), "week", True),
               (moved - timedelta(days=12, hours=3), NOW, "day", False)]
    runs = await _states_now(db)
    answers = []
    for frm, to, granularity, group in windows:
        await _compare(seeded, runs, _query(frm, to, granularity, group), frm, to,
                       granularity, group)
        answers.append(await seeded.get(f"/insights/runs/?{_query(frm, to, granularity, group)}"))
    await close_insights(db)
    assert await db.fetch(ROWS) == closed
    assert [await seeded.get(f"/insights/runs/?{_query(*w)}") for w in windows] == answers


async def test_a_watermark_inside_the_current_period_holds_its_runs(seeded, db):
    """Runs of this hour, the watermark moved past them but not past their period (ahead of
    now is allowed): the period's row holds them, and the answers stay the runs table's.
    (In a period's last hour the watermark moves to the period's end: there is no hour
    boundary past now inside it. Moving it two hours then, into the next period, left the
    test failing in one hour of six.)"""
    pipeline = await seeded.pipeline("now")
    for status in ("success", "failure", "success"):
        run = await seeded.run(pipeline["id"])
        await seeded.move(run, "queued", "processing", "running", "complete", status)
    through = await db.fetchval(THROUGH)
    ahead = 1  # past this hour, at most to its period's end
    moved = await _lag_hours(db, -ahead)
    assert moved > NOW - timedelta(hours=1)
    assert moved <= await db.fetchval("SELECT insights_period(now()) + interval '6 hours'")
    assert (await verify(db)).clean
    assert await db.fetchval("SELECT created FROM run_insights_totals WHERE pipeline_id = $1 "
                             "AND at = insights_period(now())", pipeline["id"]) == 3
    runs = await _states_now(db)
    for frm, to, granularity, group in [
            (moved - timedelta(days=20, hours=5), moved, "day", True),
            (moved - timedelta(days=9, hours=1), NOW, None, False),
            (moved - timedelta(days=9, hours=1), moved - timedelta(hours=ahead), None, True)]:
        await _compare(seeded, runs, _query(frm, to, granularity, group), frm, to,
                       granularity, group)
