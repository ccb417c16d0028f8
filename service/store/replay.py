"""SQL for replay and verify: stream the event log, then the projection rows; patch rows."""
from __future__ import annotations

import json
import re
from collections import Counter

import asyncpg

from service.store import counts, insights
from service.store.columns import RUN_STATE_COLUMNS as PROJECTION_COLUMNS
from service.store.columns import STAGE_RUN_COLUMNS
from service.store.locks import FEED_LOCKS_OF_ARRAY, REPLAY_LOCK
_P = ", ".join(f"p.{c} AS p_{c}" for c in PROJECTION_COLUMNS)

# The scan reads the log in the heap's order, a sequential read (reading each run's events
# in run order was a random heap access per event), and folds each run in memory as its
# events pass by (app/replay.py). The heap's order is the order of appends (positions) but
# for local reorderings, as a row goes where there is room: an event ahead of its run's
# next version waits in memory for the ones before it; a run with a repeated or missing
# version is re-read in version order through RUN_EVENTS. A row per event, of the runs
# with ids in [$1, $2] (a part: scan_parts.py). The pipeline_id is only sent for
# run.created, the one event the fold reads it from.
EVENTS_IN_LOG_ORDER = """
SELECT enterprise_id, run_id, version, type, to_status, actor_id, occurred_at,
       CASE WHEN type = 'run.created' THEN pipeline_id END, data
FROM run_events WHERE run_id BETWEEN $1 AND $2
"""
# Each enterprise's last position in the snapshot (the catch-up's starting point), read
# from the primary key's index, one enterprise at a time.
HEADS = """
SELECT h.enterprise_id,
       (SELECT max(e.position) FROM run_events e WHERE e.enterprise_id = h.enterprise_id)
FROM unnest($1::text[]) AS h(enterprise_id)
"""
# The projection rows of the runs with ids in [$1, $2], read in heap order: the run's
# columns (in the order of PROJECTION_COLUMNS) and its stage runs as parallel arrays, one
# per STAGE_RUN_ARRAY_COLUMNS column, in ordinal order (scan() compares them as tuples).
# Typed arrays rather than an array of anonymous ROWs, which cost the client three times
# as much to decode. A stage run's enterprise_id and run_id are the run's: not sent.
STAGE_RUN_ARRAY_COLUMNS = tuple(c for c in STAGE_RUN_COLUMNS
                                if c not in ("enterprise_id", "run_id"))
# Aggregated from rows read in ordinal order (the unique index's), without an ORDER BY in
# each aggregate: that is a sort per column per run. The arrays are one pass over the same
# rows, so they line up whatever their order; scan() sorts a run's stage runs by ordinal in
# the rare case they came out of order.
_S = ", ".join(f"array_agg(s.{c}) AS s_{c}" for c in STAGE_RUN_ARRAY_COLUMNS)
PROJECTION_ROWS = f"""
SELECT p.enterprise_id, p.id, true AS has_row, {_P}, sa.*
FROM pipeline_runs p
LEFT JOIN LATERAL (
    SELECT {_S} FROM (
        SELECT * FROM stage_runs s
        WHERE s.enterprise_id = p.enterprise_id AND s.run_id = p.id ORDER BY s.ordinal
    ) AS s
) AS sa ON true
WHERE p.id BETWEEN $1 AND $2
"""
# Where the projection row's columns start in a PROJECTION_ROWS record, and end (the
# stage-run arrays follow; NULL when the run has none).
ROW_AT = 3
STAGE_RUNS_AT = ROW_AT + len(PROJECTION_COLUMNS)
# The scan's transaction: no parallel workers (they would interleave a run's events out of
# version order), and no sorts (the stage runs come from their index in ordinal order).
SCAN_SETTINGS = """
SET LOCAL work_mem = '256MB';
SET LOCAL max_parallel_workers_per_gather = 0;
SET LOCAL enable_sort = off;
"""
PREFETCH = 5000  # rows per round trip of the scan's cursors
# The scan's parts share the snapshot of the first: exported there, imported by the others.
EXPORT_SNAPSHOT = "SELECT pg_export_snapshot()"
# How many runs and events there are, about: the planner's own estimate of a scan of each
# (EXPLAIN). Not pg_class.reltuples alone: that is unknown (-1, read as 0) until the table
# was first vacuumed or analyzed, e.g. right after `seed`, which made the scan plan one
# process and one range for a million runs; the planner estimates from the relation's
# current size then, and scales reltuples by it otherwise.
ESTIMATED_RUNS = "EXPLAIN (FORMAT JSON) SELECT 1 FROM pipeline_runs"
ESTIMATED_EVENTS = "EXPLAIN (FORMAT JSON) SELECT 1 FROM run_events"


