"""Insights SQL: the projection's counters (or, as of a past time, the events) per row.

run_insights is kept by a trigger (schema.sql); here it is only read, and for replay
compared and repaired. Parameters of every answer: $1 enterprise, $2 from, $3 to (UTC hours),
$4 pipeline ids (NULL: all), $5 pipeline name (NULL: any), $6 granularity (NULL: none),
$7 group by pipeline, $8 as_of (NULL: now).
"""
from __future__ import annotations

from datetime import datetime

import asyncpg

from service.domain.insights import OUTCOMES
from service.store.locks import FEED_LOCKS

_TERMINAL = ", ".join(f"'{o}'" for o in OUTCOMES)


def _bucket(at: str) -> str:
    """The start of the bucket of `at` (UTC; weeks from Monday 2000-01-03); $2: none."""
    return f"""CASE $6::text
        WHEN 'hour' THEN date_bin('1 hour', {at}, timestamptz '2000-01-01 00:00Z')
        WHEN 'day' THEN date_bin('1 day', {at}, timestamptz '2000-01-01 00:00Z')
        WHEN 'week' THEN date_bin('7 days', {at}, timestamptz '2000-01-03 00:00Z')
        WHEN 'month' THEN date_trunc('month', {at}, 'UTC')
        ELSE $2 END"""


# The pipelines of the answer: live now (or, as of a past time, then), and filtered.
_PIPELINES = """JOIN pipelines p ON p.enterprise_id = $1 AND p.id = {alias}.pipeline_id
                AND (p.deleted_at IS NULL OR p.deleted_at > $8)
                AND ($4::uuid[] IS NULL OR p.id = ANY($4)) AND ($5::text IS NULL OR p.name = $5)"""

# Each run's state as of $8, from its run-level events: the fold's stamps (lifecycle.py):
# started_at is the first entry into running, ended_at the entry into a terminal status,
# the status the last event's; deleted runs are gone.
_STATES_AS_OF = f"""states AS (
    SELECT e.pipeline_id, e.run_id AS id,
           min(e.occurred_at) FILTER (WHERE e.type = 'run.created') AS created_at,
           min(e.occurred_at) FILTER (WHERE e.type = 'run.status_changed'
                                       AND e.to_status = 'running') AS started_at,
           max(e.occurred_at) FILTER (WHERE e.type = 'run.status_changed'
                                       AND e.to_status IN ({_TERMINAL})) AS ended_at,
           (array_agg(e.to_status ORDER BY e.version DESC))[1] AS status
    FROM run_events e
    WHERE e.enterprise_id = $1 AND e.occurred_at <= $8
      AND e.type IN ('run.created', 'run.status_changed', 'run.deleted')
    GROUP BY 1, 2
    HAVING bool_or(e.type = 'run.created') AND NOT bool_or(e.type = 'run.deleted')
)"""
_STATES_NOW = """states AS (
    SELECT pipeline_id, id, created_at, started_at, ended_at, status FROM pipeline_runs
    WHERE enterprise_id = $1
)"""

# Counters per (pipeline or NULL, bucket, metric, bin), from the projection.
COUNTERS = f"""
SELECT CASE WHEN $7 THEN i.pipeline_id END AS pipeline_id, {_bucket('i.hour')} AS bucket,
       i.metric, i.bin, sum(i.n)::bigint AS n
FROM run_insights i {_PIPELINES.format(alias='i')}
WHERE i.enterprise_id = $1 AND i.hour >= $2 AND i.hour < $3
GROUP BY 1, 2, 3, 4 HAVING sum(i.n) <> 0
"""
# The same, as of $8: folded from the events (no pre-aggregate holds the past).
COUNTERS_AS_OF = f"""
WITH {_STATES_AS_OF}
SELECT CASE WHEN $7 THEN s.pipeline_id END AS pipeline_id, {_bucket('k.hour')} AS bucket,
       k.metric, k.bin, count(*) AS n
FROM states s {_PIPELINES.format(alias='s')},
     LATERAL run_insight_keys(s.created_at, s.started_at, s.ended_at, s.status) AS k
WHERE k.hour >= $2 AND k.hour < $3
GROUP BY 1, 2, 3, 4
"""

