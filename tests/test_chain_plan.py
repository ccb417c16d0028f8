"""The chain's statement trigger keeps one generic plan (it was planned anew per statement)."""
from __future__ import annotations


async def test_the_lagging_heads_trigger_runs_with_a_generic_plan(db):
    # Left to the plan cache, its INSERT ... WHERE EXISTS was planned again on every
    # multi-row append (~0.4 ms each: bench/get_cost.py --put --functions).
    config = await db.fetchval("SELECT proconfig FROM pg_proc "
                               "WHERE oid = 'run_events_chain_heads()'::regprocedure")
    assert "plan_cache_mode=force_generic_plan" in config
    assert "search_path=public, pg_temp" in config  # the SECURITY DEFINER guard kept
