"""Pipeline runs: every write appends its event and updates the projection in one statement.

Ordering guarantees every write here keeps:
- The run's projection row is locked first (FOR UPDATE), so each change is checked against
  the run's current state and versions are 1..n without gaps.
- The enterprise's feed lock (a transaction-scoped advisory lock) is taken last, right
  before the event row gets its position, and held to commit. Appends of one enterprise
  therefore commit in position order, which is what makes the change feed gap-safe
  (see store/events.py). Taking it last keeps it short and deadlock-free: a transaction
  holding it waits for nothing else.
- The event's timestamp is taken after the row lock, so timestamps grow with versions.
"""
from __future__ import annotations

import uuid
from typing import Any

import asyncpg

from service.domain import lifecycle
from service.domain.errors import DomainError, NotFound, PreconditionFailed
from service.store import changes, moves, run_lists
from service.store.appended import note_appended
from service.store.counts import COUNT_DELTAS
from service.store.locks import FEED_LOCK

RUN_COLUMNS = """
    r.id, r.enterprise_id, r.run_number, r.pipeline_id, p.name AS pipeline_name, r.status,
    r.status_meta, r.created_by, r.updated_by, r.created_at, r.updated_at, r.started_at,
    r.ended_at, r.version
"""
RUN_JOIN = """
    pipeline_runs r
    JOIN pipelines p ON p.enterprise_id = r.enterprise_id AND p.id = r.pipeline_id
                    AND p.deleted_at IS NULL
"""

# One statement: next run number (pipeline row lock), the stage snapshot, the run and its
# stage runs, then the feed lock and the run.created event that carries the snapshot.
CREATE_RUN = f"""
WITH p AS (
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
), feed_lock AS (
    SELECT {FEED_LOCK} FROM r
), counted AS (
    {COUNT_DELTAS.format(
        rows="SELECT r.enterprise_id, r.pipeline_id, r.status, 1 FROM r, feed_lock")}
), e AS (
    INSERT INTO run_events (enterprise_id, pipeline_id, run_id, version, type, from_status,
                            to_status, actor, actor_id, occurred_at, data)
    SELECT r.enterprise_id, r.pipeline_id, r.id, 1, $7, NULL, r.status, $5, $6, r.created_at,
           jsonb_build_object(
               'run_number', r.run_number, 'timeout_seconds', p.timeout_seconds,
               'stage_runs', coalesce((
                   SELECT jsonb_agg(jsonb_build_object(
                       'id', s.id, 'stage_id', s.stage_id, 'ordinal', s.ordinal,
                       'name', s.name, 'description', s.description,
                       'created_by', s.created_by, 'timeout_seconds', s.timeout_seconds)
                       ORDER BY s.ordinal) FROM s), '[]'::jsonb)
           ) || $8::jsonb
    FROM r, p, feed_lock
    RETURNING position
)
SELECT r.id, r.enterprise_id, r.run_number, r.pipeline_id, p.name AS pipeline_name, r.status,
       r.status_meta, r.created_by, r.updated_by, r.created_at, r.updated_at, r.started_at,
       r.ended_at, r.version, (SELECT count(*) FROM s) AS stage_count,
       (SELECT position FROM e) AS position
FROM r, p
"""

DELETE_RUN = f"""
WITH cur AS (
    SELECT {RUN_COLUMNS}, clock_timestamp() AS at
    FROM {RUN_JOIN}
    WHERE r.enterprise_id = $1 AND r.pipeline_id = $2 AND r.id = $3
    FOR UPDATE OF r
), del AS (
    DELETE FROM pipeline_runs r USING cur
    WHERE r.enterprise_id = $1 AND r.id = cur.id AND ($7::int IS NULL OR cur.version = $7)
    RETURNING r.enterprise_id, r.pipeline_id, r.id, r.version, r.status, cur.at
), stage_rows AS (
    DELETE FROM stage_runs s USING del WHERE s.enterprise_id = $1 AND s.run_id = del.id
), feed_lock AS (
    SELECT {FEED_LOCK} FROM del
), counted AS (
    {COUNT_DELTAS.format(
        rows="SELECT del.enterprise_id, del.pipeline_id, del.status, -1 FROM del, feed_lock")}
), e AS (
    INSERT INTO run_events (enterprise_id, pipeline_id, run_id, version, type, from_status,
                            to_status, actor, actor_id, occurred_at, data)
    SELECT del.enterprise_id, del.pipeline_id, del.id, del.version + 1, $8, del.status, NULL,
           $4, $5, del.at, $6::jsonb
    FROM del, feed_lock
    RETURNING position
)
SELECT cur.*, (SELECT position FROM e) AS position FROM cur
"""

SELECT_RUN = f"""
SELECT {RUN_COLUMNS} FROM {RUN_JOIN}
WHERE r.enterprise_id = $1 AND r.pipeline_id = $2 AND r.id = $3
"""

# Lists (every ordering x filter, keyset cursors, counts from run_counts): store/run_lists.py.


def _run_not_found() -> NotFound:
    return NotFound("pipeline run not found")


def _event_data(request_id: str | None, reason: str | None = None) -> dict[str, Any]:
    data = changes.caused_by(request_id)
    if reason:
        data["reason"] = reason
    return data