# Recoveries: a pipeline's finished runs (success, failure, timeout) in order of ended_at;
# `streak` counts the successes before each; a streak's first failure or timeout to the
# success that ends it is one recovery, counted where (when) the success ended.
_RECOVERIES = f"""
, t AS (
    SELECT s.pipeline_id, s.ended_at, s.status,
           count(*) FILTER (WHERE s.status = 'success') OVER (
               PARTITION BY s.pipeline_id ORDER BY s.ended_at, s.id
               ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING) AS streak
    FROM states s {_PIPELINES.format(alias='s')}
    WHERE s.status IN ('success', 'failure', 'timeout') AND s.ended_at < $3
), g AS (
    SELECT pipeline_id, min(ended_at) FILTER (WHERE status <> 'success') AS failed_at,
           min(ended_at) FILTER (WHERE status = 'success') AS recovered_at
    FROM t GROUP BY pipeline_id, streak
)
SELECT CASE WHEN $7 THEN g.pipeline_id END AS pipeline_id,
       {_bucket('g.recovered_at')} AS bucket,
       extract(epoch FROM g.recovered_at - g.failed_at)::float8 AS seconds
FROM g WHERE g.failed_at IS NOT NULL AND g.recovered_at >= $2 AND g.recovered_at < $3
"""
RECOVERIES = f"WITH {_STATES_NOW}{_RECOVERIES}"
RECOVERIES_AS_OF = f"WITH {_STATES_AS_OF}{_RECOVERIES}"

PIPELINE_NAMES = """
SELECT id, name FROM pipelines WHERE enterprise_id = $1 AND id = ANY($2::uuid[])
"""

# Replay/verify: every stored counter (zeros are no counters), and the repair of the
# differences, added under the feed locks like run_counts (store/counts.py).
ALL_COUNTERS = """
SELECT enterprise_id, hour, pipeline_id, metric, bin, n FROM run_insights WHERE n <> 0
"""
APPLY_DELTAS = f"""
WITH feed_locks AS (
    {FEED_LOCKS.format(enterprises="SELECT unnest($1::text[])")}
)
INSERT INTO run_insights AS i (enterprise_id, hour, pipeline_id, metric, bin, n)
SELECT d.* FROM unnest($1::text[], $2::timestamptz[], $3::uuid[], $4::text[], $5::int[],
                       $6::bigint[]) AS d, feed_locks
ORDER BY 1, 2, 3, 4, 5
ON CONFLICT (enterprise_id, hour, pipeline_id, metric, bin) DO UPDATE SET n = i.n + EXCLUDED.n
"""
# Bulk loads (the seeder): the trigger stands aside for the transaction, and the loaded
# runs' keys go in by one statement (the caller holds the feed lock).
BULK_LOAD = "SET LOCAL insights.bulk_load = 'on'"
ADD_RUNS = """
INSERT INTO run_insights AS i (enterprise_id, hour, pipeline_id, metric, bin, n)
SELECT r.enterprise_id, k.hour, r.pipeline_id, k.metric, k.bin, count(*)
FROM pipeline_runs r,
     LATERAL run_insight_keys(r.created_at, r.started_at, r.ended_at, r.status) AS k
WHERE r.enterprise_id = $1 AND r.id = ANY($2::uuid[])
GROUP BY 1, 2, 3, 4, 5 ORDER BY 1, 2, 3, 4, 5
ON CONFLICT (enterprise_id, hour, pipeline_id, metric, bin) DO UPDATE SET n = i.n + EXCLUDED.n
"""
DROP_ZEROS = "DELETE FROM run_insights WHERE n = 0"


def _args(enterprise_id: str, window: tuple[datetime, datetime], pipeline_ids, pipeline_name,
          granularity, group, as_of) -> tuple:
    return (enterprise_id, window[0], window[1], pipeline_ids, pipeline_name, granularity,
            group, as_of)


async def counters(conn: asyncpg.Connection, *args) -> list[asyncpg.Record]:
    """Rows (pipeline_id, bucket, metric, bin, n); args as _args takes them."""
    params = _args(*args)
    return await conn.fetch(COUNTERS if params[-1] is None else COUNTERS_AS_OF, *params)


async def recoveries(conn: asyncpg.Connection, *args) -> list[asyncpg.Record]:
    """Rows (pipeline_id, bucket, seconds), one per recovery ended in the window."""
    params = _args(*args)
    return await conn.fetch(RECOVERIES if params[-1] is None else RECOVERIES_AS_OF, *params)


async def pipeline_names(conn: asyncpg.Connection, enterprise_id: str, ids) -> dict:
    return {r["id"]: r["name"] for r in await conn.fetch(PIPELINE_NAMES, enterprise_id, list(ids))}


async def all_counters(conn: asyncpg.Connection) -> dict[tuple, int]:
    return {tuple(r[:5]): r["n"] for r in await conn.fetch(ALL_COUNTERS)}


async def add_runs(conn: asyncpg.Connection, enterprise_id: str, run_ids: list) -> None:
    await conn.execute(ADD_RUNS, enterprise_id, run_ids)


async def apply_deltas(conn: asyncpg.Connection, deltas: dict[tuple, int]) -> int:
    """Add the deltas {(enterprise, hour, pipeline, metric, bin): n} (zeros skipped)."""
    items = sorted((k, v) for k, v in deltas.items() if v)
    if items:
        await conn.execute(APPLY_DELTAS, *([k[i] for k, _ in items] for i in range(5)),
                           [v for _, v in items])
    await conn.execute(DROP_ZEROS)
    return len(items)
