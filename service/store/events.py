"""Reading the event store: a run's history, its state as of a time, the enterprise feed.

Why the feed never skips an event: positions come from one sequence, and a sequence
hands out numbers in call order, not commit order. With free-running writers, position
101 could commit (and be served) before 100, and a consumer already past 101 would lose
100 for ever. We chose to serialize appends per enterprise instead of filtering by
transaction ids: every append takes the enterprise's feed lock (store/append.py)
immediately before its events get their positions and holds it until commit. So within
one enterprise, and the feed is per enterprise, position order IS commit order: once a
reader sees position p, every smaller position of that enterprise is already committed
(or was rolled back and will never appear). Reading `position > after` is then exact.
The price is one short critical section (append + commit) per enterprise.
"""
from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

from service.domain.errors import NotFound
from service.store.columns import EVENT_FIELDS, answered

EVENT_COLUMNS = """
    e.id, e.position, e.enterprise_id, e.run_id, e.pipeline_id, e.version, e.type,
    e.from_status, e.to_status, e.actor, e.actor_id, e.occurred_at, e.data
"""
RUN_HISTORY = f"""
SELECT {EVENT_COLUMNS}, count(*) OVER () AS total_count FROM run_events e
WHERE e.enterprise_id = $1 AND e.pipeline_id = $2 AND e.run_id = $3
ORDER BY e.version
LIMIT $4 OFFSET $5
"""
RUN_EVENT_COUNT = """
SELECT count(*) FROM run_events e
WHERE e.enterprise_id = $1 AND e.pipeline_id = $2 AND e.run_id = $3
"""
# All of a run's events in version order (as_of folds a prefix of them).
RUN_EVENTS = f"""
SELECT {EVENT_COLUMNS} FROM run_events e
WHERE e.enterprise_id = $1 AND e.pipeline_id = $2 AND e.run_id = $3
ORDER BY e.version
"""
PIPELINE_NAME = "SELECT name FROM pipelines WHERE enterprise_id = $1 AND id = $2"
# Unfiltered: the primary key's (enterprise_id, position) prefix, `limit` rows read.
FEED = f"""
SELECT {EVENT_COLUMNS} FROM run_events e
WHERE e.enterprise_id = $1 AND e.position > $2
ORDER BY e.position
LIMIT $3
"""
# Filtered: no index serves every filter, so the work is bounded instead. At most $10
# events after $2 are examined (in position order, by the same key); the answer is what
# matched among them, and the position of the last one examined, from which the caller
# resumes. One row per match, or a single row of NULL event columns when none matched.
FEED_FILTERED = f"""
WITH examined AS MATERIALIZED (
    SELECT * FROM run_events e
    WHERE e.enterprise_id = $1 AND e.position > $2
    ORDER BY e.position
    LIMIT $10
)
SELECT m.*, x.examined_to, x.examined
FROM (SELECT max(position) AS examined_to, count(*) AS examined FROM examined) x
LEFT JOIN LATERAL (
    SELECT {EVENT_COLUMNS} FROM examined e
    WHERE ($3::uuid IS NULL OR e.pipeline_id = $3)
      AND ($4::uuid IS NULL OR e.run_id = $4)
      AND ($5::text IS NULL OR e.type = $5)
      AND ($6::text IS NULL OR e.actor = $6)
      AND ($7::timestamptz IS NULL OR e.occurred_at >= $7)
      AND ($8::timestamptz IS NULL OR e.occurred_at < $8)
    ORDER BY e.position
    LIMIT $9
) m ON true
ORDER BY m.position
"""
# The feed newest first (the auditors' Activity page): positions before $2, backwards on
# the primary key's (enterprise_id, position) prefix.
FEED_NEWEST = f"""
SELECT {EVENT_COLUMNS} FROM run_events e
WHERE e.enterprise_id = $1 AND ($2::bigint IS NULL OR e.position < $2)
  AND ($3::uuid IS NULL OR e.pipeline_id = $3)
  AND ($4::text IS NULL OR e.type = $4)
  AND ($5::text IS NULL OR e.actor = $5)
  AND ($6::timestamptz IS NULL OR e.occurred_at >= $6)
  AND ($7::timestamptz IS NULL OR e.occurred_at < $7)
ORDER BY e.position DESC
LIMIT $8
"""
# What names a run and its stage runs for people (the Activity page): its run.created
# event, which a deleted run keeps. By (enterprise_id, run_id, version), one row a run.
RUN_LABELS = """
SELECT e.run_id, (e.data->>'run_number')::int AS run_number, p.name AS pipeline_name,
       coalesce(e.data->'stage_runs', '[]'::jsonb) AS stage_runs
FROM run_events e
LEFT JOIN pipelines p ON p.enterprise_id = e.enterprise_id AND p.id = e.pipeline_id
WHERE e.enterprise_id = $1 AND e.run_id = ANY($2::uuid[]) AND e.version = 1
"""
# Exports read in keyset chunks, each a short statement on a connection taken for it and
# given back before the chunk is written to the client: a slow reader holds no pool
# connection and no transaction. The consistency of one snapshot comes from a cut: the
# enterprise's newest position when the export starts. Appends are serialized per
# enterprise (above), so every event up to the cut is committed when it is read, and events
# never change: chunks bounded by the cut read exactly what a snapshot taken then would.
EXPORT_CUT = "SELECT coalesce(max(position), 0) FROM run_events WHERE enterprise_id = $1"
# The feed of [since, until) up to the cut, after position $2, on the primary key's prefix.
EXPORT_FEED_CHUNK = f"""
SELECT {EVENT_COLUMNS} FROM run_events e
WHERE e.enterprise_id = $1 AND e.position > $2 AND e.position <= $3
  AND ($4::timestamptz IS NULL OR e.occurred_at >= $4)
  AND ($5::timestamptz IS NULL OR e.occurred_at < $5)
ORDER BY e.position
LIMIT $6
"""
# A run's history up to the cut, after version $4.
EXPORT_RUN_CHUNK = f"""
SELECT {EVENT_COLUMNS} FROM run_events e
WHERE e.enterprise_id = $1 AND e.pipeline_id = $2 AND e.run_id = $3
  AND e.version > $4 AND e.position <= $5
ORDER BY e.version
LIMIT $6
"""
EXPORT_BATCH = 500  # rows per statement of an export


