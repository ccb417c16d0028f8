"""Insights SQL: the projections' counters (or, as of a past time, the events) per row.

run_insights, run_recoveries and run_insights_totals are kept by triggers (schema.sql); here
they are only read, and for replay compared and repaired. Parameters of the hourly rows and
recoveries: $1 enterprise, $2 from, $3 to (UTC hours), $4 pipeline ids (NULL: all), $5
pipeline name (NULL: any), $6 as_of (NULL: now), and live $7, $8 the span of whole
6-hour periods the running totals answer instead (tier_span); one statement per
granularity, grouping and as_of (COUNTERS, RECOVERIES). The running totals:
TIER_PIPELINES, TIER_ROLLUP (closed hours only: CLOSED_THROUGH).
"""
from __future__ import annotations

from datetime import datetime, timedelta

import asyncpg

from service.domain.insights import (ALL_PIPELINES, HISTOGRAMS, OUTCOMES, PERIOD,
                                     TOTAL_COUNTS)
from service.store.locks import FEED_LOCK, FEED_LOCKS_OF_ARRAY

_TERMINAL = ", ".join(f"'{o}'" for o in OUTCOMES)


_BUCKETS = {
    "hour": "date_bin('1 hour', {at}, timestamptz '2000-01-01 00:00Z')",
    "day": "date_bin('1 day', {at}, timestamptz '2000-01-01 00:00Z')",
    "week": "date_bin('7 days', {at}, timestamptz '2000-01-03 00:00Z')",  # from Mondays
    "month": "date_trunc('month', {at}, 'UTC')",
    None: "$2::timestamptz",  # one bucket: the window
}

# The pipelines of the answer: live now (or, as of a past time, then), and filtered.
_PIPELINES = """JOIN pipelines p ON p.enterprise_id = $1 AND p.id = {alias}.pipeline_id
                AND (p.deleted_at IS NULL OR p.deleted_at > $6)
                AND ($4::uuid[] IS NULL OR p.id = ANY($4)) AND ($5::text IS NULL OR p.name = $5)"""

# Each run's state as of $6, from its run-level events: the fold's stamps (lifecycle.py):
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
    WHERE e.enterprise_id = $1 AND e.occurred_at <= $6
      AND e.type IN ('run.created', 'run.status_changed', 'run.deleted')
    GROUP BY 1, 2
    HAVING bool_or(e.type = 'run.created') AND NOT bool_or(e.type = 'run.deleted')
)"""
# Counters per (pipeline or NULL, bucket, metric, bin): from the projection, or as of $6
# folded from the events (no pre-aggregate holds the past).
# Live: the window [$2, $3) less the periods [$7, $8) that the running totals answer
# (TIER), from the hourly rows of the live pipelines: added where the window reaches past
# those periods ([$2, $7), [$8, $3)), taken out where the periods reach past the window
# ([$7, $2), [$3, $8)); at most 3 hours at each end. No such periods: $7 = $8 = $3
# (tier_span), the whole window hourly.
# Those four spans, each with the sign its rows count with.
_SPANS = (("", "$2", "$7"), ("-", "$7", "$2"), ("", "$8", "$3"), ("-", "$3", "$8"))


def _over_spans(part: str) -> str:
    """`part` (a SELECT with {sign}, {lo} and {hi}) over the four spans, as one UNION ALL."""
    return "\n          UNION ALL\n          ".join(
        part.format(sign=sign, lo=lo, hi=hi) for sign, lo, hi in _SPANS)


_HOURLY = """SELECT i.hour, i.pipeline_id, i.metric, i.bin, {sign}i.n
          FROM run_insights i {{pipelines}}
          WHERE i.enterprise_id = $1 AND i.hour >= {lo} AND i.hour < {hi}"""
_COUNTERS_NOW = f"""c AS (
    SELECT {{pipeline}} AS pipeline_id, {{bucket}} AS bucket, i.metric, i.bin, i.n
    FROM ({_over_spans(_HOURLY)}) AS i
)"""
_COUNTERS_AS_OF = """{states}, c AS (
    SELECT {pipeline} AS pipeline_id, {bucket} AS bucket, k.metric, k.bin, count(*) AS n
    FROM states s {pipelines},
         LATERAL run_insight_keys(s.created_at, s.started_at, s.ended_at, s.status) AS k
    WHERE k.hour >= $2 AND k.hour < $3
    GROUP BY 1, 2, 3, 4
)"""
# The counters come back one row per (pipeline, bucket): each count summed in a column of
# its own (TOTAL_COUNTS, as the running totals have them), each histogram's bins and
# counts as two arrays (`duration_bins`, `duration_ns`, ...), unsorted, a bin possibly more
# than once (an hour taken out, another added), which the client adds up as they come (no
# object per bin, no Python step per metric; a row per bin was ~2,200 rows of Python steps
# for the ragged hours of a 90-day answer per pipeline, and sorting each metric's bins
# here, a sort per group, half the statement).
_BY_ROW = f"""
SELECT pipeline_id, bucket, {", ".join(
    f"sum(n) FILTER (WHERE metric = '{m}')::bigint AS {m}" for m in TOTAL_COUNTS)}, {", ".join(
    f"array_agg(bin) FILTER (WHERE metric = '{m}') AS {m}_bins, "
    f"array_agg(n) FILTER (WHERE metric = '{m}') AS {m}_ns" for m in HISTOGRAMS)}
