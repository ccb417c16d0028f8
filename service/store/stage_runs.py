"""Stage runs: reads from the stage_runs projection (changes: app/stage_runs.py, the general path)."""
from __future__ import annotations

import uuid
from typing import Any

import asyncpg

from service.domain.errors import NotFound
from service.store.columns import STAGE_RUN_FIELDS, answered

STAGE_RUN_COLUMNS = """
    s.id, s.enterprise_id, s.pipeline_id, s.run_id AS pipeline_run_id, s.stage_id, s.stage_meta,
    s.status, s.created_by, s.updated_by, s.created_at, s.updated_at, s.started_at, s.ended_at
"""
# A stage run is visible while its run is (live, in the caller's enterprise, pipeline kept).
VISIBLE = """
    stage_runs s
    JOIN pipeline_runs r ON r.enterprise_id = s.enterprise_id AND r.id = s.run_id
    JOIN pipelines p ON p.enterprise_id = r.enterprise_id AND p.id = r.pipeline_id
                    AND p.deleted_at IS NULL
"""
LIST_STAGE_RUNS = f"""
SELECT {STAGE_RUN_COLUMNS}, count(*) OVER () AS total_count FROM {VISIBLE}
WHERE s.enterprise_id = $1 AND s.run_id = $2 AND ($3::text IS NULL OR s.status = $3)
ORDER BY s.ordinal
LIMIT $4 OFFSET $5
"""
COUNT_STAGE_RUNS = f"""
SELECT count(*) FROM {VISIBLE}
WHERE s.enterprise_id = $1 AND s.run_id = $2 AND ($3::text IS NULL OR s.status = $3)
"""
RUN_VISIBLE = """
SELECT 1 FROM pipeline_runs r
JOIN pipelines p ON p.enterprise_id = r.enterprise_id AND p.id = r.pipeline_id
                AND p.deleted_at IS NULL
WHERE r.enterprise_id = $1 AND r.id = $2
"""
SELECT_STAGE_RUN = f"""
SELECT {STAGE_RUN_COLUMNS} FROM {VISIBLE}
WHERE s.enterprise_id = $1 AND s.run_id = $2 AND s.id = $3
"""


def _not_found(what: str = "stage run") -> NotFound:
    return NotFound(f"{what} not found")


async def list_stage_runs(conn: asyncpg.Connection, enterprise_id: str, run_id: uuid.UUID,
                          status: str | None, limit: int, offset: int) -> tuple[int, list[dict]]:
    rows = await conn.fetch(LIST_STAGE_RUNS, enterprise_id, run_id, status, limit, offset)
    if rows:
        return rows[0]["total_count"], [_public(r) for r in rows]
    if await conn.fetchval(RUN_VISIBLE, enterprise_id, run_id) is None:
        raise _not_found("pipeline run")
    return await conn.fetchval(COUNT_STAGE_RUNS, enterprise_id, run_id, status), []


async def get_stage_run(conn: asyncpg.Connection, enterprise_id: str, run_id: uuid.UUID,
                        stage_run_id: uuid.UUID) -> dict[str, Any]:
    row = await conn.fetchrow(SELECT_STAGE_RUN, enterprise_id, run_id, stage_run_id)
    if row is None:
        raise _not_found()
    return _public(row)


def _public(row: asyncpg.Record) -> dict[str, Any]:
    return answered(STAGE_RUN_FIELDS, row)
