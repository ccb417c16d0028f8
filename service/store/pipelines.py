"""Pipelines and their stages (plain tables: the event store is about runs)."""
from __future__ import annotations

import uuid
from typing import Any

import asyncpg

from service.domain.errors import NotFound

PIPELINE_COLUMNS = """
    p.id, p.enterprise_id, p.name, p.description, p.timeout_seconds, p.is_active, p.is_default,
    p.created_by, p.updated_by, p.created_at, p.updated_at,
    EXISTS (SELECT 1 FROM stages s WHERE s.enterprise_id = p.enterprise_id AND s.pipeline_id = p.id)
        AS is_valid
"""
INSERT_PIPELINE = """
INSERT INTO pipelines AS p (enterprise_id, id, name, description, timeout_seconds, is_active,
                            is_default, created_by, updated_by)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $8)
RETURNING p.id
"""
SELECT_PIPELINE = f"""
SELECT {PIPELINE_COLUMNS} FROM pipelines p
WHERE p.enterprise_id = $1 AND p.id = $2 AND p.deleted_at IS NULL
"""
# Ordering keys map to fixed SQL here; request text never reaches the statement.
PIPELINE_ORDERINGS = {
    "name": "p.name ASC, p.id ASC",
    "-name": "p.name DESC, p.id DESC",
    None: "p.created_at DESC, p.id DESC",
}
LIST_PIPELINES = """
SELECT {columns}, count(*) OVER () AS total_count FROM pipelines p
WHERE p.enterprise_id = $1 AND p.deleted_at IS NULL
  AND ($2::text IS NULL OR p.name = $2)
  AND ($3::boolean IS NULL OR p.is_default = $3)
ORDER BY {order}
LIMIT $4 OFFSET $5
"""
COUNT_PIPELINES = """
SELECT count(*) FROM pipelines p
WHERE p.enterprise_id = $1 AND p.deleted_at IS NULL
  AND ($2::text IS NULL OR p.name = $2)
  AND ($3::boolean IS NULL OR p.is_default = $3)
"""
UPDATE_PIPELINE = """
UPDATE pipelines SET
    name = coalesce($3, name),
    description = coalesce($4, description),
    timeout_seconds = CASE WHEN $5 THEN $6 ELSE timeout_seconds END,
    is_active = coalesce($7, is_active),
    is_default = coalesce($8, is_default),
    updated_by = $9,
    updated_at = clock_timestamp()
WHERE enterprise_id = $1 AND id = $2 AND deleted_at IS NULL
RETURNING id
"""
# Soft delete: the runs and events of a deleted pipeline stay for the audit trail.
DELETE_PIPELINE = """
UPDATE pipelines SET deleted_at = clock_timestamp(), updated_by = $3, updated_at = clock_timestamp()
WHERE enterprise_id = $1 AND id = $2 AND deleted_at IS NULL
RETURNING id
"""