FROM c GROUP BY 1, 2
"""

# Recoveries: a pipeline's finished runs (success, failure, timeout) in order of ended_at;
# `streak` counts the successes before each; a streak's first failure or timeout to the
# success that ends it is one recovery, counted where (when) the success ended.
_RECOVERIES = """
, t AS (
    SELECT s.pipeline_id, s.ended_at, s.status,
           count(*) FILTER (WHERE s.status = 'success') OVER (
               PARTITION BY s.pipeline_id ORDER BY s.ended_at, s.id
               ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING) AS streak
    FROM states s {pipelines}
    WHERE s.status IN ('success', 'failure', 'timeout') AND s.ended_at < $3
), g AS (
    SELECT pipeline_id, min(ended_at) FILTER (WHERE status <> 'success') AS failed_at,
           min(ended_at) FILTER (WHERE status = 'success') AS recovered_at
    FROM t GROUP BY pipeline_id, streak
)
SELECT {pipeline} AS pipeline_id, {bucket} AS bucket, count(*) AS n,
       sum(insights_micros(g.recovered_at - g.failed_at))::bigint AS micros
FROM g WHERE g.failed_at IS NOT NULL AND g.recovered_at >= $2 AND g.recovered_at < $3
GROUP BY 1, 2
"""


def _statement(template: str, alias: str, at: str, granularity, group: bool,
               grouped_by: str | None = None) -> str:
    """The template with its pipeline column (grouped_by's, else alias'), bucket and join."""
    parts = {"pipeline": f"{grouped_by or alias}.pipeline_id" if group else "NULL::uuid",
             "bucket": _BUCKETS[granularity].format(at=at),
             "pipelines": _PIPELINES.format(alias=alias), "states": _STATES_AS_OF}
    return template.format(**parts)


# Every statement spelled out per (granularity, group, as_of): a bucket expression the
# planner sees as such, never a CASE over a parameter (a generic plan of that was 20x
# slower).
_SHAPES = [(g, grouped, past) for g in _BUCKETS for grouped in (False, True)
           for past in (False, True)]
COUNTERS = {
    (g, grouped, past): "WITH " + (
        _statement(_COUNTERS_AS_OF, "s", "k.hour", g, grouped) if past
        else _statement(_COUNTERS_NOW, "i", "i.hour", g, grouped)) + _BY_ROW
    for g, grouped, past in _SHAPES}
# Live, from the recoveries projection (schema.sql run_recoveries): the window's rows
# outside the periods the running totals answer, added or taken out as the counters'.
_RECOVERED = """SELECT g.pipeline_id, g.recovered_at, g.failed_at, {sign}1 AS sign
          FROM run_recoveries g
          WHERE g.enterprise_id = $1 AND g.recovered_at >= {lo} AND g.recovered_at < {hi}"""
_RECOVERIES_NOW = f"""
SELECT {{pipeline}} AS pipeline_id, {{bucket}} AS bucket, sum(g.sign)::bigint AS n,
       sum(g.sign * insights_micros(g.recovered_at - g.failed_at))::bigint AS micros
