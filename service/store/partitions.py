"""run_events' monthly partitions: made ahead, so an append never meets a missing month.

schema.sql's run_events_ensure_partitions() does the work; every migration makes this
month and the next three, and the sweeper loop (service/sweeper.py) calls ensure_ahead()
on every sweep, so a service that runs for months without a migration keeps three months
of partitions ahead. Creating a partition briefly locks run_events exclusively; behind a
long reader (a replay scan) that would queue every writer, so the attempt gives up after
LOCK_TIMEOUT and the next sweep tries again, months before the partition is needed.
"""
from __future__ import annotations

import asyncpg

AHEAD_MONTHS = 3
LOCK_TIMEOUT = "2s"

# The last month ahead already there: the common case costs one catalogue lookup.
HAS_AHEAD = """
SELECT EXISTS (
    SELECT 1 FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
    WHERE i.inhparent = 'run_events'::regclass
      AND c.relname = 'run_events_' || to_char(
          (now() + make_interval(months => $1)) AT TIME ZONE 'UTC', '"y"YYYY"m"MM'))
"""
ENSURE = "SELECT run_events_ensure_partitions(now(), now() + make_interval(months => $1))"


async def ensure_ahead(conn: asyncpg.Connection, months: int = AHEAD_MONTHS) -> int:
    """Create the partitions of this month and the next `months` where missing; how many."""
    if await conn.fetchval(HAS_AHEAD, months):
        return 0
    async with conn.transaction():
        await conn.execute(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'")
        return await conn.fetchval(ENSURE, months)
