"""Queries of the timeout sweeper: overdue runs and stage runs, and its advisory lock."""
from __future__ import annotations

import asyncpg

from service.infra.db import keeps_session_state
from service.store.locks import SWEEP_LOCK


TRY_LOCK = f"SELECT pg_try_advisory_lock({SWEEP_LOCK})"
UNLOCK = f"SELECT pg_advisory_unlock({SWEEP_LOCK})"
# Served by the partial index pipeline_runs_deadline (ended_at IS NULL).
OVERDUE_RUNS = """
SELECT r.enterprise_id, r.pipeline_id, r.id FROM pipeline_runs r
JOIN pipelines p ON p.enterprise_id = r.enterprise_id AND p.id = r.pipeline_id
                AND p.deleted_at IS NULL
WHERE r.ended_at IS NULL AND r.deadline < clock_timestamp() AND r.status = ANY($1::text[])
ORDER BY r.deadline
LIMIT $2
"""
# A stage run's clock starts when it starts running; 'running' matches the partial index
# stage_runs_running in schema.sql.
OVERDUE_STAGE_RUNS = """
SELECT s.enterprise_id, s.run_id, s.id FROM stage_runs s
JOIN pipeline_runs r ON r.enterprise_id = s.enterprise_id AND r.id = s.run_id
JOIN pipelines p ON p.enterprise_id = r.enterprise_id AND p.id = r.pipeline_id
                AND p.deleted_at IS NULL
WHERE s.status = 'running'
  AND s.started_at + make_interval(secs => s.timeout_seconds) < clock_timestamp()
ORDER BY s.started_at
LIMIT $1
"""


async def try_lock(conn: asyncpg.Connection) -> bool:
    keeps_session_state(conn)  # a session lock: the pool resets this connection in full
    return await conn.fetchval(TRY_LOCK)


async def unlock(conn: asyncpg.Connection) -> None:
    await conn.fetchval(UNLOCK)


async def overdue_runs(conn: asyncpg.Connection, open_statuses, limit: int) -> list:
    return await conn.fetch(OVERDUE_RUNS, list(open_statuses), limit)


async def overdue_stage_runs(conn: asyncpg.Connection, limit: int) -> list:
    return await conn.fetch(OVERDUE_STAGE_RUNS, limit)
