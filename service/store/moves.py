"""Simple status changes of runs (no cascade): one statement for one change or for many.

A change alone and a group commit (service/app/groupcommit.py) run the same statement: it
takes the changes as arrays, one element per change (of any enterprises: a group carries
those of several), at most one change per run. One statement is one round trip and,
outside a transaction, one commit (one WAL flush) for all of them. Inside it, in order:
- the runs' rows are locked (FOR UPDATE, in id order: two statements locking overlapping
  runs never deadlock), so each change is checked against its run's current state;
- each change is checked against the lifecycle's legal simple moves and its If-Match
  version; the accepted ones update the projection;
- the append (store/append.py): feed locks, counters, events in the changes' order.
What a refused change means (404, 409, 412) is the use case's call (app/runs.py).
"""
from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any

import asyncpg

from service.domain import lifecycle
from service.store import append
from service.infra.appended import collection
from service.store.columns import RUN_FIELDS

# Every legal simple move as 'from>to': the statement's transition check, from lifecycle.
LEGAL_MOVES = sorted(f"{source}>{target}" for target in lifecycle.SIMPLE_RUN_TARGETS
                     for source in lifecycle.sources_of(target))
_STARTS = sorted(t for t in lifecycle.SIMPLE_RUN_TARGETS if lifecycle.stamps_started(t))
_ENDS = sorted(t for t in lifecycle.SIMPLE_RUN_TARGETS if lifecycle.stamps_ended(t))

# The run as answered: as updated, or as it is (locked) when the change was a no-op or
# refused.
_ANSWER = ",\n       ".join(
    f"CASE WHEN upd.id IS NULL THEN cur.{col} ELSE upd.{col} END AS {col}" for col in RUN_FIELDS)

# The changes' rows come from a function (schema.sql run_status_changes), so the statement
# keeps one generic plan however few changes it carries.
_CHANGES = f"""c AS (
    SELECT * FROM run_status_changes($1::text[], $2::uuid[], $3::uuid[], $4::text[],
                                     $5::text[], $6::bigint[], $7::jsonb[], $8::jsonb[],
                                     $9::int[]) AS c
), cur AS (
    SELECT r.*, p.name AS pipeline_name, c.ord, clock_timestamp() AS at
    FROM pipeline_runs r
    JOIN c ON r.enterprise_id = c.enterprise_id AND r.pipeline_id = c.pipeline_id
          AND r.id = c.run_id
    JOIN pipelines p ON p.enterprise_id = r.enterprise_id AND p.id = r.pipeline_id
                    AND p.deleted_at IS NULL
    ORDER BY r.id
    FOR UPDATE OF r {{skip}}
), upd AS (
    UPDATE pipeline_runs r SET
        status = c.target,
        status_meta = c.status_meta,
        version = r.version + 1,
        updated_by = c.actor_id,
        updated_at = cur.at,
        started_at = CASE WHEN c.target = ANY($10::text[]) THEN coalesce(r.started_at, cur.at)
                          ELSE r.started_at END,
        ended_at = CASE WHEN c.target = ANY($11::text[]) THEN cur.at ELSE r.ended_at END
    FROM cur JOIN c ON c.ord = cur.ord
    WHERE r.enterprise_id = cur.enterprise_id AND r.id = cur.id
      AND (cur.status || '>' || c.target) = ANY($12::text[])
      AND (c.expected_version IS NULL OR cur.version = c.expected_version)
    RETURNING r.*, cur.pipeline_name, cur.status AS from_status, cur.ord
)"""
# The insights' run states (append.RUN_STATES) of the changes that move a key. A simple
# move moves one only by stamping started_at or ended_at: none leaves an outcome, and
# entering one stamps ended_at (schema.sql run_insight_keys; tests/test_insights_pass.py
# holds the lifecycle to it).
_RUN_STATES_CTE = f"""run_states AS (
    SELECT x.* FROM upd JOIN cur ON cur.ord = upd.ord,
         LATERAL (VALUES (-1, cur.enterprise_id, cur.pipeline_id, cur.created_at,
                          cur.started_at, cur.ended_at, cur.status),
                         (1, upd.enterprise_id, upd.pipeline_id, upd.created_at,
                          upd.started_at, upd.ended_at, upd.status)) AS x({append.RUN_STATE_NAMES})
    WHERE cur.started_at IS DISTINCT FROM upd.started_at
       OR cur.ended_at IS DISTINCT FROM upd.ended_at
)"""
_APPENDED = """appended AS (
    SELECT upd.enterprise_id, upd.pipeline_id, upd.id AS run_id, upd.version,
           $13::text AS type, upd.from_status, upd.status AS to_status, c.actor, c.actor_id,
           upd.updated_at AS occurred_at, c.data, upd.ord
    FROM upd JOIN c ON c.ord = upd.ord
)"""
_ANSWERS = f"""SELECT c.ord, cur.status AS current_status, cur.version AS current_version,
       upd.id IS NOT NULL AS changed,
       cur.ord IS NULL AND EXISTS (
           SELECT FROM pipeline_runs r
           JOIN pipelines p ON p.enterprise_id = r.enterprise_id AND p.id = r.pipeline_id
                           AND p.deleted_at IS NULL
           WHERE r.enterprise_id = c.enterprise_id AND r.id = c.run_id
             AND r.pipeline_id = c.pipeline_id
       ) AS busy,
       {_ANSWER}
FROM c
LEFT JOIN cur ON cur.ord = c.ord
LEFT JOIN upd ON upd.ord = c.ord
ORDER BY c.ord"""
# Two statements: changes that may move an insights key (a start, an end: KEY_TARGETS)
# go by the one that keeps them (append.INSIGHTS), the rest (most moves: queued,
# processing, waiting) by the one without, which costs nothing for it: its plan has
# no insights nodes to start at every execution (~55 µs a statement, measured:
# docs/performance.md).
_PLAIN = append.statement(f"{_CHANGES}, {_APPENDED}", _ANSWERS)
_KEYS = append.statement(f"{_CHANGES}, {_RUN_STATES_CTE}, {_APPENDED}", _ANSWERS,
                         run_states=True)
