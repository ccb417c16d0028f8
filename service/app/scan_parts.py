"""The replay/verify scan split by run id: across processes that share one snapshot (2 cores:
2 processes), and into more ranges, folded one after another, when memory is short."""
from __future__ import annotations

import asyncio
import multiprocessing
import os
import uuid
from concurrent.futures import ProcessPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Callable

import asyncpg

from service.infra.db import init_connection
from service.store import replay as sql

# Below this many events a second process costs more (its start, ~0.5 s) than it saves.
MIN_EVENTS_PER_PART = 200_000
MAX_PARTS = 2  # the fold and the server's side of the scan each want a core
# The scan holds the folds of a whole run-id range at once (the log is read in the order it
# was written, so any run may get an event until the end): about this much per run (a
# folded run with two or three stage runs, as Python dicts: 5.2 KB of RSS measured at 100k
# seeded runs, with room).
BYTES_PER_RUN = 6144
DEFAULT_MEMORY_MB = 8192  # all processes of the scan together (REPLAY_MEMORY_MB)
MAX_RANGES = 64  # each reads the whole log: past this, a smaller memory would not be honest


@dataclass(frozen=True)
class Plan:
    processes: int  # the caller and processes - 1 others
    ranges: list[tuple[uuid.UUID, uuid.UUID]]

    def shares(self) -> tuple[list, list[list]]:
        """The caller's ranges, and each other process's, dealt in turn."""
        dealt = [self.ranges[n::self.processes] for n in range(self.processes)]
        return dealt[0], dealt[1:]


async def plan(conn: asyncpg.Connection, dsn: str | None, memory_mb: int) -> Plan:
    """How many processes, and how many run-id ranges for the folds to fit in memory_mb."""
    processes = await count_parts(conn, dsn)
    runs = await sql.estimated_rows(conn, sql.ESTIMATED_RUNS)
    return Plan(processes, bounds(ranges_for(runs, processes, memory_mb)))


def ranges_for(runs: int, processes: int, memory_mb: int) -> int:
    """At least one range per process; more when a process's folds would not fit in its
    share of memory_mb (each range then reads the whole log again: memory for time)."""
    per_process = max(1, memory_mb * 2**20 // processes)
    needed = -(-runs * BYTES_PER_RUN // per_process)  # ceil: ranges in all
    return processes * max(1, min(MAX_RANGES // processes, -(-needed // processes)))


async def count_parts(conn: asyncpg.Connection, dsn: str | None) -> int:
    """How many parts the scan is worth: one without a dsn (no other process can connect)."""
    if dsn is None:
        return 1
    events = await sql.estimated_rows(conn, sql.ESTIMATED_EVENTS)
    return parts_for(events, os.cpu_count() or 1)


def parts_for(events: int, cpus: int) -> int:
    return max(1, min(MAX_PARTS, cpus, events // MIN_EVENTS_PER_PART))


def bounds(parts: int) -> list[tuple[uuid.UUID, uuid.UUID]]:
    """Run id ranges [low, high] splitting the ids into equal parts (random UUIDs: as many
    runs in each, about; any other ids only make the parts uneven, never wrong)."""
    top = 1 << 128
    edges = [top * n // parts for n in range(parts + 1)]
    return [(uuid.UUID(int=edges[n]), uuid.UUID(int=edges[n + 1] - 1)) for n in range(parts)]


@asynccontextmanager
async def in_other_processes(work: Callable, dsn: str, snapshot: str,
                             ranges: list[list[tuple]]):
    """work(dsn, snapshot, its ranges) for each share of ranges, each in a process of its own,
    in the exported snapshot (its transaction must stay open until they are done); yields
    their futures."""
    if not ranges:
        yield []
        return
    loop = asyncio.get_running_loop()
    # spawn: a fork would copy the caller's event loop and connections.
    pool = ProcessPoolExecutor(len(ranges), mp_context=multiprocessing.get_context("spawn"))
    try:
        futures = [loop.run_in_executor(pool, work, dsn, snapshot, r) for r in ranges]
        try:
            yield futures
        finally:  # done, or the caller failed: never leave a part running unawaited
            await asyncio.gather(*futures, return_exceptions=True)
    finally:
        # Their results are in: the processes' exits (a part's gigabytes handed back) need
        # not be waited for (seconds at a million runs).
        pool.shutdown(wait=False)


@asynccontextmanager
async def beside(dsn: str, snapshot: str, work: Callable):
    """work(connection) as a task, on a connection of its own in the exported snapshot
    (read-only, the scan's settings), while the caller goes on: yields the task."""
    conn = await asyncpg.connect(dsn)
    task = None
    try:
        await init_connection(conn)
        async with conn.transaction(isolation="repeatable_read", readonly=True):
            await conn.execute(sql.set_snapshot(snapshot))  # first, as PostgreSQL requires
            await conn.execute(sql.SCAN_SETTINGS)
            task = asyncio.ensure_future(work(conn))
            try:
                yield task
            finally:  # the caller failed: the connection must be free to close
                if not task.done():
                    task.cancel()
                await asyncio.gather(task, return_exceptions=True)
    finally:
        await conn.close()