FROM ({_over_spans(_RECOVERED)}) AS g {{pipelines}}
GROUP BY 1, 2
"""
RECOVERIES = {
    (g, grouped, past): (
        f"WITH {_STATES_AS_OF}" + _statement(_RECOVERIES, "s", "g.recovered_at", g, grouped,
                                             grouped_by="g") if past
        else _statement(_RECOVERIES_NOW, "g", "g.recovered_at", g, grouped))
    for g, grouped, past in _SHAPES}

# The running totals (schema.sql run_insights_totals) over each span between consecutive
# boundaries $4 (period starts), per member pipeline: its last row before the span's end less
# its last row before the span's start (none: nothing yet), a row per span where the two
# differ (`k`: the end's place in $4, from 2). The members: the live pipelines (filtered);
# or, answering for all of them, the rollup less the soft-deleted pipelines (the rollup
# counts every pipeline's runs). The counts come as differences, the histograms as the
# bytes they are stored as, both ends' (domain/insights_sums.py reads them without a step
# per bin): one row per span instead of two, the counts subtracted here.
_TIER = f"""
WITH x AS (
    SELECT m.pipeline_id, m.sign, b.k, t.at, {", ".join(
        f"t.{c}" for c in (*TOTAL_COUNTS, "recovered", "recovered_micros", *HISTOGRAMS))}
    FROM ({{members}}) AS m, unnest($4::timestamptz[]) WITH ORDINALITY AS b(at, k),
         LATERAL (SELECT * FROM run_insights_totals t
                  WHERE t.enterprise_id = $1 AND t.pipeline_id = m.pipeline_id AND t.at < b.at
                  ORDER BY t.at DESC LIMIT 1) AS t
)
SELECT u.pipeline_id, u.sign, u.k, {", ".join(
    f"u.{c} - coalesce(b.{c}, 0) AS {c}"
    for c in (*TOTAL_COUNTS, "recovered", "recovered_micros"))},
       u.duration, b.duration AS duration_before, u.queue, b.queue AS queue_before
FROM x AS u LEFT JOIN x AS b ON b.pipeline_id = u.pipeline_id AND b.k = u.k - 1
WHERE u.k > 1 AND (b.at IS NULL OR b.at <> u.at)
"""
TIER_PIPELINES = _TIER.format(members="""
    SELECT p.id AS pipeline_id, 1 AS sign FROM pipelines p
    WHERE p.enterprise_id = $1 AND p.deleted_at IS NULL
      AND ($2::uuid[] IS NULL OR p.id = ANY($2)) AND ($3::text IS NULL OR p.name = $3)""")
TIER_ROLLUP = _TIER.format(members=f"""
    SELECT '{ALL_PIPELINES}'::uuid AS pipeline_id, 1 AS sign
    UNION ALL
    SELECT p.id, -1 FROM pipelines p
    WHERE p.enterprise_id = $1 AND p.deleted_at IS NOT NULL
      AND $2::uuid[] IS NULL AND $3::text IS NULL""")

# The running totals' watermark (schema.sql run_insights_closed), and its moving on: an
# enterprise's ended hours closed under its feed lock (the write path's insights trigger
# runs under it), in one transaction per enterprise (the sweeper, the seeder, tests).
CLOSED_THROUGH = "SELECT through FROM run_insights_closed WHERE enterprise_id = $1"
CLOSE = f"""
WITH feed_lock AS MATERIALIZED (SELECT {FEED_LOCK} AS locked)
SELECT run_insights_close($1, coalesce($2::timestamptz, now())) FROM feed_lock
"""
# The enterprises whose watermark is behind the current hour's start (or that have none
# and hourly rows): from the pipelines (a few thousand rows), not run_insights.
TO_CLOSE = """
SELECT e.enterprise_id FROM (SELECT DISTINCT enterprise_id FROM pipelines) AS e
LEFT JOIN run_insights_closed c ON c.enterprise_id = e.enterprise_id
WHERE (c.through IS NULL AND EXISTS (SELECT FROM run_insights i
                                     WHERE i.enterprise_id = e.enterprise_id
                                       AND i.hour < insights_hour(now())))
   OR c.through < insights_hour(now())
