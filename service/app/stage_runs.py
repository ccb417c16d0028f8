"""Stage runs: read them, and change one (the general path: its run may follow)."""
from __future__ import annotations

import uuid
from typing import Any

import asyncpg

from service.app import changes
from service.app.context import Actor, Db
from service.domain import lifecycle
from service.domain.errors import NotFound
from service.store import stage_runs as store


async def list_stage_runs(conn: asyncpg.Connection, enterprise_id: str, run_id: uuid.UUID,
                          status: str | None, limit: int, offset: int) -> tuple[int, list[dict]]:
    return await store.list_stage_runs(conn, enterprise_id, run_id, status, limit, offset)


async def get(conn: asyncpg.Connection, enterprise_id: str, run_id: uuid.UUID,
              stage_run_id: uuid.UUID) -> dict[str, Any]:
    return await store.get_stage_run(conn, enterprise_id, run_id, stage_run_id)


async def change_status(db: Db, actor: Actor, run_id: uuid.UUID, stage_run_id: uuid.UUID,
                        target: str, *, system: bool = False,
                        reason: str | None = None) -> dict[str, Any]:
    """Move a stage run; the run follows (derived outcome) in the same transaction."""

    def plan(state: dict[str, Any]) -> list[lifecycle.Draft]:
        current = next((s for s in state["stage_runs"] if s["id"] == stage_run_id), None)
        if current is None:
            raise NotFound("stage run not found")
        if current["status"] == target:
            return []
        return lifecycle.plan_stage_change(state, stage_run_id, target, system=system,
                                           reason=reason)

    async with db.connection() as conn, conn.transaction():
        await changes.change(conn, actor, run_id, None, None, plan)
        return await store.get_stage_run(conn, actor.enterprise_id, run_id, stage_run_id)
