"""Simple status changes of runs (no cascade): one statement for one change or for many.

A change alone and a group commit (service/groupcommit.py) run the same statement: it
takes the changes of one enterprise as arrays, one element per change, at most one change
per run. One statement is one round trip and, outside a transaction, one commit (one WAL
flush) for all of them. Inside it, in this order:
- the runs' rows are locked (FOR UPDATE, in id order: two statements locking overlapping
  runs never deadlock), so each change is checked against its run's current state;
- each change is checked against the lifecycle's legal simple moves and its If-Match
  version; the accepted ones update the projection;
- the enterprise's feed lock is taken (once, only if something changed), then the counter
  deltas and the events are written, events in the changes' order, so positions follow
  arrival order. The feed lock is held to commit (see store/events.py).
"""
from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any

import asyncpg

from service.domain import lifecycle
from service.domain.errors import DomainError, NotFound, PreconditionFailed
from service.store import changes, fields
from service.store.appended import collection, note_appended
from service.store.counts import COUNT_DELTAS
from service.store.locks import FEED_LOCK

# Every legal simple move as 'from>to': the statement's transition check, from lifecycle.
LEGAL_MOVES = sorted(f"{source}>{target}" for target in lifecycle.SIMPLE_RUN_TARGETS
                     for source in lifecycle.sources_of(target))

_RUN = fields.RUN
# The run as answered: as updated, or as it is (locked) when the change was a no-op or
# refused.
_ANSWER = ",\n       ".join(
    f"CASE WHEN upd.id IS NULL THEN cur.{col} ELSE upd.{col} END AS {col}" for col in _RUN)

_CHANGE_STATUSES = f"""
WITH c AS (
    SELECT * FROM unnest($2::uuid[], $3::uuid[], $4::text[], $5::text[], $6::int[],
                         $7::jsonb[], $8::jsonb[], $9::int[])
         WITH ORDINALITY AS c(pipeline_id, run_id, target, actor, actor_id, data,
                              status_meta, expected_version, ord)
), cur AS (
    SELECT r.*, p.name AS pipeline_name, c.ord, clock_timestamp() AS at
    FROM pipeline_runs r
    JOIN c ON r.pipeline_id = c.pipeline_id AND r.id = c.run_id
    JOIN pipelines p ON p.enterprise_id = r.enterprise_id AND p.id = r.pipeline_id
                    AND p.deleted_at IS NULL
    WHERE r.enterprise_id = $1
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
    WHERE r.enterprise_id = $1 AND r.id = cur.id
      AND (cur.status || '>' || c.target) = ANY($12::text[])
      AND (c.expected_version IS NULL OR cur.version = c.expected_version)
    RETURNING r.*, cur.pipeline_name, cur.status AS from_status, cur.ord
), feed_lock AS (
    SELECT {FEED_LOCK} WHERE EXISTS (SELECT FROM upd)
), counted AS (
    {COUNT_DELTAS.format(rows='''
    SELECT upd.enterprise_id, upd.pipeline_id, d.status, sum(d.delta)
    FROM upd, feed_lock,
         LATERAL (VALUES (upd.from_status, -1), (upd.status, 1)) AS d(status, delta)
    GROUP BY 1, 2, 3 HAVING sum(d.delta) <> 0
    ORDER BY 1, 2, 3''')}
), e AS (
    INSERT INTO run_events (enterprise_id, pipeline_id, run_id, version, type, from_status,
                            to_status, actor, actor_id, occurred_at, data)
    SELECT upd.enterprise_id, upd.pipeline_id, upd.id, upd.version, $13, upd.from_status,
           upd.status, c.actor, c.actor_id, upd.updated_at, c.data
    FROM upd JOIN c ON c.ord = upd.ord, feed_lock
    ORDER BY upd.ord
)
SELECT c.ord, cur.status AS current_status, cur.version AS current_version,
       upd.id IS NOT NULL AS changed,
       cur.ord IS NULL AND EXISTS (
           SELECT FROM pipeline_runs r
           WHERE r.enterprise_id = $1 AND r.id = c.run_id AND r.pipeline_id = c.pipeline_id
       ) AS busy,
       {_ANSWER}
FROM c
LEFT JOIN cur ON cur.ord = c.ord
LEFT JOIN upd ON upd.ord = c.ord
ORDER BY c.ord
"""
# Waits for rows other transactions hold (a change alone), or passes them over: a group
# must not wait behind one busy run; its changes of busy runs are handed back (BUSY).
CHANGE_STATUSES = _CHANGE_STATUSES.format(skip="")
CHANGE_STATUSES_SKIP_LOCKED = _CHANGE_STATUSES.format(skip="SKIP LOCKED")
# The outcome of a change whose run another transaction had locked (with skip_locked).
BUSY = object()