ORDER BY 1
"""
ALL_CLOSED = "SELECT enterprise_id, through FROM run_insights_closed"

PIPELINE_IS_LIVE = """
SELECT EXISTS (SELECT FROM pipelines WHERE enterprise_id = $1 AND id = $2 AND deleted_at IS NULL)
"""
# The pipelines a grouped answer may have rows for (the pipeline filters applied): how many,
# and the names of the first $4 (the answer's names, without a statement of their own).
LIVE_PIPELINES = """
SELECT id, name, count(*) OVER () AS total FROM pipelines
WHERE enterprise_id = $1 AND deleted_at IS NULL
  AND ($2::uuid[] IS NULL OR id = ANY($2::uuid[])) AND ($3::text IS NULL OR name = $3)
LIMIT $4
"""
PIPELINE_NAMES = """
SELECT id, name FROM pipelines WHERE enterprise_id = $1 AND id = ANY($2::uuid[])
"""

# Replay/verify: every stored counter (zeros are no counters), and the repair of the
# differences, added under the feed locks like run_counts (store/counts.py).
# Every row, per (enterprise, pipeline): its hours as numbers (domain/insights.py run_cells:
# hours since 2000-01-01 UTC, the origin of date_bin's hours), metrics, bins and counts as
# parallel arrays, which the client decodes without an object per row.
ALL_CELLS = """
SELECT enterprise_id, pipeline_id,
       array_agg((extract(epoch FROM hour - timestamptz '2000-01-01 00:00Z') / 3600)::bigint),
       array_agg(metric), array_agg(bin), array_agg(n)
FROM run_insights WHERE n <> 0 GROUP BY enterprise_id, pipeline_id
"""
APPLY_DELTAS = f"""
WITH feed_locks AS (
    {FEED_LOCKS_OF_ARRAY}
)
INSERT INTO run_insights AS i (enterprise_id, hour, pipeline_id, metric, bin, n)
SELECT d.* FROM unnest($1::text[], $2::timestamptz[], $3::uuid[], $4::text[], $5::int[],
                       $6::bigint[]) AS d, feed_locks
ORDER BY 1, 2, 3, 4, 5
ON CONFLICT (enterprise_id, hour, pipeline_id, metric, bin) DO UPDATE SET n = i.n + EXCLUDED.n
"""
# Bulk loads (the seeder): the trigger stands aside for the transaction, and the loaded
# runs' keys go in by one statement (the caller holds the feed lock). The batch's runs
# (10,000 ids) are probed one by one by primary key (_BATCH_RUNS: OFFSET 0 keeps the
# planner from flattening the probe into a join). Written as `r.id = ANY($2)`, the
# generic plan a prepared statement gets from its sixth batch on put the ids in an index
# condition behind (enterprise_id, status) and compared every rated run of the enterprise
# with every id: a batch's recoveries step took 1-8 minutes at 400,000 runs (the 1M
# seed's stalls); as a plain join, a hash join over all those runs (~1 s a batch).
_BATCH_RUNS = """unnest($2::uuid[]) AS u(id),
     LATERAL (SELECT x.* FROM pipeline_runs x
              WHERE x.enterprise_id = $1 AND x.id = u.id OFFSET 0) AS r"""
BULK_LOAD = "SET LOCAL insights.bulk_load = 'on'"
# Writers of pipeline_runs other than the one-statement paths (replay's patches): the row
# trigger keeps the insights for this transaction's writes (schema.sql run_insights_row).
ROW_TRIGGER = "SET LOCAL insights.by_trigger = 'on'"
ADD_RUNS = f"""
INSERT INTO run_insights AS i (enterprise_id, hour, pipeline_id, metric, bin, n)
SELECT r.enterprise_id, k.hour, r.pipeline_id, k.metric, k.bin, count(*)
FROM {_BATCH_RUNS},
     LATERAL run_insight_keys(r.created_at, r.started_at, r.ended_at, r.status) AS k
