"""The replay/verify scan split across processes that share one snapshot (2 cores: 2 parts)."""
from __future__ import annotations

import asyncio
import multiprocessing
import os
import uuid
from concurrent.futures import ProcessPoolExecutor
from contextlib import asynccontextmanager
from typing import Callable

import asyncpg

from service.store import replay as sql

# Below this many events a second process costs more (its start, ~0.5 s) than it saves.
MIN_EVENTS_PER_PART = 200_000
MAX_PARTS = 2  # the fold and the server's side of the scan each want a core


async def count_parts(conn: asyncpg.Connection, dsn: str | None) -> int:
    """How many parts the scan is worth: one without a dsn (no other process can connect)."""
    if dsn is None:
        return 1
    return parts_for(await conn.fetchval(sql.ESTIMATED_EVENTS), os.cpu_count() or 1)


def parts_for(events: int, cpus: int) -> int:
    return max(1, min(MAX_PARTS, cpus, events // MIN_EVENTS_PER_PART))


def bounds(parts: int) -> list[tuple[uuid.UUID, uuid.UUID]]:
    """Run id ranges [low, high] splitting the ids into equal parts (random UUIDs: as many
    runs in each, about; any other ids only make the parts uneven, never wrong)."""
    top = 1 << 128
    edges = [top * n // parts for n in range(parts + 1)]
    return [(uuid.UUID(int=edges[n]), uuid.UUID(int=edges[n + 1] - 1)) for n in range(parts)]


@asynccontextmanager
async def in_other_processes(conn: asyncpg.Connection, work: Callable, dsn: str,
                             ranges: list[tuple]):
    """work(dsn, snapshot, bounds) for each of the ranges, each in a process of its own, in
    the snapshot of conn's transaction (which must stay open until they are done); yields
    their futures."""
    if not ranges:
        yield []
        return
    snapshot = await conn.fetchval(sql.EXPORT_SNAPSHOT)
    loop = asyncio.get_running_loop()
    # spawn: a fork would copy the caller's event loop and connections.
    with ProcessPoolExecutor(len(ranges), mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = [loop.run_in_executor(pool, work, dsn, snapshot, r) for r in ranges]
        try:
            yield futures
        finally:  # done, or the caller failed: never leave a part running unawaited
            await asyncio.gather(*futures, return_exceptions=True)