async def create_run(conn: asyncpg.Connection, enterprise_id: str, pipeline_id: uuid.UUID,
                     actor: str, actor_id: int | None,
                     request_id: str | None = None) -> dict[str, Any]:
    """Create a run with a stage run per stage; without stages it is invalid at once."""
    async with conn.transaction():
        row = await conn.fetchrow(
            CREATE_RUN, enterprise_id, pipeline_id, uuid.uuid4(), lifecycle.INITIAL_STATUS,
            actor, actor_id, lifecycle.RUN_CREATED, _event_data(request_id),
            lifecycle.DEFAULT_RUN_TIMEOUT_SECONDS, lifecycle.DEFAULT_STAGE_TIMEOUT_SECONDS,
        )
        if row is None:
            raise NotFound("pipeline not found")
        note_appended(lifecycle.RUN_CREATED)
        if row["stage_count"] > 0:
            return _public(row)
        return await _change(conn, enterprise_id, row["id"], pipeline_id, actor, actor_id,
                             request_id, None, lifecycle.plan_creation)


async def get_run(conn: asyncpg.Connection, enterprise_id: str, pipeline_id: uuid.UUID,
                  run_id: uuid.UUID) -> dict[str, Any]:
    row = await conn.fetchrow(SELECT_RUN, enterprise_id, pipeline_id, run_id)
    if row is None:
        raise _run_not_found()
    return dict(row)


async def change_status(conn: asyncpg.Connection, enterprise_id: str, pipeline_id: uuid.UUID,
                        run_id: uuid.UUID, target: str, actor: str, actor_id: int | None, *,
                        request_id: str | None = None, reason: str | None = None,
                        expected_version: int | None = None,
                        system: bool = False) -> dict[str, Any]:
    """Move a run to `target`; same status is a no-op answered with the run as it is."""
    if target not in lifecycle.SIMPLE_RUN_TARGETS or system:
        def plan(state):
            if state["status"] == target:
                return []
            return lifecycle.plan_run_change(state, target, system=system, reason=reason)

        async with conn.transaction():
            return await _change(conn, enterprise_id, run_id, pipeline_id, actor, actor_id,
                                 request_id, expected_version, plan)
    return await _change_simple(conn, enterprise_id, pipeline_id, run_id, target, actor,
                                actor_id, _event_data(request_id, reason), expected_version)


async def _change(conn: asyncpg.Connection, enterprise_id: str, run_id: uuid.UUID,
                  pipeline_id: uuid.UUID | None, actor: str, actor_id: int | None,
                  request_id: str | None, expected_version: int | None, plan) -> dict[str, Any]:
    """The general path (store/changes.py): lock, plan with the lifecycle, fold, write."""
    loaded = await changes.load_for_update(conn, enterprise_id, run_id, pipeline_id)
    if loaded is None:
        raise _run_not_found()
    state, pipeline_name = loaded
    changes.check_version(state, expected_version)
    try:
        drafts = plan(state)
    except lifecycle.IllegalTransition as exc:
        raise changes.conflict(exc) from None
    state = await changes.commit_drafts(conn, state, drafts, actor, actor_id, request_id)
    return public_run(state, pipeline_name)


def public_run(state: dict[str, Any], pipeline_name: str | None) -> dict[str, Any]:
    """A run state (from the fold or the projection) as the API shows it."""
    run = {k: v for k, v in state.items() if k not in ("stage_runs", "deadline")}
    run["pipeline_name"] = pipeline_name
    return run


async def _change_simple(conn: asyncpg.Connection, enterprise_id: str, pipeline_id: uuid.UUID,
                         run_id: uuid.UUID, target: str, actor: str, actor_id: int | None,
                         data: dict[str, Any], expected_version: int | None) -> dict[str, Any]:
    """One statement for moves with no cascade (lifecycle.SIMPLE_RUN_TARGETS): store/moves.py."""
    change = moves.StatusChange(pipeline_id, run_id, target, actor, actor_id, data,
                                expected_version)
    (outcome,) = await moves.change_statuses(conn, enterprise_id, [change])
    if isinstance(outcome, DomainError):
        raise outcome
    return outcome


def simple_change(pipeline_id: uuid.UUID, run_id: uuid.UUID, target: str, actor: str,
                  actor_id: int | None, *, request_id: str | None = None,
                  expected_version: int | None = None) -> moves.StatusChange:
    """A simple move as a value, for callers that batch them (service/groupcommit.py)."""
    return moves.StatusChange(pipeline_id, run_id, target, actor, actor_id,
                              _event_data(request_id), expected_version)


async def delete_run(conn: asyncpg.Connection, enterprise_id: str, pipeline_id: uuid.UUID,
                     run_id: uuid.UUID, actor: str, actor_id: int | None, *,
                     request_id: str | None = None,
                     expected_version: int | None = None) -> dict[str, Any]:
    row = await conn.fetchrow(
        DELETE_RUN, enterprise_id, pipeline_id, run_id, actor, actor_id,
        _event_data(request_id), expected_version, lifecycle.RUN_DELETED,
    )
    if row is None:
        raise _run_not_found()
    if row["position"] is None:
        raise PreconditionFailed(content={"current_version": row["version"]})
    note_appended(lifecycle.RUN_DELETED)
    return _public(row)


async def list_runs(conn: asyncpg.Connection, enterprise_id: str, *,
                    pipeline_id: uuid.UUID | None, status: str | None,
                    pipeline_name: str | None, ordering: str | None, limit: int,
                    offset: int, cursor: str | None = None,
                    **dates) -> run_lists.Page:
    """A page of runs; dates: created_after/_before, updated_after/_before (None: unset)."""
    filters = run_lists.Filters(enterprise_id, pipeline_id, pipeline_name, status, **dates)
    return await run_lists.list_runs(conn, filters, ordering=ordering, limit=limit,
                                     offset=offset, cursor=cursor)


_INTERNAL = ("position", "total_count", "current_status", "current_version", "at",
             "stage_count")


def _public(row: asyncpg.Record) -> dict[str, Any]:
    run = dict(row)
    for key in _INTERNAL:
        run.pop(key, None)
    return run