def public_event(row: asyncpg.Record | dict) -> dict[str, Any]:
    return answered(EVENT_FIELDS, row, request_id=(row["data"] or {}).get("request_id"))


async def run_history(conn: asyncpg.Connection, enterprise_id: str, pipeline_id: uuid.UUID,
                      run_id: uuid.UUID, limit: int, offset: int) -> tuple[int, list[dict]]:
    rows = await conn.fetch(RUN_HISTORY, enterprise_id, pipeline_id, run_id, limit, offset)
    total = rows[0]["total_count"] if rows else await conn.fetchval(
        RUN_EVENT_COUNT, enterprise_id, pipeline_id, run_id)
    if total == 0:
        raise NotFound("pipeline run not found")
    return total, [public_event(r) for r in rows]


async def run_events(conn: asyncpg.Connection, enterprise_id: str, pipeline_id: uuid.UUID,
                     run_id: uuid.UUID) -> list[asyncpg.Record]:
    """All of a run's events, in version order."""
    return await conn.fetch(RUN_EVENTS, enterprise_id, pipeline_id, run_id)


async def pipeline_name(conn: asyncpg.Connection, enterprise_id: str,
                        pipeline_id: uuid.UUID) -> str | None:
    """The pipeline's name, deleted or not (a past run keeps its pipeline's name)."""
    return await conn.fetchval(PIPELINE_NAME, enterprise_id, pipeline_id)


