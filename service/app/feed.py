"""Reading the enterprise change feed (the long-poll and the stream share it)."""
from __future__ import annotations

from typing import Any

import asyncpg

from service.store import events as store


async def read(conn: asyncpg.Connection, enterprise_id: str, after: int, limit: int,
               filters: dict[str, Any]) -> list[dict]:
    """Events after `after` in position order: gap-safe (store/events.py says why)."""
    return await store.feed(
        conn, enterprise_id, after=after, limit=limit, pipeline_id=filters.get("pipeline_id"),
        run_id=filters.get("run_id"), type_=filters.get("type"), actor=filters.get("actor"),
        since=filters.get("since"), until=filters.get("until"))
