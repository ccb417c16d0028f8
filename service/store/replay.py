"""SQL for replay and verify: stream every run's events with its projection row, patch rows."""
from __future__ import annotations

from typing import Any, Iterable

import asyncpg

REPLAY_LOCK = 1703  # advisory-lock key: one replay at a time

PROJECTION_COLUMNS = (
    "enterprise_id", "id", "pipeline_id", "run_number", "status", "status_meta", "created_by",
    "updated_by", "created_at", "updated_at", "started_at", "ended_at", "version",
)
_P = ", ".join(f"p.{c} AS p_{c}" for c in PROJECTION_COLUMNS)

# Every event in run order; the run's projection row rides along on its first event, so
# one pass compares the fold with the projection without sorting either side in Python.
EVENTS_WITH_PROJECTION = f"""
SELECT e.enterprise_id, e.pipeline_id, e.run_id, e.version, e.type, e.from_status,
       e.to_status, e.actor_id, e.occurred_at, e.data, e.position,
       p.id IS NOT NULL AS has_row, {_P}
FROM run_events e
LEFT JOIN pipeline_runs p ON e.version = 1 AND p.enterprise_id = e.enterprise_id
                         AND p.id = e.run_id
ORDER BY e.enterprise_id, e.run_id, e.version
"""
# Projection rows with no events at all cannot be explained by the log.
ORPHAN_ROWS = f"""
SELECT {', '.join('p.' + c for c in PROJECTION_COLUMNS)} FROM pipeline_runs p
WHERE NOT EXISTS (SELECT 1 FROM run_events e
                  WHERE e.enterprise_id = p.enterprise_id AND e.run_id = p.id)
"""
# Runs with events committed after the scan's snapshot: positions beyond each enterprise's
# head (appends are serialized per enterprise), or any event of an enterprise not seen.
RUNS_CHANGED_SINCE = """
SELECT DISTINCT e.enterprise_id, e.run_id
FROM unnest($1::text[], $2::bigint[]) AS h(enterprise_id, head)
JOIN run_events e ON e.enterprise_id = h.enterprise_id AND e.position > h.head
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
# Guarded by the version seen in the scan: a row a live write moved on since is left for
# the locked catch-up pass.
UPDATE_ROW_IF_VERSION = f"""
INSERT INTO pipeline_runs ({_COLS}) VALUES ({_ARGS})
ON CONFLICT (enterprise_id, id) DO UPDATE SET {_SETS}
WHERE pipeline_runs.version = ${len(PROJECTION_COLUMNS) + 1}
"""
DELETE_ROW = "DELETE FROM pipeline_runs WHERE enterprise_id = $1 AND id = $2"
DELETE_ROW_IF_VERSION = DELETE_ROW + " AND version = $3"


def row_args(row: dict[str, Any]) -> list[Any]:
    return [row[c] for c in PROJECTION_COLUMNS]


async def patch_rows(conn: asyncpg.Connection, upserts: Iterable[dict], deletes: Iterable[tuple],
                     guarded: bool) -> None:
    """Write expected rows / remove unexplained ones; `guarded` checks the seen version."""
    upserts, deletes = list(upserts), list(deletes)
    if guarded:
        if upserts:
            await conn.executemany(UPDATE_ROW_IF_VERSION,
                                   [[*row_args(r), r["_seen_version"]] for r in upserts])
        if deletes:
            await conn.executemany(DELETE_ROW_IF_VERSION, deletes)
        return
    if upserts:
        await conn.executemany(UPSERT_ROW, [row_args(r) for r in upserts])
    if deletes:
        await conn.executemany(DELETE_ROW, [d[:2] for d in deletes])