async def estimated_rows(conn: asyncpg.Connection, explain: str) -> int:
    """The row count the planner expects of `explain` (ESTIMATED_RUNS, ESTIMATED_EVENTS)."""
    plan = await conn.fetchval(explain)
    if isinstance(plan, str):
        plan = json.loads(plan)
    return max(0, int(plan[0]["Plan"]["Plan Rows"]))


def set_snapshot(snapshot_id: str) -> str:
    """SET TRANSACTION SNAPSHOT takes no parameter: the id (hex digits and dashes, as
    pg_export_snapshot() makes them) is checked, then written in."""
    if not re.fullmatch(r"[0-9A-Fa-f-]+", snapshot_id):
        raise ValueError(f"not a snapshot id: {snapshot_id!r}")
    return f"SET TRANSACTION SNAPSHOT '{snapshot_id}'"

# Projection rows with no events at all cannot be explained by the log: the scan finds them
# among PROJECTION_ROWS (no fold). Stage runs without a run row are not among those.
ORPHAN_STAGE_RUN_KEYS = """
SELECT DISTINCT s.enterprise_id, s.run_id FROM stage_runs s
WHERE NOT EXISTS (SELECT 1 FROM pipeline_runs p
                  WHERE p.enterprise_id = s.enterprise_id AND p.id = s.run_id)
"""
# Runs with events committed after the scan's snapshot: positions beyond each enterprise's
# head (appends are serialized per enterprise), or any event of an enterprise not seen.
# Each enterprise's events past its head come from the primary key's index: OFFSET 0 keeps
# the planner from flattening the subquery into a hash join over the whole log (6 s at 13M
# events, under the catch-up's write lock).
RUNS_CHANGED_SINCE = """
SELECT DISTINCT h.enterprise_id, c.run_id
FROM unnest($1::text[], $2::bigint[]) AS h(enterprise_id, head)
CROSS JOIN LATERAL (SELECT e.run_id FROM run_events e
                    WHERE e.enterprise_id = h.enterprise_id AND e.position > h.head
                    OFFSET 0) AS c
UNION
SELECT DISTINCT e.enterprise_id, e.run_id FROM run_events e
WHERE e.enterprise_id IN (SELECT t.enterprise_id FROM api_tokens t)
  AND NOT (e.enterprise_id = ANY($1::text[]))
"""
RUN_EVENTS = """
SELECT enterprise_id, pipeline_id, run_id, version, type, from_status, to_status, actor_id,
       occurred_at, data, position
FROM run_events WHERE enterprise_id = $1 AND run_id = $2 ORDER BY version
"""
SELECT_ROW = f"""
SELECT {', '.join(PROJECTION_COLUMNS)} FROM pipeline_runs WHERE enterprise_id = $1 AND id = $2
"""
SELECT_STAGE_ROWS = f"""
SELECT {', '.join(STAGE_RUN_COLUMNS)} FROM stage_runs
WHERE enterprise_id = $1 AND run_id = $2 ORDER BY ordinal
"""
# The catch-up's transaction: its queries read a few rows by index, but their estimates
# (a whole log's) would have them compiled by JIT first, seconds under the write lock.
CATCH_UP_SETTINGS = "SET LOCAL jit = off"
# Writers take ROW EXCLUSIVE on pipeline_runs before appending, so this lock freezes the
# log and the projection together while reads go on.
LOCK_WRITES = "LOCK TABLE pipeline_runs IN SHARE ROW EXCLUSIVE MODE"
TRY_REPLAY_LOCK = f"SELECT pg_try_advisory_lock({REPLAY_LOCK})"
UNLOCK_REPLAY = f"SELECT pg_advisory_unlock({REPLAY_LOCK})"