GROUP BY 1, 2, 3, 4, 5 ORDER BY 1, 2, 3, 4, 5
ON CONFLICT (enterprise_id, hour, pipeline_id, metric, bin) DO UPDATE SET n = i.n + EXCLUDED.n
"""
# ... then (after their recoveries) the running totals of their pipelines and the rollup
# rebuilt from the first period the batch can have changed, where that period holds
# closed hours (the totals hold nothing else: before the watermark, run_insights_closed).
# That period is its runs' first key's: their recoveries (ADD_RECOVERIES) only move rows
# recovered at or after the batch's first end of the pipeline, every such row being at a
# success's end with no success between the last one before that end and it. The seeder
# closes hours only up to its batch's last creation (no later batch's key lies before it:
# runs are made in creation order), so a batch rebuilds nothing unless something else
# (the service's sweeper) closed hours meanwhile; a rebuild up to the watermark after
# every batch cost a quarter of a seed's database time (docs/performance.md).
REBUILD_BATCH_TOTALS = f"""
WITH since AS MATERIALIZED (
    SELECT r.pipeline_id, min(least(r.created_at, r.started_at, r.ended_at)) AS since
    FROM {_BATCH_RUNS}
    GROUP BY 1
)
SELECT count(run_insights_totals_rebuild($1, p.pipeline_id, p.since))
FROM (SELECT pipeline_id, since FROM since
      UNION ALL
      SELECT '{ALL_PIPELINES}'::uuid, min(since) FROM since HAVING count(*) > 0
      ORDER BY 1) AS p
WHERE p.since < (SELECT c.through FROM run_insights_closed c WHERE c.enterprise_id = $1)
"""
DROP_ZEROS = "DELETE FROM run_insights WHERE n = 0"
# The loaded runs' pipelines' recoveries around them (the trigger stood aside).
ADD_RECOVERIES = f"""
SELECT run_recoveries_refresh($1, r.pipeline_id, min(r.ended_at), max(r.ended_at))
FROM {_BATCH_RUNS}
WHERE r.status IN ('success', 'failure', 'timeout')
GROUP BY r.pipeline_id ORDER BY r.pipeline_id
"""
# Verify: run_recoveries against the whole recomputation from the runs projection (which
# verify checks against the events); a row on one side only is a drift.
RECOVERY_DRIFTS = """
WITH t AS (
    SELECT r.enterprise_id, r.pipeline_id, r.id, r.ended_at, r.status,
           count(*) FILTER (WHERE r.status = 'success') OVER (
               PARTITION BY r.enterprise_id, r.pipeline_id ORDER BY r.ended_at, r.id
               ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING) AS streak
    FROM pipeline_runs r WHERE r.status IN ('success', 'failure', 'timeout')
), want AS (
    SELECT * FROM (
        SELECT enterprise_id, pipeline_id,
               min(ended_at) FILTER (WHERE status <> 'success') AS failed_at,
               min(ended_at) FILTER (WHERE status = 'success') AS recovered_at,
               (array_agg(id ORDER BY ended_at, id) FILTER (WHERE status = 'success'))[1]
                   AS run_id
        FROM t GROUP BY enterprise_id, pipeline_id, streak) AS g
    WHERE failed_at IS NOT NULL AND recovered_at IS NOT NULL
)
SELECT coalesce(w.enterprise_id, s.enterprise_id) AS enterprise_id,
       coalesce(w.pipeline_id, s.pipeline_id) AS pipeline_id,
       coalesce(w.run_id, s.run_id) AS run_id,
       w.recovered_at AS expected_at, w.failed_at AS expected_failed_at,
       s.recovered_at AS actual_at, s.failed_at AS actual_failed_at
