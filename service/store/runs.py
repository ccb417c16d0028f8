"""Pipeline runs: create, read and delete, each ONE statement that also appends its event.

Ordering guarantees every write here keeps (the append itself: store/append.py):
- The run's projection row is locked first (FOR UPDATE), so each change is checked against
  the run's current state and versions are 1..n without gaps.
- The enterprise's feed lock is taken last, right before the event gets its position, and
  held to commit (store/append.py).
- The event's timestamp is taken after the row lock, so timestamps grow with versions.
Status changes: store/moves.py (one statement) and store/changes.py (the general path).
Lists: store/run_lists.py.
"""
from __future__ import annotations

import uuid
from typing import Any

import asyncpg

from service.store import append, replication
from service.store.columns import run_of_row, run_select

RUN_JOIN = """
    pipeline_runs r
    JOIN pipelines p ON p.enterprise_id = r.enterprise_id AND p.id = r.pipeline_id
                    AND p.deleted_at IS NULL
"""

# Next run number (pipeline row lock), the stage snapshot, the run and its stage runs, then
# the run.created event that carries the snapshot.
CREATE_RUN = append.statement(f"""p AS (
    UPDATE pipelines SET last_run_number = last_run_number + 1
    WHERE enterprise_id = $1 AND id = $2 AND deleted_at IS NULL
    RETURNING id, name, last_run_number, coalesce(timeout_seconds, $9) AS timeout_seconds,
              clock_timestamp() AS at
), s AS (
    SELECT gen_random_uuid() AS id, st.id AS stage_id, st.ordinal, st.name, st.description,
           st.created_by, coalesce(st.timeout_seconds, $10) AS timeout_seconds
    FROM stages st JOIN p ON st.enterprise_id = $1 AND st.pipeline_id = p.id
), r AS (
    INSERT INTO pipeline_runs (enterprise_id, id, pipeline_id, run_number, status, status_meta,
                               created_by, updated_by, created_at, updated_at, version, deadline)
    SELECT $1, $3, p.id, p.last_run_number, $4, '{{}}', $6, $6, p.at, p.at, 1,
           p.at + make_interval(secs => p.timeout_seconds)
    FROM p
    RETURNING *
), sr AS (
    INSERT INTO stage_runs (enterprise_id, id, run_id, pipeline_id, stage_id, ordinal,
                            stage_meta, timeout_seconds, status, created_by, updated_by,
                            created_at, updated_at)
    SELECT $1, s.id, r.id, r.pipeline_id, s.stage_id, s.ordinal,
           jsonb_build_object('name', s.name, 'description', s.description,
                              'created_by', s.created_by),
           s.timeout_seconds, r.status, r.created_by, r.created_by, r.created_at, r.created_at
    FROM s, r
), run_states AS (
    SELECT 1 AS sign, r.enterprise_id, r.pipeline_id, r.created_at, r.started_at, r.ended_at,
           r.status
    FROM r
), appended AS (
    SELECT r.enterprise_id, r.pipeline_id, r.id AS run_id, 1 AS version, $7::text AS type,
           NULL::text AS from_status, r.status AS to_status, $5::text AS actor,
           $6::bigint AS actor_id, r.created_at AS occurred_at,
           jsonb_build_object(
               'run_number', r.run_number, 'timeout_seconds', p.timeout_seconds,
               'stage_runs', coalesce((
                   SELECT jsonb_agg(jsonb_build_object(
                       'id', s.id, 'stage_id', s.stage_id, 'ordinal', s.ordinal,
                       'name', s.name, 'description', s.description,
                       'created_by', s.created_by, 'timeout_seconds', s.timeout_seconds)
                       ORDER BY s.ordinal) FROM s), '[]'::jsonb)
           ) || $8::jsonb AS data,
           1 AS ord
    FROM r, p
)""", f"""SELECT {run_select('r', 'p.name')}, (SELECT count(*) FROM s) AS stage_count
FROM r, p""", run_states=True)

# The run (locked), deleted only if at the version asked for; `deleted` says which.
DELETE_RUN = append.statement(f"""cur AS (
    SELECT {run_select()}, clock_timestamp() AS at
    FROM {RUN_JOIN}
    WHERE r.enterprise_id = $1 AND r.pipeline_id = $2 AND r.id = $3
    FOR UPDATE OF r
), del AS (
    DELETE FROM pipeline_runs r USING cur
    WHERE r.enterprise_id = $1 AND r.id = cur.id AND ($7::int IS NULL OR cur.version = $7)
    RETURNING r.enterprise_id, r.pipeline_id, r.id, r.version, r.status, cur.at,
              r.created_at, r.started_at, r.ended_at
), stage_rows AS (
    DELETE FROM stage_runs s USING del WHERE s.enterprise_id = $1 AND s.run_id = del.id
), run_states AS (
    SELECT -1 AS sign, del.enterprise_id, del.pipeline_id, del.created_at, del.started_at,
           del.ended_at, del.status
    FROM del
), appended AS (
    SELECT del.enterprise_id, del.pipeline_id, del.id AS run_id, del.version + 1 AS version,
           $8::text AS type, del.status AS from_status, NULL::text AS to_status,
           $4::text AS actor, $5::bigint AS actor_id, del.at AS occurred_at,
           $6::jsonb AS data, 1 AS ord
    FROM del
)""", "SELECT cur.*, EXISTS (SELECT FROM appended_events) AS deleted FROM cur",
   run_states=True)

SELECT_RUN = f"""
SELECT {run_select()}, {replication.POSITION_COLUMN} FROM {RUN_JOIN}
WHERE r.enterprise_id = $1 AND r.pipeline_id = $2 AND r.id = $3
"""


async def create_run(conn: asyncpg.Connection, enterprise_id: str, pipeline_id: uuid.UUID,
                     status: str, actor: str, actor_id: int | None, event_type: str,
                     data: dict[str, Any], run_timeout: int,
                     stage_timeout: int) -> tuple[dict[str, Any], int] | None:
    """The new run and its number of stage runs; None when the pipeline is not there."""
    row = await conn.fetchrow(CREATE_RUN, enterprise_id, pipeline_id, uuid.uuid4(), status,
                              actor, actor_id, event_type, data, run_timeout, stage_timeout)
    return None if row is None else (run_of_row(row), row["stage_count"])


async def get_run(conn: asyncpg.Connection, enterprise_id: str, pipeline_id: uuid.UUID,
                  run_id: uuid.UUID) -> dict[str, Any] | None:
    row = await conn.fetchrow(SELECT_RUN, enterprise_id, pipeline_id, run_id)
    if row is None:
        return None
    replication.note(conn, row["wal_position"])
    return run_of_row(row)


async def delete_run(conn: asyncpg.Connection, enterprise_id: str, pipeline_id: uuid.UUID,
                     run_id: uuid.UUID, actor: str, actor_id: int | None, event_type: str,
                     data: dict[str, Any],
                     expected_version: int | None) -> tuple[dict[str, Any], bool] | None:
    """The run as it was, and whether it was deleted (not: another version); None: no run."""
    row = await conn.fetchrow(DELETE_RUN, enterprise_id, pipeline_id, run_id, actor, actor_id,
                              data, expected_version, event_type)
    return None if row is None else (run_of_row(row), row["deleted"])