@dataclass(frozen=True)
class FeedPage:
    events: list[dict]
    next_after: int  # resume from here: the last event returned, or the last one examined
    exhausted: bool  # every event after `after` was examined (nothing more to read now)


async def feed(conn: asyncpg.Connection, enterprise_id: str, *, after: int, limit: int,
               scan_cap: int, pipeline_id: uuid.UUID | None = None,
               run_id: uuid.UUID | None = None, type_: str | None = None,
               actor: str | None = None, since: datetime | None = None,
               until: datetime | None = None) -> FeedPage:
    """Events after `after` in position order; filtered reads examine at most scan_cap."""
    filters = (pipeline_id, run_id, type_, actor, since, until)
    if all(f is None for f in filters):
        rows = await conn.fetch(FEED, enterprise_id, after, limit)
        events = [public_event(r) for r in rows]
        return FeedPage(events, events[-1]["position"] if events else after, len(rows) < limit)
    rows = await conn.fetch(FEED_FILTERED, enterprise_id, after, *filters, limit,
                            max(scan_cap, limit))
    examined, examined_to = rows[0]["examined"], rows[0]["examined_to"]
    events = [_matched(r) for r in rows if r["position"] is not None]
    if len(events) == limit:  # a full page: resume after its last event
        return FeedPage(events, events[-1]["position"], False)
    # Everything examined without filling the page: resume after the last one examined.
    return FeedPage(events, examined_to if examined else after, examined < max(scan_cap, limit))


def _matched(row: asyncpg.Record) -> dict[str, Any]:
    event = public_event(row)
    event.pop("examined_to", None)
    event.pop("examined", None)
    return event


async def feed_newest(conn: asyncpg.Connection, enterprise_id: str, *, before: int | None,
                      limit: int, pipeline_id: uuid.UUID | None = None,
                      type_: str | None = None, actor: str | None = None,
                      since: datetime | None = None,
                      until: datetime | None = None) -> list[dict]:
    rows = await conn.fetch(FEED_NEWEST, enterprise_id, before, pipeline_id, type_, actor,
                            since, until, limit)
    return [public_event(r) for r in rows]


async def run_labels(conn: asyncpg.Connection, enterprise_id: str,
                     run_ids: list[uuid.UUID]) -> dict[uuid.UUID, dict[str, Any]]:
    """Each run's number, pipeline name, and its stage runs' names by stage run id."""
    rows = await conn.fetch(RUN_LABELS, enterprise_id, list(set(run_ids)))
    return {r["run_id"]: {"run_number": r["run_number"], "pipeline_name": r["pipeline_name"],
                          "stages": {str(s["id"]): s["name"] for s in r["stage_runs"]}}
            for r in rows}


async def export_cut(conn: asyncpg.Connection, enterprise_id: str) -> int:
    """The position an export stops at: the enterprise's newest when it starts."""
    return await conn.fetchval(EXPORT_CUT, enterprise_id)


async def export_run_chunk(conn: asyncpg.Connection, enterprise_id: str,
                           pipeline_id: uuid.UUID, run_id: uuid.UUID, *, after_version: int,
                           cut: int) -> list[dict]:
    """Up to EXPORT_BATCH of a run's events after `after_version`, none past the cut."""
    rows = await conn.fetch(EXPORT_RUN_CHUNK, enterprise_id, pipeline_id, run_id,
                            after_version, cut, EXPORT_BATCH)
    return [public_event(r) for r in rows]


async def export_feed_chunk(conn: asyncpg.Connection, enterprise_id: str, *, after: int,
                            cut: int, since: datetime | None,
                            until: datetime | None) -> list[dict]:
    """Up to EXPORT_BATCH events of [since, until) after position `after`, up to the cut."""
    rows = await conn.fetch(EXPORT_FEED_CHUNK, enterprise_id, after, cut, since, until,
                            EXPORT_BATCH)
    return [public_event(r) for r in rows]