FROM want w FULL JOIN run_recoveries s
  ON s.enterprise_id = w.enterprise_id AND s.pipeline_id = w.pipeline_id
 AND s.recovered_at = w.recovered_at AND s.run_id = w.run_id AND s.failed_at = w.failed_at
WHERE w.run_id IS NULL OR s.run_id IS NULL
ORDER BY 1, 2, 3
"""
# Verify: every running total, and the recoveries per (pipeline and rollup, period)
# before the watermark they are compared with (run_recoveries is checked against the runs
# on its own).
ALL_TOTALS = """
SELECT enterprise_id, pipeline_id, at, created, success, failure, timeout, invalid,
       cancelled, recovered, recovered_micros, duration, queue
FROM run_insights_totals
"""
RECOVERIES_BY_PERIOD = f"""
SELECT r.enterprise_id, p.pipeline_id,
       insights_period(r.recovered_at) AS at,
       count(*) AS n, sum(insights_micros(r.recovered_at - r.failed_at))::bigint AS micros
FROM run_recoveries r
JOIN run_insights_closed c  -- the closed hours': the running totals hold those only
  ON c.enterprise_id = r.enterprise_id AND r.recovered_at < c.through,
     LATERAL (VALUES (r.pipeline_id), ('{ALL_PIPELINES}'::uuid)) AS p(pipeline_id)
