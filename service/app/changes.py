"""The general write path: lock the run, plan with the lifecycle, fold, write, append.

Every change that can cascade (stage runs, terminal moves, INVALID, timeouts) goes here;
a simple move has its one statement (store/moves.py, app/runs.py). The caller owns the
transaction; the row locks taken by load_for_update are held to its commit.
"""
from __future__ import annotations

import uuid
from typing import Any, Callable

import asyncpg

from service.app.context import Actor
from service.domain import lifecycle
from service.domain.errors import Conflict, NotFound, PreconditionFailed
from service.store import changes as store
from service.infra.appended import note_appended

Plan = Callable[[dict[str, Any]], list[lifecycle.Draft]]


def conflict(exc: lifecycle.IllegalTransition) -> Conflict:
    return Conflict(str(exc), content={"current_status": exc.current,
                                       "requested_status": exc.requested})


async def change(conn: asyncpg.Connection, actor: Actor, run_id: uuid.UUID,
                 pipeline_id: uuid.UUID | None, expected_version: int | None,
                 plan: Plan) -> tuple[dict[str, Any], str]:
    """Lock the run, plan its events, fold and write them; the new state and pipeline name."""
    loaded = await store.load_for_update(conn, actor.enterprise_id, run_id, pipeline_id)
    if loaded is None:
        raise NotFound("pipeline run not found")
    state, pipeline_name = loaded
    if expected_version is not None and state["version"] != expected_version:
        raise PreconditionFailed(content={"current_version": state["version"]})
    try:
        drafts = plan(state)
    except lifecycle.IllegalTransition as exc:
        raise conflict(exc) from None
    return await commit(conn, state, drafts, actor), pipeline_name


async def commit(conn: asyncpg.Connection, before: dict[str, Any],
                 drafts: list[lifecycle.Draft], actor: Actor) -> dict[str, Any]:
    """Fold the drafts into events over `before` and write them; the new state."""
    if not drafts:
        return before
    at = await store.now(conn)
    state, events = before, []
    for n, draft in enumerate(drafts, start=1):
        event = {
            "type": draft.type, "from_status": draft.from_status, "to_status": draft.to_status,
            "actor": lifecycle.SYSTEM if draft.system else actor.name,
            "actor_id": None if draft.system else actor.token_id,
            "occurred_at": at, "version": before["version"] + n,
            "data": {**draft.data, **actor.event_data()},
        }
        state = lifecycle.apply(state, event)
        events.append(event)
    await store.write(conn, before, state, events)
    for event in events:
        note_appended(event["type"])
    return state