@dataclass(frozen=True)
class StatusChange:
    """One simple move asked for (lifecycle.SIMPLE_RUN_TARGETS), as the statement takes it."""
    pipeline_id: uuid.UUID
    run_id: uuid.UUID
    target: str
    actor: str
    actor_id: int | None
    data: dict[str, Any]
    expected_version: int | None = None
    # Where the unit of work that asked collects what it appended (store/appended.py):
    # captured where the change is made, since a group commits it in another task.
    appended: list | None = field(default_factory=collection, compare=False)


async def change_statuses(conn: asyncpg.Connection, enterprise_id: str,
                          changes_: list[StatusChange], *,
                          skip_locked: bool = False) -> list[dict[str, Any] | DomainError]:
    """Apply the changes (distinct runs) in one statement; per change its run or refusal.

    Outside a transaction the statement commits by itself: all or none of the changes.
    With skip_locked, a change of a run another transaction holds is left undone: BUSY.
    """
    rows = await conn.fetch(
        CHANGE_STATUSES_SKIP_LOCKED if skip_locked else CHANGE_STATUSES, enterprise_id, [c.pipeline_id for c in changes_],
        [c.run_id for c in changes_], [c.target for c in changes_],
        [c.actor for c in changes_], [c.actor_id for c in changes_],
        [c.data for c in changes_], [lifecycle.status_meta(c.data) for c in changes_],
        [c.expected_version for c in changes_],
        _STARTS, _ENDS, LEGAL_MOVES, lifecycle.RUN_STATUS_CHANGED)
    return [_outcome(change, row) for change, row in zip(changes_, rows)]


async def grouped_change_statuses(conn: asyncpg.Connection, enterprise_id: str,
                                  changes_: list[StatusChange]) -> list[Any]:
    """For groupcommit.py: never waits for a run's lock (its callers then go alone)."""
    return await change_statuses(conn, enterprise_id, changes_, skip_locked=True)


_STARTS = sorted(t for t in lifecycle.SIMPLE_RUN_TARGETS if lifecycle.stamps_started(t))
_ENDS = sorted(t for t in lifecycle.SIMPLE_RUN_TARGETS if lifecycle.stamps_ended(t))


def _outcome(change: StatusChange, row: asyncpg.Record) -> Any:
    """What the caller of one change learns: the run, or why nothing changed."""
    if row["busy"]:
        return BUSY
    if row["current_status"] is None:
        return NotFound("pipeline run not found")
    if row["changed"]:
        note_appended(lifecycle.RUN_STATUS_CHANGED, into=change.appended)
        return _run(row)
    if change.expected_version is not None and row["current_version"] != change.expected_version:
        return PreconditionFailed(content={"current_version": row["current_version"]})
    if row["current_status"] == change.target:
        return _run(row)  # a no-op: the run as it is, locked, when the statement ran
    return changes.conflict(lifecycle.IllegalTransition(row["current_status"], change.target))


def _run(row: asyncpg.Record) -> dict[str, Any]:
    return fields.shape(fields.RUN, row)