STAGE_COLUMNS = """
    s.id, s.enterprise_id, s.pipeline_id, s.name, s.description, s.timeout_seconds, s.ordinal,
    s.created_by, s.updated_by, s.created_at, s.updated_at
"""
# Taking the next ordinal from the pipeline row locks it, so concurrent adds keep their order.
INSERT_STAGE = f"""
WITH p AS (
    UPDATE pipelines SET last_stage_ordinal = last_stage_ordinal + 1
    WHERE enterprise_id = $1 AND id = $2 AND deleted_at IS NULL
    RETURNING last_stage_ordinal
)
INSERT INTO stages AS s (enterprise_id, id, pipeline_id, name, description, timeout_seconds,
                         ordinal, created_by, updated_by)
SELECT $1, $3, $2, $4, $5, $6, p.last_stage_ordinal, $7, $7 FROM p
RETURNING {STAGE_COLUMNS}
"""
# Joined with the live pipeline: a deleted pipeline's stages are not listed.
LIST_STAGES = f"""
SELECT {STAGE_COLUMNS}, count(*) OVER () AS total_count FROM stages s
JOIN pipelines p ON p.enterprise_id = s.enterprise_id AND p.id = s.pipeline_id AND p.deleted_at IS NULL
WHERE s.enterprise_id = $1 AND s.pipeline_id = $2
ORDER BY s.ordinal
LIMIT $3 OFFSET $4
"""
COUNT_STAGES = """
SELECT count(*) FROM stages s WHERE s.enterprise_id = $1 AND s.pipeline_id = $2
"""
ALL_STAGES = f"""
SELECT {STAGE_COLUMNS} FROM stages s
WHERE s.enterprise_id = $1 AND s.pipeline_id = $2
ORDER BY s.ordinal
"""
SELECT_STAGE = f"""
SELECT {STAGE_COLUMNS} FROM stages s
JOIN pipelines p ON p.enterprise_id = s.enterprise_id AND p.id = s.pipeline_id AND p.deleted_at IS NULL
WHERE s.enterprise_id = $1 AND s.pipeline_id = $2 AND s.id = $3
"""
UPDATE_STAGE = f"""
UPDATE stages s SET
    name = coalesce($4, s.name),
    description = coalesce($5, s.description),
    timeout_seconds = CASE WHEN $6 THEN $7 ELSE s.timeout_seconds END,
    updated_by = $8,
    updated_at = clock_timestamp()
FROM pipelines p
WHERE s.enterprise_id = $1 AND s.pipeline_id = $2 AND s.id = $3
  AND p.enterprise_id = s.enterprise_id AND p.id = s.pipeline_id AND p.deleted_at IS NULL
RETURNING {STAGE_COLUMNS}
"""
# Stage runs keep a snapshot of their stage, so a stage can be deleted outright.
DELETE_STAGE = f"""
DELETE FROM stages s USING pipelines p
WHERE s.enterprise_id = $1 AND s.pipeline_id = $2 AND s.id = $3
  AND p.enterprise_id = s.enterprise_id AND p.id = s.pipeline_id AND p.deleted_at IS NULL
RETURNING {STAGE_COLUMNS}
"""


def _pipeline_not_found() -> NotFound:
    return NotFound("pipeline not found")


async def get_pipeline(conn: asyncpg.Connection, enterprise_id: str, pipeline_id: uuid.UUID,
                       with_stages: bool = True) -> dict[str, Any]:
    row = await conn.fetchrow(SELECT_PIPELINE, enterprise_id, pipeline_id)
    if row is None:
        raise _pipeline_not_found()
    pipeline = dict(row)
    if with_stages:
        pipeline["stages"] = [dict(s) for s in await conn.fetch(ALL_STAGES, enterprise_id, pipeline_id)]
    return pipeline


async def create_pipeline(conn: asyncpg.Connection, enterprise_id: str, actor_id: int,
                          fields: dict[str, Any]) -> dict[str, Any]:
    """Create a pipeline and, in the same transaction, the stages given with it."""
    pipeline_id = uuid.uuid4()
    async with conn.transaction():
        await conn.execute(
            INSERT_PIPELINE, enterprise_id, pipeline_id, fields["name"],
            fields.get("description") or "", fields.get("timeout_seconds"),
            fields.get("is_active", True), fields.get("is_default", False), actor_id,
        )
        for stage in fields.get("stages") or ():
            await add_stage(conn, enterprise_id, pipeline_id, actor_id, stage)
        return await get_pipeline(conn, enterprise_id, pipeline_id)


async def list_pipelines(conn: asyncpg.Connection, enterprise_id: str, *, name: str | None,
                         default: bool | None, ordering: str | None, limit: int,
                         offset: int) -> tuple[int, list[dict[str, Any]]]:
    sql = LIST_PIPELINES.format(columns=PIPELINE_COLUMNS, order=PIPELINE_ORDERINGS[ordering])
    rows = await conn.fetch(sql, enterprise_id, name, default, limit, offset)
    if rows:
        total = rows[0]["total_count"]
    else:
        total = await conn.fetchval(COUNT_PIPELINES, enterprise_id, name, default)
    return total, [_without_total(r) for r in rows]