_COLS = ", ".join(PROJECTION_COLUMNS)
_ARGS = ", ".join(f"${i + 1}" for i in range(len(PROJECTION_COLUMNS)))
_SETS = ", ".join(f"{c} = EXCLUDED.{c}" for c in PROJECTION_COLUMNS[2:])
UPSERT_ROW = f"""
INSERT INTO pipeline_runs ({_COLS}) VALUES ({_ARGS})
ON CONFLICT (enterprise_id, id) DO UPDATE SET {_SETS}
"""
INSERT_STAGE_ROW = f"""
INSERT INTO stage_runs ({', '.join(STAGE_RUN_COLUMNS)})
VALUES ({', '.join(f"${i + 1}" for i in range(len(STAGE_RUN_COLUMNS)))})
"""
DELETE_ROW = "DELETE FROM pipeline_runs WHERE enterprise_id = $1 AND id = $2"
DELETE_STAGE_ROWS = "DELETE FROM stage_runs WHERE enterprise_id = $1 AND run_id = $2"
# Row locks of the runs a patch is about to write, with what their counters count.
LOCK_VERSIONS = """
SELECT r.enterprise_id, r.id, r.version, r.pipeline_id, r.status FROM pipeline_runs r
JOIN unnest($1::text[], $2::uuid[]) AS k(enterprise_id, id)
  ON r.enterprise_id = k.enterprise_id AND r.id = k.id
FOR UPDATE OF r
"""


async def patch_runs(conn: asyncpg.Connection, items: list[tuple], guarded: bool) -> list[tuple]:
    """Make each run's rows what its events say; items are (key, expected, seen_version).

    Guarded, a run whose row moved on since it was seen is skipped (and returned), so a
    patch never overwrites a live write. run_counts moves with the rows (store/counts.py).
    The caller owns the transaction.
    """
    skipped: list[tuple] = []
    if not items:
        return skipped
    keys = [item[0] for item in items]
    current = {(r["enterprise_id"], r["id"]): r for r in await conn.fetch(
        LOCK_VERSIONS, [k[0] for k in keys], [k[1] for k in keys])}
    if guarded:
        kept = []
        for item in items:
            row = current.get(item[0])
            version = row["version"] if row is not None else None
            (skipped if version != item[2] else kept).append(item)
        items = kept
    if not items:
        return skipped
    # The batch's feed locks, in one fixed order, after its row locks and before its
    # writes: the insights' row trigger writes under them (schema.sql run_insights_row),
    # as every writer's does.
    await conn.fetchval(FEED_LOCKS_OF_ARRAY, sorted({key[0] for key, _, _ in items}))
    await conn.execute(insights.ROW_TRIGGER)  # these writes carry no upkeep of their own
    deltas: Counter = Counter()
    for (enterprise_id, run_id), expected, _seen in items:
        row = current.get((enterprise_id, run_id))
        if row is not None:
            deltas[(enterprise_id, row["pipeline_id"], row["status"])] -= 1
        if expected is not None:
            deltas[(enterprise_id, expected["pipeline_id"], expected["status"])] += 1
    await conn.executemany(DELETE_STAGE_ROWS, [key for key, _, _ in items])
    await conn.executemany(DELETE_ROW, [key for key, expected, _ in items if expected is None])
    upserts = [expected for _, expected, _ in items if expected is not None]
    if upserts:
        await conn.executemany(UPSERT_ROW, [[r[c] for c in PROJECTION_COLUMNS] for r in upserts])
        stage_rows = [[s[c] for c in STAGE_RUN_COLUMNS] for r in upserts for s in r["stage_runs"]]
        if stage_rows:
            await conn.executemany(INSERT_STAGE_ROW, stage_rows)
    await counts.apply_deltas(conn, deltas)
    return skipped
