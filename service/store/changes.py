"""The general write path's SQL: lock a run with its stage runs, write what the fold made.

Used for every change that can cascade (stage runs, terminal moves, INVALID, timeouts);
the use case (app/changes.py) plans and folds with the lifecycle in between. The caller
owns the transaction. Lock order, the same as the one-statement path (store/moves.py):
the run row, then its stage runs, then (last, held to commit) the feed lock.
"""
from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

import asyncpg

from service.domain import insights
from service.store import append
from service.store.columns import RUN_STATE_COLUMNS, STAGE_RUN_COLUMNS

LOCK_RUN = f"""
SELECT {', '.join('r.' + c for c in RUN_STATE_COLUMNS)}, p.name AS pipeline_name
FROM pipeline_runs r
JOIN pipelines p ON p.enterprise_id = r.enterprise_id AND p.id = r.pipeline_id
                AND p.deleted_at IS NULL
WHERE r.enterprise_id = $1 AND r.id = $2 AND ($3::uuid IS NULL OR r.pipeline_id = $3)
FOR UPDATE OF r
"""
LOCK_STAGE_RUNS = f"""
SELECT {', '.join(STAGE_RUN_COLUMNS)} FROM stage_runs
WHERE enterprise_id = $1 AND run_id = $2
ORDER BY ordinal
FOR UPDATE
"""
# Taken after the row locks, so a run's event times grow with its versions.
NOW = "SELECT clock_timestamp()"
UPDATE_STAGE_ROW = """
UPDATE stage_runs SET status = $3, updated_by = $4, updated_at = $5, started_at = $6,
    ended_at = $7
WHERE enterprise_id = $1 AND id = $2
"""
# The run's row, its insights keys and its events in one statement (append.py), so the
# keys move under the feed lock, held no longer than the append's. The row is locked
# already (LOCK_RUN). Two statements: when the write moves an insights key (moves_a_key),
# the one that keeps them, its run states the fold's `before` ($19 status, $20
# started_at, $21 ended_at) and the row as written; else the one without (moves.py).
_RUN_ROW = """run_row AS (
    UPDATE pipeline_runs SET status = $12, status_meta = $13, updated_by = $14,
        updated_at = $15, started_at = $16, ended_at = $17, version = $18
    WHERE enterprise_id = $1 AND id = $3
    RETURNING enterprise_id, pipeline_id, created_at, started_at, ended_at, status
)"""
WRITE_RUN = append.statement(f"{_RUN_ROW}, {append.EVENTS_FROM_ARRAYS}",
                             "SELECT count(*) FROM appended_events")
WRITE_RUN_KEYS = append.statement(f"""{_RUN_ROW}, run_states AS (
    SELECT x.* FROM run_row r,
         LATERAL (VALUES (-1, r.enterprise_id, r.pipeline_id, r.created_at, $20::timestamptz,
                          $21::timestamptz, $19::text),
                         (1, r.enterprise_id, r.pipeline_id, r.created_at, r.started_at,
                          r.ended_at, r.status)) AS x({append.RUN_STATE_NAMES})
), {append.EVENTS_FROM_ARRAYS}""", "SELECT count(*) FROM appended_events", run_states=True)


def moves_a_key(before: dict[str, Any], after: dict[str, Any]) -> bool:
    """Whether writing `after` over `before` moves one of the run's insights keys (their
    Python twin, domain/insights.py run_cells, as replay counts them; the general path
    changes neither the run's pipeline nor its created_at)."""
    return sorted(_cells(before)) != sorted(_cells(after))


def _cells(run: dict[str, Any]) -> list[tuple[int, str, int]]:
    return insights.run_cells(run["created_at"], run["started_at"], run["ended_at"],
                              run["status"])


async def load_for_update(conn: asyncpg.Connection, enterprise_id: str, run_id: uuid.UUID,
                          pipeline_id: uuid.UUID | None = None) -> tuple[dict, str] | None:
    """The run's state (with its stage runs) and pipeline name, locked; None: no live run."""
    row = await conn.fetchrow(LOCK_RUN, enterprise_id, run_id, pipeline_id)
    if row is None:
        return None
    state = {c: row[c] for c in RUN_STATE_COLUMNS}
    state["stage_runs"] = [dict(s) for s in await conn.fetch(LOCK_STAGE_RUNS, enterprise_id, run_id)]
    return state, row["pipeline_name"]


async def now(conn: asyncpg.Connection) -> datetime:
    return await conn.fetchval(NOW)


async def write(conn: asyncpg.Connection, before: dict[str, Any], after: dict[str, Any],
                events: list[dict[str, Any]]) -> None:
    """Write the folded state `after` over `before`, and append the events that made it."""
    changed = [s for s, old in zip(after["stage_runs"], before["stage_runs"]) if s != old]
    if changed:
        await conn.executemany(UPDATE_STAGE_ROW, [
            (s["enterprise_id"], s["id"], s["status"], s["updated_by"], s["updated_at"],
             s["started_at"], s["ended_at"]) for s in changed])
    args = [after["enterprise_id"], after["pipeline_id"], after["id"],
            events[0]["occurred_at"], *append.event_arrays(events),
            after["status"], after["status_meta"], after["updated_by"], after["updated_at"],
            after["started_at"], after["ended_at"], after["version"]]
    if moves_a_key(before, after):
        await conn.execute(WRITE_RUN_KEYS, *args, before["status"], before["started_at"],
                           before["ended_at"])
    else:
        await conn.execute(WRITE_RUN, *args)