GROUP BY 1, 2, 3
"""
# Replay: drifted pipelines' (and rollups') running totals rebuilt whole from run_insights
# and run_recoveries, under their enterprises' feed locks.
REBUILD_TOTALS = f"""
WITH feed_locks AS MATERIALIZED (
    {FEED_LOCKS_OF_ARRAY}
)
SELECT run_insights_totals_rebuild(p.e, p.p)
FROM feed_locks, unnest($1::text[], $2::uuid[]) AS p(e, p)
"""
# Replay: watermarks that are no hour start moved back to one (their enterprises'
# running totals then rebuilt up to it), under their enterprises' feed locks.
FIX_WATERMARKS = f"""
WITH feed_locks AS MATERIALIZED (
    {FEED_LOCKS_OF_ARRAY}
)
UPDATE run_insights_closed c
SET through = insights_hour(c.through)
FROM feed_locks WHERE c.enterprise_id = ANY($1::text[])
"""
# Replay: a drifted pipeline's recoveries recomputed whole, under its enterprise's feed lock.
REFRESH_PIPELINES = f"""
WITH feed_locks AS MATERIALIZED (
    {FEED_LOCKS_OF_ARRAY}
)
SELECT run_recoveries_refresh(p.e, p.p, '-infinity', 'infinity')
FROM feed_locks, unnest($1::text[], $2::uuid[]) AS p(e, p)
"""


# The answers' transaction plans each statement for its parameters: a generic plan (which
# asyncpg's prepared statements get from the sixth run on) cannot see how wide the window
# is nor whether a filter is given, and was measured 15x slower.
# Nor parallel workers: each statement reads a few thousand rows at most, and starting
# workers took longer than that (measured at 1M runs: the ragged hours' counters 13 ms of
# 22 ms less without them).
CUSTOM_PLANS = ("SET LOCAL plan_cache_mode = force_custom_plan; "
                "SET LOCAL max_parallel_workers_per_gather = 0")


async def custom_plans(conn: asyncpg.Connection) -> None:
    await conn.execute(CUSTOM_PLANS)


def _args(enterprise_id: str, window: tuple, pipeline_ids, pipeline_name, as_of) -> tuple:
    return (enterprise_id, window[0], window[1], pipeline_ids, pipeline_name, as_of)


def tier_span(window: tuple, granularity, as_of, now: datetime,
              through: datetime | None) -> tuple[datetime, datetime]:
    """The whole periods [first, last) the running totals answer ([to, to): none), up to
    `through` at most (the enterprise's watermark, an hour start; None: nothing closed): a
    period's row holds its hours before it, so `last` may fall inside a period; the window
    from `through` on comes from the hourly rows.

    A period the window covers in part is read from them (less its hours outside the
    window) when fewer of its hours lie outside than inside, else its hours inside come
    from the hourly rows; hours after now count as none (nothing has happened there)."""
    frm, to = window
    if as_of is not None or granularity == "hour" or through is None:
        return to, to
    first, last = _period(frm), _period(to)
    if frm - first >= first + PERIOD - frm:
        first += PERIOD  # the first period's hours in the window from the hourly rows
    if to > last and min(last + PERIOD, max(now, to)) - to < to - last:
        last += PERIOD  # the last period from the totals, less its hours from `to` on
    last = min(last, through)
    return (first, last) if first < last else (to, to)


async def closed_through(conn: asyncpg.Connection, enterprise_id: str) -> datetime | None:
    """The enterprise's watermark: the running totals hold everything before it (None:
    nothing closed)."""
    return await conn.fetchval(CLOSED_THROUGH, enterprise_id)


def _period(at: datetime) -> datetime:
    """The start of the 6-hour period `at` is in (SQL's insights_period)."""
    return at.replace(hour=at.hour - at.hour % 6, minute=0, second=0, microsecond=0)


async def counters(conn: asyncpg.Connection, enterprise_id: str, window: tuple, pipeline_ids,
                   pipeline_name, granularity, group: bool, as_of,
                   span: tuple) -> list[asyncpg.Record]:
    """(pipeline or NULL, bucket, each count, each histogram's bins and ns: _BY_ROW): the
    hourly rows of the window outside `span` (tier_span), or as of a past time the whole
    window's."""
    args = _args(enterprise_id, window, pipeline_ids, pipeline_name, as_of)
    return await conn.fetch(COUNTERS[(granularity, group, as_of is not None)],
                            *(args if as_of is not None else args + span))


async def recoveries(conn: asyncpg.Connection, enterprise_id: str, window: tuple, pipeline_ids,
                     pipeline_name, granularity, group: bool, as_of,
                     span: tuple) -> list[asyncpg.Record]:
    """Per (pipeline or NULL, bucket): n recoveries ended there (outside `span`), their
    microseconds summed."""
    args = _args(enterprise_id, window, pipeline_ids, pipeline_name, as_of)
    return await conn.fetch(RECOVERIES[(granularity, group, as_of is not None)],
                            *(args if as_of is not None else args + span))


async def tier(conn: asyncpg.Connection, enterprise_id: str, pipeline_ids, pipeline_name,
               per_pipeline: bool, boundaries: list[datetime]) -> list[asyncpg.Record]:
    """The running totals over each span between consecutive boundaries (_TIER): per live
    pipeline (per_pipeline), else the rollup's (sign 1) and each soft-deleted pipeline's
    (sign -1)."""
    return await conn.fetch(TIER_PIPELINES if per_pipeline else TIER_ROLLUP, enterprise_id,
                            pipeline_ids, pipeline_name, boundaries)


async def pipeline_is_live(conn: asyncpg.Connection, enterprise_id: str, pipeline_id) -> bool:
    return await conn.fetchval(PIPELINE_IS_LIVE, enterprise_id, pipeline_id)


async def live_pipelines(conn: asyncpg.Connection, enterprise_id: str, pipeline_ids,
                         pipeline_name, limit: int) -> tuple[int, dict]:
    """(how many live pipelines pass the filters, {id: name} of at most `limit` of them)."""
    rows = await conn.fetch(LIVE_PIPELINES, enterprise_id, pipeline_ids, pipeline_name, limit)
    return (rows[0]["total"] if rows else 0), {r["id"]: r["name"] for r in rows}


async def pipeline_names(conn: asyncpg.Connection, enterprise_id: str, ids) -> dict:
    return {r["id"]: r["name"] for r in await conn.fetch(PIPELINE_NAMES, enterprise_id, list(ids))}


async def all_cells(conn: asyncpg.Connection) -> dict[tuple, dict[tuple, int]]:
    """{(enterprise_id, pipeline_id): {(hour number, metric, bin): n}} of every row (replay)."""
    return {(r[0], r[1]): dict(zip(zip(r[2], r[3], r[4]), r[5]))
            for r in await conn.fetch(ALL_CELLS)}


async def add_runs(conn: asyncpg.Connection, enterprise_id: str, run_ids: list) -> None:
    await conn.execute(ADD_RUNS, enterprise_id, run_ids)


async def rebuild_batch_totals(conn: asyncpg.Connection, enterprise_id: str,
                               run_ids: list) -> None:
    await conn.execute(REBUILD_BATCH_TOTALS, enterprise_id, run_ids)


async def close(conn: asyncpg.Connection, enterprise_id: str,
                upto: datetime | None = None) -> int:
    """Close the enterprise's hours ended by `upto` (None: now; never an hour not yet
    ended) under its feed lock, held to the end of the caller's transaction (else of this
    statement); the running totals' rows written."""
    return await conn.fetchval(CLOSE, enterprise_id, upto)


async def to_close(conn: asyncpg.Connection) -> list[str]:
    """The enterprises with ended hours not yet closed."""
    return [r[0] for r in await conn.fetch(TO_CLOSE)]


async def all_closed(conn: asyncpg.Connection) -> dict[str, datetime]:
    """{enterprise_id: watermark} (verify)."""
    return {r[0]: r[1] for r in await conn.fetch(ALL_CLOSED)}


async def all_totals(conn: asyncpg.Connection) -> list[asyncpg.Record]:
    return await conn.fetch(ALL_TOTALS)


async def recoveries_by_period(conn: asyncpg.Connection) -> list[asyncpg.Record]:
    return await conn.fetch(RECOVERIES_BY_PERIOD)


async def _per_pipeline(conn: asyncpg.Connection, sql: str, pipelines: set[tuple]) -> None:
    """Run `sql` over (enterprise_id, pipeline_id) pairs, as two arrays in a fixed order."""
    if pipelines:
        keys = sorted(pipelines, key=str)
        await conn.execute(sql, [k[0] for k in keys], [k[1] for k in keys])


async def rebuild_totals(conn: asyncpg.Connection, pipelines: set[tuple]) -> None:
    """Rebuild these (enterprise_id, pipeline_id)'s running totals (replay)."""
    await _per_pipeline(conn, REBUILD_TOTALS, pipelines)


async def fix_watermarks(conn: asyncpg.Connection, enterprises: list[str]) -> None:
    """Move these enterprises' watermarks back to an hour start (replay)."""
    if enterprises:
        await conn.execute(FIX_WATERMARKS, sorted(enterprises))


async def add_recoveries(conn: asyncpg.Connection, enterprise_id: str, run_ids: list) -> None:
    await conn.execute(ADD_RECOVERIES, enterprise_id, run_ids)


async def recovery_drifts(conn: asyncpg.Connection) -> list[asyncpg.Record]:
    """run_recoveries rows missing, surplus or different (verify)."""
    return await conn.fetch(RECOVERY_DRIFTS)


async def refresh_recoveries(conn: asyncpg.Connection, pipelines: set[tuple]) -> None:
    """Recompute these (enterprise_id, pipeline_id)'s recoveries whole (replay's repair)."""
    await _per_pipeline(conn, REFRESH_PIPELINES, pipelines)


async def apply_deltas(conn: asyncpg.Connection, deltas: dict[tuple, int]) -> int:
    """Add the deltas {(enterprise, hour, pipeline, metric, bin): n} (zeros skipped)."""
    items = sorted((k, v) for k, v in deltas.items() if v)
    if items:
        await conn.execute(APPLY_DELTAS, *([k[i] for k, _ in items] for i in range(5)),
                           [v for _, v in items])
    await conn.execute(DROP_ZEROS)
    return len(items)
