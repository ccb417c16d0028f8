"""Pipeline runs: create, read, list, change status and delete (the use cases).

A status change takes one of two paths, decided here and nowhere else:
- a simple move (lifecycle.SIMPLE_RUN_TARGETS: nothing follows from it, tests/
  test_simple_moves.py proves it) is ONE statement (store/moves.py), shared with the
  enterprise's concurrent ones through group commit when the caller allows it;
- any other (terminal moves cascade, `complete` derives an outcome, the sweeper's timeouts)
  takes the general path (app/changes.py): lock, plan with the lifecycle, fold, write.
"""
from __future__ import annotations

import itertools
import uuid
from datetime import datetime
from typing import Any

import asyncpg

from service.app import changes
from service.app.context import Actor, Db
from service.domain import lifecycle
from service.domain.errors import DomainError, NotFound, PreconditionFailed
from service.store import events as event_store
from service.store import moves, run_lists
from service.store import runs as store
from service.infra.appended import note_appended
from service.store.columns import answered_run
from service.app.outages import translated

# The outcome of a grouped change whose run another transaction had locked: it then runs
# alone, on its caller's connection, waiting for the row as it would anyway.
BUSY = object()


def _not_found() -> NotFound:
    return NotFound("pipeline run not found")


async def create(db: Db, actor: Actor, pipeline_id: uuid.UUID) -> dict[str, Any]:
    """Create a run with a stage run per stage; without stages it is invalid at once."""
    async with db.connection() as conn, conn.transaction():
        created = await store.create_run(
            conn, actor.enterprise_id, pipeline_id, lifecycle.INITIAL_STATUS, actor.name,
            actor.token_id, lifecycle.RUN_CREATED, actor.event_data(),
            lifecycle.DEFAULT_RUN_TIMEOUT_SECONDS, lifecycle.DEFAULT_STAGE_TIMEOUT_SECONDS)
        if created is None:
            raise NotFound("pipeline not found")
        run, stage_count = created
        note_appended(lifecycle.RUN_CREATED)
        if stage_count > 0:
            return run
        state, name = await changes.change(conn, actor, run["id"], pipeline_id, None,
                                           lifecycle.plan_creation)
        return answered_run(state, name)


async def get(conn: asyncpg.Connection, enterprise_id: str, pipeline_id: uuid.UUID,
              run_id: uuid.UUID) -> dict[str, Any]:
    run = await store.get_run(conn, enterprise_id, pipeline_id, run_id)
    if run is None:
        raise _not_found()
    return run


async def get_as_of(conn: asyncpg.Connection, enterprise_id: str, pipeline_id: uuid.UUID,
                    run_id: uuid.UUID, at: datetime) -> dict[str, Any]:
    """The run exactly as it was at `at`, folded with the live path's lifecycle."""
    events = await event_store.run_events(conn, enterprise_id, pipeline_id, run_id)
    # Versions are the truth of order; the fold stops at the first event after the instant.
    run = lifecycle.fold(itertools.takewhile(lambda e: e["occurred_at"] <= at, events))
    if run is None:
        raise NotFound("pipeline run did not exist at that time")
    return answered_run(run, await event_store.pipeline_name(conn, enterprise_id, pipeline_id))


async def list_runs(conn: asyncpg.Connection, enterprise_id: str, *,
                    pipeline_id: uuid.UUID | None, status: str | None,
                    pipeline_name: str | None, ordering: str | None, limit: int,
                    offset: int, cursor: str | None = None, **dates) -> run_lists.Page:
    """A page of runs; dates: created_after/_before, updated_after/_before (None: unset)."""
    filters = run_lists.Filters(enterprise_id, pipeline_id, pipeline_name, status, **dates)
    return await run_lists.list_runs(conn, filters, ordering=ordering, limit=limit,
                                     offset=offset, cursor=cursor)


async def change_status(db: Db, actor: Actor, pipeline_id: uuid.UUID | None,
                        run_id: uuid.UUID, target: str, *,
                        expected_version: int | None = None, reason: str | None = None,
                        system: bool = False) -> dict[str, Any]:
    """Move a run to `target`; the same status again is a no-op answered with the run."""
    if target in lifecycle.SIMPLE_RUN_TARGETS and not system:
        return await _simple(db, actor, moves.StatusChange(
            actor.enterprise_id, pipeline_id, run_id, target, actor.name, actor.token_id,
            actor.event_data(reason), expected_version))

    def plan(state: dict[str, Any]) -> list[lifecycle.Draft]:
        if state["status"] == target:
            return []
        return lifecycle.plan_run_change(state, target, system=system, reason=reason)

    async with db.connection() as conn, conn.transaction():
        state, name = await changes.change(conn, actor, run_id, pipeline_id,
                                           expected_version, plan)
    return answered_run(state, name)


async def _simple(db: Db, actor: Actor, change: moves.StatusChange) -> dict[str, Any]:
    """One statement: shared with concurrent changes (group commit) when allowed, or alone
    when not, or when the group found the run busy."""
    if db.group is not None:
        with translated():
            outcome, position = await db.group.run(actor.enterprise_id, change)
        if outcome is not BUSY:
            db.saw(position, announced=position is not None)  # (both read after its commit)
            return outcome
    async with db.connection() as conn:
        (row,) = await moves.change_statuses(conn, [change])
    outcome = _outcome(change, row)
    if isinstance(outcome, DomainError):
        raise outcome
    return outcome


async def grouped(conn: asyncpg.Connection, group: list[moves.StatusChange]) -> list[Any]:
    """Group commit's statement (app/groupcommit.py): never waits for a busy run's lock."""
    rows = await moves.change_statuses(conn, group, skip_locked=True)
    return [_outcome(change, row) for change, row in zip(group, rows)]


def _outcome(change: moves.StatusChange, row: asyncpg.Record) -> Any:
    """What the caller of one change learns: the run, BUSY, or why nothing changed."""
    if row["busy"]:
        return BUSY
    if row["current_status"] is None:
        return _not_found()
    if row["changed"]:
        note_appended(lifecycle.RUN_STATUS_CHANGED, into=change.appended)
        return answered_run(row)
    if change.expected_version is not None and row["current_version"] != change.expected_version:
        return PreconditionFailed(content={"current_version": row["current_version"]})
    if row["current_status"] == change.target:
        return answered_run(row)  # a no-op: the run as it is, locked, when the statement ran
    return changes.conflict(lifecycle.IllegalTransition(row["current_status"], change.target))


async def delete(db: Db, actor: Actor, pipeline_id: uuid.UUID, run_id: uuid.UUID, *,
                 expected_version: int | None = None) -> dict[str, Any]:
    """Delete the run's projection (its events stay); the run as it was."""
    async with db.connection() as conn:
        result = await store.delete_run(conn, actor.enterprise_id, pipeline_id, run_id,
                                        actor.name, actor.token_id, lifecycle.RUN_DELETED,
                                        actor.event_data(), expected_version)
    if result is None:
        raise _not_found()
    run, deleted = result
    if not deleted:
        raise PreconditionFailed(content={"current_version": run["version"]})
    note_appended(lifecycle.RUN_DELETED)
    return run
