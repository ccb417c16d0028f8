"""run_counts: live runs per (enterprise, pipeline, status), kept by the writes themselves.

Every write of pipeline_runs adds its +1/-1 deltas here in the same statement (or
transaction), always after taking the enterprise's feed lock (store/locks.py): the append
(store/append.py) derives them from the events it appends. That one rule is what keeps the counters cheap under concurrency (see schema.sql, run_counts): a
counter row is only written by the holder of its enterprise's feed lock, which already
serializes the enterprise's appends until commit, so no writer ever waits on a counter row.

Deltas, never absolute values: `counters - count(pipeline_runs)` is then left unchanged by
every write, which is what lets replay repair a drifted counter at any later time by adding
the difference it saw in its snapshot (app/replay.py).
"""
from __future__ import annotations

from collections import Counter
from typing import Iterable

import asyncpg

from service.store.locks import FEED_LOCKS_OF_ARRAY

# A data-modifying CTE body: `rows` yields (enterprise_id, pipeline_id, status, delta), at
# most one row per key, and must read the statement's feed_lock CTE so the lock comes first.
COUNT_DELTAS = """INSERT INTO run_counts AS c (enterprise_id, pipeline_id, status, n)
    {rows}
    ON CONFLICT (enterprise_id, pipeline_id, status) DO UPDATE SET n = c.n + EXCLUDED.n"""

# For writers outside the one-statement paths (replay's patches): the feed locks of the
# enterprises concerned, in one fixed order, then the deltas.
APPLY_DELTAS = f"""
WITH feed_locks AS (
    {FEED_LOCKS_OF_ARRAY}
)
{COUNT_DELTAS.format(rows='''
    SELECT d.enterprise_id, d.pipeline_id, d.status, d.delta
    FROM unnest($1::text[], $2::uuid[], $3::text[], $4::bigint[])
         AS d(enterprise_id, pipeline_id, status, delta), feed_locks
    ORDER BY d.enterprise_id, d.pipeline_id, d.status''')}
"""

# Every counter, for replay/verify's snapshot comparison.
ALL_COUNTERS = "SELECT enterprise_id, pipeline_id, status, n FROM run_counts WHERE n <> 0"

# Live runs per status of an enterprise (optionally of one pipeline name), for the Runs page.
STATUS_COUNTS = """
SELECT c.status, sum(c.n)::bigint AS n FROM run_counts c
JOIN pipelines p ON p.enterprise_id = c.enterprise_id AND p.id = c.pipeline_id
                AND p.deleted_at IS NULL
WHERE c.enterprise_id = $1 AND ($2::text IS NULL OR p.name = $2)
GROUP BY c.status
"""

Key = tuple  # (enterprise_id, pipeline_id, status)


async def all_cells(conn: asyncpg.Connection) -> dict[tuple, dict[tuple, int]]:
    """{(enterprise_id, pipeline_id): {(status,): n}} of every counter (replay)."""
    cells: dict[tuple, dict[tuple, int]] = {}
    for r in await conn.fetch(ALL_COUNTERS):
        cells.setdefault((r[0], r[1]), {})[(r[2],)] = r[3]
    return cells


def transition(enterprise_id: str, pipeline_id, before: str | None,
               after: str | None) -> Counter:
    """The deltas of one run going from status `before` to `after` (None: no row)."""
    deltas: Counter = Counter()
    if before != after:
        if before is not None:
            deltas[(enterprise_id, pipeline_id, before)] -= 1
        if after is not None:
            deltas[(enterprise_id, pipeline_id, after)] += 1
    return deltas


async def apply_deltas(conn: asyncpg.Connection, deltas: Counter | Iterable) -> int:
    """Add the deltas (zeros skipped) under the feed locks; the caller owns the transaction."""
    items = sorted((k, v) for k, v in dict(deltas).items() if v)
    if not items:
        return 0
    await conn.execute(APPLY_DELTAS, [k[0] for k, _ in items], [k[1] for k, _ in items],
                       [k[2] for k, _ in items], [v for _, v in items])
    return len(items)


async def status_counts(conn: asyncpg.Connection, enterprise_id: str,
                        pipeline_name: str | None) -> dict[str, int]:
    rows = await conn.fetch(STATUS_COUNTS, enterprise_id, pipeline_name)
    return {r["status"]: r["n"] for r in rows if r["n"]}
