"""The chain's statement trigger keeps one generic plan (it was planned anew per statement)."""
from __future__ import annotations

import pytest


async def test_the_lagging_heads_trigger_runs_with_a_generic_plan(db):
    # Left to the plan cache, its INSERT ... WHERE EXISTS was planned again on every
    # multi-row append (~0.4 ms each: bench/get_cost.py --put --functions).
    config = await db.fetchval("SELECT proconfig FROM pg_proc "
                               "WHERE oid = 'run_events_chain_heads()'::regprocedure")
    assert "plan_cache_mode=force_generic_plan" in config
    assert "search_path=public, pg_temp" in config  # the SECURITY DEFINER guard kept


# Rows read from run_events' partitions so far (by scans of their tables or their indexes),
# this backend's counts included.
ROWS_READ = """
SELECT (SELECT sum(seq_tup_read) FROM pg_stat_user_tables WHERE relname LIKE 'run_events_y%')
     + (SELECT sum(idx_tup_read) FROM pg_stat_user_indexes WHERE relname LIKE 'run_events_y%')
"""
INSERT = ("INSERT INTO run_events (enterprise_id, pipeline_id, run_id, version, type, actor,"
          " occurred_at) SELECT e, gen_random_uuid(), gen_random_uuid(), 1, 'run.created',"
          " 'a', now() FROM unnest($1::text[]) AS e")


async def _rows_read(db) -> int:
    await db.execute("SELECT pg_stat_force_next_flush()")
    await db.execute("SELECT pg_stat_clear_snapshot()")
    await db.fetchval("SELECT 1")  # the flush happens once the backend is idle again
    await db.execute("SELECT pg_stat_clear_snapshot()")
    return await db.fetchval(ROWS_READ)


# A database of its own: the counts are every backend's, and the enterprise's events are
# counted whole (a shared database would hold another run's of this test).
@pytest.mark.own_db
async def test_the_lagging_head_is_checked_by_one_entry_not_every_event(db):
    """A statement appending two events of an enterprise moves its head at the statement's
    end after checking the named event; with 300 events of the enterprise before it, that
    check reads a few rows (an index entry per partition), not all 300 (the generic plan of
    an equality on position, made while the table was small, read every event of the
    enterprise by its run index: 8 ms a multi-event append in a lifecycle bench)."""
    enterprise = "lagging-plan"
    for _ in range(30):
        await db.execute(INSERT, [enterprise] * 10)  # planned and cached while small, too
    before = await _rows_read(db)
    await db.execute(INSERT, [enterprise] * 2)
    read = await _rows_read(db) - before
    assert read <= 20, read
    assert await db.fetchval("SELECT events FROM event_chain_heads WHERE enterprise_id = $1",
                             enterprise) == 302