async def update_pipeline(conn: asyncpg.Connection, enterprise_id: str, pipeline_id: uuid.UUID,
                          actor_id: int, fields: dict[str, Any]) -> dict[str, Any]:
    async with conn.transaction():
        found = await conn.fetchval(
            UPDATE_PIPELINE, enterprise_id, pipeline_id, fields.get("name"),
            fields.get("description"), "timeout_seconds" in fields, fields.get("timeout_seconds"),
            fields.get("is_active"), fields.get("is_default"), actor_id,
        )
        if found is None:
            raise _pipeline_not_found()
        return await get_pipeline(conn, enterprise_id, pipeline_id)


async def delete_pipeline(conn: asyncpg.Connection, enterprise_id: str, pipeline_id: uuid.UUID,
                          actor_id: int) -> dict[str, Any]:
    async with conn.transaction():
        pipeline = await get_pipeline(conn, enterprise_id, pipeline_id)
        await conn.execute(DELETE_PIPELINE, enterprise_id, pipeline_id, actor_id)
        return pipeline


async def add_stage(conn: asyncpg.Connection, enterprise_id: str, pipeline_id: uuid.UUID,
                    actor_id: int, fields: dict[str, Any]) -> dict[str, Any]:
    row = await conn.fetchrow(
        INSERT_STAGE, enterprise_id, pipeline_id, uuid.uuid4(), fields["name"],
        fields.get("description") or "", fields.get("timeout_seconds"), actor_id,
    )
    if row is None:
        raise _pipeline_not_found()
    return dict(row)


async def list_stages(conn: asyncpg.Connection, enterprise_id: str, pipeline_id: uuid.UUID,
                      limit: int, offset: int) -> tuple[int, list[dict[str, Any]]]:
    rows = await conn.fetch(LIST_STAGES, enterprise_id, pipeline_id, limit, offset)
    if rows:
        return rows[0]["total_count"], [_without_total(r) for r in rows]
    await get_pipeline(conn, enterprise_id, pipeline_id, with_stages=False)  # 404 if absent
    return await conn.fetchval(COUNT_STAGES, enterprise_id, pipeline_id), []


async def get_stage(conn: asyncpg.Connection, enterprise_id: str, pipeline_id: uuid.UUID,
                    stage_id: uuid.UUID) -> dict[str, Any]:
    return _stage_or_404(await conn.fetchrow(SELECT_STAGE, enterprise_id, pipeline_id, stage_id))


async def update_stage(conn: asyncpg.Connection, enterprise_id: str, pipeline_id: uuid.UUID,
                       stage_id: uuid.UUID, actor_id: int, fields: dict[str, Any]) -> dict[str, Any]:
    row = await conn.fetchrow(
        UPDATE_STAGE, enterprise_id, pipeline_id, stage_id, fields.get("name"),
        fields.get("description"), "timeout_seconds" in fields, fields.get("timeout_seconds"),
        actor_id,
    )
    return _stage_or_404(row)


async def delete_stage(conn: asyncpg.Connection, enterprise_id: str, pipeline_id: uuid.UUID,
                       stage_id: uuid.UUID) -> dict[str, Any]:
    return _stage_or_404(await conn.fetchrow(DELETE_STAGE, enterprise_id, pipeline_id, stage_id))


def _stage_or_404(row: asyncpg.Record | None) -> dict[str, Any]:
    if row is None:
        raise NotFound("stage not found")
    return dict(row)


def _without_total(row: asyncpg.Record) -> dict[str, Any]:
    item = dict(row)
    item.pop("total_count", None)
    return item