KEY_TARGETS = frozenset(_STARTS) | frozenset(_ENDS)
# Waits for rows other transactions hold (a change alone), or passes them over: a group
# must not wait behind one busy run; its changes of busy runs come back `busy`. (`busy`
# needs a live pipeline too: a run of a deleted pipeline is not found, never busy.)
CHANGE_STATUSES = _PLAIN.format(skip="")
CHANGE_STATUSES_SKIP_LOCKED = _PLAIN.format(skip="SKIP LOCKED")
CHANGE_STATUSES_KEYS = _KEYS.format(skip="")
CHANGE_STATUSES_KEYS_SKIP_LOCKED = _KEYS.format(skip="SKIP LOCKED")


@dataclass(frozen=True, slots=True)
class StatusChange:
    """One simple move asked for (lifecycle.SIMPLE_RUN_TARGETS), as the statement takes it."""
    enterprise_id: str
    pipeline_id: uuid.UUID
    run_id: uuid.UUID
    target: str
    actor: str
    actor_id: int | None
    data: dict[str, Any]
    expected_version: int | None = None
    # Where the unit of work that asked collects what it appended (infra/appended.py):
    # captured where the change is made, since a group commits it in another task.
    appended: list | None = field(default_factory=collection, compare=False)


async def change_statuses(conn: asyncpg.Connection, changes: list[StatusChange], *,
                          skip_locked: bool = False) -> list[asyncpg.Record]:
    """Apply the changes (distinct runs) in one statement; a row per change, in order.

    Each row: `changed`; else `current_status`/`current_version` (NULL: no such live run)
    or `busy` (with skip_locked: another transaction holds the run); and RUN_FIELDS, the
    run as updated or as it is. Outside a transaction the statement commits by itself.
    """
    return await conn.fetch(
        _statement(skip_locked, any(c.target in KEY_TARGETS for c in changes)),
        [c.enterprise_id for c in changes], [c.pipeline_id for c in changes], [c.run_id for c in changes],
        [c.target for c in changes], [c.actor for c in changes],
        [c.actor_id for c in changes], [c.data for c in changes],
        [lifecycle.status_meta(c.data) for c in changes],
        [c.expected_version for c in changes],
        _STARTS, _ENDS, LEGAL_MOVES, lifecycle.RUN_STATUS_CHANGED)


def _statement(skip_locked: bool, keys: bool) -> str:
    if keys:
        return CHANGE_STATUSES_KEYS_SKIP_LOCKED if skip_locked else CHANGE_STATUSES_KEYS
    return CHANGE_STATUSES_SKIP_LOCKED if skip_locked else CHANGE_STATUSES
