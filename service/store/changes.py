"""The general write path: lock a run, fold planned events with lifecycle.apply, write both.

Used for every change that can cascade (stage runs, terminal moves, INVALID, timeouts).
The caller owns the transaction. Lock order, the same as the one-statement path in
runs.py: the run row, then its stage runs, then (last, held to commit) the feed lock.
"""
from __future__ import annotations

import uuid
from typing import Any

import asyncpg

from service.domain import lifecycle
from service.infra import logs
from service.domain.errors import Conflict, PreconditionFailed
from service.store.appended import note_appended
from service.store import counts
from service.store.counts import COUNT_DELTAS
from service.store.locks import FEED_LOCK

RUN_STATE_COLUMNS = (
    "enterprise_id", "id", "pipeline_id", "run_number", "status", "status_meta", "created_by",
    "updated_by", "created_at", "updated_at", "started_at", "ended_at", "version", "deadline",
)
STAGE_RUN_COLUMNS = (
    "enterprise_id", "id", "run_id", "pipeline_id", "stage_id", "ordinal", "stage_meta",
    "timeout_seconds", "status", "created_by", "updated_by", "created_at", "updated_at",
    "started_at", "ended_at",
)

LOCK_RUN = f"""
SELECT {', '.join('r.' + c for c in RUN_STATE_COLUMNS)}, p.name AS pipeline_name
FROM pipeline_runs r
JOIN pipelines p ON p.enterprise_id = r.enterprise_id AND p.id = r.pipeline_id
                AND p.deleted_at IS NULL
WHERE r.enterprise_id = $1 AND r.id = $2 AND ($3::uuid IS NULL OR r.pipeline_id = $3)
FOR UPDATE OF r
"""
LOCK_STAGE_RUNS = f"""
SELECT {', '.join(STAGE_RUN_COLUMNS)} FROM stage_runs
WHERE enterprise_id = $1 AND run_id = $2
ORDER BY ordinal
FOR UPDATE
"""
# Taken after the row locks, so a run's event times grow with its versions.
NOW = "SELECT clock_timestamp()"
UPDATE_RUN_ROW = """
UPDATE pipeline_runs SET status = $3, status_meta = $4, updated_by = $5, updated_at = $6,
    started_at = $7, ended_at = $8, version = $9
WHERE enterprise_id = $1 AND id = $2
"""
UPDATE_STAGE_ROW = """
UPDATE stage_runs SET status = $3, updated_by = $4, updated_at = $5, started_at = $6,
    ended_at = $7
WHERE enterprise_id = $1 AND id = $2
"""
APPEND_EVENTS = f"""
WITH feed_lock AS (SELECT {FEED_LOCK}), counted AS (
    {COUNT_DELTAS.format(rows='''
    SELECT $1, $2, d.status, d.delta FROM feed_lock,
           unnest($12::text[], $13::int[]) AS d(status, delta)
    ORDER BY d.status''')}
)
INSERT INTO run_events (enterprise_id, pipeline_id, run_id, version, type, from_status,
                        to_status, actor, actor_id, occurred_at, data)
SELECT $1, $2, $3, ev.version, ev.type, ev.from_status, ev.to_status, ev.actor, ev.actor_id,
       $4, ev.data
FROM unnest($5::int[], $6::text[], $7::text[], $8::text[], $9::text[], $10::bigint[],
            $11::jsonb[]) WITH ORDINALITY
     AS ev(version, type, from_status, to_status, actor, actor_id, data, n),
     feed_lock
ORDER BY ev.n
"""


async def load_for_update(conn: asyncpg.Connection, enterprise_id: str, run_id: uuid.UUID,
                          pipeline_id: uuid.UUID | None = None) -> tuple[dict, str] | None:
    """The run's state (with its stage runs), locked; None when there is no such live run."""
    row = await conn.fetchrow(LOCK_RUN, enterprise_id, run_id, pipeline_id)
    if row is None:
        return None
    state = {c: row[c] for c in RUN_STATE_COLUMNS}
    state["stage_runs"] = [dict(s) for s in await conn.fetch(LOCK_STAGE_RUNS, enterprise_id, run_id)]
    return state, row["pipeline_name"]


def check_version(state: dict, expected_version: int | None) -> None:
    if expected_version is not None and state["version"] != expected_version:
        raise PreconditionFailed(content={"current_version": state["version"]})


def conflict(exc: lifecycle.IllegalTransition) -> Conflict:
    return Conflict(str(exc), content={"current_status": exc.current,
                                       "requested_status": exc.requested})


def caused_by(request_id: str | None) -> dict[str, Any]:
    """What an event carries of the request that caused it: its id and its trace id."""
    trace_id = logs.TRACE_ID.get()  # set around the request by infra/tracing.py
    return {**({"request_id": request_id} if request_id else {}),
            **({"trace_id": trace_id} if trace_id else {})}


async def commit_drafts(conn: asyncpg.Connection, before: dict, drafts: list[lifecycle.Draft],
                        actor: str, actor_id: int | None,
                        request_id: str | None = None) -> dict[str, Any]:
    """Append the drafts as events and write what they fold to; returns the new state."""
    if not drafts:
        return before
    at = await conn.fetchval(NOW)
    state, events = before, []
    for n, draft in enumerate(drafts, start=1):
        data = {**draft.data, **caused_by(request_id)}
        event = {
            "type": draft.type, "from_status": draft.from_status, "to_status": draft.to_status,
            "actor": lifecycle.SYSTEM if draft.system else actor,
            "actor_id": None if draft.system else actor_id,
            "occurred_at": at, "version": before["version"] + n, "data": data,
        }
        state = lifecycle.apply(state, event)
        events.append(event)
    await _write_state(conn, before, state)
    # The run_counts deltas (store/counts.py) ride on the append, after its feed lock.
    deltas = sorted(counts.transition(None, None, before["status"], state["status"]).items())
    await conn.execute(
        APPEND_EVENTS, state["enterprise_id"], state["pipeline_id"], state["id"], at,
        *([e[k] for e in events] for k in ("version", "type", "from_status", "to_status",
                                            "actor", "actor_id", "data")),
        [k[2] for k, _ in deltas], [v for _, v in deltas])
    for event in events:
        note_appended(event["type"])
    return state


async def _write_state(conn: asyncpg.Connection, before: dict, after: dict) -> None:
    await conn.execute(
        UPDATE_RUN_ROW, after["enterprise_id"], after["id"], after["status"],
        after["status_meta"], after["updated_by"], after["updated_at"], after["started_at"],
        after["ended_at"], after["version"])
    changed = [s for s, old in zip(after["stage_runs"], before["stage_runs"]) if s != old]
    if changed:
        await conn.executemany(UPDATE_STAGE_ROW, [
            (s["enterprise_id"], s["id"], s["status"], s["updated_by"], s["updated_at"],
             s["started_at"], s["ended_at"]) for s in changed])
