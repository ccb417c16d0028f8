"""Planner statistics where autovacuum keeps none: schema.sql's service_analyze_stale()."""
from __future__ import annotations

import asyncpg

ANALYZE_STALE = "SELECT service_analyze_stale()"
# An ANALYZE reads a sample of at most 30,000 rows; on a cold 1M-row table that may take
# longer than the service's statement timeout, and a keeper cut short never catches up.
STATEMENT_TIMEOUT = "SET LOCAL statement_timeout = '5min'"
# Tables analyzed in one pass at most (there are a few dozen; a bound, not a budget).
MAX_TABLES = 100


async def analyze_stale(conn: asyncpg.Connection) -> list[str]:
    """ANALYZE, one transaction each, the tables autovacuum would have analyzed by now had
    it been on; their names (none when none was due or another process was at it)."""
    analyzed: list[str] = []
    while len(analyzed) < MAX_TABLES:
        async with conn.transaction():
            await conn.execute(STATEMENT_TIMEOUT)
            table = await conn.fetchval(ANALYZE_STALE)
        if table is None:
            break
        analyzed.append(table)
    return analyzed
