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
from datetime import datetime
from typing import Any

import asyncpg

from service.domain.errors import NotFound

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
FEED = f"""
SELECT {EVENT_COLUMNS} FROM run_events e
WHERE e.enterprise_id = $1 AND e.position > $2
  AND ($3::uuid IS NULL OR e.pipeline_id = $3)
  AND ($4::uuid IS NULL OR e.run_id = $4)
  AND ($5::text IS NULL OR e.type = $5)
  AND ($6::text IS NULL OR e.actor = $6)
  AND ($7::timestamptz IS NULL OR e.occurred_at >= $7)
  AND ($8::timestamptz IS NULL OR e.occurred_at < $8)
ORDER BY e.position
LIMIT $9
"""


def public_event(row: asyncpg.Record | dict) -> dict[str, Any]:
    event = dict(row)
    event.pop("total_count", None)
    event.pop("enterprise_id", None)
    event.pop("actor_id", None)
    event["request_id"] = (event.get("data") or {}).get("request_id")
    return event


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


async def feed(conn: asyncpg.Connection, enterprise_id: str, *, after: int, limit: int,
               pipeline_id: uuid.UUID | None = None, run_id: uuid.UUID | None = None,
               type_: str | None = None, actor: str | None = None,
               since: datetime | None = None, until: datetime | None = None) -> list[dict]:
    rows = await conn.fetch(FEED, enterprise_id, after, pipeline_id, run_id, type_, actor,
                            since, until, limit)
    return [public_event(r) for r in rows]
